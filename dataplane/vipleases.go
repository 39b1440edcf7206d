package dataplane

// Per-VIP leases in the data plane (bpf/fsha.h, struct vip_lease): with
// LEASE_MODE_VIP on, the programs answer for a VIP only until the deadline
// of the lease this node holds for it, with no daemon involved. The exact
// deadlines live in vip_leases, a hash map; vip_deadlines holds, for each
// prefilter bucket, the earliest IP deadline of the VIPs in it, so that the
// programs look a VIP's own lease up only once its bucket's deadline has
// passed. This file keeps the two consistent: a bucket is never later than
// the IP deadline of any VIP in it.

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
)

// VIPLeaseState is what this node may do for a VIP.
type VIPLeaseState uint8

const (
	// VIPLeaseNone: not held here. The data plane drops the VIP's ARP,
	// neighbour discovery and IP traffic (with per-VIP fencing on).
	VIPLeaseNone VIPLeaseState = VIPLeaseState(fshaVipLeaseStateVIP_LEASE_NONE)
	// VIPLeaseHeld: held until VIPLease.Until; everything passes until then.
	VIPLeaseHeld VIPLeaseState = VIPLeaseState(fshaVipLeaseStateVIP_LEASE_HELD)
	// VIPLeaseDraining: moved away in a planned move. IP traffic passes
	// (the old connections, steered back here, are served from loopback),
	// ARP and neighbour discovery for the VIP never do.
	VIPLeaseDraining VIPLeaseState = VIPLeaseState(fshaVipLeaseStateVIP_LEASE_DRAINING)
)

