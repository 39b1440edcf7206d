package lab

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// The lab's nodes share one kernel. A stall of that kernel stops every
// node's daemon at once, and each one's leases lapse together: an artifact
// of the lab, not a failure a real cluster (one kernel per node) would see.
// Such stalls happen on a small VM while another node starts: creating the
// flows map (an LRU hash of a million entries, preallocated) keeps one CPU
// in the kernel for about 300 ms without a point where it could be
// preempted, even by a real-time task. A stall of one CPU is enough: the
// receive work of a veth (its NAPI) that was scheduled on that CPU waits
// with it, the veth's ring fills, and the other nodes' heartbeats through
// it are dropped (their sends fail with ENOBUFS) although their daemons
// run on the other CPU.
//
// So the lab has one witness per CPU: a thread of the test at fsha's
// real-time priority, bound to that CPU, naps 5 ms at a time (a plain
// nanosleep, which the kernel's timer wakes without the Go runtime); a nap
// that ends more than machineStall late, or naps late by more than that
// in all within stallWindow, are recorded as a fault of the whole lab
// ("machine stall"), so that the failover accounting explains
// what it caused and nothing else. It is an independent witness: it sees
// the stall only if the kernel kept a real-time thread off its CPU.
const machineStall = 150 * time.Millisecond

// stallWindow: stalls that each stay under machineStall but together keep
// a witness off its CPU for more than machineStall within this window
// count as one stall. Creating a preallocated map is not one long stall
// on every kernel: it yields at points, and a real-time thread runs a few
// milliseconds between chunks of 50 to 130 ms (seen here as 57, 59 and
// 127 ms within 358 ms). A lease (250 ms) lapses all the same.
const stallWindow = 2 * machineStall

// stallLogOver: the witnesses log naps late by more than this that are
// no stall on their own.
const stallLogOver = 50 * time.Millisecond

// stallNoise: lateness up to this is the timer's and the scheduler's
// ordinary jitter, not part of a stall.
const stallNoise = 10 * time.Millisecond

// machineStallWhat starts the What of a fault the stall watch records.
const machineStallWhat = "machine stall"

// stallNap is how long a witness sleeps between two looks at the clock.
const stallNap = 5 * time.Millisecond

// MachineStall tells whether the fault is a stall of the lab's kernel that
// the stall watch witnessed (not one a test injected).
func (f Fault) MachineStall() bool { return strings.HasPrefix(f.What, machineStallWhat+":") }

// watchStalls runs a witness on each CPU the lab may use until stop is
// closed.
func (l *Lab) watchStalls(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	var cpus unix.CPUSet
	if err := unix.SchedGetaffinity(0, &cpus); err != nil {
		l.log.Info("stall watch: no CPU list, it records nothing: " + err.Error())
		<-stop
		return
	}
	var wg sync.WaitGroup
	w := &stallWindowWatch{}
	for cpu := 0; cpu < 64*len(cpus); cpu++ { // every bit of the set's 64-bit words
		if !cpus.IsSet(cpu) {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); l.witness(cpu, w, stop) }()
	}
	wg.Wait()
}

// witness watches one CPU until stop is closed.
//
// Its thread goes back to the normal policy and every CPU before the
// goroutine ends, and it ends locked, so the Go runtime ends the thread
// (or, the main thread, parks it for good) instead of running other
// goroutines on it. A witness that only unlocked its thread left it
// real-time and bound to one CPU in the runtime's pool: every process the
// lab started from it afterwards (glusterd, and the bricks it spawns)
// inherited SCHED_RR, and a brick healing after a partition held a CPU
// for seconds at fsha's priority; the daemons' renewals waited behind it
// and leases lapsed (a CI run's TestGlusterPartitionTwoNodesLock).
func (l *Lab) witness(cpu int, w *stallWindowWatch, stop <-chan struct{}) {
	runtime.LockOSThread()
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(0, &all); err != nil {
		l.log.Info(fmt.Sprintf("stall watch of CPU %d: no CPU list, it records nothing: %v", cpu, err))
		<-stop
		return
	}
	defer func() {
		_ = unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0)
		_ = unix.SchedSetaffinity(0, &all)
	}()
	var only unix.CPUSet
	only.Set(cpu)
	if err := unix.SchedSetaffinity(0, &only); err != nil {
		l.log.Info(fmt.Sprintf("stall watch of CPU %d: cannot bind to it, it records nothing: %v", cpu, err))
		<-stop
		return
	}
	attr := &unix.SchedAttr{Policy: unix.SCHED_RR, Priority: 1}
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		l.log.Info(fmt.Sprintf("stall watch of CPU %d without real-time priority: it records nothing", cpu))
		<-stop
		return
	}
	nap := unix.NsecToTimespec(stallNap.Nanoseconds())
	// shorter stalls are logged too, from stallLogOver (FSHA_LAB_STALL_LOG
	// sets it): a failed test's output then shows what its kernel did
	logOver := stallLogOver
	if v, err := time.ParseDuration(os.Getenv("FSHA_LAB_STALL_LOG")); err == nil {
		logOver = v
	}
	for {
		select {
		case <-stop:
			return
		default:
		}
		t := time.Now()
		_ = unix.Nanosleep(&nap, nil) // EINTR: a shorter nap, still a look at the clock
		late := time.Since(t) - stallNap
		if logOver > 0 && late > logOver && late <= machineStall {
			l.log.Info(fmt.Sprintf("stall watch: CPU %d ran %v late from %s", cpu, late.Round(time.Millisecond), t.Format("15:04:05.000")))
		}
		if st, ok := w.add(cpu, t, late); ok {
			l.NoteFault(machineStallWhat+": "+st.what(), nil, st.start, st.end)
		}
	}
}

