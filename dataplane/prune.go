package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PruneFlows removes the flows that no local socket has any more: a server
// that was killed, a daemon restart that missed the close. Only flows first
// seen before the socket list was read are judged, so a connection opening
// meanwhile is never removed. It returns how many flows it removed.
func (m *Maps) PruneFlows() (int, error) {
	cutoff := MonotonicNow() - uint64(20*time.Millisecond) // the programs' clock is coarse
	live := map[[2]netip.AddrPort]bool{}
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := netlink.SocketDiagTCP(family)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return 0, fmt.Errorf("list tcp sockets: %w", err)
		}
		if err != nil {
			return 0, nil // an inconsistent list: judge nothing this time
		}
		for _, s := range socks {
			local, _ := netip.AddrFromSlice(s.ID.Source)
			remote, _ := netip.AddrFromSlice(s.ID.Destination)
			live[[2]netip.AddrPort{
				netip.AddrPortFrom(local.Unmap(), s.ID.SourcePort),
				netip.AddrPortFrom(remote.Unmap(), s.ID.DestinationPort),
			}] = true
		}
	}
	var stale []fshaFlowKey
	var (
		k fshaFlowKey
		v fshaFlow
	)
	m.indexes().walks.Add(1)
	it := m.Flows.Iterate()
	for it.Next(&k, &v) {
		if v.FirstSeenNs > cutoff {
			continue
		}
		tuple := [2]netip.AddrPort{
			netip.AddrPortFrom(bytesAddr(k.Vip, k.Family), k.Vport),
			netip.AddrPortFrom(bytesAddr(k.Client, k.Family), k.Cport),
		}
		if !live[tuple] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read flows: %w", err)
	}
	removed := 0
	// the programs send no close event for these: the index learns here
	x := m.indexes()
	for i, k := range stale {
		if err := m.Flows.Delete(k); err == nil {
			removed++
		} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
			x.forgetLocal(stale[:i])
			return removed, fmt.Errorf("delete stale flow: %w", err)
		}
	}
	x.forgetLocal(stale)
	if removed > 0 {
		var n uint64
		if err := m.FlowCount.Lookup(uint32(0), &n); err == nil {
			n -= min(n, uint64(removed))
			_ = m.FlowCount.Put(uint32(0), n)
		}
	}
	return removed, nil
}
