package sim

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// TestSimRestartOfNeededVoter: ctdb reloadnodes with a node listed and not
// running. Four nodes in the nodes file, three running: a majority is all
// three, so while one daemon restarts (a reload restarts in place) the
// other two cannot renew on their own. Their VIPs must stay answered all
// along: the holders ask for the restart's grace while the restarting
// voter can still promise it, and it waits for them before it exits. No
// VIP moves or lapses, in turn on every node. The same in a two-node
// cluster with the lock (which vouches for a lease only, and only a while
// after it is taken).
func TestSimRestartOfNeededVoter(t *testing.T) {
	for _, tc := range []struct {
		nodes, running int
		lock           bool
	}{{4, 3, false}, {2, 2, true}} {
		for _, tight := range []bool{false, true} {
			for seed := int64(1); seed <= 8; seed++ {
				t.Run(fmt.Sprintf("%dof%d/tight=%v/seed%d", tc.running, tc.nodes, tight, seed), func(t *testing.T) {
					restartNeededVoter(t, seed, tc.nodes, tc.running, tc.lock, tight)
				})
			}
		}
	}
}

// restartNeededVoter restarts every running node in turn, twice over
// (a reload adding a node, then one deleting it), and checks that every
// VIP stays answered by the node that held it. tight: the next restart
// begins as soon as the last restarted node hears a majority again (an
// operator's loop that waits for `fsha status` only), before the
// holders have shortened the deadlines the last restart's grace gave.
func restartNeededVoter(t *testing.T, seed int64, nodes, running int, lock, tight bool) {
	w := newSimWorld(seed, nodes, 6, ownership.DefaultTiming(), lock)
	w.keepLog = testing.Verbose()
	for _, n := range w.nodes[running:] {
		w.powerCut(n) // listed, never started
	}
	for _, n := range w.nodes[:running] {
		w.at(time.Duration(w.rng.Int63n(int64(100*time.Millisecond))), fmt.Sprintf("n%d boots", n.pnn), func() {
			n.bootedAt = w.now
			w.startDaemon(n)
		})
	}
	// a cold start waits for the listed nodes it has not heard
	w.runUntil(int64(ownership.ColdStartWait + 3*time.Second))
	w.ok(t)
	if err := w.settled(200*time.Millisecond, -1); err != nil {
		w.dumpLog(t)
		t.Fatalf("not converged: %v", err)
	}
	before := w.holders()
	since := w.unmovedMark()
	gaps := map[netip.Addr]time.Duration{}
	step := func() {
		w.runUntil(w.now + int64(time.Millisecond))
		for vip, h := range before {
			if !w.answering(w.nodes[h[0]], vip, w.now) {
				gaps[vip] += time.Millisecond
			}
		}
	}
	for range 2 {
		for _, n := range w.nodes[:running] {
			run := n.run
			n.stopping, n.restartIn = true, time.Second
			n.eng.Stop(n.local2(w.now), true)
			w.drain(n)
			n.local = ownership.Local{HealthPending: true}
			for i := 0; i < 3000 && !(n.run > run && n.running && n.eng.Snapshot().Quorum); i++ {
				step()
			}
			w.ok(t)
			if n.run == run || !n.running || !n.eng.Snapshot().Quorum {
				w.dumpLog(t)
				t.Fatalf("n%d did not restart with quorum within 3 s", n.pnn)
			}
			n.local = ownership.Local{Healthy: true}
			n.eng.SetLocal(n.local2(w.now), n.local)
			w.drain(n)
			if !tight {
				for range 1700 {
					step()
				}
			}
		}
	}
	for range 1000 {
		step()
	}
	w.ok(t)
	for vip, gap := range gaps {
		t.Errorf("while the nodes restarted, %s (on n%d) went unanswered for %v", vip, before[vip][0], gap)
	}
	w.expectUnmoved(t, since, "the restarts")
}
