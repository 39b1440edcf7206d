package main

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/testenv"
)

// TestRealtime runs in a child process (the scheduling policy is the
// process's): every thread ends up SCHED_RR, and a process it starts does
// not inherit it.
func TestRealtime(t *testing.T) {
	if os.Getenv("FSHA_REALTIME_CHILD") == "1" {
		if _, err := setRealtime(); err != nil {
			t.Fatal(err)
		}
		tasks, _ := os.ReadDir("/proc/self/task")
		for _, task := range tasks {
			tid, _ := strconv.Atoi(task.Name())
			attr, err := unix.SchedGetAttr(tid, 0)
			if err != nil {
				t.Fatal(err)
			}
			if attr.Policy != unix.SCHED_RR || attr.Priority != realtimePriority {
				t.Errorf("thread %d: policy %d priority %d", tid, attr.Policy, attr.Priority)
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