func (s VIPLeaseState) String() string {
	switch s {
	case VIPLeaseNone:
		return "none"
	case VIPLeaseHeld:
		return "held"
	case VIPLeaseDraining:
		return "draining"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// VIPLease is a VIP's lease as this node holds it.
type VIPLease struct {
	// Epoch is the epoch a majority granted; the data plane only keeps it.
	Epoch uint64
	State VIPLeaseState
	// Holder is the PNN of the holder (this node); informational.
	Holder int
	// Until is the deadline of a Held lease, CLOCK_MONOTONIC nanoseconds
	// (MonotonicNow): the data plane stops answering for the VIP before
	// it, whatever its clock's jiffy resolution (SetVIPLease). Ignored in
	// the other states.
	Until uint64
}

// jiffyEarly is the deadline the programs must see for a real deadline
// until: one jiffy earlier. Their clock is jiffies (bpf/fsha.c,
// ns_per_jiffy), which lag CLOCK_MONOTONIC by up to one jiffy, so a packet
// they pass at "now <= until - jiffy" really passes before until. Never
// below 0; U64_MAX (forever) stays.
func jiffyEarly(until, jiffy uint64) uint64 {
	switch {
	case until == math.MaxUint64:
		return until
	case until < jiffy:
		return 0
	}
	return until - jiffy
}

// jiffyLate undoes jiffyEarly (a deadline below one jiffy reads back as 0).
func jiffyLate(until, jiffy uint64) uint64 {
	if until == 0 || until == math.MaxUint64 {
		return until
	}
	if until > math.MaxUint64-jiffy {
		return math.MaxUint64
	}
	return until + jiffy
}

// leaseEntry is l as vip_leases holds it; ok false: no entry (None).
func leaseEntry(l VIPLease, jiffy uint64) (e fshaVipLease, ok bool, err error) {
	if l.Holder < 0 || int64(l.Holder) > math.MaxUint32 {
		return e, false, fmt.Errorf("holder %d out of range", l.Holder)
	}
	e = fshaVipLease{Epoch: l.Epoch, State: uint32(l.State), Holder: uint32(l.Holder)}
	switch l.State {
	case VIPLeaseNone:
		return e, false, nil
	case VIPLeaseHeld:
		e.IpUntilNs = jiffyEarly(l.Until, jiffy)
		e.ArpUntilNs = e.IpUntilNs
	case VIPLeaseDraining:
		e.IpUntilNs, e.ArpUntilNs = math.MaxUint64, 0
	default:
		return e, false, fmt.Errorf("unknown lease state %d", l.State)
	}
	return e, true, nil
}

// SetVIPLease makes l the lease the data plane enforces for vip (with
// per-VIP fencing on, SetFencingMode). A Held lease's Until is written one
// jiffy early (jiffyEarly); None removes the VIP's entry, which fences it
// as well. The bucket deadline moves first when it goes down and last when
// it goes up, so that the programs never let a VIP's traffic through past
// its deadline. Both are read back; a difference is an error.
func (m *Maps) SetVIPLease(vip netip.Addr, l VIPLease) error {
	if !vip.IsValid() {
		return errors.New("set vip lease: invalid address")
	}
	if m.VipLeases == nil || m.VipDeadlines == nil {
		return fmt.Errorf("set vip lease %s: %w", vip, errNoVIPLeaseMaps)
	}
	jiffy, err := jiffyLength()
	if err != nil {
		return err
	}
	e, present, err := leaseEntry(l, jiffy)
	if err != nil {
		return fmt.Errorf("set vip lease %s: %w", vip, err)
	}
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()

	view, err := m.readLeaseView()
	if err != nil {
		return err
	}
	k := vipKey(vip)
	if present {
		view.leases[k] = e
	} else {
		delete(view.leases, k)
	}
	bucket := vipFilterBit(k.Addr, k.Family)
	want := view.bucketDeadline(bucket)
	var cur uint64
	if err := m.VipDeadlines.Lookup(bucket, &cur); err != nil {
		return fmt.Errorf("read vip deadline bucket %d: %w", bucket, err)
	}
	for _, w := range leaseWriteOrder(cur, want) {
		if w == writeBucket {
			if err := m.VipDeadlines.Put(bucket, want); err != nil {
				return fmt.Errorf("write vip deadline bucket %d: %w", bucket, err)
			}
			continue
		}
		if present {
			err = m.VipLeases.Put(k, e)
		} else if err = m.VipLeases.Delete(k); errors.Is(err, ebpf.ErrKeyNotExist) {
			err = nil
		}
		if err != nil {
			return fmt.Errorf("write vip lease %s: %w", vip, err)
		}
	}

	var got fshaVipLease
	err = m.VipLeases.Lookup(k, &got)
	switch {
	case !present && errors.Is(err, ebpf.ErrKeyNotExist):
	case err != nil:
		return fmt.Errorf("read back vip lease %s: %w", vip, err)
	case !present:
		return fmt.Errorf("read back vip lease %s: %+v, want none", vip, got)
	case got != e:
		return fmt.Errorf("read back vip lease %s: %+v, want %+v", vip, got, e)
	}
	if err := m.VipDeadlines.Lookup(bucket, &cur); err != nil {
		return fmt.Errorf("read back vip deadline bucket %d: %w", bucket, err)
	}
	if cur != want {
		return fmt.Errorf("read back vip deadline bucket %d: %d, want %d", bucket, cur, want)
	}
	return nil
}

// VIPLeases returns the leases the data plane enforces now, by VIP (VIPs
// without a lease, None, are not listed). Until is in SetVIPLease's terms,
// the deadline as given: what vip_leases holds plus one jiffy.
func (m *Maps) VIPLeases() (map[netip.Addr]VIPLease, error) {
	out := map[netip.Addr]VIPLease{}
	if m.VipLeases == nil {
		return out, nil // pins of an older fsha: no per-VIP leases
	}
	jiffy, err := jiffyLength()
	if err != nil {
		return nil, err
	}
	leases, err := readAll[fshaVipKey, fshaVipLease](m.VipLeases)
	if err != nil {
		return nil, fmt.Errorf("read vip leases: %w", err)
	}
	for k, e := range leases {
		l := VIPLease{Epoch: e.Epoch, State: VIPLeaseState(e.State), Holder: int(e.Holder)}
		if l.State == VIPLeaseHeld {
			l.Until = jiffyLate(e.IpUntilNs, jiffy)
		}
		out[vipKeyAddr(k)] = l
	}
	return out, nil
}

// leaseWrite is one write of SetVIPLease.
type leaseWrite uint8

const (
	writeBucket leaseWrite = iota // the VIP's vip_deadlines bucket
	writeExact                    // the VIP's vip_leases entry
)

// leaseWriteOrder orders SetVIPLease's writes so that the bucket, which
// holds cur and must hold want, is never later than the VIP's deadline,
// old or new: a bucket going down goes first, one going up last.
func leaseWriteOrder(cur, want uint64) []leaseWrite {
	switch {
	case want < cur:
		return []leaseWrite{writeBucket, writeExact}
	case want > cur:
		return []leaseWrite{writeExact, writeBucket}
	}
	return []leaseWrite{writeExact}
}

var errNoVIPLeaseMaps = errors.New("the pinned maps have no per-VIP lease maps (an older fsha's)")

// leaseView is what the bucket deadlines derive from: the VIPs (vips map)
// and the leases (vip_leases), as the pinned maps hold them, so that a
// restarted daemon derives the same buckets.
type leaseView struct {
	vips   map[fshaVipKey]bool
	leases map[fshaVipKey]fshaVipLease
}

func (m *Maps) readLeaseView() (leaseView, error) {
	vips, err := readAll[fshaVipKey, fshaVipInfo](m.Vips)
	if err != nil {
		return leaseView{}, fmt.Errorf("list vips: %w", err)
	}
	leases, err := readAll[fshaVipKey, fshaVipLease](m.VipLeases)
	if err != nil {
		return leaseView{}, fmt.Errorf("read vip leases: %w", err)
	}
	v := leaseView{vips: make(map[fshaVipKey]bool, len(vips)), leases: leases}
	for k := range vips {
		v.vips[k] = true
	}
	return v, nil
}

// bucketDeadline is the deadline bucket b must hold: the earliest IP
// deadline of its VIPs, 0 for a VIP without a lease, U64_MAX without VIPs.
func (v leaseView) bucketDeadline(b uint32) uint64 {
	d := uint64(math.MaxUint64)
	for k := range v.vips {
		if vipFilterBit(k.Addr, k.Family) == b {
			d = min(d, v.leases[k].IpUntilNs)
		}
	}
	return d
}

// deadlines is bucketDeadline for every bucket with a VIP.
func (v leaseView) deadlines() map[uint32]uint64 {
	out := make(map[uint32]uint64, len(v.vips))
	for k := range v.vips {
		b := vipFilterBit(k.Addr, k.Family)
		d, ok := out[b]
		if !ok {
			d = math.MaxUint64
		}
		out[b] = min(d, v.leases[k].IpUntilNs)
	}
	return out
}

// readDeadlines returns every bucket of vip_deadlines.
func (m *Maps) readDeadlines() ([]uint64, error) {
	keys := make([]uint32, VIPFilterWords*64)
	vals := make([]uint64, len(keys))
	var cursor ebpf.MapBatchCursor
	n, err := m.VipDeadlines.BatchLookup(&cursor, keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range vals {
			if err := m.VipDeadlines.Lookup(uint32(i), &vals[i]); err != nil {
				return nil, fmt.Errorf("read vip deadline bucket %d: %w", i, err)
			}
		}
		return vals, nil
	}
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read vip deadlines: %w", err)
	}
	if n != len(keys) {
		return nil, fmt.Errorf("read vip deadlines: %d buckets, want %d", n, len(keys))
	}
	out := make([]uint64, len(keys))
	for i := range n {
		out[keys[i]] = vals[i]
	}
	return out, nil
}

// writeDeadlines writes the buckets of d, in one call where the kernel can.
func (m *Maps) writeDeadlines(d map[uint32]uint64) error {
	if len(d) == 0 {
		return nil
	}
	keys := make([]uint32, 0, len(d))
	vals := make([]uint64, 0, len(d))
	for b, v := range d {
		keys = append(keys, b)
		vals = append(vals, v)
	}
	_, err := m.VipDeadlines.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i, b := range keys {
			if err := m.VipDeadlines.Put(b, vals[i]); err != nil {
				return fmt.Errorf("write vip deadline bucket %d: %w", b, err)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("write vip deadlines: %w", err)
	}
	return nil
}

// syncDeadlines is SetVIPs' part: the buckets move from what they hold to
// what the VIPs want (after) in two steps around the change of the vips
// map, apply: first every bucket that must go down, for the VIPs before
// and after together (a VIP being added is answered for only once its
// bucket covers it), then the rest, for the VIPs after.
func (m *Maps) syncDeadlines(want map[fshaVipKey]bool, apply func() error) error {
	if m.VipDeadlines == nil || m.VipLeases == nil {
		return apply() // pins of an older fsha: no per-VIP leases
	}
	view, err := m.readLeaseView()
	if err != nil {
		return err
	}
	cur, err := m.readDeadlines()
	if err != nil {
		return err
	}
	lower, raise := deadlinePlan(view.leases, view.vips, want, cur)
	if err := m.writeDeadlines(lower); err != nil {
		return err
	}
	if err := apply(); err != nil {
		return err
	}
	return m.writeDeadlines(raise)
}

// deadlinePlan is syncDeadlines' decision: from the buckets cur, the
// leases and the VIPs before and after, the buckets to write before the
// change of VIPs (lower: each bucket that the VIPs before and after
// together want lower than it is) and after it (raise: each bucket that
// then differs from what the VIPs after want, U64_MAX without VIPs).
func deadlinePlan(leases map[fshaVipKey]fshaVipLease, before, after map[fshaVipKey]bool, cur []uint64) (lower, raise map[uint32]uint64) {
	union := leaseView{vips: maps.Clone(before), leases: leases}
	maps.Copy(union.vips, after)
	cur = slices.Clone(cur)
	lower = map[uint32]uint64{}
	for b, d := range union.deadlines() {
		if d < cur[b] {
			lower[b] = d
			cur[b] = d
		}
	}
	final := leaseView{vips: after, leases: leases}.deadlines()
	raise = map[uint32]uint64{}
	for b, c := range cur {
		if _, ok := final[uint32(b)]; !ok && c != math.MaxUint64 {
			raise[uint32(b)] = math.MaxUint64
		}
	}
	for b, d := range final {
		if d != cur[b] {
			raise[b] = d
		}
	}
	return lower, raise
}

// readAll reads a hash map whole, in batches where the kernel can.
func readAll[K comparable, V any](m *ebpf.Map) (map[K]V, error) {
	out := map[K]V{}
	keys := make([]K, 256)
	vals := make([]V, 256)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			out[keys[i]] = vals[i]
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	var (
		k K
		v V
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	return out, it.Err()
}
