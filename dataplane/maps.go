package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/cilium/ebpf"
)

// Maps is typed access to fsha's maps, shared by the daemon (Dataplane) and
// by commands that read the pins while the daemon is down (OpenPinned).
type Maps struct {
	Flows       *ebpf.Map
	FlowCount   *ebpf.Map
	ClosedFlows *ebpf.Map
	Events      *ebpf.Map
	Vips        *ebpf.Map
	VipFilter   *ebpf.Map
	Ports       *ebpf.Map
	Counters    *ebpf.Map
	Lease       *ebpf.Map
	Handshakes  *ebpf.Map
	PeerFlows   *ebpf.Map
	NodeMacs    *ebpf.Map
	Steering    *ebpf.Map
	// FlowCache holds per-CPU counts not yet in Flows (see ForEachFlow).
	FlowCache *ebpf.Map
	// VipLeases, VipDeadlines: the per-VIP leases the programs enforce
	// (SetVIPLease). VipGrants: this node's promises as a voter
	// (SetVIPGrant). All three are nil in the pins of an older fsha.
	VipLeases    *ebpf.Map
	VipDeadlines *ebpf.Map
	VipGrants    *ebpf.Map
	// PinFormat holds the format of the pinned maps (migrate.go); nil in
	// the pins of an older fsha.
	PinFormat *ebpf.Map
	// SteerModes: each interface's steering path (steermode.go); nil in
	// the pins of an older fsha.
	SteerModes *ebpf.Map
	// PeerMacs: the other nodes' MACs per interface of this node
	// (SetPeerMACs); nil in the pins of an older fsha.
	PeerMacs *ebpf.Map

	// leaseMu serialises the writers of the lease, vips, vip_leases and
	// vip_deadlines maps, whose buckets are read, recomputed and written.
	// Shared by the copies of a Maps.
	leaseMu *sync.Mutex
	// macMu serialises the writers of node_macs, whose entries both
	// SetNodeMAC and SetPeerMACs read, change and write back.
	macMu *sync.Mutex
}

func mapsOf(m *fshaMaps) Maps {
	return Maps{
		Flows: m.Flows, FlowCount: m.FlowCount, ClosedFlows: m.ClosedFlows, Events: m.Events,
		Vips: m.Vips, VipFilter: m.VipFilter, Ports: m.Ports, Counters: m.Counters, Lease: m.Lease,
		Handshakes: m.Handshakes, PeerFlows: m.PeerFlows, NodeMacs: m.NodeMacs, Steering: m.Steering,
		FlowCache: m.FlowCache, VipLeases: m.VipLeases, VipDeadlines: m.VipDeadlines, VipGrants: m.VipGrants,
		PinFormat: m.PinFormat, SteerModes: m.SteerModes, PeerMacs: m.PeerMacs, leaseMu: new(sync.Mutex), macMu: new(sync.Mutex),
	}
}

// byName lists the maps with their pin names, in a stable order.
func (m *Maps) byName() []namedMap {
	return []namedMap{
		{fshaMapFlows, m.Flows}, {fshaMapFlowCount, m.FlowCount}, {fshaMapClosedFlows, m.ClosedFlows},
		{fshaMapEvents, m.Events}, {fshaMapVips, m.Vips}, {fshaMapVipFilter, m.VipFilter},
		{fshaMapPorts, m.Ports}, {fshaMapCounters, m.Counters}, {fshaMapLease, m.Lease},
		{fshaMapHandshakes, m.Handshakes}, {fshaMapPeerFlows, m.PeerFlows},
		{fshaMapNodeMacs, m.NodeMacs}, {fshaMapSteering, m.Steering}, {fshaMapFlowCache, m.FlowCache},
		{fshaMapVipLeases, m.VipLeases}, {fshaMapVipDeadlines, m.VipDeadlines}, {fshaMapVipGrants, m.VipGrants},
		{fshaMapPinFormat, m.PinFormat}, {fshaMapSteerModes, m.SteerModes}, {fshaMapPeerMacs, m.PeerMacs},
	}
}

