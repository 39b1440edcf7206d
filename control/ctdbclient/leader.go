package ctdbclient

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// LeaderWatch listens to CTDB's leader broadcasts through the local
// ctdbd, as `ctdb leader` does: the leader's recovery daemon announces
// itself to every connected node once a second, and a daemon that calls
// an election announces "unknown". Once the leader is dead nobody can be
// asked who it was: the watch remembers.
type LeaderWatch struct {
	log  *zap.Logger
	path string
	// Retry is the wait before connecting again after a failure.
	Retry time.Duration
	// Timeout bounds connecting and registering.
	Timeout time.Duration

	mu        sync.Mutex
	connected bool
	// heardAny: a broadcast came since connecting
	heardAny bool
	leader   uint32
	heard    time.Time
}

// NewLeaderWatch returns a watch of the ctdbd at path (see Run).
func NewLeaderWatch(log *zap.Logger, path string) *LeaderWatch {
	return &LeaderWatch{log: log, path: path, Retry: 2 * time.Second, Timeout: 2 * time.Second, leader: UnknownPNN}
}

// Path is the socket watched.
func (w *LeaderWatch) Path() string { return w.path }

// Leader is the PNN the last leader broadcast named and when it came; ok
// is false while none is known: not connected, nothing heard since, or
// the last broadcast said unknown (an election is on).
func (w *LeaderWatch) Leader() (pnn uint32, heard time.Time, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.leader, w.heard, w.connected && w.leader != UnknownPNN
}

// unknownWhy says why Leader knows none.
func (w *LeaderWatch) unknownWhy() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case !w.connected:
		return "not connected to ctdbd: CTDB's leader is not known here"
	case !w.heardAny:
		return "no leader broadcast heard since connecting to ctdbd: CTDB's leader is not known here"
	default:
		return "an election is already on: the last leader broadcast said unknown"
	}
}

// set records a connection (heard false) or a broadcast (heard true).
func (w *LeaderWatch) set(connected, heard bool, leader uint32) (changed bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	changed = w.leader != leader
	w.connected, w.heardAny, w.leader, w.heard = connected, heard, leader, time.Now()
	return changed
}

// Run listens until ctx ends, connecting again (every Retry) when ctdbd
// is not there or the connection fails. Without ctdbd it says so once.
func (w *LeaderWatch) Run(ctx context.Context) {
	absent := false
	for {
		was, err := w.listen(ctx)
		w.set(false, false, UnknownPNN)
		if ctx.Err() != nil {
			return
		}
		switch {
		case was:
			w.log.Warn("lost the connection to ctdbd: CTDB's leader unknown here until it is back",
				zap.String("socket", w.path), zap.Error(err))
			absent = false
		case errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED):
			if !absent {
				w.log.Info("no ctdbd listens: CTDB's leader unknown here until one does",
					zap.String("socket", w.path), zap.Error(err))
			}
			absent = true
		default:
			w.log.Warn("cannot listen to CTDB's leader broadcasts", zap.String("socket", w.path), zap.Error(err))
			absent = false
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(w.Retry):
		}
	}
}

// listen connects, registers for the leader broadcasts and records them
// until the connection fails; connected tells whether it got that far.
func (w *LeaderWatch) listen(ctx context.Context) (connected bool, err error) {
	dctx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	c, err := Dial(dctx, w.path)
	if err != nil {
		return false, err
	}
	defer c.Close()
	if err := c.RegisterSrvid(dctx, SrvidLeader); err != nil {
		return false, err
	}
	w.set(true, false, UnknownPNN)
	w.log.Info("listening to CTDB's leader broadcasts", zap.String("socket", w.path))
	for {
		m, err := c.ReadMessage(ctx)
		if err != nil {
			return true, err
		}
		if m.SrvID != SrvidLeader {
			continue
		}
		pnn, err := DecodeLeader(m.Data)
		if err != nil {
			w.log.Warn("ignored a leader broadcast", zap.Error(err))
			continue
		}
		if w.set(true, true, pnn) {
			if pnn == UnknownPNN {
				w.log.Info("CTDB's leader: unknown, an election is on")
			} else {
				w.log.Info("CTDB's leader", zap.Uint32("pnn", pnn))
			}
		}
	}
}

// Election is what ElectIfLeader found and did.
type Election struct {
	// Leader is the PNN the last leader broadcast named, Heard when;
	// LeaderKnown false when none was known.
	Leader      uint32
	Heard       time.Time
	LeaderKnown bool
	// Mapped: the dead node was found in CTDB's node map, with
	// DeadPNN and DeadFlags.
	Mapped             bool
	DeadPNN, DeadFlags uint32
	// Lock is CTDB's cluster lock setting.
	Lock string
	// Sent: the unknown-leader broadcast went out. Why says why not.
	Sent bool
	Why  string
}

// ElectIfLeader is called once the node at dead is judged dead. When it
// was CTDB's leader (the last leader broadcast heard here named it) and
// CTDB runs with a cluster lock, it sends CTDB's "unknown leader"
// broadcast through the local ctdbd: every connected recovery daemon
// then contends for the cluster lock at once, instead of after `leader
// timeout` without the dead leader's broadcasts. The dead node is found
// in CTDB's node map by its address, not by fsha's PNN.
//
// Without a cluster lock nothing is sent: CTDB 4.17's recovery daemons
// would stop waiting for the leader's broadcasts and wait for election
// requests that nobody sends, and stall.
func (w *LeaderWatch) ElectIfLeader(ctx context.Context, dead netip.Addr) (Election, error) {
	var e Election
	e.Leader, e.Heard, e.LeaderKnown = w.Leader()
	if !e.LeaderKnown {
		e.Why = w.unknownWhy()
		return e, nil
	}
	c, err := Dial(ctx, w.path)
	if err != nil {
		return e, err
	}
	defer c.Close()
	nodes, err := c.Nodemap(ctx)
	if err != nil {
		return e, err
	}
	for _, n := range nodes {
		if n.Addr == dead {
			e.DeadPNN, e.DeadFlags, e.Mapped = n.PNN, n.Flags, true
			break
		}
	}
	if !e.Mapped {
		return e, fmt.Errorf("CTDB's node map (%d nodes) does not list %s", len(nodes), dead)
	}
	if e.DeadPNN != e.Leader {
		e.Why = "the dead node was not CTDB's leader"
		return e, nil
	}
	if e.Lock, err = c.ClusterLock(ctx); err != nil {
		return e, err
	}
	if e.Lock == "" {
		e.Why = "CTDB runs without a cluster lock: an election called from outside would stall it"
		return e, nil
	}
	if err := c.BroadcastUnknownLeader(ctx); err != nil {
		return e, err
	}
	e.Sent = true
	return e, nil
}
