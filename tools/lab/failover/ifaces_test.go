package failover

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestVIPMovesToSecondInterface: the VIPs live on dedicated public
// interfaces, "eth1,eth2" in public_addresses, in a network of their own
// (lab.PublicSubnet), beside eth0 (the node's own address and the
// cluster's traffic): answers to the clients leave through the VIP's
// interface, where fsha tracks them. eth2 does not exist when fsha
// starts: it starts all the same, healthy on eth1. Then eth2 appears on
// every node and fsha attaches its programs to it (the kernel's view:
// XDP on eth2). Then a VIP holder's eth1 loses its carrier (the switch
// port down): the VIP moves to eth2 on the same node while a raw SMB and
// a raw NFS session talk through it every 50 ms: no session error, no
// RST on a capture that saw frames both ways and lost none, the VIP's
// ARP answers now come from eth2's MAC, no other node took the VIP, and
// the holder's timeline says why. eth1 back: the VIP stays on eth2.
func TestVIPMovesToSecondInterface(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, VIPIfaces: []string{"eth1", "eth2"}, ExtraIfaces: []string{"eth1"}, PublicNet: true})
	for _, n := range e.c.Nodes {
		if !strings.Contains(fshaLog(n), `"public interface missing`) {
			t.Errorf("%s: fsha's log does not say eth2 is missing at its start", n.Role)
		}
		st, err := n.Status(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(st.Interfaces, func(i admin.InterfaceStatus) bool { return i.Name == "eth2" }); i < 0 || st.Interfaces[i].Present {
			t.Errorf("%s: fsha status says its interfaces are %+v, want eth2 missing", n.Role, st.Interfaces)
		}
		if _, err := n.AddIface("eth2"); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range e.c.Nodes {
		e.eventually(n.Role+": fsha's XDP program on the new eth2", func(ctx context.Context) error {
			out, err := n.Run(ctx, "ip", "-d", "link", "show", "dev", "eth2")
			if err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
			if !bytes.Contains(out, []byte("prog/xdp")) {
				return fmt.Errorf("no XDP program on eth2:\n%s", out)
			}
			return nil
		})
	}

	for _, n := range e.c.Nodes {
		st, err := n.Status(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if i := slices.IndexFunc(st.Interfaces, func(i admin.InterfaceStatus) bool { return i.Name == "eth2" }); i < 0 ||
			!st.Interfaces[i].Present || !st.Interfaces[i].Link || st.Interfaces[i].Steer == "" {
			t.Errorf("%s: fsha status says its interfaces are %+v, want eth2 present, with link and a steering path", n.Role, st.Interfaces)
		}
	}
	vip := e.c.VIPs[0]
	holder := e.owner(vip)
	if on, err := holder.HeldOn(); err != nil || !slices.Contains(on["eth1"], vip) {
		t.Fatalf("%s on %s: by interface %v (%v), want it on eth1", vip, holder.Role, on, err)
	}
	eth2MAC, err := holder.IfaceMAC("eth2")
	if err != nil {
		t.Fatal(err)
	}
	sessions := e.rawSessions(vip.Addr())
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	keys := []string{sessions[0].rc.Key(), sessions[1].rc.Key()}
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	time.Sleep(500 * time.Millisecond) // the sessions talk before the cut
	cut := time.Now()
	if err := holder.SetIfaceLink("eth1", false); err != nil {
		t.Fatal(err)
	}
	e.eventually(vip.String()+" moved from eth1 to eth2 on "+holder.Role, func(context.Context) error {
		on, err := holder.HeldOn()
		if err != nil {
			return err
		}
		if !slices.Contains(on["eth2"], vip) || slices.Contains(on["eth1"], vip) {
			return fmt.Errorf("by interface: %v", on)
		}
		return nil
	})
	moved := time.Since(cut)
	time.Sleep(time.Second) // the sessions go on through eth2
	if err := holder.SetIfaceLink("eth1", true); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // and stay there with eth1 back
	w.Close()

	for _, s := range sessions {
		s.Close()
	}
	e.checkSessions(sessions, "when its interface lost link", w)
	for _, r := range e.resetsTo(w, cut, keys...) {
		t.Errorf("%s: a connection was reset when its interface lost link", r)
	}
	var arpFromEth2 bool
	for _, f := range w.Frames() {
		if f.ARP && f.At.After(cut) && bytes.Equal(f.Src, eth2MAC) {
			arpFromEth2 = true
		}
	}
	if !arpFromEth2 {
		t.Errorf("no ARP for %s from %s's eth2 (%s) after the cut", vip, holder.Role, eth2MAC)
	}
	if on, err := holder.HeldOn(); err != nil || !slices.Contains(on["eth2"], vip) || slices.Contains(on["eth1"], vip) {
		t.Errorf("eth1 back: %s by interface %v (%v), want it to stay on eth2", vip, on, err)
	}
	for _, n := range e.c.Others(holder) {
		if held, err := n.Holds(vip); err != nil || held {
			t.Errorf("%s holds %s (%v): the VIP must stay on %s", n.Role, vip, err, holder.Role)
		}
	}
	tl, err := holder.Timeline(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(tl, func(r admin.Takeover) bool { return r.Kind == "interface" && r.VIP == vip.String() })
	if i < 0 {
		t.Fatalf("%s's timeline has no interface move of %s:\n%s", holder.Role, vip, timelineJSON(e.ctx, holder))
	}
	t.Logf("%s moved to eth2 on %s %v after the cut: %s", vip, holder.Role, moved.Round(time.Millisecond), tl[i].Reason)
	for _, s := range tl[i].Steps {
		t.Logf("  +%-8v %s", s.Took.Round(time.Microsecond), s.Step)
	}
	e.drainFromSecondInterface(vip, holder)
}

// drainFromSecondInterface moves vip, on holder's eth2 while its eth1 has
// link again, to another node under a raw NFS session: the session lives
// on through the drain, and the new holder steers its packets to the MAC
// the old holder's heartbeats carry, its first public interface with link
// (eth1, back up): one MAC per node, whatever interface the VIP was on.
// The oracle is the old holder's kernel: eth1 receives the steered
// packets, eth2 only what the bridge floods to both.
func (e *env) drainFromSecondInterface(vip netip.Prefix, holder *lab.ClusterNode) {
	t := e.t
	t.Helper()
	to := e.c.Others(holder)[0]
	rc, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	s := startSession(rc, pingEvery)
	defer s.Close()
	e.waitFlows(to, holder, false, rc.Key())
	rx := func(iface string) int64 {
		t.Helper()
		out, err := holder.Output(e.ctx, "cat", "/sys/class/net/"+iface+"/statistics/rx_packets")
		if err != nil {
			t.Fatalf("rx_packets of %s on %s: %v: %s", iface, holder.Role, err, out)
		}
		v, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	eth1, eth2, st := rx("eth1"), rx("eth2"), e.steered(to)
	if out, err := holder.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	e.waitFlows(to, holder, true, rc.Key())
	time.Sleep(1500 * time.Millisecond) // the session talks through the steering
	s.Close()
	if err := s.Err(); err != nil {
		t.Errorf("NFS session through %s broke in the drain: %v", vip, err)
	}
	after := e.steered(to)
	steered := int64(after.xdp + after.tc - st.xdp - st.tc)
	d1, d2 := rx("eth1")-eth1, rx("eth2")-eth2
	t.Logf("drain of %s from %s's eth2 to %s: %d packets steered; %s received %d on eth2, %d on eth1", vip, holder.Role, to.Role, steered, holder.Role, d2, d1)
	if steered == 0 || d1-d2 < steered/2 {
		t.Errorf("the steered packets did not go to the node's first interface with link: %d steered, %s's eth1 received %d, eth2 %d", steered, holder.Role, d1, d2)
	}
}
