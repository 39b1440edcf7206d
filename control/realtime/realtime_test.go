package realtime

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/testenv"
)

// threadIDs returns the threads of this process now.
func threadIDs() map[int]bool {
	ids := map[int]bool{}
	tasks, _ := os.ReadDir("/proc/self/task")
	for _, task := range tasks {
		if tid, err := strconv.Atoi(task.Name()); err == nil {
			ids[tid] = true
		}
	}
	return ids
}

// notRealtime lists the threads of this process not in fsha's SCHED_RR,
// of those in only if it is not nil.
func notRealtime(t *testing.T, only map[int]bool) []string {
	t.Helper()
	var out []string
	for tid := range threadIDs() {
		if only != nil && !only[tid] {
			continue
		}
		attr, err := unix.SchedGetAttr(tid, 0)
		if err == unix.ESRCH {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if attr.Policy != unix.SCHED_RR || attr.Priority != Priority {
			out = append(out, fmt.Sprintf("thread %d: policy %d priority %d", tid, attr.Policy, attr.Priority))
		}
	}
	return out
}

// TestRealtime runs in a child process (the scheduling policy is the
// process's): every thread ends up SCHED_RR, threads the runtime makes
// later too within a few milliseconds, and a process it starts does not
// inherit it.
func TestRealtime(t *testing.T) {
	if os.Getenv("FSHA_REALTIME_CHILD") == "1" {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		Keep(ctx, zap.NewNop())
		for _, s := range notRealtime(t, nil) {
			t.Error(s)
		}
		// one descriptor read again and again, as Keep reads it: each
		// read must say how many threads there are now
		stat, err := openStat()
		if err != nil {
			t.Fatal(err)
		}
		defer stat.Close()
		threadCount := stat.threadCount
		// goroutines blocked in system calls: the runtime makes threads
		// to run the others
		before, err := threadCount()
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				nap := unix.NsecToTimespec(int64(400 * time.Millisecond))
				_ = unix.Nanosleep(&nap, nil)
			}()
		}
		deadline := time.Now().Add(300 * time.Millisecond)
		for n, _ := threadCount(); n <= before && time.Now().Before(deadline); n, _ = threadCount() {
			runtime.Gosched()
		}
		after, _ := threadCount()
		// The blocked goroutines may have the runtime make more threads
		// after this; each gets its own time. Those there now must be
		// real-time after ten looks at the thread count.
		made := threadIDs()
		time.Sleep(50 * time.Millisecond)
		if after <= before {
			t.Errorf("no new thread: %d before, %d after", before, after)
		}
		for _, s := range notRealtime(t, made) {
			t.Errorf("50 ms after the runtime made threads (%d, was %d): %s", after, before, s)
		}
		wg.Wait()
		tasks, _ := os.ReadDir("/proc/self/task")
		if n, err := threadCount(); err != nil || n != len(tasks) {
			t.Errorf("threadCount %d (%v), /proc/self/task has %d", n, err, len(tasks))
		}
		// what a reload's new process does first
		if err := Normal(); err != nil {
			t.Fatal(err)
		}
		cancel() // Keep's watch ends
		time.Sleep(20 * time.Millisecond)
		if err := Normal(); err != nil {
			t.Fatal(err)
		}
		for tid := range threadIDs() {
			if attr, err := unix.SchedGetAttr(tid, 0); err == nil && attr.Policy != unix.SCHED_NORMAL {
				t.Errorf("after Normal, thread %d has policy %d", tid, attr.Policy)
			}
		}
		out, err := exec.Command("sh", "-c", "cat /proc/self/sched").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) == 3 && f[0] == "policy" && f[2] != "0" {
				t.Errorf("a child process inherited policy %s", f[2])
			}
		}
		return
	}
	testenv.RequireRoot(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestRealtime$", "-test.v")
	cmd.Env = append(os.Environ(), "FSHA_REALTIME_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

func TestParseThreadCount(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"30890 (fsha) S 30825 30890 30890 0 -1 4194560 2052 0 0 0 104 63 0 0 -2 0 11 0 4163 1263732 3268", 11, true},
		// a name with spaces and a parenthesis in it
		{"7 (a ) b) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 3 0 1 2 3", 3, true},
		{"7 (fsha S 1", 0, false},
		{"7 (fsha) S 1 2 3", 0, false},
		{"7 (fsha) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 x 0", 0, false},
		{"", 0, false},
	} {
		got, err := parseThreadCount([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseThreadCount(%q) = %d, %v; want %d (ok %v)", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
