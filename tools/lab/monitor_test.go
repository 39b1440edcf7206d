package lab_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// monitorLab is n1, n2 and c1, with a TCP listener on port 445 of both
// nodes (a stand-in for smbd: it answers SYNs for every local address).
func monitorLab(t *testing.T) (*lab.Lab, *lab.Node, *lab.Node, *lab.Client, map[lab.MAC]string) {
	t.Helper()
	l := newLab(t)
	var nodes []*lab.Node
	for _, role := range []string{"n1", "n2"} {
		n, err := l.AddNode(role)
		if err != nil {
			t.Fatal(err)
		}
		ln, err := n.Listen("tcp", ":445")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		nodes = append(nodes, n)
	}
	c, err := l.AddClient("c1")
	if err != nil {
		t.Fatal(err)
	}
	names, err := lab.MACNames(nodes[0].Host, nodes[1].Host)
	if err != nil {
		t.Fatal(err)
	}
	return l, nodes[0], nodes[1], c, names
}

func startMonitor(t *testing.T, c *lab.Client, opts lab.MonitorOptions) *lab.Monitor {
	t.Helper()
	m, err := c.StartMonitor(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if p, err := m.Save("monitor.txt"); err == nil {
				t.Logf("monitor records: %s", p)
			}
		}
	})
	return m
}

// answeredBy waits until node answered at least n rounds of the channel.
func answeredBy(ctx context.Context, t *testing.T, m *lab.Monitor, vip netip.Addr, kind lab.ProbeKind, node string, n int) {
	t.Helper()
	if err := lab.Eventually(ctx, 10*time.Second, fmt.Sprintf("%s answers %d %s rounds for %s", node, n, kind, vip), func(context.Context) error {
		if err := m.Err(); err != nil {
			return err
		}
		if s := m.StatsOf(vip, kind); s.ByNode[node] < n {
			return fmt.Errorf("answered rounds by node %v of %d", s.ByNode, s.Rounds)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func stopMonitor(t *testing.T, m *lab.Monitor) {
	t.Helper()
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	h := m.Health()
	if err := h.Check(); err != nil || h.Sent == 0 || h.SocketPackets == 0 {
		t.Errorf("monitor health %+v: %v", h, err)
	}
}

// One node holds the VIP: every answer, ARP and TCP, comes from it, the
// other node never answers, nothing overlaps, and the node learnt no
// neighbour entry from the probes.
func TestMonitorOneHolder(t *testing.T) {
	_, n1, _, c, names := monitorLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vip := lab.VIP(1)
	if err := n1.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, c, lab.MonitorOptions{VIPs: []netip.Addr{vip.Addr()}, Names: names, TCP: true})
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeARP, "n1", 20)
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeTCP, "n1", 20)
	stopMonitor(t, m)

	if o := m.Overlaps(time.Hour); len(o) != 0 {
		t.Errorf("overlaps with one holder: %v", o)
	}
	for _, kind := range []lab.ProbeKind{lab.ProbeARP, lab.ProbeTCP} {
		s := m.StatsOf(vip.Addr(), kind)
		if s.ByNode["n1"] != s.Answered || len(s.ByNode) != 1 {
			t.Errorf("%s answered by %v, want n1 only", kind, s.ByNode)
		}
		t.Logf("%s: %d rounds, %d answered, %d replies, gaps %v", kind, s.Rounds, s.Answered, s.Replies, s.Gaps)
	}
	for _, r := range m.Replies() {
		if r.Node == "n2" {
			t.Errorf("n2 answered: %+v", r)
		}
		if r.Kind == lab.ProbeTCP && !r.Unsolicited && r.Flags != lab.FlagSYN|lab.FlagACK {
			t.Errorf("TCP answer flags %#x, want SYN-ACK", r.Flags)
		}
	}
	// the probes come from 0.0.0.0: n1 learnt no tag MAC
	eth, err := n1.Netlink().LinkByName(lab.HostIface)
	if err != nil {
		t.Fatal(err)
	}
	neighs, err := n1.Netlink().NeighList(eth.Attrs().Index, 0)
	if err != nil {
		t.Fatal(err)
	}
	// a tag MAC starts with fe; so does one random veth MAC in 64, which
	// the client's own may be (n1 learns it from its ordinary traffic)
	own, err := c.MAC()
	if err != nil {
		t.Fatal(err)
	}
	for _, ne := range neighs {
		if len(ne.HardwareAddr) == 6 && ne.HardwareAddr[0] == 0xfe && !bytes.Equal(ne.HardwareAddr, own) {
			t.Errorf("n1 learnt %s at %s from the probes", ne.IP, ne.HardwareAddr)
		}
	}
}

// Both nodes hold the VIP (arp_ignore 0, the default): each ARP request
// and each TCP round is answered by both, a same-probe overlap.
func TestMonitorTwoHolders(t *testing.T) {
	_, n1, n2, c, names := monitorLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vip := lab.VIP(1)
	for _, n := range []*lab.Node{n1, n2} {
		if err := n.AddAddr(vip); err != nil {
			t.Fatal(err)
		}
	}
	m := startMonitor(t, c, lab.MonitorOptions{VIPs: []netip.Addr{vip.Addr()}, Names: names, TCP: true})
	for _, kind := range []lab.ProbeKind{lab.ProbeARP, lab.ProbeTCP} {
		for _, n := range []string{"n1", "n2"} {
			answeredBy(ctx, t, m, vip.Addr(), kind, n, 10)
		}
	}
	stopMonitor(t, m)
	same := map[lab.ProbeKind]int{}
	for _, o := range m.Overlaps(0) {
		if o.Type != lab.OverlapSameProbe {
			t.Errorf("window 0: %s", o)
			continue
		}
		if len(o.Nodes) != 2 || o.Nodes[0] == o.Nodes[1] || o.Nodes[0]+o.Nodes[1] != "n1n2" && o.Nodes[0]+o.Nodes[1] != "n2n1" {
			t.Errorf("overlap of %v, want n1 and n2", o.Nodes)
		}
		same[o.Kind]++
	}
	if same[lab.ProbeARP] == 0 || same[lab.ProbeTCP] == 0 {
		t.Errorf("same-probe overlaps by kind %v, want ARP and TCP ones", same)
	}
	t.Logf("same-probe overlaps: %v of %d ARP rounds", same, m.StatsOf(vip.Addr(), lab.ProbeARP).Rounds)
}

// The VIP moves n1 -> (gap) -> n2 -> n1: the monitor reports the gap,
// bracketing the move; the moves are no overlap with a 1 ms window but
// n1, n2, n1 is an interleaving within a minute.
func TestMonitorGapAndMoves(t *testing.T) {
	_, n1, n2, c, names := monitorLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	vip := lab.VIP(1)
	if err := n1.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, c, lab.MonitorOptions{VIPs: []netip.Addr{vip.Addr()}, Names: names})
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeARP, "n1", 10)
	removed := time.Now()
	if err := n1.DelAddr(vip); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(ctx, 10*time.Second, "10 unanswered rounds", func(context.Context) error {
		s := m.StatsOf(vip.Addr(), lab.ProbeARP)
		if len(s.Gaps) == 0 || s.Gaps[len(s.Gaps)-1].Rounds < 10 {
			return fmt.Errorf("gaps %v", s.Gaps)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	added := time.Now()
	if err := n2.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeARP, "n2", 10)
	// and back at once
	before := m.StatsOf(vip.Addr(), lab.ProbeARP).ByNode["n1"]
	if err := n2.DelAddr(vip); err != nil {
		t.Fatal(err)
	}
	if err := n1.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeARP, "n1", before+10)
	stopMonitor(t, m)

	s := m.StatsOf(vip.Addr(), lab.ProbeARP)
	g := s.LongestGap
	t.Logf("longest gap %s; all gaps %v", g, s.Gaps)
	if g.Rounds < 10 || g.Open {
		t.Errorf("longest gap %s, want at least 10 rounds, closed", g)
	}
	if g.Start.Before(removed.Add(-time.Second)) || g.Start.After(added) || g.End.Before(added) {
		t.Errorf("longest gap from %s to %s, want it to start after the VIP left n1 (%s) and end after it came to n2 (%s)",
			g.Start.Format("15:04:05.000"), g.End.Format("15:04:05.000"), removed.Format("15:04:05.000"), added.Format("15:04:05.000"))
	}
	if o := m.Overlaps(time.Millisecond); len(o) != 0 {
		t.Errorf("moves taken for overlaps (window 1ms): %v", o)
	}
	o := m.Overlaps(time.Minute)
	if len(o) == 0 || o[0].Type != lab.OverlapInterleaved || o[0].Nodes[0] != "n1" || o[0].Nodes[1] != "n2" {
		t.Errorf("window 1 minute: overlaps %v, want n1, n2, n1 interleaved", o)
	}
	for _, x := range o {
		if x.Type == lab.OverlapSameProbe {
			t.Errorf("same-probe overlap without two holders: %s", x)
		}
	}
}

