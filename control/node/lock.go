package node

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/quorum"
)

// lockIOTimeout bounds one operation on the cluster lock: a lock file on a
// hung cluster file system must not freeze anything. A timed-out check
// leaves the lock unconfirmed, which stops it from vouching for anything
// (ownership: LockState.Checked).
const lockIOTimeout = 2 * time.Second

var errLockTimeout = errors.New("cluster lock: file system did not answer in time")

// clusterLock is the lock file's operations (quorum.Lock); each may block
// in the file system for as long as it likes.
type clusterLock interface {
	Path() string
	TryAcquire() (bool, error)
	Release() error
	Check() error
}

var _ clusterLock = (*quorum.Lock)(nil)

// lockManager takes, confirms and releases the cluster lock as the engine
// wants, off the loop, with timeouts.
type lockManager struct {
	log    *zap.Logger
	lock   clusterLock
	period time.Duration
	wantCh chan bool
	// busy: an operation is still blocked in the file system
	busy chan struct{}
}

func newLockManager(log *zap.Logger, l clusterLock, period time.Duration) *lockManager {
	return &lockManager{log: log, lock: l, period: period, wantCh: make(chan bool, 1), busy: make(chan struct{}, 1)}
}

// want tells the manager whether the lock is wanted now (latest wins).
func (m *lockManager) want(on bool) {
	select {
	case <-m.wantCh:
	default:
	}
	m.wantCh <- on
}

// do runs fn with the timeout; at most one operation is in the file
// system at a time (a hung one is not piled upon).
func (m *lockManager) do(fn func() error) error {
	select {
	case m.busy <- struct{}{}:
	default:
		return errLockTimeout
	}
	res := make(chan error, 1)
	go func() {
		err := fn()
		<-m.busy // free before answering: the next operation may follow at once
		res <- err
	}()
	select {
	case err := <-res:
		return err
	case <-time.After(lockIOTimeout):
		return errLockTimeout
	}
}

func (m *lockManager) run(ctx context.Context, report func(ownership.LockState)) {
	t := time.NewTicker(m.period)
	defer t.Stop()
	var (
		wanted      bool
		state       ownership.LockState
		unconfirmed int
		// stray: the lock may be held though state says not: an
		// acquire timed out (a hung file system may still complete
		// it) or a release did not run. A lock nobody wants must not
		// stay held: released once the file system lets us.
		stray        bool
		strayRelease int
	)
	for {
		select {
		case <-ctx.Done():
			_ = m.do(m.lock.Release)
			return
		case w := <-m.wantCh:
			// The engine says what it wants after every step: only a
			// change is acted on at once (a check per step would feed
			// the engine a new confirmation, and so another step, in a
			// loop); confirmations follow the period.
			if w == wanted {
				continue
			}
			wanted = w
		case <-t.C:
		}
		before := state
		switch {
		case wanted && !state.Held:
			var got bool
			err := m.do(func() error {
				var err error
				got, err = m.lock.TryAcquire()
				return err
			})
			if err != nil {
				stray = stray || errors.Is(err, errLockTimeout)
				m.log.Warn("cluster lock", zap.Error(err))
			} else if got {
				stray = false
				state = ownership.LockState{Held: true, Since: monoNow(), Checked: monoNow()}
				m.log.Info("took the cluster lock", zap.String("lock", m.lock.Path()))
			}
		case !wanted && (state.Held || stray):
			if err := m.do(m.lock.Release); err != nil {
				stray = true
				// every period until the file system answers: log the
				// first and then every hundredth
				if strayRelease++; strayRelease == 1 || strayRelease%100 == 0 {
					m.log.Warn("release cluster lock", zap.Int("times", strayRelease), zap.Error(err))
				}
			} else {
				if strayRelease > 0 {
					m.log.Info("released the cluster lock", zap.Int("failed_tries", strayRelease))
				}
				stray, strayRelease = false, 0
			}
			state = ownership.LockState{}
		case state.Held:
			if err := m.do(m.lock.Check); err != nil {
				unconfirmed++
				if unconfirmed == 1 || unconfirmed%100 == 0 {
					m.log.Warn("cluster lock unconfirmed: it vouches for nothing until its file answers again",
						zap.Int("times", unconfirmed), zap.Error(err))
				}
			} else {
				if unconfirmed > 0 {
					m.log.Info("cluster lock confirmed again", zap.Int("unconfirmed_checks", unconfirmed))
				}
				unconfirmed = 0
				state.Checked = monoNow()
			}
		}
		if state != before {
			report(state)
		}
	}
}
