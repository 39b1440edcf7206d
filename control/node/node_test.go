package node

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

// fakeDP models one node's data plane: addresses and per-VIP leases on the
// real monotonic clock. The shared world checks, at every lease write,
// that no other node's data plane answers for the VIP at that instant.
type fakeDP struct {
	world *world
	node  int
}

type world struct {
	mu      sync.Mutex
	addrs   map[int]map[string]bool // node -> "iface/addr"
	leases  map[int]map[netip.Addr]dataplane.VIPLease
	grants  map[int]map[netip.Addr]dataplane.VIPGrant
	dead    map[int]bool
	doubles []string
	// tickles records when each node tickled which VIP's connections
	tickles []tickleAt
	// flows: each node's own connections by VIP (CountFlows); tracked:
	// the VIPs each node's data plane was last told to track (SetVIPs)
	flows   map[int]map[netip.Addr]int
	tracked map[int][]netip.Addr
	// steers records every Steer call, in order
	steers []steerCall
	// peerMACs: node -> owner -> interface MACs, as SetPeerMACs left them
	peerMACs map[int]map[int]map[string][6]byte
	// drainRoutes: node -> "iface prefix" of each drain route it has
	drainRoutes map[int]map[string]bool
}

type steerCall struct {
	node, owner int
	vip         netip.Addr
	mac         [6]byte
	on          bool
}

type tickleAt struct {
	node int
	vip  netip.Addr
	at   time.Time
}

func newWorld() *world {
	return &world{addrs: map[int]map[string]bool{}, leases: map[int]map[netip.Addr]dataplane.VIPLease{},
		grants: map[int]map[netip.Addr]dataplane.VIPGrant{}, dead: map[int]bool{}}
}

// answering tells whether node answers for vip now (world locked).
func (w *world) answering(node int, vip netip.Addr, now uint64) bool {
	l, ok := w.leases[node][vip]
	return ok && !w.dead[node] && l.State == dataplane.VIPLeaseHeld && l.Until >= now
}

func (w *world) holders(vips []config.PublicAddress) map[int]int {
	w.mu.Lock()
	defer w.mu.Unlock()
	now := uint64(monoNow())
	out := map[int]int{}
	for _, v := range vips {
		for n := range w.leases {
			if w.answering(n, v.VIP(), now) {
				out[n]++
			}
		}
	}
	return out
}

func (d *fakeDP) key(iface string, a netip.Addr) string { return iface + "/" + a.String() }

func (d *fakeDP) AddVIP(iface string, p netip.Prefix) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.addrs[d.node] == nil {
		d.world.addrs[d.node] = map[string]bool{}
	}
	d.world.addrs[d.node][d.key(iface, p.Addr())] = true
	return nil
}

func (d *fakeDP) RemoveVIP(iface string, p netip.Prefix) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	delete(d.world.addrs[d.node], d.key(iface, p.Addr()))
	return nil
}

func (d *fakeDP) HasVIP(iface string, a netip.Addr) (bool, error) {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	return d.world.addrs[d.node][d.key(iface, a)], nil
}

func (d *fakeDP) Announce(context.Context, string, netip.Addr) (time.Time, error) {
	return time.Now(), nil
}
func (d *fakeDP) SetFencingMode(bool, bool) error { return nil }

func (d *fakeDP) SetVIPLease(vip netip.Addr, l dataplane.VIPLease) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.leases[d.node] == nil {
		d.world.leases[d.node] = map[netip.Addr]dataplane.VIPLease{}
	}
	d.world.leases[d.node][vip] = l
	now := uint64(monoNow())
	if l.State == dataplane.VIPLeaseHeld && l.Until >= now {
		for other := range d.world.leases {
			if other != d.node && d.world.answering(other, vip, now) {
				d.world.doubles = append(d.world.doubles, fmt.Sprintf("%s answered by %d and %d", vip, other, d.node))
			}
		}
	}
	return nil
}

func (d *fakeDP) VIPLeases() (map[netip.Addr]dataplane.VIPLease, error) {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	out := map[netip.Addr]dataplane.VIPLease{}
	for k, v := range d.world.leases[d.node] {
		out[k] = v
	}
	return out, nil
}

