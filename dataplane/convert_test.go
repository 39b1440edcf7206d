package dataplane

import (
	"encoding/binary"
	"slices"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// BTF types for building layouts by hand.
var (
	btfU8  = &btf.Int{Name: "__u8", Size: 1}
	btfU16 = &btf.Int{Name: "__u16", Size: 2}
	btfU32 = &btf.Int{Name: "__u32", Size: 4}
	btfU64 = &btf.Int{Name: "__u64", Size: 8}
	btfS8  = &btf.Int{Name: "__s8", Size: 1, Encoding: btf.Signed}
	btfS32 = &btf.Int{Name: "__s32", Size: 4, Encoding: btf.Signed}
)

func member(name string, t btf.Type) btf.Member { return btf.Member{Name: name, Type: t} }

// layout returns a struct of members laid out as a C compiler does: each
// at its natural alignment, the size rounded up to the largest.
func layout(name string, members ...btf.Member) *btf.Struct {
	var off, align uint32 = 0, 1
	for i := range members {
		a, size := alignOf(members[i].Type), sizeOf(members[i].Type)
		off = (off + a - 1) / a * a
		members[i].Offset = btf.Bits(off * 8)
		members[i].BitfieldSize = 0
		off += size
		align = max(align, a)
	}
	return &btf.Struct{Name: name, Size: (off + align - 1) / align * align, Members: members}
}

func sizeOf(t btf.Type) uint32 {
	n, err := btf.Sizeof(t)
	if err != nil {
		panic(err)
	}
	return uint32(n)
}

func alignOf(t btf.Type) uint32 {
	switch t := btf.UnderlyingType(t).(type) {
	case *btf.Array:
		return alignOf(t.Type)
	case *btf.Struct:
		a := uint32(1)
		for _, m := range t.Members {
			a = max(a, alignOf(m.Type))
		}
		return a
	}
	return sizeOf(t)
}

// relayout returns s with its members edited, laid out again.
func relayout(s btf.Type, edit func([]btf.Member) []btf.Member) *btf.Struct {
	st := btf.UnderlyingType(s).(*btf.Struct)
	return layout(st.Name, edit(slices.Clone(st.Members))...)
}

func without(names ...string) func([]btf.Member) []btf.Member {
	return func(ms []btf.Member) []btf.Member {
		return slices.DeleteFunc(ms, func(m btf.Member) bool { return slices.Contains(names, m.Name) })
	}
}

func inserting(after string, m btf.Member) func([]btf.Member) []btf.Member {
	return func(ms []btf.Member) []btf.Member {
		i := slices.IndexFunc(ms, func(x btf.Member) bool { return x.Name == after })
		return slices.Insert(ms, i+1, m)
	}
}

// setField and field write and read the integer member name of struct s
// in b (bitfields included).
func setField(s *btf.Struct, b []byte, name string, v uint64) {
	for _, m := range s.Members {
		if m.Name == name {
			bits, _, _ := intLike(btf.UnderlyingType(m.Type))
			if m.BitfieldSize > 0 {
				bits = uint32(m.BitfieldSize)
			}
			putBits(b, uint32(m.Offset), bits, v)
			return
		}
	}
	panic("no member " + name)
}

func field(s *btf.Struct, b []byte, name string) uint64 {
	for _, m := range s.Members {
		if m.Name == name {
			bits, _, _ := intLike(btf.UnderlyingType(m.Type))
			if m.BitfieldSize > 0 {
				bits = uint32(m.BitfieldSize)
			}
			return getBits(b, uint32(m.Offset), bits)
		}
	}
	panic("no member " + name)
}

// TestConverter converts between hand-made layouts: members by name,
// integers widened (sign-extended) and narrowed, arrays cut and grown,
// bitfields, nested structs, a member whose kind changed.
func TestConverter(t *testing.T) {
	inner := layout("inner", member("x", btfU16), member("y", btfU16))
	innerNew := layout("inner2", member("y", btfU32), member("z", btfU8))
	from := layout("old",
		member("a", btfU32), member("b", btfU16), member("c", btfS8),
		member("arr", &btf.Array{Type: btfU8, Nelems: 4}), member("gone", btfU64),
		member("kind", btfU32), member("in", inner), member("neg", btfS32))
	to := layout("new",
		member("b", btfU32), member("a", btfU64), member("c", btfS32),
		member("arr", &btf.Array{Type: btfU8, Nelems: 2}), member("d", btfU8),
		member("kind", &btf.Array{Type: btfU8, Nelems: 4}), member("in", innerNew), member("neg", btfS8))
	c, err := newConverter(from, to)
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, from.Size)
	setField(from, src, "a", 0xdeadbeef)
	setField(from, src, "b", 0x1234)
	setField(from, src, "c", uint64(0xfe)) // -2
	copy(src[7:11], []byte{1, 2, 3, 4})
	setField(from, src, "gone", 99)
	setField(from, src, "kind", 7)
	inOff := from.Members[6].Offset / 8
	binary.LittleEndian.PutUint16(src[inOff:], 5)   // in.x
	binary.LittleEndian.PutUint16(src[inOff+2:], 6) // in.y
	setField(from, src, "neg", uint64(0x100)+0x7f)  // 383: narrowed to 8 bits, 0x7f
	dst := make([]byte, to.Size)
	for i := range dst {
		dst[i] = 0xaa // convert clears what it does not write
	}
	c.convert(dst, src)

	for name, want := range map[string]uint64{
		"b": 0x1234, "a": 0xdeadbeef, "c": 0xfffffffe, "d": 0, "neg": 0x7f,
	} {
		if got := field(to, dst, name); got != want {
			t.Errorf("%s = %#x, want %#x", name, got, want)
		}
	}
	arrOff := to.Members[3].Offset / 8
	if got := dst[arrOff : arrOff+2]; !slices.Equal(got, []byte{1, 2}) {
		t.Errorf("arr = %v, want [1 2]", got)
	}
	kindOff := to.Members[5].Offset / 8
	if got := dst[kindOff : kindOff+4]; !slices.Equal(got, []byte{0, 0, 0, 0}) {
		t.Errorf("kind (an integer become an array) = %v, want zero", got)
	}
	in := dst[to.Members[6].Offset/8:]
	if y, z := binary.LittleEndian.Uint32(in), in[4]; y != 6 || z != 0 {
		t.Errorf("in.y %d, in.z %d: want 6, 0", y, z)
	}
	if !slices.Equal(c.added, []string{"d", "in.z"}) {
		t.Errorf("added %v", c.added)
	}
	slices.Sort(c.removed)
	if !slices.Equal(c.removed, []string{"arr[2:4]", "gone", "in.x"}) {
		t.Errorf("removed %v", c.removed)
	}
	if !slices.Equal(c.changed, []string{"kind"}) {
		t.Errorf("changed %v", c.changed)
	}
}

