package sim

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// Scenarios the issue names, each a fixed schedule under the simulator;
// the invariants of the random schedules (no VIP answered twice, no tickle
// of a node that answers) are checked at every instant here too.

// unmovedMark is where the cluster stood, for expectUnmoved: every VIP's
// holders, and the takes and drops so far.
type unmovedMark struct {
	holders      map[netip.Addr][]int
	takes, drops int
}

func (w *simWorld) unmovedMark() unmovedMark {
	return unmovedMark{holders: w.holders(), takes: w.takes, drops: w.drops}
}

// expectUnmoved fails t if, since m, a VIP changed holder or any VIP was
// taken or dropped during what.
func (w *simWorld) expectUnmoved(t *testing.T, m unmovedMark, what string) {
	t.Helper()
	for vip, h := range m.holders {
		if now := w.holders()[vip]; len(now) != 1 || now[0] != h[0] {
			t.Errorf("%s was on n%d, now on %v", vip, h[0], now)
		}
	}
	if w.takes != m.takes || w.drops != m.drops {
		w.dumpLog(t)
		t.Errorf("%s took %d VIPs and dropped %d", what, w.takes-m.takes, w.drops-m.drops)
	}
}

// converged starts a cluster and runs it until every VIP is answered.
func converged(t *testing.T, seed int64, nodes, vips int, timing ownership.Timing, lock bool) *simWorld {
	t.Helper()
	w := newSimWorld(seed, nodes, vips, timing, lock)
	w.keepLog = testing.Verbose()
	w.startAll(100 * time.Millisecond)
	w.runUntil(int64(3 * time.Second))
	if err := w.settled(200*time.Millisecond, -1); err != nil {
		w.dumpLog(t)
		t.Fatalf("not converged: %v", err)
	}
	return w
}

func (w *simWorld) dumpLog(t *testing.T) {
	t.Helper()
	for _, l := range w.log {
		t.Log(l)
	}
}

func (w *simWorld) ok(t *testing.T) {
	t.Helper()
	if len(w.violated) > 0 {
		w.dumpLog(t)
		t.Fatalf("seed %d: %s", w.seed, w.violated[0])
	}
}

// TestSimPowerCutFailover: a power cut of a VIP's holder has the VIP
// answered by a survivor within the lease plus a few milliseconds, with
// 3 nodes as with 16 (detection is the lease: it does not grow with the
// cluster), for the default and the fast timing.
func TestSimPowerCutFailover(t *testing.T) {
	for _, tc := range []struct {
		name   string
		timing ownership.Timing
		nodes  int
	}{
		{"default/3", ownership.DefaultTiming(), 3}, {"default/16", ownership.DefaultTiming(), 16},
		{"fast/3", ownership.FastTiming(), 3}, {"fast/16", ownership.FastTiming(), 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bound := tc.timing.Lease + 10*time.Millisecond
			var worst time.Duration
			trials := 10
			if tc.nodes > 3 {
				trials = 3 // as slow to simulate as they are many
			}
			for trial := range trials {
				w := converged(t, int64(100+trial), tc.nodes, 2*tc.nodes, tc.timing, false)
				vip := w.vips[trial%len(w.vips)].Addr
				old := w.holderOf(vip)
				// cut at a random point of the renewal period
				w.runUntil(w.now + w.rng.Int63n(int64(tc.timing.Renew)))
				w.powerCut(w.nodes[old])
				took, ok := w.until(2*time.Second, func() bool { h := w.holderOf(vip); return h >= 0 && h != old })
				w.ok(t)
				if !ok {
					w.dumpLog(t)
					t.Fatalf("trial %d: %s not answered 2 s after its holder n%d lost power", trial, vip, old)
				}
				worst = max(worst, took)
			}
			t.Logf("worst of %d power cuts: answered again after %v (lease %v)", trials, worst, tc.timing.Lease)
			if worst > bound {
				t.Errorf("a power cut left the VIP unanswered for %v, over the lease + 10 ms (%v)", worst, bound)
			}
		})
	}
}

