package ownership

import (
	"net/netip"
	"slices"
	"testing"
	"time"
)

// A drainer that announced a restart stays a drainer in the snapshot for
// the grace, though it is not alive: its pinned data plane and sockets go
// on serving the drained connections, so the holder keeps steering them
// to it (control/node's steering) and does not take it for dead, which
// tickled (reset) every one of them when a node was reloaded during its
// drain (TestReloadVIPs). Past the grace it is gone; one that stopped
// without a word is gone after a lease.
func TestRestartingDrainerKeepsDraining(t *testing.T) {
	vip := netip.MustParseAddr("198.18.1.10")
	timing := DefaultTiming()
	for _, tc := range []struct {
		flags NodeFlags
		at    time.Duration // after the last heartbeat
		want  bool
	}{
		{FlagHealthy, 0, true},
		{FlagHealthy, 2 * timing.Lease, false},
		{FlagRestarting, 0, true},
		{FlagRestarting, 2 * timing.Lease, true},
		{FlagRestarting, timing.Grace - timing.Renew, true},
		{FlagRestarting, timing.Grace + timing.Renew, false},
	} {
		e, err := New(Config{Self: 0, Nodes: []int{0, 1, 2}, VIPs: []VIP{{Addr: vip}}, Timing: timing, Start: 1})
		if err != nil {
			t.Fatal(err)
		}
		heard := Mono(time.Second)
		e.Receive(heard, &Heartbeat{From: 1, Incarnation: 1, Seq: 1, Proto: ProtoVersion, Flags: tc.flags,
			Lease: timing.Grace, Draining: []netip.Addr{vip}})
		e.Tick(heard.Add(tc.at))
		got := slices.Contains(e.Snapshot().VIPs[0].Drainers, 1)
		if got != tc.want {
			t.Errorf("node 1 with flags %v, %v after its heartbeat: a drainer %v, want %v", tc.flags, tc.at, got, tc.want)
		}
	}
}