// stallWindowWatch finds the lab's stalls in its witnesses' naps: one nap
// that ends more than machineStall late, or late naps (over stallNoise)
// of any witnesses whose late parts cover more than machineStall of a
// stallWindow. A CPU that keeps its witness waiting keeps what was queued
// on it waiting too (the receive work of the veths scheduled there): a
// stall of CPU 0 followed by one of CPU 1 holds the heartbeats as long as
// one stall of both lengths would, while two CPUs stalled at the same time
// count once. Its witnesses share it.
type stallWindowWatch struct {
	mu    sync.Mutex
	spans []lateSpan // the late parts of late naps, in the last stallWindow
}

// lateSpan is the late part of a nap: from when it should have ended to
// when it did.
type lateSpan struct {
	from, to time.Time
	cpu      int
}

// stall is what the watch reports.
type stall struct {
	start, end time.Time
	late       time.Duration // the stalled time, overlaps counted once
	naps       int
	cpus       []int
}

func (s stall) what() string {
	if s.naps == 1 {
		return fmt.Sprintf("a real-time thread bound to CPU %d ran %v late", s.cpus[0], s.late.Round(time.Millisecond))
	}
	return fmt.Sprintf("real-time threads bound to CPUs %v ran late for %v in all in %d naps within %v", s.cpus,
		s.late.Round(time.Millisecond), s.naps, s.end.Sub(s.start).Round(time.Millisecond))
}

// add takes the nap of CPU cpu's witness begun at start that ended late
// by late, and returns the stall it completes, if any; the naps of a
// stall reported are not counted again.
func (w *stallWindowWatch) add(cpu int, start time.Time, late time.Duration) (stall, bool) {
	if late <= stallNoise {
		return stall{}, false
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	sp := lateSpan{from: start.Add(stallNap), to: start.Add(stallNap + late), cpu: cpu}
	if late > machineStall {
		w.spans = slices.DeleteFunc(w.spans, func(x lateSpan) bool { return x.cpu == cpu })
		return stall{start: start, end: sp.to, late: late, naps: 1, cpus: []int{cpu}}, true
	}
	w.spans = append(w.spans, sp)
	slices.SortFunc(w.spans, func(a, b lateSpan) int { return a.from.Compare(b.from) })
	end := slices.MaxFunc(w.spans, func(a, b lateSpan) int { return a.to.Compare(b.to) }).to
	from := end.Add(-stallWindow)
	w.spans = slices.DeleteFunc(w.spans, func(x lateSpan) bool { return !x.to.After(from) })
	// the union of the spans within the window
	var covered time.Duration
	var cur lateSpan
	for i, x := range w.spans {
		x.from = maxTime(x.from, from)
		switch {
		case i == 0:
			cur = x
		case x.from.After(cur.to):
			covered += cur.to.Sub(cur.from)
			cur = x
		case x.to.After(cur.to):
			cur.to = x.to
		}
	}
	if len(w.spans) > 0 {
		covered += cur.to.Sub(cur.from)
	}
	if covered <= machineStall {
		return stall{}, false
	}
	st := stall{start: w.spans[0].from.Add(-stallNap), end: end, late: covered, naps: len(w.spans)}
	for _, x := range w.spans {
		if !slices.Contains(st.cpus, x.cpu) {
			st.cpus = append(st.cpus, x.cpu)
		}
	}
	slices.Sort(st.cpus)
	w.spans = w.spans[:0]
	return st, true
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
