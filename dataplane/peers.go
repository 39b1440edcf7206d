package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// PeerFlow is a connection whose socket is on another node, as replicated
// to this one.
type PeerFlow struct {
	VIP        netip.Addr
	VIPPort    uint16
	Client     netip.Addr
	ClientPort uint16
	Owner      int       // PNN of the node holding the socket
	LastSeen   time.Time // the owner's clock
	Gen        uint32    // the owner's snapshot generation
	Steer      bool      // XDP ingress steers its packets to the owner
}

// ErrPeerMapFull is returned when the peer flows map has no room left and
// cannot grow (it holds --peer-flows-max entries, or growing failed): the
// flows that did not fit are not tracked here (and would not be tickled);
// raise --peer-flows-max.
var ErrPeerMapFull = errors.New("peer flows map full")

func peerKey(f *PeerFlow) fshaFlowKey {
	var k fshaFlowKey
	k.Vip, k.Family = addrBytes(f.VIP)
	k.Client, _ = addrBytes(f.Client)
	k.Vport, k.Cport = f.VIPPort, f.ClientPort
	return k
}

func peerValue(f *PeerFlow) fshaPeerFlow {
	v := fshaPeerFlow{Gen: f.Gen, Owner: uint16(f.Owner)}
	if !f.LastSeen.IsZero() {
		v.LastSeenNs = uint64(f.LastSeen.UnixNano())
	}
	if f.Steer {
		v.Flags = uint8(fshaPeerFlagsPEER_F_STEER)
	}
	return v
}

func peerOf(k *fshaFlowKey, v *fshaPeerFlow) PeerFlow {
	f := PeerFlow{
		VIP: bytesAddr(k.Vip, k.Family), VIPPort: k.Vport, Client: bytesAddr(k.Client, k.Family), ClientPort: k.Cport,
		Owner: int(v.Owner), Gen: v.Gen, Steer: v.Flags&uint8(fshaPeerFlagsPEER_F_STEER) != 0,
	}
	if v.LastSeenNs != 0 {
		f.LastSeen = time.Unix(0, int64(v.LastSeenNs))
	}
	return f
}

// UpsertPeerFlows adds or refreshes peer flows in one batch syscall per
// chunk. On a full map it stores what fits and returns ErrPeerMapFull.
func (m *Maps) UpsertPeerFlows(flows []PeerFlow) error {
	const chunk = 8192
	x := m.indexes()
	x.ensurePeer(m)
	keys := make([]fshaFlowKey, 0, min(len(flows), chunk))
	vals := make([]fshaPeerFlow, 0, min(len(flows), chunk))
	for len(flows) > 0 {
		n := min(len(flows), chunk)
		keys, vals = keys[:0], vals[:0]
		for i := range flows[:n] {
			keys = append(keys, peerKey(&flows[i]))
			vals = append(vals, peerValue(&flows[i]))
		}
		if err := m.upsertPeerChunk(x, keys, vals); err != nil {
			return err
		}
		flows = flows[n:]
	}
	return nil
}

// upsertPeerChunk writes one chunk and indexes what was written. A full
// map that can grow grows first (peergrow.go): the chunk waits for it.
func (m *Maps) upsertPeerChunk(x *indexes, keys []fshaFlowKey, vals []fshaPeerFlow) error {
	p := &x.peer
	p.mu.Lock()
	defer p.mu.Unlock()
	for {
		done, err := m.putPeerLocked(p, keys, vals)
		for i := range done {
			p.applyLocked(&keys[i], vals[i].Owner, false)
		}
		keys, vals = keys[done:], vals[done:]
		if err == nil {
			m.maybeGrowLocked(x)
			return nil
		}
		if !errors.Is(err, ErrPeerMapFull) || !m.growPeerLocked(x) {
			return err
		}
	}
}

// DeletePeerFlows removes peer flows (only their tuples matter); missing
// ones are not an error.
func (m *Maps) DeletePeerFlows(flows []PeerFlow) error {
	x := m.indexes()
	x.ensurePeer(m)
	for len(flows) > 0 {
		n := min(len(flows), peerChunk)
		if err := m.deletePeerChunk(x, flows[:n]); err != nil {
			return err
		}
		flows = flows[n:]
	}
	return nil
}