type namedMap struct {
	name string
	m    *ebpf.Map
}

// ErrNotLoaded is returned by OpenPinned when no fsha maps are pinned there.
var ErrNotLoaded = errors.New("fsha data plane not loaded")

// PinnedMaps are the maps of a data plane opened from their pins.
type PinnedMaps struct {
	Maps
}

// OpenPinned opens the maps pinned under pinPath, read-only: it is how the
// CLI reads flows whether or not the daemon runs.
func OpenPinned(pinPath string) (_ *PinnedMaps, err error) {
	p := &PinnedMaps{Maps: Maps{leaseMu: new(sync.Mutex), macMu: new(sync.Mutex)}}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	open := func(name string) (*ebpf.Map, error) {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), &ebpf.LoadPinOptions{ReadOnly: true})
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: no map %s under %s (is `fsha up` running with this --pin-path?)", ErrNotLoaded, name, pinPath)
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		return m, nil
	}
	for _, dst := range []struct {
		name string
		m    **ebpf.Map
	}{
		{fshaMapFlows, &p.Flows}, {fshaMapFlowCount, &p.FlowCount}, {fshaMapClosedFlows, &p.ClosedFlows},
		{fshaMapVips, &p.Vips}, {fshaMapVipFilter, &p.VipFilter}, {fshaMapPorts, &p.Ports},
		{fshaMapCounters, &p.Counters}, {fshaMapLease, &p.Lease},
		{fshaMapHandshakes, &p.Handshakes}, {fshaMapPeerFlows, &p.PeerFlows},
		{fshaMapNodeMacs, &p.NodeMacs}, {fshaMapSteering, &p.Steering}, {fshaMapFlowCache, &p.FlowCache},
		{fshaMapVipLeases, &p.VipLeases}, {fshaMapVipDeadlines, &p.VipDeadlines}, {fshaMapVipGrants, &p.VipGrants},
		{fshaMapPinFormat, &p.PinFormat}, {fshaMapSteerModes, &p.SteerModes}, {fshaMapPeerMacs, &p.PeerMacs},
	} {
		*dst.m, err = open(dst.name)
		if optionalPins[dst.name] && errors.Is(err, ErrNotLoaded) {
			continue // programs of an older fsha, without them
		}
		if err != nil {
			return nil, err
		}
	}
	return p, nil
}

// optionalPins are the maps an older fsha's pins may lack: a flow cache
// with nothing to add, no per-VIP leases and grants, no format.
var optionalPins = map[string]bool{
	fshaMapFlowCache: true, fshaMapVipLeases: true, fshaMapVipDeadlines: true, fshaMapVipGrants: true,
	fshaMapPinFormat: true, fshaMapSteerModes: true, fshaMapPeerMacs: true,
}

// Close closes the map handles.
func (p *PinnedMaps) Close() error {
	var errs []error
	for _, nm := range p.byName() {
		if nm.m != nil {
			errs = append(errs, nm.m.Close())
		}
	}
	return errors.Join(errs...)
}

// SetVIPs makes addrs the set of tracked VIPs. New VIPs are added to the
// authoritative map before the prefilter and removed ones leave the
// prefilter first, so the programs never see a VIP half-configured. The
// buckets of vip_deadlines follow (syncDeadlines): one that a new VIP
// lowers goes down before the VIP is added, one that a removed VIP held
// down goes up after it is gone.
func (m *Maps) SetVIPs(addrs []netip.Addr) error {
	want := make(map[fshaVipKey]bool, len(addrs))
	for _, a := range addrs {
		want[vipKey(a)] = true
	}
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()
	return m.syncDeadlines(want, func() error { return m.setVIPs(want) })
}

