package lab

import (
	"fmt"
	"os"
	"runtime"
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
	for cpu := 0; cpu < 64*len(cpus); cpu++ { // every bit of the set's 64-bit words
		if !cpus.IsSet(cpu) {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); l.witness(cpu, stop) }()
	}
	wg.Wait()
}

// witness watches one CPU until stop is closed.
func (l *Lab) witness(cpu int, stop <-chan struct{}) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
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
	var w stallWindowWatch
	var logOver time.Duration // FSHA_LAB_STALL_LOG: log shorter stalls too (debugging)
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
		if st, ok := w.add(t, late); ok {
			l.NoteFault(fmt.Sprintf(machineStallWhat+": a real-time thread bound to CPU %d %s", cpu, st.what()), nil, st.start, st.end)
		}
	}
}

// stallWindowWatch finds a witness's stalls in its naps: one nap that
// ends more than machineStall late, or several later naps that together
// were late by more than that within stallWindow.
type stallWindowWatch struct {
	naps []lateNap // the late naps (over stallNoise) of the last stallWindow
}

// lateNap is a nap begun at start that ended late by late.
type lateNap struct {
	start time.Time
	late  time.Duration
}

func (n lateNap) end() time.Time { return n.start.Add(stallNap + n.late) }

// stall is what the watch reports.
type stall struct {
	start, end time.Time
	late       time.Duration // in all
	naps       int
}

func (s stall) what() string {
	if s.naps == 1 {
		return fmt.Sprintf("ran %v late", s.late.Round(time.Millisecond))
	}
	return fmt.Sprintf("ran %v late in all in %d naps within %v", s.late.Round(time.Millisecond), s.naps,
		s.end.Sub(s.start).Round(time.Millisecond))
}

// add takes the nap begun at start that ended late by late, and returns
// the stall it completes, if any; the naps of a stall reported are not
// counted again.
func (w *stallWindowWatch) add(start time.Time, late time.Duration) (stall, bool) {
	if late <= stallNoise {
		return stall{}, false
	}
	n := lateNap{start: start, late: late}
	if late > machineStall {
		w.naps = w.naps[:0]
		return stall{start: start, end: n.end(), late: late, naps: 1}, true
	}
	w.naps = append(w.naps, n)
	from := n.end().Add(-stallWindow)
	for len(w.naps) > 0 && w.naps[0].start.Before(from) {
		w.naps = w.naps[1:]
	}
	var sum time.Duration
	for _, x := range w.naps {
		sum += x.late
	}
	if sum <= machineStall {
		return stall{}, false
	}
	st := stall{start: w.naps[0].start, end: n.end(), late: sum, naps: len(w.naps)}
	w.naps = w.naps[:0]
	return st, true
}
