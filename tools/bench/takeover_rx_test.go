package main

import (
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"

	"github.com/fsha/fsha/tools/testenv"
)

// TestTickleRxProgram: the receiver counts the IPv4 TCP segments from the
// VIP, takes the clock at the first and at the target-th, drops them and
// passes the rest.
func TestTickleRxProgram(t *testing.T) {
	testenv.RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParseAddr("198.18.0.10")
	m, err := newTickleRxMap()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	p, err := tickleRxProgram(m, vip)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := m.Put(uint32(0), tickleRx{Target: 2}); err != nil {
		t.Fatal(err)
	}
	frame := func(proto byte, src netip.Addr, ethType uint16) []byte {
		b := make([]byte, 60)
		b[12], b[13] = byte(ethType>>8), byte(ethType)
		b[14+9] = proto
		copy(b[26:30], src.AsSlice())
		return b
	}
	for _, c := range []struct {
		name  string
		frame []byte
		want  uint32
		count uint64
	}{
		{"tickle 1", frame(6, vip, 0x0800), 2, 1},
		{"UDP from the VIP", frame(17, vip, 0x0800), 0, 1},
		{"TCP from another address", frame(6, netip.MustParseAddr("198.18.0.1"), 0x0800), 0, 1},
		{"ARP", frame(6, vip, 0x0806), 0, 1},
		{"tickle 2", frame(6, vip, 0x0800), 2, 2},
		{"tickle 3", frame(6, vip, 0x0800), 2, 3},
	} {
		ret, err := p.Run(&ebpf.RunOptions{Data: c.frame})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		var v tickleRx
		if err := m.Lookup(uint32(0), &v); err != nil {
			t.Fatal(err)
		}
		if ret != c.want || v.Count != c.count {
			t.Errorf("%s: verdict %d, count %d; want %d, %d", c.name, ret, v.Count, c.want, c.count)
		}
	}
	var v tickleRx
	if err := m.Lookup(uint32(0), &v); err != nil {
		t.Fatal(err)
	}
	if v.FirstNs == 0 || v.NthNs < v.FirstNs {
		t.Errorf("first at %d, second at %d", v.FirstNs, v.NthNs)
	}
}
