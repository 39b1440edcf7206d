package dataplane

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"

	"github.com/fsha/fsha/tools/testenv"
)

// BenchmarkVIPQueries times what the control loop asks per VIP with 1M
// flows in each map and 1k of them on the VIP asked about: by a walk of
// the whole map (what fsha did before the indexes, and still does without
// an event reader) and from the indexes.
//
//	go test -run '^$' -bench VIPQueries -benchtime 5x ./dataplane/
func BenchmarkVIPQueries(b *testing.B) {
	testenv.RequireBPF(b)
	const total, onVIP = 1_000_000, 1_000
	u, err := LoadUnpinned(1 << 20)
	if err != nil {
		b.Fatal(err)
	}
	defer u.Close()
	m := &u.Maps
	big, small := netip.AddrPortFrom(vip4, 445), netip.AddrPortFrom(vip4b, 445)
	client := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 16), byte(i >> 8)}), uint16(1024+i&0xff))
	}
	if err := m.FillFlows(big, total-onVIP, client); err != nil {
		b.Fatal(err)
	}
	if err := m.FillFlows(small, onVIP, client); err != nil {
		b.Fatal(err)
	}
	var peers []PeerFlow
	for i := range total {
		vip, owner := big, 1
		if i >= total-onVIP {
			vip, owner = small, 2
		}
		c := client(i)
		peers = append(peers, PeerFlow{VIP: vip.Addr(), VIPPort: vip.Port(), Client: c.Addr(), ClientPort: c.Port(), Owner: owner})
	}
	if err := m.UpsertPeerFlows(peers); err != nil {
		b.Fatal(err)
	}
	rd, err := m.NewEventReader()
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	waitLocalExact(b, m)
	waitPeerReady(b, m)

	run := func(name string, want int, fn func() (int, error)) {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				n, err := fn()
				if err != nil || n != want {
					b.Fatalf("%d, %v; want %d", n, err, want)
				}
			}
		})
	}
	vip := small.Addr()
	run("CountFlows/walk", onVIP, func() (int, error) { return m.countFlowsWalk(vip) })
	run("CountFlows/index", onVIP, func() (int, error) { return m.CountFlows(vip) })
	run("KillVIP-prep/walk", onVIP, func() (int, error) { c, err := m.vipConnsWalk(vip); return len(c), err })
	run("KillVIP-prep/index", onVIP, func() (int, error) { c, err := m.vipConns(vip); return len(c), err })
	run("TickleVIP-prep/walk", onVIP, func() (int, error) { f, err := m.peerFlowsWalk(vip, []int{2}); return len(f), err })
	run("TickleVIP-prep/index", onVIP, func() (int, error) { f, err := m.PeerFlowsOf(vip, []int{2}); return len(f), err })
	on := false
	run("Steer/walk", onVIP, func() (int, error) { on = !on; return onVIP, m.steerPeerFlowsWalk(vip, 2, on) })
	run("Steer/index", onVIP, func() (int, error) { on = !on; return onVIP, m.steerPeerFlows(vip, 2, on) })
}

// BenchmarkIndexMemory measures the heap the indexes take per flow, for
// 1M flows: IPv4 and IPv6, on one VIP or spread over 100, and 1M peer
// flows of 4 owners on 10 VIPs. The metric is B/flow.
//
//	go test -run '^$' -bench IndexMemory -benchtime 1x ./dataplane/
func BenchmarkIndexMemory(b *testing.B) {
	const n = 1_000_000
	key := func(i, vips int, v6 bool) fshaFlowKey {
		vip := netip.AddrFrom4([4]byte{198, 18, 0, byte(i % vips)})
		c := netip.AddrFrom4([4]byte{198, 19, byte(i >> 16), byte(i >> 8)})
		if v6 {
			vip = netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 15: byte(i % vips)})
			c = netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 1, 12: byte(i >> 16), 13: byte(i >> 8)})
		}
		return flowKey(vip, c, 445, uint16(1024+i&0xff))
	}
	measure := func(b *testing.B, build func() any) {
		for b.Loop() {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			x := build()
			runtime.GC()
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/flow")
			runtime.KeepAlive(x)
		}
	}
	for _, c := range []struct {
		vips int
		v6   bool
	}{{1, false}, {100, false}, {1, true}, {100, true}} {
		family := "ipv4"
		if c.v6 {
			family = "ipv6"
		}
		b.Run(fmt.Sprintf("local/%s/%dvips", family, c.vips), func(b *testing.B) {
			measure(b, func() any {
				vips := map[netip.Addr]*flowSet{}
				count := 0
				for i := range n {
					k := key(i, c.vips, c.v6)
					applyLocal(vips, &count, &k, true)
				}
				return vips
			})
		})
	}
	b.Run("peer/ipv4/4owners/10vips", func(b *testing.B) {
		measure(b, func() any {
			vips := map[netip.Addr]map[uint16]*flowSet{}
			count := 0
			for i := range n {
				k := key(i, 10, false)
				applyPeer(vips, &count, &k, uint16(i%4), false)
			}
			return vips
		})
	})
}