// TestSimNetworkFlap is the flake seen in the lab: an 800 ms network cut
// of a third node. Nothing may answer twice, and the sessions of the nodes
// that were not cut are never reset: none of their connections is tickled
// by a takeover or reset by a release (VIPs may move back to the returning
// node afterwards as planned moves, which drain).
func TestSimNetworkFlap(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		w := converged(t, seed, 3, 6, ownership.DefaultTiming(), false)
		cut := int(seed % 3)
		w.isolate(cut, true)
		w.runUntil(w.now + int64(800*time.Millisecond))
		w.isolate(cut, false)
		w.runUntil(w.now + int64(3*time.Second))
		w.ok(t)
		for n := range 3 {
			if n != cut && (w.tickled[n] > 0 || w.resets[n] > 0) {
				w.dumpLog(t)
				t.Fatalf("seed %d: n%d was not cut, yet %d takeovers tickled its connections and it reset them in %d releases",
					seed, n, w.tickled[n], w.resets[n])
			}
		}
		if err := w.settled(time.Second, -1); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
	}
}

// TestSimNoFalseFailover: with nothing failing (delays jitter, messages
// reorder), nothing moves once the cluster has settled.
func TestSimNoFalseFailover(t *testing.T) {
	for _, nodes := range []int{3, 5, 9} {
		w := converged(t, int64(nodes), nodes, 2*nodes, ownership.DefaultTiming(), false)
		takes, drops := w.takes, w.drops
		for a := range w.links {
			for b := range w.links[a] {
				w.links[a][b].delay = [2]time.Duration{20 * time.Microsecond, 5 * time.Millisecond}
			}
		}
		w.runUntil(w.now + int64(60*time.Second))
		w.ok(t)
		if w.takes != takes || w.drops != drops {
			w.dumpLog(t)
			t.Errorf("%d nodes: %d takes and %d drops in a minute with nothing failing", nodes, w.takes-takes, w.drops-drops)
		}
	}
}

// TestSimConfigSkew: a node whose public addresses differ (one VIP more,
// lines reordered) holds nothing, and every node's snapshot says why.
func TestSimConfigSkew(t *testing.T) {
	w := newSimWorld(7, 3, 4, ownership.DefaultTiming(), false)
	n := w.nodes[1]
	n.vips = append([]ownership.VIP{{Addr: netip.MustParseAddr("198.18.1.250")}}, n.vips...)
	n.fp = simFingerprint(n.vips)
	w.startAll(100 * time.Millisecond)
	w.runUntil(int64(3 * time.Second))
	if err := w.settled(2*time.Second, 1); err != nil {
		w.dumpLog(t)
		t.Fatal(err)
	}
	w.ok(t)
	for _, other := range []int{0, 2} {
		sn := w.nodes[other].eng.Snapshot()
		if sn.Nodes[1].Skew == "" || sn.Nodes[1].Eligible {
			t.Errorf("n%d's view of n1: %+v, want the skew named and not eligible", other, sn.Nodes[1])
		}
	}
	if sn := n.eng.Snapshot(); sn.Nodes[1].Skew == "" {
		t.Errorf("n1 does not say its own configuration differs: %+v", sn.Nodes[1])
	} else {
		t.Logf("n1 says: %s", sn.Nodes[1].Skew)
	}
}

// TestSimIsolatedOwner7: a node of seven cut off with its links up stops
// answering at its deadline, its VIPs are answered by others only after
// that, and it lets them go once it hears of their newer epochs.
func TestSimIsolatedOwner7(t *testing.T) {
	w := converged(t, 3, 7, 14, ownership.DefaultTiming(), false)
	vip := w.vips[0].Addr
	old := w.holderOf(vip)
	oldEpoch := w.nodes[old].dp[vip].epoch
	w.isolate(old, true)
	took, ok := w.until(3*time.Second, func() bool { h := w.holderOf(vip); return h >= 0 && h != old })
	w.ok(t)
	if !ok {
		t.Fatalf("%s not taken over from the isolated n%d", vip, old)
	}
	t.Logf("taken over %v after the isolation", took)
	w.runUntil(w.now + int64(time.Second))
	w.isolate(old, false)
	w.runUntil(w.now + int64(time.Second))
	w.ok(t)
	// a slot held (or lapsed) is its own node's: its view's epoch is the slot's
	if s := vipView(w.nodes[old], vip); (s.State == "held" || s.State == "lapsed") && s.Epoch == oldEpoch {
		w.dumpLog(t)
		t.Errorf("n%d, back, still holds %s at its old epoch %d", old, vip, s.Epoch)
	}
}

