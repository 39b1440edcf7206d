package dataplane

import (
	"errors"
	"fmt"
	"net"

	"github.com/cilium/ebpf"
)

// SetPeerMACs makes byIfindex node pnn's MACs on the networks of this
// node's interfaces (ifindex -> MAC): a packet steered to pnn out of one of
// them is addressed there, and out of any other interface to its node MAC
// (SetNodeMAC). Entries of pnn not in byIfindex are removed. The map is
// small (nodes x interfaces): it is read whole. The node's node_macs
// entry says whether it has any (NODE_MAC_PER_IFACE): set once they are
// written, cleared before they go, so the programs never look for entries
// that are not there yet.
func (m *Maps) SetPeerMACs(pnn int, byIfindex map[int][6]byte) error {
	if m.PeerMacs == nil {
		return errors.New("the pinned maps have no peer_macs map (an older fsha's pins)")
	}
	if pnn < 0 || pnn >= MaxNodes {
		return fmt.Errorf("node %d out of range 0..%d", pnn, MaxNodes-1)
	}
	want := 0
	for ifindex, mac := range byIfindex {
		if mac != ([6]byte{}) && ifindex > 0 {
			want++
		}
	}
	if want == 0 {
		if err := m.setPerIface(pnn, false); err != nil {
			return err
		}
	}
	var stale []fshaPeerMacKey
	var k fshaPeerMacKey
	var v fshaNodeMac
	it := m.PeerMacs.Iterate()
	for it.Next(&k, &v) {
		if int(k.Owner) != pnn {
			continue
		}
		if mac, ok := byIfindex[int(k.Ifindex)]; !ok || mac == ([6]byte{}) {
			stale = append(stale, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read peer macs: %w", err)
	}
	for _, k := range stale {
		if err := m.PeerMacs.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove node %d's mac on ifindex %d: %w", pnn, k.Ifindex, err)
		}
	}
	for ifindex, mac := range byIfindex {
		if mac == ([6]byte{}) || ifindex <= 0 {
			continue
		}
		k := fshaPeerMacKey{Owner: uint32(pnn), Ifindex: uint32(ifindex)}
		if err := m.PeerMacs.Put(k, fshaNodeMac{Mac: mac, Valid: uint16(fshaNodeMacFlagsNODE_MAC_VALID)}); err != nil {
			return fmt.Errorf("write node %d's mac on ifindex %d: %w", pnn, ifindex, err)
		}
	}
	if want > 0 {
		return m.setPerIface(pnn, true)
	}
	return nil
}

// PeerMACs returns what SetPeerMACs wrote: node -> ifindex -> MAC.
func (m *Maps) PeerMACs() (map[int]map[int][6]byte, error) {
	out := map[int]map[int][6]byte{}
	if m.PeerMacs == nil {
		return out, nil
	}
	var k fshaPeerMacKey
	var v fshaNodeMac
	it := m.PeerMacs.Iterate()
	for it.Next(&k, &v) {
		if v.Valid&uint16(fshaNodeMacFlagsNODE_MAC_VALID) == 0 {
			continue
		}
		if out[int(k.Owner)] == nil {
			out[int(k.Owner)] = map[int][6]byte{}
		}
		out[int(k.Owner)][int(k.Ifindex)] = v.Mac
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read peer macs: %w", err)
	}
	return out, nil
}

// SetPeerMACs records node owner's MACs by interface name (its heartbeats
// say them): each name this node also has is its network, where a packet
// steered to owner out of that interface must be addressed. Interfaces
// this node lacks are skipped.
func (a *Actions) SetPeerMACs(owner int, byName map[string][6]byte) error {
	byIfindex := map[int][6]byte{}
	for name, mac := range byName {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			continue // not here: nothing leaves by it
		}
		byIfindex[ifi.Index] = mac
	}
	return a.maps.SetPeerMACs(owner, byIfindex)
}
