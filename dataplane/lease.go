package dataplane

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Lease is the self-fencing lease of bpf/fsha.h as Go sees it.
type Lease struct {
	Enabled bool
	// Remaining is how long until it runs out; <= 0 means the node is
	// fenced: it does not answer for its VIPs.
	Remaining time.Duration
}

// RenewLease lets the node answer for its VIPs for d more. The daemon calls
// it from its control loop, so a hung or dead daemon stops renewing.
func (m *Maps) RenewLease(d time.Duration) error {
	return m.writeLease(true, monotonicNow()+uint64(d))
}

// ExpireLease fences the node at once (it is enabled and already expired).
func (m *Maps) ExpireLease() error { return m.writeLease(true, 0) }

// DisableLease turns fencing off: standalone tracking without a cluster.
func (m *Maps) DisableLease() error { return m.writeLease(false, 0) }

func (m *Maps) writeLease(enabled bool, expires uint64) error {
	v := fshaNodeLease{ExpiresNs: expires}
	if enabled {
		v.Enabled = 1
	}
	if err := m.Lease.Put(uint32(0), v); err != nil {
		return fmt.Errorf("write lease: %w", err)
	}
	return nil
}

// ReadLease returns the lease state.
func (m *Maps) ReadLease() (Lease, error) {
	var v fshaNodeLease
	if err := m.Lease.Lookup(uint32(0), &v); err != nil {
		return Lease{}, fmt.Errorf("read lease: %w", err)
	}
	return Lease{Enabled: v.Enabled != 0, Remaining: time.Duration(int64(v.ExpiresNs) - int64(monotonicNow()))}, nil
}

func monotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
