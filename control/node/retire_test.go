package node

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

func TestRetiringVIPs(t *testing.T) {
	a, b, c, d := netip.MustParseAddr("198.18.0.201"), netip.MustParseAddr("198.18.0.202"),
		netip.MustParseAddr("198.18.0.203"), netip.MustParseAddr("2001:2::9")
	leases := map[netip.Addr]dataplane.VIPLease{
		a: {State: dataplane.VIPLeaseHeld, Epoch: 3},     // configured: stays
		b: {State: dataplane.VIPLeaseHeld, Epoch: 4},     // removed, held: retires
		c: {State: dataplane.VIPLeaseNone},               // removed, not held: nothing to do
		d: {State: dataplane.VIPLeaseDraining, Epoch: 2}, // removed, draining: retires
	}
	vips := []config.PublicAddress{{Prefix: netip.MustParsePrefix("198.18.0.201/24")}}
	if got, want := RetiringVIPs(leases, vips), []netip.Addr{b, d}; !slices.Equal(got, want) {
		t.Errorf("RetiringVIPs = %v, want %v", got, want)
	}
	if got := RetiringVIPs(nil, vips); len(got) != 0 {
		t.Errorf("no leases: %v", got)
	}
	// an IPv4-mapped configured address is the same VIP
	mapped := []config.PublicAddress{{Prefix: netip.PrefixFrom(netip.AddrFrom16(b.As16()), 120)}, vips[0]}
	if got := RetiringVIPs(leases, mapped); !slices.Equal(got, []netip.Addr{d}) {
		t.Errorf("with %v configured: %v, want [%v]", mapped, got, d)
	}
}

// retireNode is a node of configuration VIP 198.18.0.201 whose data plane
// still holds 198.18.0.202 (on eth0, epoch 7, lease running until until)
// from before a reload, with conns connections to it.
func retireNode(t *testing.T, until ownership.Mono, conns int) (*Node, *world, netip.Addr) {
	t.Helper()
	w := newWorld()
	removed := netip.MustParseAddr("198.18.0.202")
	w.flows = map[int]map[netip.Addr]int{0: {removed: conns}}
	dp := &fakeDP{world: w, node: 0}
	if err := dp.AddVIP("eth0", netip.MustParsePrefix("198.18.0.202/24")); err != nil {
		t.Fatal(err)
	}
	if err := dp.SetVIPLease(removed, dataplane.VIPLease{State: dataplane.VIPLeaseHeld, Epoch: 7, Holder: 0, Until: uint64(until)}); err != nil {
		t.Fatal(err)
	}
	vips := []config.PublicAddress{{Prefix: netip.MustParsePrefix("198.18.0.201/24"), Interfaces: []string{"eth0"}}}
	leases, _ := dp.VIPLeases()
	n, err := New(testLogger(t), Config{
		Nodes: []config.Node{{PNN: 0, Addr: netip.MustParseAddr("127.0.1.1")}}, Self: 0, VIPs: vips,
		DrainTimeout: time.Hour, Retiring: RetiringVIPs(leases, vips),
	}, nil, dp, nil, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return n, w, removed
}

func TestRetireDrainsOut(t *testing.T) {
	n, w, removed := retireNode(t, monoNow()+ownership.Mono(10*time.Second), 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { n.startRetiring(ctx); close(done) }()
	<-done
	state := func() (dataplane.VIPLease, bool, bool, []netip.Addr) {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.leases[0][removed], w.addrs[0]["eth0/"+removed.String()], w.addrs[0]["lo/"+removed.String()], w.tracked[0]
	}
	waitFor(t, "the removed VIP drains on loopback", func() bool {
		l, eth, lo, _ := state()
		return l.State == dataplane.VIPLeaseDraining && l.Epoch == 7 && !eth && lo
	})
	// its connections keep it: still draining a while later
	time.Sleep(2 * retireCheckEvery)
	if l, _, lo, tracked := state(); l.State != dataplane.VIPLeaseDraining || !lo || tracked != nil {
		t.Fatalf("with connections left: lease %v, on lo %v, tracked set to %v; want draining on lo, tracking untouched", l.State, lo, tracked)
	}
	listed := func() bool {
		ips, err := n.IPs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(ips, func(ip admin.IP) bool { return ip.VIP == "198.18.0.202/32" && ip.State == "retiring" && ip.PNN == 0 })
	}
	if !listed() {
		t.Errorf("fsha ip does not list the retiring VIP")
	}
	w.mu.Lock()
	w.flows[0][removed] = 0
	w.mu.Unlock()
	waitFor(t, "the removed VIP gone once its last connection closed", func() bool {
		l, eth, lo, tracked := state()
		return l.State == dataplane.VIPLeaseNone && !eth && !lo && slices.Equal(tracked, []netip.Addr{netip.MustParseAddr("198.18.0.201")})
	})
	if listed() {
		t.Errorf("fsha ip still lists the VIP once retired")
	}
	tl, err := n.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 1 || tl[0].Kind != "drain" || tl[0].VIP != "198.18.0.202/32" || !slices.ContainsFunc(tl[0].Steps, func(s admin.TimelineStep) bool {
		return s.Step == "drain ended: last connection closed"
	}) {
		t.Errorf("timeline %+v: want one drain of 198.18.0.202/32 that ended with its last connection", tl)
	}
}

// A shutdown's bound resets what a retiring VIP still has.
func TestRetireShutdownTimeout(t *testing.T) {
	n, w, removed := retireNode(t, monoNow()+ownership.Mono(10*time.Second), 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.startRetiring(ctx)
	waitFor(t, "the removed VIP draining", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.leases[0][removed].State == dataplane.VIPLeaseDraining
	})
	drainUntil := time.Now().Add(time.Hour)
	if n.stopDone(true, Shutdown, time.Now(), &drainUntil) {
		t.Errorf("a shutdown is done with a VIP still retiring")
	}
	n.endDrainsNow("shutdown timeout")
	n.endDrainsNow("shutdown timeout") // twice: closes once
	waitFor(t, "the retiring VIP gone after the shutdown's bound", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.leases[0][removed].State == dataplane.VIPLeaseNone && !w.addrs[0]["lo/"+removed.String()]
	})
	waitFor(t, "the shutdown done", func() bool { return n.stopDone(true, Shutdown, time.Now(), &drainUntil) })
	tl, err := n.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 1 || !slices.ContainsFunc(tl[0].Steps, func(s admin.TimelineStep) bool {
		return s.Step == "drain ended: shutdown timeout: 0 connections reset"
	}) {
		t.Errorf("timeline %+v: want the drain ended by the shutdown timeout", tl)
	}
}

// A held lease that ran out before the start (a crash long ago, then a
// start with the VIP removed): nothing to drain, the connections left are
// reset at once.
func TestRetireExpiredLease(t *testing.T) {
	n, w, removed := retireNode(t, monoNow()-ownership.Mono(time.Second), 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n.startRetiring(ctx)
	waitFor(t, "the expired VIP gone", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.leases[0][removed].State == dataplane.VIPLeaseNone && !w.addrs[0]["lo/"+removed.String()] && !w.addrs[0]["eth0/"+removed.String()]
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}
