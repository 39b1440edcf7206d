package main

// Timing on one CPU, for both parts of suite "dataplane": a thread pinned
// (and SCHED_FIFO) that times BPF_PROG_RUN and sleeps in the kernel.

import (
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// pinThread pins the calling thread to b.cpu and, with -rt, makes it
// SCHED_FIFO: other tasks cannot preempt it, they run on the other CPUs.
// Callers sleep between runs to stay clear of RT throttling. The thread
// must be one onThread throws away.
func (b *dataplaneBench) pinThread() error { return pinThread(b.cpu, b.realtime) }

// pinThread pins the calling thread to cpu and, with realtime, makes it
// SCHED_FIFO (priority 10).
func pinThread(cpu int, realtime bool) error {
	var set unix.CPUSet
	set.Set(cpu)
	if err := unix.SchedSetaffinity(0, &set); err != nil {
		return fmt.Errorf("pin thread to cpu %d: %w", cpu, err)
	}
	if realtime {
		if err := unix.SchedSetAttr(0, &unix.SchedAttr{Policy: unix.SCHED_FIFO, Priority: 10}, 0); err != nil {
			return fmt.Errorf("set SCHED_FIFO: %w", err)
		}
	}
	return nil
}

// timeRun returns the wall-clock time per run of repeat runs of p on pkt,
// and the kernel's own figure (whole nanoseconds, without the time the
// thread was rescheduled) for comparison. If a signal interrupts the
// syscall, the kernel starts over and so does the clock, after restart
// (if not nil): the runs before the signal count for nothing.
func timeRun(p *ebpf.Program, pkt []byte, repeat int, restart func()) (float64, time.Duration, error) {
	start := time.Now()
	_, kernel, err := p.Benchmark(pkt, repeat, func() {
		if restart != nil {
			restart()
		}
		start = time.Now()
	})
	elapsed := time.Since(start)
	if err != nil {
		return 0, 0, err
	}
	return float64(elapsed.Nanoseconds()) / float64(repeat), kernel, nil
}

// threadSleep blocks the calling OS thread in nanosleep. Unlike
// time.Sleep, which parks the goroutine and needs another thread of the
// Go runtime to wake it, a SCHED_FIFO thread wakes right on time even when
// the other CPUs are busy.
func threadSleep(d time.Duration) {
	ts := unix.NsecToTimespec(d.Nanoseconds())
	for unix.Nanosleep(&ts, &ts) == unix.EINTR {
	}
}
