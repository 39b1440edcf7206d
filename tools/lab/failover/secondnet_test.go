package failover

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestDrainOnBareSecondNetwork is TestDrainOnSecondNetwork where the nodes
// have no address of their own on the second network (CTDB's public
// interfaces often have none): once the VIP has left the old holder's
// eth1, nothing there gives it a route back to the clients or an address
// to ask for their MACs with. The drain keeps a route to the VIP's subnet
// through eth1 (the kernel's table: ip route show proto 245, gone when the
// drain ends), and the old holder's ARP requests, asked with the VIP from
// loopback, leave as probes: the sessions live on, and the client's
// neighbour table never puts the VIP at the old holder. Without the route
// the answers are unroutable; without the probes they wait for a
// neighbour that never resolves: both sessions time out (run here).
func TestDrainOnBareSecondNetwork(t *testing.T) {
	drainOnSecondNetwork(t, lab.Options{}, lab.ClusterOptions{Nodes: 3, SecondNet: true, SecondNetBare: true})
}

// TestDrainOnBareSecondNetwork6 is TestDrainOnBareSecondNetwork with an
// IPv6 VIP (a dual-stack lab, the VIP in lab.PublicSubnet6): the drain
// keeps its route to the /64, and the old holder's neighbour
// solicitations leave from eth1's link-local address, which no fence
// drops, so no probe is needed.
func TestDrainOnBareSecondNetwork6(t *testing.T) {
	drainOnSecondNetwork(t, lab.Options{IPv6: true}, lab.ClusterOptions{Nodes: 3, SecondNet: true, SecondNetBare: true, IPv6VIPs: 1})
}

// drainOnSecondNetwork drains the cluster's last VIP, the one on the
// second network (IPv6 when the cluster has IPv6 VIPs).
func drainOnSecondNetwork(t *testing.T, labOpts lab.Options, opts lab.ClusterOptions) {
	e := newEnvWith(t, labOpts, opts)
	vip := e.c.VIPs[len(e.c.VIPs)-1]
	holder := e.owner(vip)
	if on, err := holder.HeldOn(); err != nil || !slices.Contains(on["eth1"], vip) {
		t.Fatalf("%s on %s: by interface %v (%v), want it on eth1", vip, holder.Role, on, err)
	}
	eth0MAC, err := holder.IfaceMAC("eth0")
	if err != nil {
		t.Fatal(err)
	}
	eth1MAC, err := holder.IfaceMAC("eth1")
	if err != nil {
		t.Fatal(err)
	}
	if eth0MAC.String() == eth1MAC.String() {
		t.Fatalf("%s's eth0 and eth1 share MAC %s: the test needs two", holder.Role, eth0MAC)
	}
	to := e.c.Others(holder)[0]
	sessions := e.rawSessions(vip.Addr())
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	keys := []string{sessions[0].rc.Key(), sessions[1].rc.Key()}
	e.waitFlows(to, holder, false, keys...)
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	time.Sleep(300 * time.Millisecond) // the sessions talk before the move
	st := e.steered(to)
	moved := time.Now()
	if out, err := holder.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	e.waitFlows(to, holder, true, keys...)
	time.Sleep(1500 * time.Millisecond) // the sessions talk through the steering
	drainRoute := func() string {
		t.Helper()
		family := "-4"
		if vip.Addr().Is6() {
			family = "-6"
		}
		out, err := holder.Output(e.ctx, "ip", family, "route", "show", "proto", "245")
		if err != nil {
			t.Fatalf("ip route on %s: %v: %s", holder.Role, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if r := drainRoute(); !strings.Contains(r, vip.Masked().String()+" dev eth1") {
		t.Errorf("%s drains without its route to the clients: ip route show proto 245 says %q", holder.Role, r)
	}
	probed := e.arpProbed(holder)
	for _, s := range sessions {
		s.Close()
	}
	w.Close()
	e.checkSessions(sessions, "in the drain", w)
	for _, r := range e.resetsTo(w, moved, keys...) {
		t.Errorf("%s: a connection was reset in the drain", r)
	}
	after := e.steered(to)
	steered := int64(after.xdp + after.tc - st.xdp - st.tc)
	t.Logf("drain of %s from %s to %s: %d packets steered", vip, holder.Role, to.Role, steered)
	if steered == 0 {
		t.Errorf("%s steered nothing to %s in the drain", to.Role, holder.Role)
	}
	if held, err := to.Holds(vip); err != nil || !held {
		t.Errorf("%s does not hold %s after the move (%v)", to.Role, vip, err)
	}
	// the client's own neighbour table: the VIP at the new holder, never
	// at the old one (whose requests, if any, were probes)
	toMAC, err := to.IfaceMAC("eth1")
	if err != nil {
		t.Fatal(err)
	}
	out, err := e.client.Output(e.ctx, "ip", "neigh", "show", vip.Addr().String(), "dev", "eth1")
	if err != nil || !strings.Contains(string(out), toMAC.String()) {
		t.Errorf("the client's neighbour entry for %s is %q (%v), want %s's eth1 MAC %s", vip.Addr(), out, err, to.Role, toMAC)
	}
	if opts.SecondNetBare && vip.Addr().Is4() && probed == 0 {
		t.Errorf("%s has no address on eth1, yet sent no ARP request as a probe (fsha counters): how did it find the clients' MACs?", holder.Role)
	}
	t.Logf("%s sent %d ARP requests as probes", holder.Role, probed)
	e.eventually("the drain's route gone once its connections closed", func(context.Context) error {
		if r := drainRoute(); r != "" {
			return fmt.Errorf("ip route show proto 245 on %s: %q", holder.Role, r)
		}
		return nil
	})
}

// arpProbed is n's count of ARP requests sent as probes (fsha counters).
func (e *env) arpProbed(n *lab.ClusterNode) uint64 {
	e.t.Helper()
	c, err := n.Counters(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return c.Egress.ARPProbed
}
