package dataplane

// Reading the raw keys and values of the pinned maps as their C types say
// (fsha maps), the way bpftool does with BTF: the types are this release's
// own (the object it embeds); a start migrates pins of another layout, so
// once fsha up has run they match.

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// Fields is a decoded struct: its members in declaration order.
type Fields struct {
	Names  []string
	Values []any
}

// MarshalJSON keeps the members' order.
func (f Fields) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteByte('{')
	for i, n := range f.Names {
		if i > 0 {
			b.WriteByte(',')
		}
		k, _ := json.Marshal(n)
		v, err := json.Marshal(f.Values[i])
		if err != nil {
			return nil, err
		}
		b.Write(k)
		b.WriteByte(':')
		b.Write(v)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

// String prints the members as "{name: value, ...}".
func (f Fields) String() string {
	var b strings.Builder
	b.WriteByte('{')
	for i, n := range f.Names {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s: %v", n, f.Values[i])
	}
	b.WriteByte('}')
	return b.String()
}

// MapTypes returns each map's key and value types, by map name.
func MapTypes() (map[string][2]btf.Type, error) {
	spec, err := loadFsha()
	if err != nil {
		return nil, fmt.Errorf("read the embedded BPF object: %w", err)
	}
	out := map[string][2]btf.Type{}
	for name, m := range spec.Maps {
		if m.Key != nil && m.Value != nil {
			out[name] = [2]btf.Type{m.Key, m.Value}
		}
	}
	return out, nil
}

// DecodeBTF reads b as t: integers as numbers, enums by name, byte arrays
// as hex, other arrays as lists, structs as Fields. b must be t's size.
func DecodeBTF(t btf.Type, b []byte) (any, error) {
	size, err := btf.Sizeof(t)
	if err != nil {
		return nil, err
	}
	if len(b) != size {
		return nil, fmt.Errorf("%d bytes for a %d-byte %s", len(b), size, t.TypeName())
	}
	return decode(btf.UnderlyingType(t), b)
}

func decode(t btf.Type, b []byte) (any, error) {
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Int:
		return decodeInt(b, t.Encoding == btf.Signed), nil
	case *btf.Enum:
		v := decodeInt(b, t.Signed)
		for _, val := range t.Values {
			if fmt.Sprint(val.Value) == fmt.Sprint(v) {
				return val.Name, nil
			}
		}
		return v, nil
	case *btf.Pointer:
		return fmt.Sprintf("0x%x", decodeInt(b, false)), nil
	case *btf.Array:
		es, err := btf.Sizeof(t.Type)
		if err != nil {
			return nil, err
		}
		if es == 1 {
			return hex.EncodeToString(b), nil
		}
		out := make([]any, 0, t.Nelems)
		for i := 0; i < int(t.Nelems); i++ {
			v, err := decode(t.Type, b[i*es:(i+1)*es])
			if err != nil {
				return nil, err
			}
			out = append(out, v)
		}
		return out, nil
	case *btf.Struct:
		return decodeMembers(t.Members, b)
	case *btf.Union:
		return decodeMembers(t.Members, b)
	}
	return hex.EncodeToString(b), nil
}

func decodeMembers(ms []btf.Member, b []byte) (Fields, error) {
	var f Fields
	for i, m := range ms {
		name := m.Name
		if name == "" {
			name = fmt.Sprintf("_%d", i)
		}
		if m.BitfieldSize > 0 {
			f.Names = append(f.Names, name)
			f.Values = append(f.Values, bitfield(b, uint32(m.Offset), uint32(m.BitfieldSize)))
			continue
		}
		size, err := btf.Sizeof(m.Type)
		if err != nil {
			return f, err
		}
		off := int(m.Offset / 8)
		if off+size > len(b) {
			return f, fmt.Errorf("member %s beyond its struct", name)
		}
		v, err := decode(m.Type, b[off:off+size])
		if err != nil {
			return f, fmt.Errorf("member %s: %w", name, err)
		}
		f.Names = append(f.Names, name)
		f.Values = append(f.Values, v)
	}
	return f, nil
}

func decodeInt(b []byte, signed bool) any {
	var u uint64
	switch len(b) {
	case 1:
		u = uint64(b[0])
	case 2:
		u = uint64(binary.NativeEndian.Uint16(b))
	case 4:
		u = uint64(binary.NativeEndian.Uint32(b))
	case 8:
		u = binary.NativeEndian.Uint64(b)
	default:
		return hex.EncodeToString(b)
	}
	if !signed {
		return u
	}
	shift := 64 - 8*len(b)
	return int64(u<<shift) >> shift
}

// bitfield reads size bits at bit offset off (little-endian layout).
func bitfield(b []byte, off, size uint32) uint64 {
	var v uint64
	for i := uint32(0); i < size; i++ {
		bit := off + i
		if int(bit/8) < len(b) && b[bit/8]&(1<<(bit%8)) != 0 {
			v |= 1 << i
		}
	}
	return v
}