func TestConverterBitfields(t *testing.T) {
	from := &btf.Struct{Name: "bits", Size: 4, Members: []btf.Member{
		{Name: "x", Type: btfU32, Offset: 0, BitfieldSize: 3},
		{Name: "y", Type: btfU32, Offset: 3, BitfieldSize: 5},
		{Name: "z", Type: btfU32, Offset: 8, BitfieldSize: 24},
	}}
	to := layout("plain", member("z", btfU32), member("y", btfU8), member("x", btfU8))
	c, err := newConverter(from, to)
	if err != nil {
		t.Fatal(err)
	}
	src := make([]byte, 4)
	setField(from, src, "x", 5)
	setField(from, src, "y", 17)
	setField(from, src, "z", 0xabcdef)
	dst := make([]byte, to.Size)
	c.convert(dst, src)
	for name, want := range map[string]uint64{"x": 5, "y": 17, "z": 0xabcdef} {
		if got := field(to, dst, name); got != want {
			t.Errorf("%s = %#x, want %#x", name, got, want)
		}
	}
	// and back
	back, err := newConverter(to, from)
	if err != nil {
		t.Fatal(err)
	}
	again := make([]byte, 4)
	back.convert(again, dst)
	if !slices.Equal(again, src) {
		t.Errorf("round trip %x, want %x", again, src)
	}
}

// TestSameLayout: names of types do not count, names, offsets and widths
// of members do.
func TestSameLayout(t *testing.T) {
	a := layout("a", member("x", btfU32), member("y", btfU16))
	for _, tc := range []struct {
		name string
		b    btf.Type
		same bool
	}{
		{"renamed type", layout("b", member("x", btfU32), member("y", btfU16)), true},
		{"typedef", &btf.Typedef{Name: "t", Type: layout("b", member("x", btfU32), member("y", btfU16))}, true},
		{"renamed member", layout("a", member("x", btfU32), member("z", btfU16)), false},
		{"wider member", layout("a", member("x", btfU32), member("y", btfU32)), false},
		{"signed member", layout("a", member("x", btfS32), member("y", btfU16)), false},
		{"swapped", layout("a", member("y", btfU16), member("x", btfU32)), false},
		{"added", layout("a", member("x", btfU32), member("y", btfU16), member("z", btfU8)), false},
	} {
		if got := sameLayout(a, tc.b); got != tc.same {
			t.Errorf("%s: sameLayout %v, want %v", tc.name, got, tc.same)
		}
	}
}
