package ownership

import "time"

// Mono is a point in time on this node's CLOCK_MONOTONIC, in nanoseconds:
// the clock the data plane's deadlines are written in. It keeps running
// while a process is stopped (SIGSTOP) and, with kvmclock, while a VM is
// paused; the safety argument (DESIGN.md, "Ownership") assumes only that it
// runs at a rate within Timing.Drift of real time.
type Mono int64

// Add returns m + d.
func (m Mono) Add(d time.Duration) Mono { return m + Mono(d) }

// Sub returns m - o.
func (m Mono) Sub(o Mono) time.Duration { return time.Duration(m - o) }

// Before reports whether m is before o.
func (m Mono) Before(o Mono) bool { return m < o }

// Forever is a deadline that never passes.
const Forever = Mono(1<<63 - 1)
