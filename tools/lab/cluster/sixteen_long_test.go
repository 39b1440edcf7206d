//go:build longlab

package cluster

import (
	"math/rand"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// sixteenTiming is the lease and renewal interval of the 16-node lab. At
// fsha's defaults (250 ms, 50 ms) every node renews with 15 others 20
// times a second; on this 2-vCPU virtual machine, where each datagram and
// wake-up is a trap to the hypervisor, 16 such daemons take all of both
// CPUs and leases lapse before the cluster settles (BENCHMARKS.md, "16
// nodes"). On hardware each node has its own CPUs and that traffic is
// noise; here the renewals are made four times rarer, so the lab can show
// what does not depend on the timing: 16 nodes and 64 VIPs converge, a
// power cut's VIPs go to the survivors, and the wire never sees a VIP
// answered twice. That takeover does not grow with the cluster is the
// simulator's (the scale suite, to 32 nodes).
var sixteenTiming = []string{"--lease", "1s", "--renew-interval", "200ms"}

// TestSixteenNodes runs a 16-node cluster with 64 VIPs and cuts the power
// of a node at a time (FSHA_LAB_ITERATIONS, 3 by default), bringing it
// back after: its VIPs are answered again by the others, each once. The
// judge is a client's ARP monitor of every VIP (every 50 ms, all 16
// nodes' MACs named), which must see no VIP answered by two MACs and lose
// no probe.
func TestSixteenNodes(t *testing.T) {
	opts := lab.ClusterOptions{Nodes: 16, VIPs: 64, NoServers: true, FshaArgs: sixteenTiming}
	e := newEnvWithin(t, opts, 6*time.Minute+chaosBudget())
	e.waitConverged(e.c.Nodes...)
	t.Logf("16 nodes, 64 VIPs converged")

	mo, err := e.c.MonitorOptions()
	if err != nil {
		t.Fatal(err)
	}
	mo.Interval = 50 * time.Millisecond // ARP only: 64 VIPs x 16 MACs of TCP probes every 10 ms would be most of the machine
	m, err := e.client.StartMonitor(mo)
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	type cut struct {
		node string
		at   time.Time
		vips []netip.Prefix
	}
	var cuts []cut
	for i := range iterations(3) {
		n := e.c.Nodes[rng.Intn(len(e.c.Nodes))]
		held := e.held(n)
		if len(held) == 0 {
			t.Fatalf("%s holds no VIP in a converged cluster of 16 nodes and 64 VIPs", n.Role)
		}
		time.Sleep(time.Second) // the monitor's rounds before the cut
		at := time.Now()
		if err := n.PowerDown(); err != nil {
			t.Fatal(err)
		}
		t.Logf("power cut %d: %s, holder of %v", i+1, n.Role, held)
		cuts = append(cuts, cut{node: n.Role, at: at, vips: held})
		e.out = []*lab.ClusterNode{n}
		e.waitConverged(e.up()...)
		if err := n.PowerUp(e.ctx); err != nil {
			t.Fatal(err)
		}
		e.out = nil
		e.waitConverged(e.c.Nodes...)
	}
	e.checkWire(m)

	// how long each cut VIP went unanswered on the wire (logged: a
	// timing, for the reader; the lab's timing is not the claim)
	for _, c := range cuts {
		var gaps []time.Duration
		for _, v := range c.vips {
			st := m.StatsOf(v.Addr(), lab.ProbeARP)
			for _, g := range st.Gaps {
				if !g.Open && g.End.After(c.at) && g.Start.Before(c.at.Add(time.Second)) {
					gaps = append(gaps, g.End.Sub(c.at))
				}
			}
		}
		slices.Sort(gaps)
		if len(gaps) == 0 {
			t.Errorf("power cut of %s: the monitor saw none of its VIPs %v unanswered", c.node, c.vips)
			continue
		}
		t.Logf("power cut of %s: its %d VIPs answered again by others %v to %v after the cut (ARP, 50 ms rounds)",
			c.node, len(c.vips), gaps[0].Round(time.Millisecond), gaps[len(gaps)-1].Round(time.Millisecond))
	}
}
