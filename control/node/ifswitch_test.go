package node

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
)

func TestNextInterface(t *testing.T) {
	up := func(names ...string) func(string) bool {
		return func(i string) bool { return slices.Contains(names, i) }
	}
	for _, c := range []struct {
		name   string
		from   string
		ifaces []string
		up     func(string) bool
		want   string
	}{
		{"current has link: stay", "eth0", []string{"eth0", "eth1"}, up("eth0", "eth1"), ""},
		{"current lost link: the next with link", "eth0", []string{"eth0", "eth1", "eth2"}, up("eth2"), "eth2"},
		{"in preference order", "eth2", []string{"eth0", "eth1", "eth2"}, up("eth0", "eth1"), "eth0"},
		{"none has link: stay (health says unfit)", "eth0", []string{"eth0", "eth1"}, up(), ""},
		{"one interface: stay", "eth0", []string{"eth0"}, up(), ""},
		{"on the second, the first back: stay", "eth1", []string{"eth0", "eth1"}, up("eth0", "eth1"), ""},
		{"not placed yet: nothing to move", "", []string{"eth0", "eth1"}, up("eth1"), ""},
	} {
		if got := nextInterface(c.from, c.ifaces, c.up); got != c.want {
			t.Errorf("%s: nextInterface(%q, %v) = %q, want %q", c.name, c.from, c.ifaces, got, c.want)
		}
	}
}

// recordingHooks records the hook events with their variables.
type recordingHooks struct {
	mu   sync.Mutex
	runs []map[string]string
}

func (h *recordingHooks) Run(_ context.Context, event string, env map[string]string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := map[string]string{"event": event}
	for k, v := range env {
		e[k] = v
	}
	h.runs = append(h.runs, e)
	return nil
}

func (h *recordingHooks) updates() []map[string]string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []map[string]string
	for _, r := range h.runs {
		if r["event"] == "updateip" {
			out = append(out, r)
		}
	}
	return out
}

