package dataplane

// Conversion of map entries from the layout an earlier fsha pinned to this
// one's, by BTF member name: what the migration of pinned maps
// (migrate.go) copies keys and values with.

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"
)

// converter turns a value of one type into a value of another, member by
// member: a member of the same name in both keeps its value (integers and
// enums widened, sign-extended or truncated, arrays element by element up
// to the shorter length, nested structs member by member), a new member is
// zero, a removed one is dropped, and one whose kind changed (an integer
// that became a struct...) is zero too. Built once per map, applied to
// every entry.
type converter struct {
	from, to int // sizes in bytes
	ops      []convOp
	// the member paths that are new (zero), dropped, or whose kind changed
	// (zero): what the log says of the conversion
	added, removed, changed []string
}

// convOp is one step of a conversion: a copy of n bytes, or (n == 0) an
// integer of srcBits bits at bit srcOff stored in dstBits bits at bit
// dstOff, sign-extended when signed. Offsets count bytes for copies and
// bits for integers; bits are numbered from the least significant of each
// byte, as BTF has them on little-endian targets (fsha is bpfel only).
type convOp struct {
	dst, src, n      uint32
	dstBits, srcBits uint32
	signed           bool
}

// newConverter compiles the conversion of from into to. A nil from (a map
// created without BTF) converts by position: the common prefix of the
// bytes is kept.
func newConverter(from, to btf.Type) (*converter, error) {
	toSize, err := btf.Sizeof(to)
	if err != nil {
		return nil, err
	}
	c := &converter{to: toSize}
	if from == nil {
		return c, nil // prefixConverter sets what it needs
	}
	if c.from, err = btf.Sizeof(from); err != nil {
		return nil, err
	}
	if err := c.build(from, to, 0, 0, ""); err != nil {
		return nil, err
	}
	c.coalesce()
	return c, nil
}

// prefixConverter converts values of fromSize bytes into toSize bytes by
// position: for maps without BTF, where members cannot be told apart.
func prefixConverter(fromSize, toSize int) *converter {
	n := min(fromSize, toSize)
	c := &converter{from: fromSize, to: toSize}
	if n > 0 {
		c.ops = []convOp{{n: uint32(n)}}
	}
	return c
}

// convert writes src (of the old layout) into dst (of the new one).
func (c *converter) convert(dst, src []byte) {
	clear(dst[:c.to])
	for _, op := range c.ops {
		if op.n > 0 {
			copy(dst[op.dst:op.dst+op.n], src[op.src:op.src+op.n])
			continue
		}
		v := getBits(src, op.src, op.srcBits)
		if op.signed && op.srcBits < 64 && v&(1<<(op.srcBits-1)) != 0 {
			v |= ^uint64(0) << op.srcBits
		}
		putBits(dst, op.dst, op.dstBits, v)
	}
}

// build adds the steps that convert from (at bit srcOff) into to (at bit
// dstOff); path names the member for the log.
func (c *converter) build(from, to btf.Type, srcOff, dstOff uint32, path string) error {
	from, to = btf.UnderlyingType(from), btf.UnderlyingType(to)
	if sameLayout(from, to) {
		n, err := btf.Sizeof(to)
		if err != nil {
			return err
		}
		c.ops = append(c.ops, convOp{dst: dstOff / 8, src: srcOff / 8, n: uint32(n)})
		return nil
	}
	switch t := to.(type) {
	case *btf.Struct:
		f, ok := from.(*btf.Struct)
		if !ok {
			c.changed = append(c.changed, pathOr(path))
			return nil
		}
		return c.buildMembers(f.Members, t.Members, srcOff, dstOff, path)
	case *btf.Array:
		f, ok := from.(*btf.Array)
		if !ok {
			c.changed = append(c.changed, pathOr(path))
			return nil
		}
		fs, err := btf.Sizeof(f.Type)
		if err != nil {
			return err
		}
		ts, err := btf.Sizeof(t.Type)
		if err != nil {
			return err
		}
		for i := range min(f.Nelems, t.Nelems) {
			err := c.build(f.Type, t.Type, srcOff+i*uint32(fs)*8, dstOff+i*uint32(ts)*8, fmt.Sprintf("%s[%d]", pathOr(path), i))
			if err != nil {
				return err
			}
		}
		switch {
		case t.Nelems > f.Nelems:
			c.added = append(c.added, fmt.Sprintf("%s[%d:%d]", pathOr(path), f.Nelems, t.Nelems))
		case t.Nelems < f.Nelems:
			c.removed = append(c.removed, fmt.Sprintf("%s[%d:%d]", pathOr(path), t.Nelems, f.Nelems))
		}
		return nil
	}
	fb, fsigned, fok := intLike(from)
	tb, _, tok := intLike(to)
	if !fok || !tok {
		c.changed = append(c.changed, pathOr(path))
		return nil
	}
	c.ops = append(c.ops, convOp{dst: dstOff, src: srcOff, dstBits: tb, srcBits: fb, signed: fsigned})
	return nil
}