// TestSimRestart: a daemon that restarts within the grace keeps its VIPs
// answered all along and nothing moves; one that stays away longer loses
// them after the grace, as after a crash.
func TestSimRestart(t *testing.T) {
	for _, tc := range []struct {
		down  time.Duration
		moves bool
	}{{800 * time.Millisecond, false}, {4 * time.Second, true}} {
		t.Run(fmt.Sprint(tc.down), func(t *testing.T) {
			timing := ownership.DefaultTiming()
			timing.Grace = 2 * time.Second
			w := converged(t, 11, 3, 6, timing, false)
			before := w.holders()
			n := w.nodes[0]
			n.stopping, n.restartIn = true, tc.down
			n.eng.Stop(n.local2(w.now), true)
			w.drain(n)
			gap := false
			moved := 0
			for i := range 6000 {
				w.runUntil(w.now + int64(time.Millisecond))
				for vip, h := range before {
					if h[0] == 0 && !tc.moves && !w.answering(n, vip, w.now) {
						gap = true
					}
				}
				// past the grace, before the daemon is back (it takes
				// its share back then)
				if i == int(timing.Grace/time.Millisecond)+800 {
					for vip, h := range before {
						if now := w.holders()[vip]; len(now) != 1 || now[0] != h[0] {
							moved++
						}
					}
				}
			}
			w.ok(t)
			if n.run != 2 {
				t.Fatalf("the daemon did not restart (run %d)", n.run)
			}
			if !tc.moves && (moved > 0 || gap) {
				w.dumpLog(t)
				t.Errorf("restart within the grace: %d VIPs moved, gap in answering %v", moved, gap)
			}
			if tc.moves && moved == 0 {
				t.Errorf("a daemon away past the grace kept its VIPs")
			}
		})
	}
}

// TestSimShutdownDrains: a stop without restart hands every VIP over as a
// planned move (connections drain) and then reports Stopped.
func TestSimShutdownDrains(t *testing.T) {
	w := converged(t, 5, 3, 6, ownership.DefaultTiming(), false)
	n := w.nodes[1]
	n.stopping = true
	n.eng.Stop(n.local2(w.now), false)
	drains := 0
	for _, o := range []int{0} {
		_ = o
	}
	out := n.eng.Ready()
	for _, d := range out.Drops {
		if !d.Drain {
			t.Errorf("shutdown drops %s without draining (%s)", w.vips[d.VIP].Addr, d.Reason)
		}
		drains++
	}
	w.execute(n, out)
	w.runUntil(w.now + int64(2*time.Second))
	w.ok(t)
	if drains == 0 {
		t.Fatal("the node held nothing to hand over")
	}
	if n.running {
		t.Error("the node never reported Stopped")
	}
	if err := w.settled(time.Second, 1); err != nil {
		t.Error(err)
	}
}

// TestSimMovesKeepConnections moves one VIP back and forth between nodes
// (fsha move: pins on every node), each move while the previous holder may
// still drain: a planned move never tickles a live node's connections, and
// the VIP always reaches its target.
func TestSimMovesKeepConnections(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		w := converged(t, 700+seed, 3, 3, ownership.DefaultTiming(), false)
		vip := w.vips[0].Addr
		for round := range 8 {
			from := w.holderOf(vip)
			to := (from + 1 + w.rng.Intn(2)) % 3
			pins := []int{to, ownership.None, ownership.None}
			for _, n := range w.nodes {
				n.eng.SetPins(n.local2(w.now), pins, nil)
				w.drain(n)
			}
			if _, ok := w.until(2*time.Second, func() bool { return w.holderOf(vip) == to }); !ok {
				w.dumpLog(t)
				t.Fatalf("seed %d round %d: %s not on n%d 2 s after the move from n%d", 700+seed, round, vip, to, from)
			}
			// the next move comes while the old holder may still drain
			w.runUntil(w.now + int64(100*time.Millisecond) + w.rng.Int63n(int64(time.Second)))
			w.ok(t)
		}
		for n, k := range w.tickled {
			if k > 0 {
				w.dumpLog(t)
				t.Fatalf("seed %d: planned moves tickled n%d's connections %d times", 700+seed, n, k)
			}
		}
	}
}

