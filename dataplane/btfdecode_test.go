package dataplane

import (
	"encoding/binary"
	"encoding/json"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// The flows map's key, as XDP writes it, reads back member by member
// through the embedded object's BTF; a wrong size is an error.
func TestDecodeBTF(t *testing.T) {
	types, err := MapTypes()
	if err != nil {
		t.Fatal(err)
	}
	kv, ok := types["flows"]
	if !ok {
		t.Fatalf("no BTF for flows: %v", types)
	}
	vip, client := netip.MustParseAddr("198.18.1.10").As16(), netip.MustParseAddr("198.18.2.7").As16()
	key := make([]byte, 40)
	copy(key[0:], vip[:])
	copy(key[16:], client[:])
	binary.NativeEndian.PutUint16(key[32:], 445)
	binary.NativeEndian.PutUint16(key[34:], 50000)
	key[36] = 4
	got, err := DecodeBTF(kv[0], key)
	if err != nil {
		t.Fatal(err)
	}
	s := got.(Fields).String()
	for _, want := range []string{"vip: 00000000000000000000ffffc612010a", "client: 00000000000000000000ffffc6120207", "vport: 445", "cport: 50000", "family: 4"} {
		if !strings.Contains(s, want) {
			t.Errorf("decoded key %s lacks %q", s, want)
		}
	}
	j, err := json.Marshal(got)
	if err != nil || !strings.HasPrefix(string(j), `{"vip":"`) || !strings.Contains(string(j), `"vport":445`) {
		t.Errorf("JSON %s, %v: want the members in order", j, err)
	}
	if _, err := DecodeBTF(kv[0], key[:39]); err == nil {
		t.Error("a 39-byte key decoded as a 40-byte struct")
	}
	for name, kv := range types {
		for _, typ := range kv {
			n, err := btf.Sizeof(typ)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := DecodeBTF(typ, make([]byte, n)); err != nil {
				t.Errorf("%s: zero value of %s: %v", name, typ.TypeName(), err)
			}
		}
	}
}

// FuzzDecodeBTF: any bytes of a map's key or value size decode without a
// panic (the pins may hold what an older release or a bug wrote).
func FuzzDecodeBTF(f *testing.F) {
	types, err := MapTypes()
	if err != nil {
		f.Fatal(err)
	}
	var all []btf.Type
	for _, name := range slices.Sorted(maps.Keys(types)) { // replayable: which picks the same type
		all = append(all, types[name][0], types[name][1])
	}
	f.Add(uint8(0), []byte{0xff, 0x01})
	f.Add(uint8(3), make([]byte, 64))
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		typ := all[int(which)%len(all)]
		n, err := btf.Sizeof(typ)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		copy(b, data)
		if _, err := DecodeBTF(typ, b); err != nil {
			t.Fatalf("%s: %v", typ.TypeName(), err)
		}
	})
}
