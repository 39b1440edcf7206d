package sim

import (
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

var (
	simSeed      = flag.Int64("sim.seed", 0, "replay this simulator seed only (with -v: its log)")
	simSchedules = flag.Int("sim.schedules", 0, "random schedules to run (default 2000; FSHA_SIM_SCHEDULES)")
)

func schedules() int {
	if *simSchedules > 0 {
		return *simSchedules
	}
	if v, err := strconv.Atoi(os.Getenv("FSHA_SIM_SCHEDULES")); err == nil && v > 0 {
		return v
	}
	return 2000
}

// simTiming is the default timing with a short restart grace, so that a
// schedule with restarts settles within seconds.
func simTiming() ownership.Timing {
	t := ownership.DefaultTiming()
	t.Grace = 1500 * time.Millisecond
	return t
}

// faultKind is one kind of failure the random schedules inject.
type faultKind int

const (
	fPartition faultKind = iota
	fOneWay
	fIsolate
	fLoss
	fDup
	fDelay
	fPause
	fCrash
	fRestart
	fPowerCut
	fUnhealthy
	fDisable
	fShutdown
	fKinds
)

var faultNames = [...]string{"partition", "one-way partition", "isolate", "loss", "duplication", "delay",
	"pause", "daemon crash", "graceful restart", "power cut", "unhealthy", "disable", "shutdown"}

// inject schedules one random fault starting at t.
func (w *simWorld) inject(k faultKind, t time.Duration) {
	r := w.rng
	nn := len(w.nodes)
	dur := time.Duration(50+r.Intn(1950)) * time.Millisecond
	n := w.nodes[r.Intn(nn)]
	what := fmt.Sprintf("%s of n%d for %v", faultNames[k], n.pnn, dur)
	set := func(fn func(a, b int) bool, on func(l *simLink), off func(l *simLink)) {
		w.at(t, what, func() {
			for a := range nn {
				for b := range nn {
					if a != b && fn(a, b) {
						on(&w.links[a][b])
					}
				}
			}
		})
		w.at(t+dur, "end of "+what, func() {
			for a := range nn {
				for b := range nn {
					if a != b && fn(a, b) {
						off(&w.links[a][b])
					}
				}
			}
		})
	}
	side := make([]bool, nn)
	for i := range side {
		side[i] = r.Intn(2) == 0
	}
	side[n.pnn] = true
	switch k {
	case fPartition:
		what = fmt.Sprintf("partition %v for %v", side, dur)
		set(func(a, b int) bool { return side[a] != side[b] },
			func(l *simLink) { l.blocked = true }, func(l *simLink) { l.blocked = false })
	case fOneWay:
		what = fmt.Sprintf("one-way partition from %v for %v", side, dur)
		set(func(a, b int) bool { return side[a] && !side[b] },
			func(l *simLink) { l.blocked = true }, func(l *simLink) { l.blocked = false })
	case fIsolate:
		set(func(a, b int) bool { return a == n.pnn || b == n.pnn },
			func(l *simLink) { l.blocked = true }, func(l *simLink) { l.blocked = false })
	case fLoss:
		p := 0.1 + 0.5*r.Float64()
		what = fmt.Sprintf("%.0f%% loss on n%d's links for %v", 100*p, n.pnn, dur)
		set(func(a, b int) bool { return a == n.pnn || b == n.pnn },
			func(l *simLink) { l.loss = p }, func(l *simLink) { l.loss = 0 })
	case fDup:
		set(func(a, b int) bool { return true },
			func(l *simLink) { l.dup = 0.3 }, func(l *simLink) { l.dup = 0 })
	case fDelay:
		set(func(a, b int) bool { return a == n.pnn || b == n.pnn },
			func(l *simLink) { l.delay = [2]time.Duration{time.Millisecond, 30 * time.Millisecond} },
			func(l *simLink) { l.delay = [2]time.Duration{50 * time.Microsecond, 500 * time.Microsecond} })
	case fPause:
		w.at(t, what, func() {
			if n.running {
				n.paused = true
			}
		})
		w.at(t+dur, "end of "+what, func() { w.resume(n) })
	case fCrash:
		w.at(t, what, func() {
			if n.running {
				w.crashDaemon(n)
			}
		})
		w.at(t+dur, "end of "+what, func() {
			if n.powered && !n.running {
				w.startDaemon(n)
			}
		})
	case fRestart:
		w.at(t, what, func() {
			if !n.running || n.paused || n.stopping {
				return
			}
			n.stopping, n.restartIn = true, dur
			n.eng.Stop(n.local2(w.now), true)
			w.drain(n)
		})
		// the executor's own timeout: exit anyway after a second
		w.at(t+time.Second, "", func() {
			if n.stopping && n.running {
				w.logf("n%d restart: stop timed out, exiting", n.pnn)
				n.stopping = false
				w.crashDaemon(n)
				w.at(time.Duration(w.now)+n.restartIn, "", func() {
					if n.powered && !n.running {
						w.startDaemon(n)
					}
				})
			}
		})
	case fPowerCut:
		w.at(t, what, func() {
			w.crashDaemon(n)
			n.powered = false
			n.dp = map[netip.Addr]*dpEntry{}
			n.persisted = nil
		})
		w.at(t+dur, "end of "+what, func() { w.powerUp(n) })
	case fUnhealthy, fDisable:
		w.at(t, what, func() {
			if k == fUnhealthy {
				n.local.Healthy = false
			} else {
				n.local.Disabled = true
			}
			if n.running && !n.paused {
				n.eng.SetLocal(n.local2(w.now), n.local)
				w.drain(n)
			}
		})
		w.at(t+dur, "end of "+what, func() {
			n.local = ownership.Local{Healthy: true}
			if n.running && !n.paused {
				n.eng.SetLocal(n.local2(w.now), n.local)
				w.drain(n)
			}
		})
	case fShutdown:
		w.at(t, what, func() {
			if !n.running || n.paused || n.stopping {
				return
			}
			n.stopping, n.restartIn = true, dur
			n.eng.Stop(n.local2(w.now), false)
			w.drain(n)
		})
	}
}

func (w *simWorld) resume(n *simNode) {
	if !n.paused {
		return
	}
	n.paused = false
	if !n.running {
		return
	}
	inbox := n.inbox
	n.inbox = nil
	now := n.local2(w.now)
	for _, e := range inbox {
		n.eng.Receive(now, e.msg)
	}
	n.eng.SetLocal(now, n.local)
	w.drain(n)
}

func (w *simWorld) powerUp(n *simNode) {
	if n.powered {
		return
	}
	n.powered = true
	w.push(&simEvent{at: w.now + int64(200*time.Millisecond), kind: evFault, fault: func() {
		if n.powered && !n.running {
			n.bootedAt = w.now
			w.startDaemon(n)
		}
	}})
}

// healAll ends every fault: links, processes, fitness.
func (w *simWorld) healAll() {
	for a := range w.links {
		for b := range w.links[a] {
			w.links[a][b] = simLink{delay: [2]time.Duration{50 * time.Microsecond, 500 * time.Microsecond}}
		}
	}
	for _, n := range w.nodes {
		n.local = ownership.Local{Healthy: true}
		switch {
		case !n.powered:
			w.powerUp(n)
		case !n.running && !n.stopping:
			w.startDaemon(n)
		case n.paused:
			w.resume(n)
		default:
			if n.running {
				n.eng.SetLocal(n.local2(w.now), n.local)
				w.drain(n)
			}
		}
	}
}

// schedule is one random run: its shape comes from the seed alone.
type schedule struct {
	nodes, vips int
	lock        bool
	skew        bool
	faults      []string
}

func runSchedule(seed int64, keepLog bool) (*simWorld, schedule, error) {
	w := newSimWorld(seed, 0, 0, simTiming(), false)
	r := w.rng
	sc := schedule{nodes: 3 + r.Intn(7), vips: 1 + r.Intn(8)}
	if r.Intn(8) == 0 {
		sc.nodes, sc.lock = 2, true
	}
	sc.skew = sc.nodes >= 3 && r.Intn(6) == 0
	w = newSimWorld(seed, sc.nodes, sc.vips, simTiming(), sc.lock)
	w.keepLog = keepLog
	r = w.rng
	skewed := -1
	if sc.skew {
		// one node's public_addresses has one VIP more and lines reordered
		n := w.nodes[r.Intn(sc.nodes)]
		skewed = n.pnn
		n.vips = append(n.vips, ownership.VIP{Addr: netip.AddrFrom4([4]byte{198, 18, 1, 250})})
		n.vips[0], n.vips[len(n.vips)-1] = n.vips[len(n.vips)-1], n.vips[0]
		n.fp = simFingerprint(n.vips)
	}
	w.startAll(300 * time.Millisecond)
	w.runUntil(int64(2 * time.Second))
	faultEnd := 2*time.Second + time.Duration(1+r.Intn(4))*time.Second
	for range 1 + r.Intn(8) {
		k := faultKind(r.Intn(int(fKinds)))
		start := 2*time.Second + time.Duration(r.Int63n(int64(faultEnd-2*time.Second)))
		w.inject(k, start)
		sc.faults = append(sc.faults, faultNames[k])
	}
	w.runUntil(int64(faultEnd + time.Second))
	w.healAll()
	// everything settles within the restart grace (a node that was
	// restarting or lost its promises) plus a few leases, and the
	// hold-downs before VIPs move back to a node heard again: a restarted
	// node's own (while it starts) and then its peers' (once it is back
	// after a silence), which can follow one another
	w.runUntil(w.now + int64(simTiming().MaxGrant()+2*time.Second+2*simTiming().HoldDown))
	if len(w.violated) > 0 {
		return w, sc, fmt.Errorf("%s", w.violated[0])
	}
	if err := w.settled(time.Second, skewed); err != nil {
		return w, sc, err
	}
	return w, sc, nil
}

// TestSimRandomSchedules runs seeded random schedules of 2-9 nodes with
// partitions (symmetric and one-way), loss, duplication, delay and
// reordering, paused, crashed, restarted and powered-off nodes, unhealthy
// and disabled nodes, config skew and the two-node lock, and asserts at
// every simulated instant that no VIP is answered by two nodes (counting
// each node's data-plane deadline on its own drifting clock), that a
// takeover never tickles the connections of a node that still answers,
// and that once every fault is over each VIP is answered by exactly one
// node (never by a node whose configuration differs from the majority's).
func TestSimRandomSchedules(t *testing.T) {
	if *simSeed != 0 {
		w, sc, err := runSchedule(*simSeed, true)
		for _, l := range w.log {
			t.Log(l)
		}
		t.Logf("schedule %+v", sc)
		if err != nil {
			t.Fatalf("seed %d: %v", *simSeed, err)
		}
		return
	}
	n := schedules()
	if testing.Short() {
		n = min(n, 200)
	}
	var (
		next     atomic.Int64
		mu       sync.Mutex
		failures []string
		wg       sync.WaitGroup
		stats    [fKinds + 1]atomic.Int64
	)
	base := time.Now().UnixNano() % 1_000_000_000
	if v := os.Getenv("FSHA_SIM_BASE"); v != "" {
		base, _ = strconv.ParseInt(v, 10, 64)
	}
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				seed := base*10000 + i
				_, sc, err := runSchedule(seed, false)
				for _, f := range sc.faults {
					for k, name := range faultNames {
						if name == f {
							stats[k].Add(1)
						}
					}
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, fmt.Sprintf("seed %d (%d nodes, %d VIPs, lock %v, skew %v, faults %s): %v\n"+
						"  replay: go test ./control/ownership/sim -run TestSimRandomSchedules -v -sim.seed=%d",
						seed, sc.nodes, sc.vips, sc.lock, sc.skew, strings.Join(sc.faults, ", "), err, seed))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	var counts []string
	for k, name := range faultNames {
		counts = append(counts, fmt.Sprintf("%s %d", name, stats[k].Load()))
	}
	t.Logf("%d schedules (seeds %d1..%d%d); faults injected: %s", n, base, base, n, strings.Join(counts, ", "))
	if len(failures) > 0 {
		t.Fatalf("%d of %d schedules failed; first ones:\n%s", len(failures), n, strings.Join(failures[:min(5, len(failures))], "\n"))
	}
}