func (m *Maps) setVIPs(want map[fshaVipKey]bool) error {
	for k := range want {
		v := fshaVipInfo{Flags: uint32(fshaVipFlagsVIP_F_TRACK)}
		if err := m.Vips.Put(k, v); err != nil {
			return fmt.Errorf("add vip %s: %w", vipKeyAddr(k), err)
		}
	}
	var filter [VIPFilterWords]uint64
	for k := range want {
		bit := vipFilterBit(k.Addr, k.Family)
		filter[bit/64] |= 1 << (bit % 64)
	}
	for i, w := range filter {
		if err := m.VipFilter.Put(uint32(i), w); err != nil {
			return fmt.Errorf("write vip filter: %w", err)
		}
	}
	var (
		k     fshaVipKey
		v     fshaVipInfo
		stale []fshaVipKey
	)
	it := m.Vips.Iterate()
	for it.Next(&k, &v) {
		if !want[k] {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("list vips: %w", err)
	}
	for _, k := range stale {
		if err := m.Vips.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove vip %s: %w", vipKeyAddr(k), err)
		}
	}
	return nil
}

// VIPs returns the tracked VIPs.
func (m *Maps) VIPs() ([]netip.Addr, error) {
	var (
		k   fshaVipKey
		v   fshaVipInfo
		out []netip.Addr
	)
	it := m.Vips.Iterate()
	for it.Next(&k, &v) {
		out = append(out, vipKeyAddr(k))
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("list vips: %w", err)
	}
	return out, nil
}

// SetPorts makes ports the set of tracked TCP ports: new ones are switched
// on before old ones are switched off.
func (m *Maps) SetPorts(ports []uint16) error {
	want := make(map[uint16]bool, len(ports))
	for _, p := range ports {
		want[p] = true
		if err := m.Ports.Put(uint32(p), uint8(1)); err != nil {
			return fmt.Errorf("track port %d: %w", p, err)
		}
	}
	current, err := m.TrackedPorts()
	if err != nil {
		return err
	}
	for _, p := range current {
		if !want[p] {
			if err := m.Ports.Put(uint32(p), uint8(0)); err != nil {
				return fmt.Errorf("untrack port %d: %w", p, err)
			}
		}
	}
	return nil
}

// TrackedPorts returns the tracked TCP ports in ascending order.
func (m *Maps) TrackedPorts() ([]uint16, error) {
	keys := make([]uint32, 65536)
	vals := make([]uint8, 65536)
	var cursor ebpf.MapBatchCursor
	n, err := m.Ports.BatchLookup(&cursor, keys, vals, nil)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read ports: %w", err)
	}
	var out []uint16
	for i := 0; i < n; i++ {
		if vals[i] != 0 {
			out = append(out, uint16(keys[i]))
		}
	}
	return out, nil
}

// VIPFilterWords is the size of the VIP prefilter bitmap in 64-bit words.
const VIPFilterWords = 1024

// vipFilterBit mirrors vip_bucket in bpf/fsha.c: the address's 32-bit
// words, loaded in the host (little-endian) order the program loads them,
// xored and folded to 16 bits. It is the address's prefilter bit and its
// vip_deadlines bucket.
func vipFilterBit(addr [16]uint8, family uint8) uint32 {
	h := binary.LittleEndian.Uint32(addr[0:4])
	if family == afInet6 {
		h ^= binary.LittleEndian.Uint32(addr[4:8]) ^ binary.LittleEndian.Uint32(addr[8:12]) ^
			binary.LittleEndian.Uint32(addr[12:16])
	}
	h ^= h >> 16
	return h & 0xffff
}

const (
	afInet  = 2
	afInet6 = 10
)

func vipKey(a netip.Addr) fshaVipKey {
	var k fshaVipKey
	k.Addr, k.Family = addrBytes(a)
	return k
}

func vipKeyAddr(k fshaVipKey) netip.Addr { return bytesAddr(k.Addr, k.Family) }

// addrBytes stores a as the programs do: IPv4 in the first four bytes.
func addrBytes(a netip.Addr) ([16]uint8, uint8) {
	var b [16]uint8
	a = a.Unmap()
	if a.Is4() {
		v4 := a.As4()
		copy(b[:], v4[:])
		return b, afInet
	}
	return a.As16(), afInet6
}

func bytesAddr(b [16]uint8, family uint8) netip.Addr {
	if family == afInet {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}