func (d *fakeDP) SetVIPGrant(vip netip.Addr, g dataplane.VIPGrant) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.grants[d.node] == nil {
		d.world.grants[d.node] = map[netip.Addr]dataplane.VIPGrant{}
	}
	d.world.grants[d.node][vip] = g
	return nil
}

func (d *fakeDP) VIPGrants() (map[netip.Addr]dataplane.VIPGrant, error) {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	out := map[netip.Addr]dataplane.VIPGrant{}
	for k, v := range d.world.grants[d.node] {
		out[k] = v
	}
	return out, nil
}

func (d *fakeDP) TickleVIP(_ context.Context, _ string, vip netip.Addr, _ []int, _ bool) (dataplane.TickleResult, error) {
	d.world.mu.Lock()
	d.world.tickles = append(d.world.tickles, tickleAt{node: d.node, vip: vip, at: time.Now()})
	d.world.mu.Unlock()
	return dataplane.TickleResult{}, nil
}
func (d *fakeDP) DropPeerFlows(int, netip.Addr) (int, error) { return 0, nil }
func (d *fakeDP) CountFlows(vip netip.Addr) (int, error) {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	return d.world.flows[d.node][vip], nil
}
func (d *fakeDP) ProbeVIP(netip.Addr, bool) (dataplane.DrainProbe, error) {
	return dataplane.DrainProbe{}, nil
}
func (d *fakeDP) Steer(vip netip.Addr, owner int, mac [6]byte, on bool, _ int) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	d.world.steers = append(d.world.steers, steerCall{node: d.node, owner: owner, vip: vip, mac: mac, on: on})
	return nil
}
func (d *fakeDP) SetDrainRoute(iface string, p netip.Prefix, on bool) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.drainRoutes == nil {
		d.world.drainRoutes = map[int]map[string]bool{}
	}
	if d.world.drainRoutes[d.node] == nil {
		d.world.drainRoutes[d.node] = map[string]bool{}
	}
	k := iface + " " + p.Masked().String()
	if on {
		d.world.drainRoutes[d.node][k] = true
	} else {
		delete(d.world.drainRoutes[d.node], k)
	}
	return nil
}
func (d *fakeDP) SetPeerMACs(owner int, byName map[string][6]byte) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.peerMACs == nil {
		d.world.peerMACs = map[int]map[int]map[string][6]byte{}
	}
	if d.world.peerMACs[d.node] == nil {
		d.world.peerMACs[d.node] = map[int]map[string][6]byte{}
	}
	d.world.peerMACs[d.node][owner] = byName
	return nil
}
func (d *fakeDP) KillVIP(netip.Addr) (dataplane.KillStats, error) { return dataplane.KillStats{}, nil }

// LocalVIPs lists the candidates' addresses on every interface (ifaces is
// ignored), each with its candidate's prefix.
func (d *fakeDP) LocalVIPs(_ []string, candidates []netip.Prefix) ([]dataplane.LocalVIP, error) {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	var out []dataplane.LocalVIP
	for k := range d.world.addrs[d.node] {
		iface, addr, _ := strings.Cut(k, "/")
		for _, c := range candidates {
			if c.Addr().String() == addr {
				out = append(out, dataplane.LocalVIP{Iface: iface, Prefix: c})
			}
		}
	}
	return out, nil
}

func (d *fakeDP) SetVIPs(addrs []netip.Addr) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.tracked == nil {
		d.world.tracked = map[int][]netip.Addr{}
	}
	d.world.tracked[d.node] = slices.Clone(addrs)
	return nil
}

type fakeHealth struct {
	mu      sync.Mutex
	healthy bool
	ch      chan struct{}
	// down lists the interfaces without link (the others have it)
	down map[string]bool
}

func (h *fakeHealth) Healthy() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.healthy
}
func (h *fakeHealth) State() (bool, []string) {
	if h.Healthy() {
		return true, nil
	}
	return false, []string{"fake check failing"}
}
func (h *fakeHealth) Judged() bool { return true }
func (h *fakeHealth) LinkUp(iface string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return !h.down[iface]
}

