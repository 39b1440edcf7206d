// Package realtime keeps the fsha daemon's threads in real-time
// scheduling (SCHED_RR at the lowest priority), as fsha up does by
// default in a cluster (--realtime).
package realtime

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Priority is the SCHED_RR priority fsha runs at: the lowest, so that
// it wins over every normal process of a busy machine (a starved daemon
// renews no lease and its node's VIPs fail over) yet yields to any other
// real-time task. ctdbd and keepalived run real-time for the same
// reason.
const Priority = 1

// schedFlagResetOnFork (sched_setattr's SCHED_FLAG_RESET_ON_FORK) keeps
// the real-time policy from the processes fsha starts (event hooks, health
// check commands). It also resets threads the Go runtime creates later
// (it makes one whenever a goroutine blocks in a system call, as lock I/O
// on a hung cluster file system does), which Keep picks up again.
const schedFlagResetOnFork = 0x01

// Until Keep picks a new thread up, the goroutines the runtime runs on
// it (the control loop, the heartbeats) compete with every normal
// process: on a busy node, long enough to lapse a lease (250 ms). In the
// lab new threads stayed normal for up to 487 ms when only a full scan
// every second found them. So Keep looks at the thread count every
// threadWatchEvery, and scans the threads when it changed (and every
// threadScanEvery in any case, for a thread that ended as another began).
const (
	threadWatchEvery = 5 * time.Millisecond
	threadScanEvery  = time.Second
)

// setRealtime puts every thread of this process in SCHED_RR; it returns
// how many it changed.
func setRealtime() (int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, fmt.Errorf("real-time scheduling: list threads: %w", err)
	}
	n := 0
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		cur, err := unix.SchedGetAttr(tid, 0)
		if err == nil && cur.Policy == unix.SCHED_RR {
			continue
		}
		attr := &unix.SchedAttr{Policy: unix.SCHED_RR, Flags: schedFlagResetOnFork, Priority: Priority}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			if err == unix.ESRCH {
				continue // the thread ended meanwhile
			}
			return n, fmt.Errorf("real-time scheduling of thread %d: %w", tid, err)
		}
		n++
	}
	return n, nil
}

// Normal puts every thread of this process in the normal policy
// (SCHED_OTHER). A process that a reload (SIGHUP) executed again starts
// with its predecessor's real-time policy, which execve keeps, and a
// start's heaviest work (loading the programs: the verifier, a map
// migration) must not run real-time: on a small machine it starves the
// other daemons of their lease renewals (the lab's TestReloadNodes: the
// two other nodes stopped hearing each other for 280-480 ms while a node
// reloaded). Keep makes it real-time again once that is done.
func Normal() error {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return fmt.Errorf("normal scheduling: list threads: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		cur, err := unix.SchedGetAttr(tid, 0)
		if err == nil && cur.Policy == unix.SCHED_NORMAL {
			continue
		}
		if err := unix.SchedSetAttr(tid, &unix.SchedAttr{Policy: unix.SCHED_NORMAL}, 0); err != nil && err != unix.ESRCH {
			return fmt.Errorf("normal scheduling of thread %d: %w", tid, err)
		}
	}
	return nil
}

// Keep makes this process real-time now and keeps its new threads so,
// until ctx ends. It logs and returns when it cannot (no CAP_SYS_NICE).
func Keep(ctx context.Context, log *zap.Logger) {
	if _, err := setRealtime(); err != nil {
		log.Warn("running without real-time scheduling: a busy machine may starve the lease renewals", zap.Error(err))
		return
	}
	log.Info("real-time scheduling (SCHED_RR)", zap.Int("priority", Priority))
	// without the descriptor (it opens wherever /proc is mounted) the
	// threads are scanned every threadScanEvery, not every 5 ms
	stat, err := openStat()
	every := threadWatchEvery
	if err != nil {
		log.Warn("real-time scheduling of new threads: they are checked every "+threadScanEvery.String()+" only", zap.Error(err))
		every = threadScanEvery
	}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		var threads int
		if stat != nil {
			defer stat.Close()
			threads, _ = stat.threadCount()
		}
		scanned := time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if stat != nil {
				n, err := stat.threadCount()
				if err == nil && n == threads && time.Since(scanned) < threadScanEvery {
					continue
				}
				threads = n
			}
			scanned = time.Now()
			if _, err := setRealtime(); err != nil {
				log.Debug("real-time scheduling", zap.Error(err))
			}
		}
	}()
}

// statFile reads this process's /proc/self/stat through one descriptor
// kept open: a pread at offset 0 makes the kernel write it afresh. Keep
// reads it every threadWatchEvery, and os.ReadFile costs nine system calls
// (open, the poller's four fcntl and epoll_ctl, fstat, two reads, close)
// where this costs one: on a virtual machine, where each is a trap, that
// was about 8% of an idle daemon's CPU time in the lab.
type statFile struct {
	fd  int
	buf []byte
}

func openStat() (*statFile, error) {
	fd, err := unix.Open("/proc/self/stat", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open /proc/self/stat: %w", err)
	}
	return &statFile{fd: fd, buf: make([]byte, 1024)}, nil
}

func (s *statFile) Close() error { return unix.Close(s.fd) }

// threadCount returns how many threads this process has (num_threads).
func (s *statFile) threadCount() (int, error) {
	for {
		n, err := unix.Pread(s.fd, s.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("read /proc/self/stat: %w", err)
		}
		if n == len(s.buf) {
			// a name and fields longer than we thought: read it all
			s.buf = make([]byte, 2*len(s.buf))
			continue
		}
		return parseThreadCount(s.buf[:n])
	}
}

// parseThreadCount reads num_threads (field 20 of stat(5)) from the
// content of /proc/PID/stat.
func parseThreadCount(b []byte) (int, error) {
	// the command name, in parentheses, may hold spaces: count from after it
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/self/stat: no ')' in %q", b)
	}
	f := bytes.Fields(b[i+1:])
	const numThreads = 20 - 3 // field 20 of stat(5); f[0] is field 3
	if len(f) <= numThreads {
		return 0, fmt.Errorf("/proc/self/stat: %d fields after the name", len(f))
	}
	return strconv.Atoi(string(f[numThreads]))
}