// buildMembers converts struct members by name. Anonymous members (nested
// anonymous structs and unions) pair up in their order.
func (c *converter) buildMembers(from, to []btf.Member, srcOff, dstOff uint32, path string) error {
	named := make(map[string]*btf.Member, len(from))
	var anon []*btf.Member
	for i := range from {
		if from[i].Name == "" {
			anon = append(anon, &from[i])
		} else {
			named[from[i].Name] = &from[i]
		}
	}
	seen := map[string]bool{}
	nanon := 0
	for i := range to {
		m := &to[i]
		var f *btf.Member
		if m.Name == "" {
			if nanon < len(anon) {
				f = anon[nanon]
			}
			nanon++
		} else {
			f = named[m.Name]
			seen[m.Name] = true
		}
		p := join(path, m.Name)
		if m.Name == "" {
			p = join(path, fmt.Sprintf("(anonymous %d)", nanon))
		}
		if f == nil {
			c.added = append(c.added, p)
			continue
		}
		so, do := srcOff+uint32(f.Offset), dstOff+uint32(m.Offset)
		if f.BitfieldSize == 0 && m.BitfieldSize == 0 {
			if err := c.build(f.Type, m.Type, so, do, p); err != nil {
				return err
			}
			continue
		}
		// a bitfield on either side: the integer, at its width
		fb, fsigned, fok := intLike(btf.UnderlyingType(f.Type))
		tb, _, tok := intLike(btf.UnderlyingType(m.Type))
		if !fok || !tok {
			c.changed = append(c.changed, p)
			continue
		}
		if f.BitfieldSize > 0 {
			fb = uint32(f.BitfieldSize)
		}
		if m.BitfieldSize > 0 {
			tb = uint32(m.BitfieldSize)
		}
		c.ops = append(c.ops, convOp{dst: do, src: so, dstBits: tb, srcBits: fb, signed: fsigned})
	}
	for name := range named {
		if !seen[name] {
			c.removed = append(c.removed, join(path, name))
		}
	}
	for i := nanon; i < len(anon); i++ {
		c.removed = append(c.removed, join(path, fmt.Sprintf("(anonymous %d)", i+1)))
	}
	return nil
}

// join names member name of the member at path.
func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func pathOr(p string) string {
	if p == "" {
		return "(the whole value)"
	}
	return p
}

// coalesce merges copies of adjacent bytes into one, and turns integers
// that are whole bytes of the same width into copies.
func (c *converter) coalesce() {
	var out []convOp
	for _, op := range c.ops {
		if op.n == 0 && op.srcBits == op.dstBits && op.srcBits%8 == 0 && op.src%8 == 0 && op.dst%8 == 0 {
			op = convOp{dst: op.dst / 8, src: op.src / 8, n: op.srcBits / 8}
		}
		if l := len(out) - 1; l >= 0 && op.n > 0 && out[l].n > 0 &&
			out[l].dst+out[l].n == op.dst && out[l].src+out[l].n == op.src {
			out[l].n += op.n
			continue
		}
		out = append(out, op)
	}
	c.ops = out
}

// intLike returns the width in bits and the signedness of an integer, an
// enum or a pointer (a number to a map), and false for anything else.
func intLike(t btf.Type) (bits uint32, signed, ok bool) {
	switch t := t.(type) {
	case *btf.Int:
		return t.Size * 8, t.Encoding&btf.Signed != 0, true
	case *btf.Enum:
		return t.Size * 8, t.Signed, true
	case *btf.Pointer:
		return 64, false, true
	}
	return 0, false, false
}