// setLink takes iface's link down or up, and says health changed.
func (h *fakeHealth) setLink(iface string, up bool) {
	h.mu.Lock()
	if h.down == nil {
		h.down = map[string]bool{}
	}
	h.down[iface] = !up
	h.mu.Unlock()
	select {
	case h.ch <- struct{}{}:
	default:
	}
}
func (h *fakeHealth) Changed() <-chan struct{} { return h.ch }
func (h *fakeHealth) set(ok bool) {
	h.mu.Lock()
	h.healthy = ok
	h.mu.Unlock()
	select {
	case h.ch <- struct{}{}:
	default:
	}
}

type testCluster struct {
	t      *testing.T
	world  *world
	nodes  []*Node
	gossip []*membership.Membership
	health []*fakeHealth
	cancel []context.CancelFunc
	done   []chan struct{}
	vips   []config.PublicAddress
	cfg    []config.Node
}

var portMu sync.Mutex
var nextPort = 25380

func startCluster(t *testing.T, nNodes, nVIPs int, policy allocation.Policy) *testCluster {
	t.Helper()
	return startClusterHooks(t, nNodes, nVIPs, policy, nil)
}

// startClusterHooks is startCluster with hooks for every node (nil: none).
func startClusterHooks(t *testing.T, nNodes, nVIPs int, policy allocation.Policy, hooks func(i int) Hooks) *testCluster {
	t.Helper()
	return startClusterIfaces(t, nNodes, nVIPs, policy, hooks, []string{"eth0"})
}

// startClusterIfaces is startClusterHooks with every VIP on ifaces.
func startClusterIfaces(t *testing.T, nNodes, nVIPs int, policy allocation.Policy, hooks func(i int) Hooks, ifaces []string) *testCluster {
	t.Helper()
	portMu.Lock()
	nextPort++
	port := nextPort
	portMu.Unlock()
	c := &testCluster{t: t, world: newWorld()}
	for i := range nNodes {
		c.cfg = append(c.cfg, config.Node{PNN: i, Addr: netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)})})
	}
	for i := range nVIPs {
		c.vips = append(c.vips, config.PublicAddress{
			Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), 24), Interfaces: ifaces,
		})
	}
	key := membership.KeyFromSecret([]byte("test"))
	for i := range nNodes {
		h := &fakeHealth{healthy: true, ch: make(chan struct{}, 1)}
		timing := ownership.DefaultTiming()
		timing.HoldDown = 200 * time.Millisecond
		nd, err := New(testLogger(t).Named(fmt.Sprint(i)), Config{
			Nodes: c.cfg, Self: i, VIPs: c.vips, Policy: policy, Timing: timing, DrainTimeout: time.Second,
			StateFile: t.TempDir() + "/state.json",
		}, nil, &fakeDP{world: c.world, node: i}, h, nodeHooks(hooks, i), nil)
		if err != nil {
			t.Fatal(err)
		}
		g, err := membership.New(testLogger(t), membership.Config{
			Addr: c.cfg[i].Addr, Port: port, Key: key, Timing: membership.FastTiming(),
		}, nd)
		if err != nil {
			t.Fatal(err)
		}
		nd.SetGossip(g)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = nd.Run(ctx) }()
		c.nodes, c.gossip, c.health = append(c.nodes, nd), append(c.gossip, g), append(c.health, h)
		c.cancel, c.done = append(c.cancel, cancel), append(c.done, done)
		t.Cleanup(func() { cancel(); <-done; g.Shutdown() })
	}
	return c
}

// crash stops node i as a power-down would: no release, no leave, its
// data plane gone.
func (c *testCluster) crash(i int) {
	c.cancel[i]()
	<-c.done[i]
	c.gossip[i].Shutdown()
	c.world.mu.Lock()
	c.world.dead[i] = true
	c.world.mu.Unlock()
}

func (c *testCluster) holders() map[int]int { return c.world.holders(c.vips) }

func (c *testCluster) allHeld() bool {
	sum := 0
	for _, n := range c.holders() {
		sum += n
	}
	return sum == len(c.vips)
}

