package lab

import (
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/testenv"
)

func TestStallWindowWatch(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	type nap struct {
		cpu, start, late int // ms
	}
	type want struct {
		start, end, late, naps int // ms
		cpus                   []int
	}
	for _, c := range []struct {
		name string
		naps []nap
		want []want
	}{
		{"one long nap", []nap{{0, 0, 200}}, []want{{0, 205, 200, 1, []int{0}}}},
		{"jitter only", []nap{{0, 0, 5}, {0, 10, 9}, {1, 20, 10}, {0, 30, 3}}, nil},
		// seen at a lab's start: 57, 59 and 127 ms late within 358 ms;
		// the window (the last 300 ms) holds 4 ms of the first
		{"a map being made in chunks", []nap{{0, 0, 57}, {0, 62, 59}, {0, 226, 127}},
			[]want{{0, 358, 190, 3, []int{0}}}},
		{"short stalls far apart", []nap{{0, 0, 100}, {0, 400, 100}, {1, 800, 100}}, nil},
		// counted once: the next stall needs naps of its own
		{"reported once", []nap{{0, 0, 80}, {0, 90, 80}, {0, 180, 20}, {0, 210, 20}},
			[]want{{0, 175, 160, 2, []int{0}}}},
		{"a long nap clears its CPU's window", []nap{{0, 0, 100}, {0, 110, 160}, {0, 280, 100}},
			[]want{{110, 275, 160, 1, []int{0}}}},
		// one CPU after the other: the heartbeats wait for both
		{"CPU 0 then CPU 1", []nap{{0, 0, 90}, {1, 100, 90}},
			[]want{{0, 195, 180, 2, []int{0, 1}}}},
		// both at once: one stall of 100 ms, not 200
		{"both CPUs at once", []nap{{0, 0, 100}, {1, 2, 100}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w stallWindowWatch
			var got []stall
			for _, n := range c.naps {
				if st, ok := w.add(n.cpu, at(n.start), time.Duration(n.late)*time.Millisecond); ok {
					got = append(got, st)
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("stalls %+v, want %+v", got, c.want)
			}
			for i, g := range got {
				wt := c.want[i]
				if !g.start.Equal(at(wt.start)) || !g.end.Equal(at(wt.end)) || g.late != time.Duration(wt.late)*time.Millisecond ||
					g.naps != wt.naps || !slices.Equal(g.cpus, wt.cpus) {
					t.Errorf("stall %d: %+v, want %+v", i, g, wt)
				}
				t.Log(g.what())
			}
		})
	}
}

// TestStallWatchLeavesNoRealtimeThread: once the watch stops, no thread
// of this process runs real-time (nor bound to one CPU), so that nothing
// the lab starts afterwards inherits either.
func TestStallWatchLeavesNoRealtimeThread(t *testing.T) {
	testenv.RequireRoot(t) // SCHED_RR
	l := &Lab{log: zap.NewNop()}
	for round := 0; round < 3; round++ {
		stop, done := make(chan struct{}), make(chan struct{})
		go l.watchStalls(stop, done)
		time.Sleep(50 * time.Millisecond)
		if n := realtimeThreads(t); n == 0 {
			t.Fatal("no real-time thread while the watch runs: the check below proves nothing")
		}
		close(stop)
		<-done
		// goroutines that run now may land on any thread the runtime kept
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() { defer wg.Done(); time.Sleep(time.Millisecond) }()
		}
		wg.Wait()
		// a thread the runtime ends leaves /proc a moment later; one
		// it kept stays real-time for good
		n := realtimeThreads(t)
		for end := time.Now().Add(time.Second); n > 0 && time.Now().Before(end); n = realtimeThreads(t) {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			t.Fatalf("round %d: %d threads still real-time a second after the watch stopped", round, n)
		}
	}
}

// realtimeThreads counts this process's threads in SCHED_RR or SCHED_FIFO
// or bound to fewer CPUs than the process may use.
func realtimeThreads(t *testing.T) int {
	t.Helper()
	var all unix.CPUSet
	if err := unix.SchedGetaffinity(os.Getpid(), &all); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err != nil {
			continue // ended meanwhile
		}
		var cpus unix.CPUSet
		if err := unix.SchedGetaffinity(tid, &cpus); err != nil {
			continue
		}
		if attr.Policy == unix.SCHED_RR || attr.Policy == unix.SCHED_FIFO || cpus.Count() < all.Count() {
			n++
		}
	}
	return n
}