// TestSimTwoNodesLock: two nodes and a cluster lock; cut apart, the lock
// holder answers for every VIP, never both.
func TestSimTwoNodesLock(t *testing.T) {
	for seed := int64(1); seed <= 10; seed++ {
		w := converged(t, seed, 2, 4, ownership.DefaultTiming(), true)
		w.isolate(0, true)
		w.runUntil(w.now + int64(3*time.Second))
		w.ok(t)
		h := w.holders()
		if len(h) != 4 {
			w.dumpLog(t)
			t.Fatalf("seed %d: only %d of 4 VIPs answered while partitioned: %v", seed, len(h), h)
		}
		for vip, who := range h {
			if who[0] != w.lockBy {
				t.Fatalf("seed %d: %s answered by n%d, the lock is n%d's", seed, vip, who[0], w.lockBy)
			}
		}
		w.isolate(0, false)
		w.runUntil(w.now + int64(4*time.Second))
		w.ok(t)
		if err := w.settled(time.Second, -1); err != nil {
			w.dumpLog(t)
			t.Fatalf("seed %d after healing: %v", seed, err)
		}
	}
}

// TestSimFrozenHolder: a holder stopped (SIGSTOP) for two seconds stops
// answering at its deadline, is replaced, and lets go when it wakes up.
func TestSimFrozenHolder(t *testing.T) {
	w := converged(t, 9, 3, 3, ownership.DefaultTiming(), false)
	vip := w.vips[0].Addr
	old := w.holderOf(vip)
	n := w.nodes[old]
	n.paused = true
	_, ok := w.until(2*time.Second, func() bool { h := w.holderOf(vip); return h >= 0 && h != old })
	w.ok(t)
	if !ok {
		t.Fatal("not taken over from the frozen holder")
	}
	w.resume(n)
	w.runUntil(w.now + int64(time.Second))
	w.ok(t)
	if st := vipView(n, vip).State; st != "idle" {
		t.Errorf("the thawed holder still has the VIP in state %v", st)
	}
}

// TestSimRollingRestart: every node's daemon restarted in turn, each back
// within the grace, moves no VIP and drops none, whatever placement the
// cluster converged to (a restarted node, still starting, keeps what it
// adopted and the others keep theirs: no rebalance).
func TestSimRollingRestart(t *testing.T) {
	for _, tc := range []struct{ nodes, vips int }{{3, 3}, {3, 6}, {5, 7}} {
		for seed := int64(1); seed <= 8; seed++ {
			t.Run(fmt.Sprintf("%dn%dv/seed%d", tc.nodes, tc.vips, seed), func(t *testing.T) {
				w := converged(t, seed, tc.nodes, tc.vips, ownership.DefaultTiming(), false)
				w.runUntil(w.now + int64(2*time.Second))
				since := w.unmovedMark()
				for _, n := range w.nodes {
					n.stopping, n.restartIn = true, time.Second
					n.eng.Stop(n.local2(w.now), true)
					w.drain(n)
					// the new daemon's health checks answer 300 ms after
					// its start: until then it is not healthy, for want
					// of an answer
					n.local = ownership.Local{HealthPending: true}
					w.runUntil(w.now + int64(1300*time.Millisecond))
					if n.run < 2 || !n.running {
						t.Fatalf("n%d did not restart", n.pnn)
					}
					n.local = ownership.Local{Healthy: true}
					n.eng.SetLocal(n.local2(w.now), n.local)
					w.drain(n)
					w.runUntil(w.now + int64(1700*time.Millisecond))
				}
				w.ok(t)
				w.expectUnmoved(t, since, "the rolling restart")
			})
		}
	}
}

// TestSimPowerCutAfterRestart: a node whose daemon restarted (SIGTERM,
// back within the grace) and then loses power a second later is failed
// over like any other, within the lease: the long promises that covered
// its restart are given back once it renews again. (They were kept for
// the whole grace: a power cut up to 10 s after a restart left its VIPs
// unanswered for the rest of it.)
func TestSimPowerCutAfterRestart(t *testing.T) {
	timing := ownership.DefaultTiming()
	bound := timing.Lease + 10*time.Millisecond
	for trial := range 5 {
		w := converged(t, int64(300+trial), 3, 6, timing, false)
		n := w.nodes[0]
		var held []netip.Addr
		for vip, h := range w.holders() {
			if len(h) == 1 && h[0] == 0 {
				held = append(held, vip)
			}
		}
		if len(held) == 0 {
			t.Fatalf("trial %d: n0 holds nothing", trial)
		}
		n.stopping, n.restartIn = true, 800*time.Millisecond
		n.eng.Stop(n.local2(w.now), true)
		w.drain(n)
		w.runUntil(w.now + int64(2*time.Second) + w.rng.Int63n(int64(timing.Renew)))
		if n.run != 2 {
			t.Fatalf("trial %d: the daemon did not restart (run %d)", trial, n.run)
		}
		w.powerCut(n)
		took, ok := w.until(15*time.Second, func() bool {
			for _, vip := range held {
				if h := w.holderOf(vip); h < 0 || h == 0 {
					return false
				}
			}
			return true
		})
		w.ok(t)
		if !ok {
			w.dumpLog(t)
			t.Fatalf("trial %d: n0's VIPs not answered 15 s after its power cut", trial)
		}
		t.Logf("trial %d: n0's %d VIPs answered again %v after the power cut (restart 2 s before)", trial, len(held), took)
		if took > bound {
			t.Errorf("trial %d: a power cut 2 s after a restart left VIPs unanswered for %v, over the lease + 10 ms (%v)", trial, took, bound)
		}
	}
}

