package sim

import (
	"fmt"
	"math/rand"
	"net/netip"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// World is a simulated cluster for callers outside this package (the
// bench's scale suite): nodes 0..n-1 holding the VIPs 198.18.1.10 and up,
// every node healthy, links delaying messages 50-500 µs, clocks drifting
// within the timing's bound. Times are the simulation's real time since
// the start; the invariants are checked at every event, as in the tests.
type World struct{ w *simWorld }

// NewWorld builds a cluster of nodes with vips VIPs (at most 245), seeded:
// one seed gives one run.
func NewWorld(seed int64, nodes, vips int, timing ownership.Timing) (*World, error) {
	if nodes < 1 || vips < 1 || vips > 245 {
		return nil, fmt.Errorf("%d nodes and %d VIPs: want at least one node and 1 to 245 VIPs", nodes, vips)
	}
	if err := timing.Validate(); err != nil {
		return nil, err
	}
	return &World{w: newSimWorld(seed, nodes, vips, timing, false)}, nil
}

// Start boots every node at a random instant within spread.
func (w *World) Start(spread time.Duration) { w.w.startAll(spread) }

// Run advances the simulation by d.
func (w *World) Run(d time.Duration) { w.w.runUntil(w.w.now + int64(d)) }

// Now is the simulated time since the start.
func (w *World) Now() time.Duration { return time.Duration(w.w.now) }

// Settled runs the simulation for span and fails unless every VIP is
// answered by exactly one node all along (sampled every 5 ms).
func (w *World) Settled(span time.Duration) error { return w.w.settled(span, -1) }

// VIPs lists the VIPs in order.
func (w *World) VIPs() []netip.Addr {
	out := make([]netip.Addr, len(w.w.vips))
	for i, v := range w.w.vips {
		out[i] = v.Addr
	}
	return out
}

// Holder is the one node whose data plane answers for vip now, or -1
// (none, or several: a violation).
func (w *World) Holder(vip netip.Addr) int {
	who := -1
	for _, n := range w.w.nodes {
		if w.w.answering(n, vip, w.w.now) {
			if who >= 0 {
				return -1
			}
			who = n.pnn
		}
	}
	return who
}

// PowerCut turns node off: its daemon, data plane and promises are gone.
func (w *World) PowerCut(node int) { w.w.powerCut(w.w.nodes[node]) }

// Isolate cuts every link to and from node (on) or restores them; its
// daemon runs on.
func (w *World) Isolate(node int, on bool) { w.w.isolate(node, on) }

// Until runs the simulation in steps of step until cond holds or limit
// has passed; it returns how long that took and whether cond held.
func (w *World) Until(limit, step time.Duration, cond func() bool) (time.Duration, bool) {
	start := w.w.now
	for w.w.now-start <= int64(limit) && len(w.w.violated) == 0 {
		if cond() {
			return time.Duration(w.w.now - start), true
		}
		w.w.runUntil(w.w.now + int64(step))
	}
	return time.Duration(w.w.now - start), false
}

// Rand is the world's seeded source: a caller's random choices drawn from
// it keep the run reproducible from the seed.
func (w *World) Rand() *rand.Rand { return w.w.rng }

// Violations are the invariants broken so far (the simulation stops at
// the first).
func (w *World) Violations() []string { return w.w.violated }

// Moves counts the takes and drops the nodes' engines asked for so far.
func (w *World) Moves() (takes, drops int) { return w.w.takes, w.w.drops }

// Traffic is each node's ownership messages so far.
func (w *World) Traffic() []Traffic { return append([]Traffic(nil), w.w.traffic...) }