func (m *Maps) deletePeerChunk(x *indexes, flows []PeerFlow) error {
	x.peer.mu.Lock()
	defer x.peer.mu.Unlock()
	for i := range flows {
		k := peerKey(&flows[i])
		x.keyOps.Add(1)
		if err := m.deletePeerLocked(&x.peer, &k); err != nil {
			return err
		}
		x.peer.applyLocked(&k, 0, true)
	}
	return nil
}

// ForEachPeerFlow calls fn for every peer flow until it returns false: a
// walk of the whole map.
func (m *Maps) ForEachPeerFlow(fn func(PeerFlow) bool) error {
	err := m.walkPeer(m.indexes(), func(k *fshaFlowKey, v *fshaPeerFlow) bool {
		return fn(peerOf(k, v))
	})
	if err != nil {
		return fmt.Errorf("read peer flows: %w", err)
	}
	return nil
}

// DeletePeerFlowsWhere removes every peer flow for which match is true and
// returns how many, with a walk of the whole map. For one owner's flows,
// DropPeerFlows and SweepPeerFlows cost only as much as those flows.
func (m *Maps) DeletePeerFlowsWhere(match func(PeerFlow) bool) (int, error) {
	var doomed []PeerFlow
	if err := m.ForEachPeerFlow(func(f PeerFlow) bool {
		if match(f) {
			doomed = append(doomed, f)
		}
		return true
	}); err != nil {
		return 0, err
	}
	return len(doomed), m.DeletePeerFlows(doomed)
}

// SetNodeMAC records where steered packets for node pnn go, keeping what
// SetPeerMACs said of its interface MACs.
func (m *Maps) SetNodeMAC(pnn int, mac net.HardwareAddr) error {
	if pnn < 0 || pnn >= MaxNodes {
		return fmt.Errorf("node %d out of range 0..%d", pnn, MaxNodes-1)
	}
	m.macMu.Lock()
	defer m.macMu.Unlock()
	var v fshaNodeMac
	if err := m.NodeMacs.Lookup(uint32(pnn), &v); err != nil {
		return fmt.Errorf("read node %d mac: %w", pnn, err)
	}
	v.Mac, v.Valid = [6]byte{}, v.Valid&uint16(fshaNodeMacFlagsNODE_MAC_PER_IFACE)
	if len(mac) == 6 && !bytes.Equal(mac, make([]byte, 6)) {
		copy(v.Mac[:], mac)
		v.Valid |= uint16(fshaNodeMacFlagsNODE_MAC_VALID)
	}
	if err := m.NodeMacs.Put(uint32(pnn), v); err != nil {
		return fmt.Errorf("write node %d mac: %w", pnn, err)
	}
	return nil
}

// setPerIface sets or clears NODE_MAC_PER_IFACE in node pnn's node_macs
// entry: the programs look peer_macs up only for a node that has it.
func (m *Maps) setPerIface(pnn int, on bool) error {
	m.macMu.Lock()
	defer m.macMu.Unlock()
	var v fshaNodeMac
	if err := m.NodeMacs.Lookup(uint32(pnn), &v); err != nil {
		return fmt.Errorf("read node %d mac: %w", pnn, err)
	}
	flag := uint16(fshaNodeMacFlagsNODE_MAC_PER_IFACE)
	if (v.Valid&flag != 0) == on {
		return nil
	}
	v.Valid &^= flag
	if on {
		v.Valid |= flag
	}
	if err := m.NodeMacs.Put(uint32(pnn), v); err != nil {
		return fmt.Errorf("write node %d mac: %w", pnn, err)
	}
	return nil
}

// SetSteering turns the XDP steering lookup on (n > 0: VIPs are draining)
// or off.
func (m *Maps) SetSteering(n int) error {
	if err := m.Steering.Put(uint32(0), uint32(max(n, 0))); err != nil {
		return fmt.Errorf("write steering: %w", err)
	}
	return nil
}

// MaxNodes is how many nodes (PNNs) the data plane can steer to.
const MaxNodes = 256

// errNoSpace is what a full hash map answers to an insert.
var errNoSpace = unix.E2BIG
