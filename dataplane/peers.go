package dataplane

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
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

// ErrPeerMapFull is returned when the peer flows map has no room left: the
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
	keys := make([]fshaFlowKey, 0, min(len(flows), chunk))
	vals := make([]fshaPeerFlow, 0, min(len(flows), chunk))
	for len(flows) > 0 {
		n := min(len(flows), chunk)
		keys, vals = keys[:0], vals[:0]
		for i := range flows[:n] {
			keys = append(keys, peerKey(&flows[i]))
			vals = append(vals, peerValue(&flows[i]))
		}
		if _, err := m.PeerFlows.BatchUpdate(keys, vals, nil); err != nil {
			if errors.Is(err, ebpf.ErrNotSupported) {
				return m.upsertPeerFlowsOneByOne(keys, vals)
			}
			if errors.Is(err, errNoSpace) {
				return fmt.Errorf("%w (%d entries)", ErrPeerMapFull, m.PeerFlows.MaxEntries())
			}
			return fmt.Errorf("write peer flows: %w", err)
		}
		flows = flows[n:]
	}
	return nil
}

func (m *Maps) upsertPeerFlowsOneByOne(keys []fshaFlowKey, vals []fshaPeerFlow) error {
	for i := range keys {
		if err := m.PeerFlows.Put(keys[i], vals[i]); err != nil {
			if errors.Is(err, errNoSpace) {
				return fmt.Errorf("%w (%d entries)", ErrPeerMapFull, m.PeerFlows.MaxEntries())
			}
			return fmt.Errorf("write peer flow: %w", err)
		}
	}
	return nil
}

// DeletePeerFlows removes peer flows (only their tuples matter); missing
// ones are not an error.
func (m *Maps) DeletePeerFlows(flows []PeerFlow) error {
	for i := range flows {
		k := peerKey(&flows[i])
		if err := m.PeerFlows.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete peer flow: %w", err)
		}
	}
	return nil
}

// ForEachPeerFlow calls fn for every peer flow until it returns false.
func (m *Maps) ForEachPeerFlow(fn func(PeerFlow) bool) error {
	keys := make([]fshaFlowKey, flowBatch)
	vals := make([]fshaPeerFlow, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.PeerFlows.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if !fn(peerOf(&keys[i], &vals[i])) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read peer flows: %w", err)
		}
	}
}

// DeletePeerFlowsWhere removes every peer flow for which match is true and
// returns how many: an owner's stale generation after a snapshot, a dead
// node's flows after its VIPs were taken over.
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

// SetNodeMAC records where steered packets for node pnn go.
func (m *Maps) SetNodeMAC(pnn int, mac net.HardwareAddr) error {
	if pnn < 0 || pnn >= MaxNodes {
		return fmt.Errorf("node %d out of range 0..%d", pnn, MaxNodes-1)
	}
	var v fshaNodeMac
	if len(mac) == 6 && !bytes.Equal(mac, make([]byte, 6)) {
		copy(v.Mac[:], mac)
		v.Valid = 1
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
