package node

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/dataplane"
)

// fakeDP records which VIPs a node has up; the shared world checks that no
// VIP is ever up on two nodes at once.
type fakeDP struct {
	world *world
	node  int
}

type world struct {
	mu      sync.Mutex
	up      map[netip.Prefix]int // -> node
	doubles []string
}

func (d *fakeDP) AddVIP(_ string, p netip.Prefix) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if other, ok := d.world.up[p]; ok && other != d.node {
		d.world.doubles = append(d.world.doubles, fmt.Sprintf("%s on %d and %d", p, other, d.node))
	}
	d.world.up[p] = d.node
	return nil
}

func (d *fakeDP) RemoveVIP(_ string, p netip.Prefix) error {
	d.world.mu.Lock()
	defer d.world.mu.Unlock()
	if d.world.up[p] == d.node {
		delete(d.world.up, p)
	}
	return nil
}

func (d *fakeDP) Announce(context.Context, string, netip.Addr) (time.Time, error) {
	return time.Now(), nil
}
func (d *fakeDP) RenewLease(time.Duration) error { return nil }
func (d *fakeDP) TickleVIP(context.Context, string, netip.Addr, []int, bool) (dataplane.TickleResult, error) {
	return dataplane.TickleResult{}, nil
}
func (d *fakeDP) DropPeerFlows(int, netip.Addr) (int, error)      { return 0, nil }
func (d *fakeDP) CountFlows(netip.Addr) (int, error)              { return 0, nil }
func (d *fakeDP) Steer(netip.Addr, int, [6]byte, bool, int) error { return nil }
func (d *fakeDP) KillVIP(netip.Addr) (dataplane.KillStats, error) { return dataplane.KillStats{}, nil }
func (d *fakeDP) ExpireLease() error                              { return nil }

type fakeHealth struct {
	mu      sync.Mutex
	healthy bool
	ch      chan struct{}
}

func (h *fakeHealth) Healthy() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.healthy
}
func (h *fakeHealth) LinkUp(string) bool       { return true }
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
	portMu.Lock()
	nextPort++
	port := nextPort
	portMu.Unlock()
	c := &testCluster{t: t, world: &world{up: map[netip.Prefix]int{}}}
	for i := range nNodes {
		c.cfg = append(c.cfg, config.Node{PNN: i, Addr: netip.AddrFrom4([4]byte{127, 0, 1, byte(1 + i)})})
	}
	for i := range nVIPs {
		c.vips = append(c.vips, config.PublicAddress{
			Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)}), 24), Interfaces: []string{"eth0"},
		})
	}
	key := membership.KeyFromSecret([]byte("test"))
	for i := range nNodes {
		h := &fakeHealth{healthy: true, ch: make(chan struct{}, 1)}
		timing := DefaultTiming()
		timing.HoldDown = 200 * time.Millisecond
		nd, err := New(zaptest.NewLogger(t).Named(fmt.Sprint(i)), Config{
			Nodes: c.cfg, Self: i, VIPs: c.vips, Policy: policy, Timing: timing,
			StateFile: t.TempDir() + "/state.json",
		}, nil, &fakeDP{world: c.world, node: i}, h, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		g, err := membership.New(zaptest.NewLogger(t), membership.Config{
			Addr: c.cfg[i].Addr, Port: port, Key: key, Timing: membership.FastTiming(),
		}, nd)
		if err != nil {
			t.Fatal(err)
		}
		nd.gossip = g
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); nd.Run(ctx) }()
		c.nodes, c.gossip, c.health = append(c.nodes, nd), append(c.gossip, g), append(c.health, h)
		c.cancel, c.done = append(c.cancel, cancel), append(c.done, done)
		t.Cleanup(func() { cancel(); <-done; g.Shutdown() })
	}
	return c
}

// crash stops node i as a power-down would: no release, no leave.
func (c *testCluster) crash(i int) {
	c.gossip[i].Shutdown()
	// its addresses vanish with it
	c.world.mu.Lock()
	for p, n := range c.world.up {
		if n == i {
			delete(c.world.up, p)
		}
	}
	c.world.mu.Unlock()
}

func (c *testCluster) holders() map[int]int {
	c.world.mu.Lock()
	defer c.world.mu.Unlock()
	out := map[int]int{}
	for _, n := range c.world.up {
		out[n]++
	}
	return out
}

func (c *testCluster) allHeld() bool {
	c.world.mu.Lock()
	defer c.world.mu.Unlock()
	return len(c.world.up) == len(c.vips)
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
		c.t.Fatalf("VIPs up on two nodes: %v", c.world.doubles)
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
	st, _ := c.nodes[0].Status(context.Background())
	if !st.Quorum || st.Nodes[2].State != "DISCONNECTED" {
		t.Fatalf("status after crash: %+v", st)
	}

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
	// an operator moves a VIP back to node 0
	vip := c.vips[0].VIP()
	if err := c.nodes[2].Move(context.Background(), vip, "0", false); err != nil {
		t.Fatal(err)
	}
	c.waitFor("moved VIP on node 0", func() bool {
		c.world.mu.Lock()
		defer c.world.mu.Unlock()
		return c.world.up[c.vips[0].Prefix] == 0
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
	c.waitFor("node 0 alone lost quorum and released", func() bool { return len(c.holders()) == 0 })
}

func TestBadPinMessagesAreCounted(t *testing.T) {
	c := startCluster(t, 1, 2, allocation.Automatic)
	nd := c.nodes[0]
	for _, msg := range [][]byte{nil, {9}, {msgPin, 7}, {msgPin, wireVersion, 1}, encodePinMsg(5, pin{PNN: 0, Version: 1})} {
		nd.NotifyMsg(msg)
	}
	if got := nd.BadMessages(); got != 5 {
		t.Fatalf("bad messages = %d, want 5", got)
	}
	nd.NotifyMsg(encodePinMsg(1, pin{PNN: 0, Version: 3, Origin: 0}))
	if got := nd.BadMessages(); got != 5 {
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