// An IPv6 VIP: neighbour solicitations, answered by its holder; held by
// both nodes, answered by both.
func TestMonitorNDP(t *testing.T) {
	_, n1, n2, c, names := monitorLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	vip := netip.MustParsePrefix("2001:2::201/64")
	if err := n1.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, c, lab.MonitorOptions{VIPs: []netip.Addr{vip.Addr()}, Names: names})
	answeredBy(ctx, t, m, vip.Addr(), lab.ProbeNDP, "n1", 10)
	if o := m.Overlaps(time.Hour); len(o) != 0 {
		t.Errorf("overlaps with one holder: %v", o)
	}
	if err := n2.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(ctx, 10*time.Second, "a same-probe overlap", func(context.Context) error {
		for _, o := range m.Overlaps(0) {
			if o.Type == lab.OverlapSameProbe && o.Kind == lab.ProbeNDP {
				return nil
			}
		}
		return fmt.Errorf("stats %+v", m.StatsOf(vip.Addr(), lab.ProbeNDP))
	}); err != nil {
		t.Error(err)
	}
	stopMonitor(t, m)
	n2mac, err := n2.MAC()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range m.Replies() {
		if r.Node == "n2" && net.HardwareAddr(r.MAC[:]).String() != n2mac.String() {
			t.Errorf("reply named n2 from %s", r.MAC)
		}
	}
}

func TestMonitorRejectsBadOptions(t *testing.T) {
	l := newLab(t)
	c, err := l.AddClient("c1")
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]lab.MonitorOptions{
		"no VIP":          {},
		"tiny interval":   {VIPs: []netip.Addr{lab.VIP(1).Addr()}, Interval: time.Microsecond},
		"TCP, no targets": {VIPs: []netip.Addr{lab.VIP(1).Addr()}, TCP: true},
		"bad VIP":         {VIPs: []netip.Addr{{}}},
	} {
		if m, err := c.StartMonitor(o); err == nil {
			_ = m.Stop()
			t.Errorf("%s: accepted", name)
		}
	}
}
