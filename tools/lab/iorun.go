package lab

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// IORun is what an application on a file-server client does, measured: a
// loop that writes a file with fresh content and reads it back, every
// Period, through an ordinary file system path (a FUSE mount of the
// share), checking each read against a checksum of what was written. It
// records every operation's start, end and error, so that a failover shows
// as a gap (the I/O freeze) and as the errors the application saw.
type IORun struct {
	dir    string
	period time.Duration
	stop   chan struct{}
	done   chan struct{}

	mu  sync.Mutex
	ops []IOOp
}

// IOOp is one operation of an IORun.
type IOOp struct {
	Kind       string // "write" or "read"
	Start, End time.Time
	Err        error
	// Mismatch is set on a read that returned other bytes than the last
	// successful write's.
	Mismatch bool
}

// StartIO starts the loop on file name in dir, one write and one read each
// period.
func StartIO(dir, name string, period time.Duration) *IORun {
	r := &IORun{dir: filepath.Join(dir, name), period: period, stop: make(chan struct{}), done: make(chan struct{})}
	go r.loop()
	return r
}

func (r *IORun) loop() {
	defer close(r.done)
	var (
		seq     uint64
		written []byte // what the last successful write wrote
		torn    []byte // what writes that failed since then tried to write
	)
	t := time.NewTicker(r.period)
	defer t.Stop()
	for {
		seq++
		data := ioPayload(seq)
		start := time.Now()
		err := os.WriteFile(r.dir, data, 0o644)
		r.record(IOOp{Kind: "write", Start: start, End: time.Now(), Err: err})
		if err == nil {
			written, torn = data, nil
		} else {
			torn = data
		}
		if written != nil {
			start = time.Now()
			got, err := os.ReadFile(r.dir)
			op := IOOp{Kind: "read", Start: start, End: time.Now(), Err: err}
			op.Mismatch = err == nil && !readBack(got, written, torn)
			r.record(op)
		}
		select {
		case <-r.stop:
			return
		case <-t.C:
		}
	}
}

// readBack tells whether got is what the application may read: what its
// last successful write wrote, or, after a write that failed, any prefix
// of what that write tried (a failed write is allowed to have truncated
// the file and written part of it, as POSIX allows, not to have written
// anything else).
func readBack(got, written, torn []byte) bool {
	return bytes.Equal(got, written) || (torn != nil && bytes.HasPrefix(torn, got))
}

// ioPayload is 4 KiB identified by seq, with its own checksum inside, so a
// torn or stale read is told from a good one.
func ioPayload(seq uint64) []byte {
	b := make([]byte, 4096)
	binary.BigEndian.PutUint64(b, seq)
	rng := rand.NewChaCha8([32]byte{byte(seq), byte(seq >> 8), byte(seq >> 16), byte(seq >> 24)})
	_, _ = rng.Read(b[8 : len(b)-32])
	sum := sha256.Sum256(b[:len(b)-32])
	copy(b[len(b)-32:], sum[:])
	return b
}

func (r *IORun) record(op IOOp) {
	r.mu.Lock()
	r.ops = append(r.ops, op)
	r.mu.Unlock()
}

// GoodSince counts the operations that succeeded, with the data expected,
// and ended after since: the application working again after a fault.
func GoodSince(ops []IOOp, since time.Time) int {
	n := 0
	for _, op := range ops {
		if op.Err == nil && !op.Mismatch && op.End.After(since) {
			n++
		}
	}
	return n
}

// Ops returns the operations recorded so far.
func (r *IORun) Ops() []IOOp {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]IOOp(nil), r.ops...)
}

// Stop ends the loop, waiting at most wait for an operation in flight (a
// hung request may outlive it; its goroutine ends when the mount goes),
// and returns the report over every operation that ended.
func (r *IORun) Stop(wait time.Duration) IOReport {
	select {
	case <-r.stop:
	default:
		close(r.stop)
	}
	select {
	case <-r.done:
	case <-time.After(wait):
	}
	return Report(r.Ops())
}

// IOReport sums up an IORun: the I/O freeze is the longest time between
// two successful operations' ends (or from the first start), errors are
// what the application saw.
type IOReport struct {
	Ops, Errors, Mismatches int
	// Freeze is the longest interval without a successful operation
	// ending, FreezeFrom when it began.
	Freeze     time.Duration
	FreezeFrom time.Time
	// FirstError and LastOK frame the trouble, for logs.
	FirstError *IOOp
	LastOK     time.Time
}

// Report computes an IOReport from operations in the order they ran.
func Report(ops []IOOp) IOReport {
	var rep IOReport
	var prev time.Time
	for i := range ops {
		op := ops[i]
		rep.Ops++
		if prev.IsZero() {
			prev = op.Start
		}
		if op.Mismatch {
			rep.Mismatches++
		}
		if op.Err != nil {
			rep.Errors++
			if rep.FirstError == nil {
				rep.FirstError = &ops[i]
			}
			continue
		}
		if op.Mismatch {
			continue
		}
		if gap := op.End.Sub(prev); gap > rep.Freeze {
			rep.Freeze, rep.FreezeFrom = gap, prev
		}
		prev, rep.LastOK = op.End, op.End
	}
	return rep
}

// ReportUntil is Report over the operations that ended by end, with the
// time from the last good operation's end (or the first operation's
// start) to end counted as a freeze too: an operation still hanging at
// end is a freeze that Report, which sees only ended operations, misses.
func ReportUntil(ops []IOOp, end time.Time) IOReport {
	var done []IOOp
	for _, op := range ops {
		if !op.End.After(end) {
			done = append(done, op)
		}
	}
	rep := Report(done)
	from := rep.LastOK
	if from.IsZero() && len(done) > 0 {
		from = done[0].Start
	}
	if !from.IsZero() && end.Sub(from) > rep.Freeze {
		rep.Freeze, rep.FreezeFrom = end.Sub(from), from
	}
	return rep
}

func (r IOReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d operations, %d errors, %d mismatched reads, longest freeze %v", r.Ops, r.Errors, r.Mismatches, r.Freeze.Round(time.Millisecond))
	if !r.FreezeFrom.IsZero() {
		fmt.Fprintf(&b, " from %s", r.FreezeFrom.Format("15:04:05.000"))
	}
	if r.FirstError != nil {
		fmt.Fprintf(&b, "; first error at %s (%s): %v", r.FirstError.Start.Format("15:04:05.000"), r.FirstError.Kind, r.FirstError.Err)
	}
	return b.String()
}
