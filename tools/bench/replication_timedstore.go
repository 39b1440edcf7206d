package main

// timedStore: the in-process peers' store, their real peer_flows map, that
// notes when each connection and each snapshot's sweep got there, so the
// in-process part can time Publish -> stored; and the waits on it.

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// timedStore is a peer's store (its peer_flows map) that notes when each
// connection was written, while watching.
type timedStore struct {
	m       *dataplane.Maps
	records atomic.Int64

	mu     sync.Mutex
	watch  bool
	opened map[netip.AddrPort]time.Time
	closed map[netip.AddrPort]time.Time
	sweeps []sweep
}

type sweep struct{ start, end time.Time }

func newTimedStore(m *dataplane.Maps) *timedStore {
	return &timedStore{m: m, opened: map[netip.AddrPort]time.Time{}, closed: map[netip.AddrPort]time.Time{}}
}

func (s *timedStore) UpsertPeerFlows(f []dataplane.PeerFlow) error {
	err := s.m.UpsertPeerFlows(f)
	now := time.Now()
	s.records.Add(int64(len(f)))
	s.mu.Lock()
	if s.watch {
		for _, pf := range f {
			s.opened[netip.AddrPortFrom(pf.Client, pf.ClientPort)] = now
		}
	}
	s.mu.Unlock()
	return err
}

func (s *timedStore) DeletePeerFlows(f []dataplane.PeerFlow) error {
	err := s.m.DeletePeerFlows(f)
	now := time.Now()
	s.mu.Lock()
	if s.watch {
		for _, pf := range f {
			s.closed[netip.AddrPortFrom(pf.Client, pf.ClientPort)] = now
		}
	}
	s.mu.Unlock()
	return err
}

// DeletePeerFlowsWhere is called once per snapshot, at its end.
func (s *timedStore) DeletePeerFlowsWhere(match func(dataplane.PeerFlow) bool) (int, error) {
	start := time.Now()
	n, err := s.m.DeletePeerFlowsWhere(match)
	s.mu.Lock()
	s.sweeps = append(s.sweeps, sweep{start, time.Now()})
	s.mu.Unlock()
	return n, err
}

func (s *timedStore) setWatch(on bool) {
	s.mu.Lock()
	s.watch = on
	clear(s.opened)
	clear(s.closed)
	s.mu.Unlock()
}

// latencies returns, for each client of pub, stored - published; it
// fails if some have not arrived.
func (s *timedStore) latencies(pub map[netip.AddrPort]time.Time, closes bool) ([]float64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := s.opened
	if closes {
		got = s.closed
	}
	var out []float64
	missing := 0
	for k, t := range pub {
		at, ok := got[k]
		if !ok {
			missing++
			continue
		}
		out = append(out, at.Sub(t).Seconds())
	}
	return out, missing
}

// lastStored is when the latest watched open was stored.
func (s *timedStore) lastStored() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for _, t := range s.opened {
		last = later(last, t)
	}
	return last
}

func (s *timedStore) sweepCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sweeps)
}

func (s *timedStore) lastSweep() sweep {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sweeps[len(s.sweeps)-1]
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func waitSweeps(ctx context.Context, dsts []*replNode, n int, timeout time.Duration) error {
	return lab.Eventually(ctx, timeout, "snapshots applied", func(context.Context) error {
		for i, d := range dsts {
			if got := d.store.sweepCount(); got < n {
				return fmt.Errorf("node %d applied %d snapshots, want %d", i+1, got, n)
			}
		}
		return nil
	})
}

func waitLatencies(ctx context.Context, s *timedStore, pub map[netip.AddrPort]time.Time, closes bool) ([]float64, error) {
	var lat []float64
	err := lab.Eventually(ctx, 30*time.Second, "records stored", func(context.Context) error {
		var missing int
		lat, missing = s.latencies(pub, closes)
		if missing > 0 {
			return fmt.Errorf("%d of %d not stored", missing, len(pub))
		}
		return nil
	})
	return lat, err
}
