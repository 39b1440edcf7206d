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

// lockManager takes, confirms and releases the cluster lock as the engine
// wants, off the loop, with timeouts.
type lockManager struct {
	log    *zap.Logger
	lock   *quorum.Lock
	period time.Duration
	wantCh chan bool
	// busy: an operation is still blocked in the file system
	busy chan struct{}
}

func newLockManager(log *zap.Logger, l *quorum.Lock, period time.Duration) *lockManager {
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
				m.log.Warn("cluster lock", zap.Error(err))
			} else if got {
				state = ownership.LockState{Held: true, Since: monoNow(), Checked: monoNow()}
				m.log.Info("took the cluster lock", zap.String("lock", m.lock.Path()))
			}
		case !wanted && state.Held:
			if err := m.do(m.lock.Release); err != nil {
				m.log.Warn("release cluster lock", zap.Error(err))
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
