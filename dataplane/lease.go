package dataplane

import (
	"fmt"
	"math"
	"time"

	"golang.org/x/sys/unix"
)

// Lease is the self-fencing lease of bpf/fsha.h (struct node_lease) as Go
// sees it.
type Lease struct {
	// Enabled: node-wide fencing is on (LEASE_MODE_NODE).
	Enabled bool
	// PerVIP: per-VIP fencing is on (LEASE_MODE_VIP, see SetVIPLease).
	PerVIP bool
	// Remaining is how long until the node-wide lease runs out; <= 0
	// means that, while Enabled, the node is fenced: it does not answer
	// for any VIP.
	Remaining time.Duration
}

const (
	leaseModeNode = uint32(fshaLeaseModeLEASE_MODE_NODE)
	leaseModeVIP  = uint32(fshaLeaseModeLEASE_MODE_VIP)
)

// RenewLease lets the node answer for its VIPs for d more: it turns
// node-wide fencing on with that deadline (per-VIP fencing stays as it
// is). The daemon calls it from its control loop, so a hung or dead daemon
// stops renewing.
func (m *Maps) RenewLease(d time.Duration) error {
	expires := MonotonicNow() + uint64(d)
	return m.updateLease("renew lease", func(v *fshaNodeLease) { v.Enabled |= leaseModeNode; v.ExpiresNs = expires })
}

// ExpireLease fences the node at once: node-wide fencing on, and already
// expired (per-VIP fencing stays as it is).
func (m *Maps) ExpireLease() error {
	return m.updateLease("expire lease", func(v *fshaNodeLease) { v.Enabled |= leaseModeNode; v.ExpiresNs = 0 })
}

// DisableLease turns fencing off: standalone tracking without a cluster.
func (m *Maps) DisableLease() error { return m.SetFencingMode(false, false) }

// SetFencingMode says which leases the programs enforce: nodeWide, the
// node's lease (RenewLease; its deadline stays as it is, so renew before
// turning it on), and perVIP, each VIP's own (SetVIPLease: a VIP without
// a lease is then fenced). Neither: no fencing, standalone tracking.
func (m *Maps) SetFencingMode(nodeWide, perVIP bool) error {
	var mode uint32
	if nodeWide {
		mode |= leaseModeNode
	}
	if perVIP {
		mode |= leaseModeVIP
	}
	return m.updateLease("set fencing mode", func(v *fshaNodeLease) { v.Enabled = mode })
}

// updateLease changes the lease map's entry with fn and reads it back.
func (m *Maps) updateLease(what string, fn func(v *fshaNodeLease)) error {
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()
	var v fshaNodeLease
	if err := m.Lease.Lookup(uint32(0), &v); err != nil {
		return fmt.Errorf("%s: read lease: %w", what, err)
	}
	fn(&v)
	if err := m.Lease.Put(uint32(0), v); err != nil {
		return fmt.Errorf("%s: write lease: %w", what, err)
	}
	var got fshaNodeLease
	if err := m.Lease.Lookup(uint32(0), &got); err != nil {
		return fmt.Errorf("%s: read back lease: %w", what, err)
	}
	if got != v {
		return fmt.Errorf("%s: read back lease %+v, want %+v", what, got, v)
	}
	return nil
}

// ReadLease returns the lease state.
func (m *Maps) ReadLease() (Lease, error) {
	var v fshaNodeLease
	if err := m.Lease.Lookup(uint32(0), &v); err != nil {
		return Lease{}, fmt.Errorf("read lease: %w", err)
	}
	l := Lease{Enabled: v.Enabled&leaseModeNode != 0, PerVIP: v.Enabled&leaseModeVIP != 0, Remaining: math.MaxInt64}
	if v.ExpiresNs <= math.MaxInt64 {
		l.Remaining = time.Duration(int64(v.ExpiresNs) - int64(MonotonicNow()))
	}
	return l, nil
}

// MonotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of every
// timestamp and deadline in the maps.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}
