package failover

import (
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestDrainOnSecondNetwork: a node's public interfaces on two networks,
// each at its own MAC: VIPs on eth0 (the nodes' own network) and one VIP
// on eth1, on a second bridge that only the nodes' and the clients' eth1
// join (a client VLAN beside the nodes' own). The node's MAC in its
// heartbeats is eth0's, which the second network does not have. A
// drained move of the eth1 VIP under a raw SMB and a raw NFS session: the
// new holder must steer the old connections to the old holder's eth1
// MAC, which the heartbeats carry per interface; to the node MAC they
// would be lost on the second bridge, the sessions would stall and the
// drain watch would reset them. Oracles: the sessions' own errors and
// gaps (after the move only the steering reaches the old holder, which
// holds their sockets), and no RST on a capture on the client's eth1 that
// lost no frame. (The old holder's receive counters cannot tell: the
// second bridge floods a frame for an unknown MAC to every port.)
func TestDrainOnSecondNetwork(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, SecondNet: true})
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
	for _, s := range sessions {
		s.Close()
	}
	w.Close()
	for _, s := range sessions {
		t.Logf("%s", s)
		if err := s.Err(); err != nil {
			t.Errorf("%s session through %s broke in the drain: %v", s.rc.proto, vip, err)
		}
		e.checkGaps(s.rc.proto+" session through "+vip.String(), s, w)
	}
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
}