// A VIP on eth0,eth1 whose holder's eth0 loses link moves to eth1 on the
// same node: no other node takes it, the lease stays the same epoch, the
// address leaves eth0, and the updateip hooks say eth0 -> eth1.
func TestVIPFollowsLinkToSecondInterface(t *testing.T) {
	hooks := make([]*recordingHooks, 3)
	c := startClusterIfaces(t, 3, 3, allocation.Automatic, func(i int) Hooks {
		hooks[i] = &recordingHooks{}
		return hooks[i]
	}, []string{"eth0", "eth1"})
	c.waitFor("every VIP held", c.allHeld)
	vip := c.vips[0].VIP()
	holder := -1
	c.world.mu.Lock()
	for n, a := range c.world.addrs {
		if a["eth0/"+vip.String()] {
			holder = n
		}
	}
	epoch := c.world.leases[holder][vip].Epoch
	c.world.mu.Unlock()
	if holder < 0 {
		t.Fatalf("%s on no node's eth0", vip)
	}

	c.health[holder].setLink("eth0", false)
	on := func(iface string) bool {
		c.world.mu.Lock()
		defer c.world.mu.Unlock()
		return c.world.addrs[holder][iface+"/"+vip.String()]
	}
	c.waitFor(vip.String()+" moved from eth0 to eth1 on its node", func() bool { return on("eth1") && !on("eth0") })
	c.waitFor("the updateip hook ran", func() bool { return len(hooks[holder].updates()) > 0 })
	u := hooks[holder].updates()[0]
	if u["FSHA_VIP"] != vip.String() || u["FSHA_IFACE"] != "eth1" || u["FSHA_OLD_IFACE"] != "eth0" {
		t.Errorf("updateip hook variables %v, want the VIP moving from eth0 to eth1", u)
	}
	c.world.mu.Lock()
	l := c.world.leases[holder][vip]
	c.world.mu.Unlock()
	if l.Epoch != epoch {
		t.Errorf("lease epoch %d after the move, want %d: the VIP must not change hands", l.Epoch, epoch)
	}
	c.checkNoDoubles()
	rec, err := c.nodes[holder].Timeline(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(rec, func(r admin.Takeover) bool {
		return r.Kind == "interface" && r.VIP == c.vips[0].Prefix.String() && strings.Contains(r.Reason, "eth0 lost link")
	}) {
		t.Errorf("timeline has no interface move of %s: %+v", vip, rec)
	}
	// the first interface back: the VIP stays on eth1 (reconcile runs
	// every 2 s and must not move it either)
	c.health[holder].setLink("eth0", true)
	time.Sleep(2500 * time.Millisecond)
	if !on("eth1") || on("eth0") {
		t.Errorf("after eth0 came back, %s on eth0 %v, eth1 %v; want it to stay on eth1", vip, on("eth0"), on("eth1"))
	}
}

// A drainer whose MAC changes (its first public interface lost link) is
// steered to again with the new MAC; an unchanged one is not touched.
func TestSteeringFollowsDrainerMAC(t *testing.T) {
	w := newWorld()
	vip := config.PublicAddress{Prefix: netip.MustParsePrefix("198.18.1.10/24"), Interfaces: []string{"eth0", "eth1"}}
	nodes := []config.Node{{PNN: 0, Addr: netip.MustParseAddr("127.0.1.1")}, {PNN: 1, Addr: netip.MustParseAddr("127.0.1.2")}, {PNN: 2, Addr: netip.MustParseAddr("127.0.1.3")}}
	n, err := New(testLogger(t), Config{Nodes: nodes, Self: 0, VIPs: []config.PublicAddress{vip}, Timing: ownership.DefaultTiming(),
		StateFile: t.TempDir() + "/state.json"}, nil, &fakeDP{world: w, node: 0}, &fakeHealth{healthy: true, ch: make(chan struct{}, 1)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	macA, macB := [6]byte{2, 0, 0, 0, 0, 0xa}, [6]byte{2, 0, 0, 0, 0, 0xb}
	snap := func(mac [6]byte) ownership.Snapshot {
		return ownership.Snapshot{Nodes: []ownership.NodeView{{PNN: 0, Alive: true}, {PNN: 1, Alive: true}},
			VIPs: []ownership.VIPView{{Addr: vip.VIP(), Holder: 0, Drainers: []int{1}}}, MACs: map[int][6]byte{1: mac}}
	}
	calls := func() []steerCall {
		w.mu.Lock()
		defer w.mu.Unlock()
		return slices.Clone(w.steers)
	}
	s := newSteering(n)
	s.update(snap(macA))
	s.apply(context.Background())
	s.update(snap(macA))
	s.apply(context.Background())
	if got := calls(); len(got) != 1 || got[0].mac != macA || !got[0].on || got[0].owner != 1 {
		t.Fatalf("steers %+v, want one to node 1 at %x", got, macA)
	}
	s.update(snap(macB))
	s.apply(context.Background())
	if got := calls(); len(got) != 2 || got[1].mac != macB || !got[1].on {
		t.Fatalf("steers %+v, want a second one at the new MAC %x", got, macB)
	}
}

// TestSteeringSetsDrainerInterfaceMACs: the drainer's MACs by interface
// (its heartbeats) reach the data plane before its flows are steered,
// follow its changes, and are forgotten when nothing is steered to it.
func TestSteeringSetsDrainerInterfaceMACs(t *testing.T) {
	w := newWorld()
	vip := config.PublicAddress{Prefix: netip.MustParsePrefix("198.18.1.10/24"), Interfaces: []string{"eth1"}}
	nodes := []config.Node{{PNN: 0, Addr: netip.MustParseAddr("127.0.1.1")}, {PNN: 1, Addr: netip.MustParseAddr("127.0.1.2")}, {PNN: 2, Addr: netip.MustParseAddr("127.0.1.3")}}
	n, err := New(testLogger(t), Config{Nodes: nodes, Self: 0, VIPs: []config.PublicAddress{vip}, Timing: ownership.DefaultTiming(),
		StateFile: t.TempDir() + "/state.json"}, nil, &fakeDP{world: w, node: 0}, &fakeHealth{healthy: true, ch: make(chan struct{}, 1)}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	nodeMAC, eth1A, eth1B := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 1, 0xa}, [6]byte{2, 0, 0, 0, 1, 0xb}
	snap := func(drainers []int, ifaces []ownership.IfaceMAC) ownership.Snapshot {
		return ownership.Snapshot{Nodes: []ownership.NodeView{{PNN: 0, Alive: true}, {PNN: 1, Alive: true}},
			VIPs: []ownership.VIPView{{Addr: vip.VIP(), Holder: 0, Drainers: drainers}}, MACs: map[int][6]byte{1: nodeMAC},
			Ifaces: map[int][]ownership.IfaceMAC{1: ifaces}}
	}
	peerMACs := func() (map[string][6]byte, bool) {
		w.mu.Lock()
		defer w.mu.Unlock()
		m, ok := w.peerMACs[0][1]
		return maps.Clone(m), ok
	}
	s := newSteering(n)
	s.update(snap([]int{1}, []ownership.IfaceMAC{{Name: "eth1", MAC: eth1A}}))
	s.apply(context.Background())
	if got, _ := peerMACs(); !maps.Equal(got, map[string][6]byte{"eth1": eth1A}) {
		t.Fatalf("interface MACs %v, want eth1 at %x", got, eth1A)
	}
	if len(w.steers) != 1 || w.steers[0].mac != nodeMAC {
		t.Fatalf("steers %+v", w.steers)
	}
	s.update(snap([]int{1}, []ownership.IfaceMAC{{Name: "eth1", MAC: eth1B}}))
	s.apply(context.Background())
	if got, _ := peerMACs(); !maps.Equal(got, map[string][6]byte{"eth1": eth1B}) {
		t.Fatalf("after a change: interface MACs %v, want eth1 at %x", got, eth1B)
	}
	// a refresh writes them again, unchanged (an interface recreated here
	// has another ifindex)
	w.mu.Lock()
	delete(w.peerMACs[0], 1)
	w.mu.Unlock()
	s.refreshIfaces()
	s.apply(context.Background())
	if got, _ := peerMACs(); !maps.Equal(got, map[string][6]byte{"eth1": eth1B}) {
		t.Fatalf("after a refresh: interface MACs %v, want eth1 at %x written again", got, eth1B)
	}
	s.update(snap(nil, nil))
	s.apply(context.Background())
	if got, ok := peerMACs(); !ok || got != nil {
		t.Fatalf("nothing steered: interface MACs %v (set %v), want forgotten", got, ok)
	}
}
