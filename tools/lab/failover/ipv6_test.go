package failover

import (
	"net/netip"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestIPv6DualStack runs a cluster whose public_addresses has IPv4 and
// IPv6 VIPs, on a dual-stack lab, and does to an IPv6 VIP what the IPv4
// tests do: a planned move under real smbclient and nfs-cat transfers and
// raw SMB and NFS sessions (0 dropped, no RST on a capture of the IPv6
// VIP that saw frames both ways and lost none; the connections were
// replicated and are steered back as IPv6 flows), then a power cut of
// another IPv6 VIP's holder: its blocked raw SMB and NFS clients are
// reset (the tickles of IPv6 clients; the new holder's kernel dropped
// none of their answers as misaddressed) and a new connection is
// answered by the node that announced it with an unsolicited NA. Last, a
// third IPv6 VIP moved with --kill resets its idle client at once.
// Throughout, a monitor on the client asks every 10 ms, by ARP and by
// neighbour solicitation, who answers for each VIP: no VIP is ever
// answered by two nodes.
func TestIPv6DualStack(t *testing.T) {
	e := newEnvWith(t, lab.Options{IPv6: true}, lab.ClusterOptions{Nodes: 3, IPv6VIPs: 3,
		FshaArgs: []string{"--drain-timeout", drainTimeout}})
	v6 := e.c.VIPs[3:]
	for _, v := range v6 {
		if !v.Addr().Is6() {
			t.Fatalf("VIP %s: want the IPv6 ones after the IPv4 ones", v)
		}
	}
	m := e.startNeighbourMonitor()
	e.move(v6[0])
	e.waitConverged(e.c.Nodes...)
	e.powerCutResets(v6[1], "a dual-stack lab (IPv6 VIP)")
	e.waitConverged(e.up()...)
	e.checkNeighbourMonitor(m, v6[1].Addr())
	e.moveKill(v6[2])
}

// moveKill moves vip with `fsha move --kill` while an idle raw NFS client
// waits on it: no drain, the client is reset at once by the old holder.
func (e *env) moveKill(vip netip.Prefix) {
	t := e.t
	t.Helper()
	from := e.owner(vip, e.up()...)
	to := e.c.Others(append([]*lab.ClusterNode{from}, e.down...)...)[0]
	idle, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	done := blockedRead(idle)
	e.waitFlows(to, from, false, idle.Key())
	kill := time.Now()
	if out, err := from.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String(), "--kill"); err != nil {
		t.Fatalf("fsha move --kill: %v: %s", err, out)
	}
	d := e.waitReset("idle NFS client of "+vip.String()+" moved with --kill", done, kill)
	t.Logf("move --kill of %s from %s to %s: idle client reset after %v", vip, from.Role, to.Role, d.Round(time.Millisecond))
	e.waitConverged(e.up()...)
	if o := e.owner(vip, e.up()...); o != to {
		t.Errorf("%s on %s after the move --kill, want %s", vip, o.Role, to.Role)
	}
}

// overlapWindow: a MAC answering again this soon after another answered
// is an overlap (A, B, A), not a switch-over and back.
const overlapWindow = 100 * time.Millisecond

// startNeighbourMonitor starts a wire monitor of every VIP (ARP for IPv4,
// NDP for IPv6) on the client.
func (e *env) startNeighbourMonitor() *lab.Monitor {
	e.t.Helper()
	m, err := e.c.StartMonitor(e.client, false)
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

// checkNeighbourMonitor stops the monitor and fails on any overlap or any
// probe the monitor lost, and unless cut's NDP probes were answered by
// more than one node (its holder before and after the power cut).
func (e *env) checkNeighbourMonitor(m *lab.Monitor, cut netip.Addr) {
	e.t.Helper()
	lines, err := m.Finish()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range lines {
		e.t.Log(l)
	}
	for _, st := range m.Stats() {
		if st.Answered == 0 {
			e.t.Errorf("%v %v: no probe answered in %d rounds", st.VIP, st.Kind, st.Rounds)
		}
	}
	if st := m.StatsOf(cut, lab.ProbeNDP); len(st.ByNode) < 2 {
		e.t.Errorf("%v: NDP answered by %v, want its holder before and after the power cut", cut, st.ByNode)
	}
	for _, o := range m.Overlaps(overlapWindow) {
		e.t.Errorf("overlap on the wire: %+v", o)
	}
}
