package node

import (
	"context"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/quorum"
)

// TestLockManagerChecksByPeriod: the engine says it wants the lock after
// every step; the manager takes it once and confirms it on its period,
// not once per want (each confirmation is a report, which is a step, which
// is a want: a loop that kept a real-time daemon spinning on two CPUs).
func TestLockManagerChecksByPeriod(t *testing.T) {
	l := quorum.NewLock(filepath.Join(t.TempDir(), "fsha.lock"))
	const period = 100 * time.Millisecond
	m := newLockManager(zap.NewNop(), l, period)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var reports atomic.Int64
	var held atomic.Bool
	go func() {
		defer close(done)
		m.run(ctx, func(s ownership.LockState) {
			reports.Add(1)
			held.Store(s.Held)
			m.want(true) // what the node loop does after the step
		})
	}()
	m.want(true)
	start := time.Now()
	for time.Since(start) < 550*time.Millisecond {
		m.want(true)
		time.Sleep(time.Millisecond)
	}
	cancel()
	<-done
	if !held.Load() {
		t.Fatal("the lock was not taken")
	}
	// taken once, then confirmed at most once per period
	if n, most := reports.Load(), int64(1+550*time.Millisecond/period+1); n > most {
		t.Errorf("%d reports in 550 ms with a period of %v, want at most %d", n, period, most)
	}
	if l.Held() {
		t.Error("the lock is still held after the manager stopped")
	}
}