func (c *testCluster) waitFor(what string, cond func() bool) {
	c.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			c.t.Fatalf("not within 20s: %s (holders %v)", what, c.holders())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (c *testCluster) checkNoDoubles() {
	c.t.Helper()
	c.world.mu.Lock()
	defer c.world.mu.Unlock()
	if len(c.world.doubles) > 0 {
		c.t.Fatalf("VIPs answered by two nodes: %v", c.world.doubles)
	}
}

func balanced(h map[int]int, nodes []int, total int) bool {
	sum, lo, hi := 0, 1<<30, 0
	for _, n := range nodes {
		sum += h[n]
		lo, hi = min(lo, h[n]), max(hi, h[n])
	}
	return sum == total && hi-lo <= 1
}

func TestClusterTakeoverAndFailback(t *testing.T) {
	c := startCluster(t, 3, 6, allocation.Automatic)
	c.waitFor("6 VIPs balanced on 3 nodes", func() bool { return balanced(c.holders(), []int{0, 1, 2}, 6) })
	c.checkNoDoubles()

	c.crash(2)
	c.waitFor("VIPs of node 2 taken over", func() bool { return balanced(c.holders(), []int{0, 1}, 6) })
	c.checkNoDoubles()
	c.waitFor("status shows node 2 disconnected", func() bool {
		st, _ := c.nodes[0].Status(context.Background())
		return st.Quorum && st.Nodes[2].State == "DISCONNECTED"
	})

	// maintenance on node 1: everything goes to node 0
	if err := c.nodes[1].Disable(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitFor("node 1 drained by disable", func() bool { return c.holders()[0] == 6 })
	c.checkNoDoubles()
	if err := c.nodes[1].Enable(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.waitFor("automatic failback to node 1", func() bool { return balanced(c.holders(), []int{0, 1}, 6) })
	c.checkNoDoubles()
}

func TestUnhealthyNodeReleasesAndMoveIsHonoured(t *testing.T) {
	c := startCluster(t, 3, 3, allocation.Sticky)
	c.waitFor("one VIP per node", func() bool { return balanced(c.holders(), []int{0, 1, 2}, 3) })
	c.health[0].set(false)
	c.waitFor("unhealthy node 0 released", func() bool { h := c.holders(); return h[0] == 0 && c.allHeld() })
	c.health[0].set(true)
	time.Sleep(time.Second)
	if h := c.holders(); h[0] != 0 {
		t.Fatalf("sticky policy gave node 0 VIPs back: %v", h)
	}
	// an operator moves a VIP back to node 0, once node 0 is eligible again
	vip := c.vips[0].VIP()
	c.waitFor("move accepted", func() bool { return c.nodes[2].Move(context.Background(), vip, "0", false) == nil })
	c.waitFor("moved VIP on node 0", func() bool {
		c.world.mu.Lock()
		defer c.world.mu.Unlock()
		return c.world.answering(0, vip, uint64(monoNow()))
	})
	c.checkNoDoubles()
	if err := c.nodes[2].Move(context.Background(), netip.MustParseAddr("198.18.9.9"), "0", false); err == nil {
		t.Fatal("move of an unknown VIP accepted")
	}
	if err := c.nodes[2].Move(context.Background(), vip, "7", false); err == nil {
		t.Fatal("move to an unknown node accepted")
	}
}

func TestMinorityHoldsNothing(t *testing.T) {
	c := startCluster(t, 3, 3, allocation.Automatic)
	c.waitFor("all held", c.allHeld)
	c.crash(1)
	c.crash(2)
	c.waitFor("node 0 alone answers for nothing", func() bool { return len(c.holders()) == 0 })
	c.checkNoDoubles()
}

// TestRestartKeepsVIPs: a node stopped for a restart keeps answering for
// its VIPs through the restart; a new run adopts them and nothing moves.
func TestRestartKeepsVIPs(t *testing.T) {
	c := startCluster(t, 3, 3, allocation.Automatic)
	c.waitFor("one VIP per node", func() bool { return balanced(c.holders(), []int{0, 1, 2}, 3) })
	before := c.holders()
	c.nodes[1].Stop(Restart)
	<-c.done[1]
	// the old run is gone; its data plane answers on
	for range 20 {
		time.Sleep(50 * time.Millisecond)
		if h := c.holders(); h[1] != before[1] {
			t.Fatalf("during the restart node 1 answers for %d VIPs, had %d", h[1], before[1])
		}
	}
	// a new run on the same data plane and address
	nd, err := New(testLogger(t).Named("1b"), c.nodes[1].cfg, nil, &fakeDP{world: c.world, node: 1}, c.health[1], nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.gossip[1].Shutdown()
	g, err := membership.New(testLogger(t), membership.Config{Addr: c.cfg[1].Addr, Port: nextPort,
		Key: membership.KeyFromSecret([]byte("test")), Timing: membership.FastTiming()}, nd)
	if err != nil {
		t.Fatal(err)
	}
	nd.SetGossip(g)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = nd.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; g.Shutdown() })
	for range 40 {
		time.Sleep(50 * time.Millisecond)
		if h := c.holders(); h[1] != before[1] || !c.allHeld() {
			t.Fatalf("after the restart: holders %v, before %v", h, before)
		}
	}
	c.checkNoDoubles()
}

func TestBadPinMessagesAreCounted(t *testing.T) {
	c := startCluster(t, 1, 2, allocation.Automatic)
	nd := c.nodes[0]
	for _, msg := range [][]byte{nil, {9}, {msgPin, 7}, {msgPin, wireVersion, 1}, encodePinMsg(5, pin{PNN: 0, Version: 1})} {
		nd.NotifyMsg(msg)
	}
	nd.NotifyMsg([]byte{ownership.TypeHeartbeat, ownership.WireVersion})
	if got := nd.BadMessages(); got != 6 {
		t.Fatalf("bad messages = %d, want 6", got)
	}
	nd.NotifyMsg(encodePinMsg(1, pin{PNN: 0, Version: 3, Origin: 0}))
	if got := nd.BadMessages(); got != 6 {
		t.Fatalf("a good message was counted bad")
	}
}

func FuzzDecodePins(f *testing.F) {
	f.Add(encodePinMsg(1, pin{PNN: 2, Version: 9, Origin: 1}))
	f.Add(encodePinState(map[int]pin{0: {PNN: 1, Version: 2}, 3: {PNN: -1, Version: 5}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		pins, err := decodePins(b, 8)
		if err != nil {
			return
		}
		for vip := range pins {
			if vip < 0 || vip >= 8 {
				t.Fatalf("accepted VIP index %d", vip)
			}
		}
		again, err := decodePins(encodePinState(pins), 8)
		if err != nil || len(again) != len(pins) {
			t.Fatalf("re-encode: %v", err)
		}
	})
}

func nodeHooks(hooks func(i int) Hooks, i int) Hooks {
	if hooks == nil {
		return nil
	}
	return hooks(i)
}

// TestDrainKeepsRouteToClients: a drained move leaves the old holder a
// route to the VIP's subnet through the interface the VIP was on, while
// its connections drain, and takes it away when the drain ends.
func TestDrainKeepsRouteToClients(t *testing.T) {
	c := startClusterIfaces(t, 3, 3, allocation.Sticky, nil, []string{"eth1"})
	c.waitFor("one VIP per node", func() bool { return balanced(c.holders(), []int{0, 1, 2}, 3) })
	vip := c.vips[0]
	from := c.holders()[0]
	to := (from + 1) % 3
	route := "eth1 198.18.1.0/24"
	c.world.mu.Lock()
	if c.world.flows == nil {
		c.world.flows = map[int]map[netip.Addr]int{}
	}
	if c.world.flows[from] == nil {
		c.world.flows[from] = map[netip.Addr]int{}
	}
	c.world.flows[from][vip.VIP()] = 1 // a connection that keeps the drain going
	c.world.mu.Unlock()
	c.waitFor("move accepted", func() bool { return c.nodes[from].Move(context.Background(), vip.VIP(), fmt.Sprint(to), false) == nil })
	hasRoute := func() bool {
		c.world.mu.Lock()
		defer c.world.mu.Unlock()
		return c.world.drainRoutes[from][route]
	}
	c.waitFor("the old holder drains with a route to the clients", func() bool {
		c.world.mu.Lock()
		onLo := c.world.addrs[from][(&fakeDP{node: from}).key("lo", vip.VIP())]
		c.world.mu.Unlock()
		return onLo && hasRoute()
	})
	c.world.mu.Lock()
	c.world.flows[from][vip.VIP()] = 0
	c.world.mu.Unlock()
	c.waitFor("the drain's route gone with its last connection", func() bool { return !hasRoute() })
	c.world.mu.Lock()
	defer c.world.mu.Unlock()
	for n, rs := range c.world.drainRoutes {
		if len(rs) != 0 {
			t.Errorf("node %d keeps drain routes %v", n, rs)
		}
	}
}