// TestTakeEndsDrain: a VIP taken back while it drained here is no longer
// draining here once the take is done, whatever order the executor's
// word that the drain ended (SetDraining) and the release's result
// arrive in (the node's loop reads them from two channels: in the lab a
// VIP stayed "held, draining by itself" for good and the cluster never
// converged).
func TestTakeEndsDrain(t *testing.T) {
	w := converged(t, 7, 3, 3, ownership.DefaultTiming(), false)
	n := w.nodes[0]
	i := -1
	for j, v := range n.vips {
		if h := w.holderOf(v.Addr); h == 0 {
			i = j
		}
	}
	if i < 0 {
		t.Fatal("n0 holds nothing")
	}
	now := n.local2(w.now)
	// the drain's end came first, the release's result (drain) last
	n.eng.SetDraining(now, i, false)
	n.eng.AdoptDraining(n.vips[i].Addr)
	n.eng.Done(now, ownership.Result{VIP: i, Epoch: vipView(n, n.vips[i].Addr).Epoch, Take: true})
	for _, v := range n.eng.Snapshot().VIPs {
		if v.Addr == n.vips[i].Addr && len(v.Drainers) > 0 {
			t.Fatalf("%s held by n0 after its take, drainers %v", v.Addr, v.Drainers)
		}
	}
}

// TestSimRejoinHoldDown: a node back from a partition gets no VIP for a
// HoldDown after it is heard again (its replicas of the connections made
// while it was away may still be on their way, and a planned move to it
// would reset the ones it lacks), then gets its share back.
func TestSimRejoinHoldDown(t *testing.T) {
	for seed := int64(1); seed <= 10; seed++ {
		timing := ownership.DefaultTiming()
		w := converged(t, seed, 3, 3, timing, false)
		cut := int(seed % 3)
		w.isolate(cut, true)
		w.runUntil(w.now + int64(time.Second))
		if held := w.heldBy(cut); len(held) > 0 {
			t.Fatalf("seed %d: n%d still answers for %v after 1 s cut off", seed, cut, held)
		}
		w.isolate(cut, false)
		took, ok := w.until(timing.HoldDown+3*time.Second, func() bool { return len(w.heldBy(cut)) > 0 })
		w.ok(t)
		if !ok {
			w.dumpLog(t)
			t.Fatalf("seed %d: n%d got no VIP back within %v of the heal", seed, cut, timing.HoldDown+3*time.Second)
		}
		// the holder counts the hold-down on its own clock, which may
		// run fast by up to Drift
		if took < time.Duration(float64(timing.HoldDown)*(1-timing.Drift)) {
			w.dumpLog(t)
			t.Fatalf("seed %d: n%d answered for a VIP %v after the heal, within the hold-down (%v)", seed, cut, took, timing.HoldDown)
		}
	}
}

// vipView is node n's engine's view of vip (its own slot's state and, for
// a slot it holds, its epoch).
func vipView(n *simNode, vip netip.Addr) ownership.VIPView {
	for _, v := range n.eng.Snapshot().VIPs {
		if v.Addr == vip {
			return v
		}
	}
	return ownership.VIPView{}
}

// heldBy lists the VIPs node answers for alone.
func (w *simWorld) heldBy(node int) []netip.Addr {
	var out []netip.Addr
	for vip, h := range w.holders() {
		if len(h) == 1 && h[0] == node {
			out = append(out, vip)
		}
	}
	return out
}