// sameLayout tells whether a and b lay their bytes out alike: the same
// kinds, sizes, member names, offsets and widths all the way down. Type
// names (of structs, typedefs) and enum values do not count: a meaning
// that changes without the layout is PIN_FORMAT_VERSION's business.
func sameLayout(a, b btf.Type) bool {
	a, b = btf.UnderlyingType(a), btf.UnderlyingType(b)
	if ab, as, ok := intLike(a); ok {
		bb, bs, ok := intLike(b)
		return ok && ab == bb && as == bs
	}
	switch x := a.(type) {
	case *btf.Array:
		y, ok := b.(*btf.Array)
		return ok && x.Nelems == y.Nelems && sameLayout(x.Type, y.Type)
	case *btf.Struct:
		y, ok := b.(*btf.Struct)
		return ok && x.Size == y.Size && sameMembers(x.Members, y.Members)
	case *btf.Union:
		y, ok := b.(*btf.Union)
		return ok && x.Size == y.Size && sameMembers(x.Members, y.Members)
	case *btf.Float:
		y, ok := b.(*btf.Float)
		return ok && x.Size == y.Size
	}
	return false
}

func sameMembers(a, b []btf.Member) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Offset != b[i].Offset || a[i].BitfieldSize != b[i].BitfieldSize ||
			!sameLayout(a[i].Type, b[i].Type) {
			return false
		}
	}
	return true
}

// getBits reads n (1 to 64) bits at bit off of b, little-endian.
func getBits(b []byte, off, n uint32) uint64 {
	if off%8 == 0 && n%8 == 0 {
		var buf [8]byte
		copy(buf[:], b[off/8:off/8+n/8])
		return binary.LittleEndian.Uint64(buf[:])
	}
	var v uint64
	for i := range n {
		bit := off + i
		if b[bit/8]>>(bit%8)&1 != 0 {
			v |= 1 << i
		}
	}
	return v
}

// putBits stores the low n (1 to 64) bits of v at bit off of b.
func putBits(b []byte, off, n uint32, v uint64) {
	if off%8 == 0 && n%8 == 0 {
		var buf [8]byte
		binary.LittleEndian.PutUint64(buf[:], v)
		copy(b[off/8:off/8+n/8], buf[:n/8])
		return
	}
	for i := range n {
		bit := off + i
		if v>>i&1 != 0 {
			b[bit/8] |= 1 << (bit % 8)
		} else {
			b[bit/8] &^= 1 << (bit % 8)
		}
	}
}

// mapTypes returns the BTF key and value types the kernel holds for m (as
// its creator gave them), nil when m was created without BTF.
func mapTypes(m *ebpf.Map) (key, value btf.Type, err error) {
	info, err := objInfo(m)
	if err != nil {
		return nil, nil, err
	}
	if info.BtfID == 0 {
		return nil, nil, nil
	}
	h, err := btf.NewHandleFromID(btf.ID(info.BtfID))
	if err != nil {
		return nil, nil, fmt.Errorf("open btf %d: %w", info.BtfID, err)
	}
	defer h.Close()
	spec, err := h.Spec(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("read btf %d: %w", info.BtfID, err)
	}
	if info.BtfKeyTypeID != 0 {
		if key, err = spec.TypeByID(btf.TypeID(info.BtfKeyTypeID)); err != nil {
			return nil, nil, fmt.Errorf("key type: %w", err)
		}
	}
	if info.BtfValueTypeID != 0 {
		if value, err = spec.TypeByID(btf.TypeID(info.BtfValueTypeID)); err != nil {
			return nil, nil, fmt.Errorf("value type: %w", err)
		}
	}
	return key, value, nil
}

// bpfMapInfo is the head of the kernel's struct bpf_map_info (UAPI, only
// ever extended at its end), up to the BTF type IDs of key and value,
// which cilium/ebpf's MapInfo does not give.
type bpfMapInfo struct {
	Type, ID, KeySize, ValueSize, MaxEntries, MapFlags uint32
	Name                                               [16]byte
	Ifindex, BtfVmlinuxValueTypeID                     uint32
	NetnsDev, NetnsIno                                 uint64
	BtfID, BtfKeyTypeID, BtfValueTypeID, BtfVmlinuxID  uint32
}

func objInfo(m *ebpf.Map) (bpfMapInfo, error) {
	var info bpfMapInfo
	// union bpf_attr for BPF_OBJ_GET_INFO_BY_FD; info is an unsafe.Pointer
	// (an aligned u64 on 64-bit targets) so that the runtime sees it
	attr := struct {
		fd, infoLen uint32
		info        unsafe.Pointer
	}{fd: uint32(m.FD()), infoLen: uint32(unsafe.Sizeof(info)), info: unsafe.Pointer(&info)}
	_, _, errno := unix.Syscall(unix.SYS_BPF, unix.BPF_OBJ_GET_INFO_BY_FD, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return info, fmt.Errorf("map info: %w", errno)
	}
	return info, nil
}
