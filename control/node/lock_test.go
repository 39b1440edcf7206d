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

// slowLock is a cluster lock on a file system that hangs: TryAcquire
// blocks until the test lets it go, then takes the lock.
type slowLock struct {
	unblock  chan struct{}
	acquires atomic.Int64
	acquired chan struct{} // closed once the blocked acquire took the lock
	held     atomic.Bool
}

func (l *slowLock) Path() string { return "slow" }

func (l *slowLock) TryAcquire() (bool, error) {
	l.acquires.Add(1)
	<-l.unblock
	if !l.held.Swap(true) {
		close(l.acquired)
	}
	return true, nil
}

func (l *slowLock) Release() error { l.held.Store(false); return nil }

func (l *slowLock) Check() error { return nil }

// TestLockManagerReleasesLateAcquire: an acquire that outlives its timeout
// (a hung cluster file system, FUSE blocking the caller in the kernel)
// and completes after the engine stopped wanting the lock must not leave
// the lock held: a node with a majority holds no lock, so that, should it
// freeze later, the others can take it.
func TestLockManagerReleasesLateAcquire(t *testing.T) {
	l := &slowLock{unblock: make(chan struct{}), acquired: make(chan struct{})}
	m := newLockManager(zap.NewNop(), l, 20*time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var reportedHeld atomic.Bool
	go func() {
		defer close(done)
		m.run(ctx, func(s ownership.LockState) { reportedHeld.Store(s.Held) })
	}()
	defer func() { cancel(); <-done }()

	m.want(true)
	deadline := time.Now().Add(5 * time.Second)
	for l.acquires.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the manager never tried to take the lock")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// the acquire times out, the engine gets a majority back, then the
	// file system answers: the acquire took the lock after all
	time.Sleep(lockIOTimeout + 100*time.Millisecond)
	m.want(false)
	time.Sleep(100 * time.Millisecond)
	close(l.unblock)
	<-l.acquired
	deadline = time.Now().Add(lockIOTimeout + time.Second)
	for l.held.Load() {
		if time.Now().After(deadline) {
			t.Fatalf("the lock taken by a late acquire is still held %v after the engine stopped wanting it", lockIOTimeout+time.Second)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if reportedHeld.Load() {
		t.Error("the manager reported the lock held while not wanted")
	}
}
