package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
)

// peerIndex is the other nodes' flows (peer_flows) by VIP and owner. Every
// Maps method that writes peer_flows keeps it, holding its lock across the
// map write so that the index and the map change in the same order.
type peerIndex struct {
	mu       sync.Mutex
	vips     map[netip.Addr]map[uint16]*flowSet
	n        int
	started  bool // a build was started
	ready    bool // a build completed
	building bool
	log      []peerOp // changes made while building
	buildErr error
	peerMaps // the maps the writes go to (peergrow.go)
}

type peerOp struct {
	key   fshaFlowKey
	owner uint16
	del   bool
}

// peerEntry is one peer flow as the index knows it.
type peerEntry struct {
	key   fshaFlowKey
	owner uint16
}

// peerChunk bounds how many entries one hold of the peer index's lock
// covers in operations on many flows, so that a sweep of a million never
// holds back a takeover's steering for long.
const peerChunk = 4096

// applyPeer adds (or with del removes) k, owned by owner, to vips. A tuple
// has one owner: adding it for one takes it from another.
func applyPeer(vips map[netip.Addr]map[uint16]*flowSet, n *int, k *fshaFlowKey, owner uint16, del bool) {
	vip := keyVIP(k)
	owners := vips[vip]
	for o, s := range owners {
		if (del || o != owner) && s.remove(k) {
			*n--
			if s.len() == 0 {
				delete(owners, o)
			}
			break
		}
	}
	if del {
		if owners != nil && len(owners) == 0 {
			delete(vips, vip)
		}
		return
	}
	if owners == nil {
		owners = map[uint16]*flowSet{}
		vips[vip] = owners
	}
	s := owners[owner]
	if s == nil {
		s = &flowSet{}
		owners[owner] = s
	}
	if s.add(k) {
		*n++
	}
}

func (p *peerIndex) applyLocked(k *fshaFlowKey, owner uint16, del bool) {
	if p.building {
		p.log = append(p.log, peerOp{*k, owner, del})
	}
	if p.vips == nil {
		p.vips = map[netip.Addr]map[uint16]*flowSet{}
	}
	applyPeer(p.vips, &p.n, k, owner, del)
}

// holdsLocked tells whether the index has k owned by owner.
func (p *peerIndex) holdsLocked(k *fshaFlowKey, owner uint16) bool {
	s := p.vips[keyVIP(k)][owner]
	return s != nil && s.has(k)
}

// ensurePeer starts the peer index's build on first use.
func (x *indexes) ensurePeer(m *Maps) {
	p := &x.peer
	p.mu.Lock()
	if p.started {
		p.mu.Unlock()
		return
	}
	p.started, p.building, p.log = true, true, nil
	p.mu.Unlock()
	go x.buildPeer(m)
}

func (x *indexes) buildPeer(m *Maps) {
	vips := map[netip.Addr]map[uint16]*flowSet{}
	n := 0
	err := m.walkPeer(x, func(k *fshaFlowKey, v *fshaPeerFlow) bool {
		applyPeer(vips, &n, k, v.Owner, false)
		return true
	})
	if x.afterWalk != nil {
		x.afterWalk()
	}
	p := &x.peer
	p.mu.Lock()
	defer p.mu.Unlock()
	p.building, p.buildErr = false, err
	if err != nil {
		p.started, p.log = false, nil // the next use tries again
		return
	}
	for i := range p.log {
		op := &p.log[i]
		applyPeer(vips, &n, &op.key, op.owner, op.del)
	}
	p.vips, p.n, p.log, p.ready = vips, n, nil, true
	m.maybeGrowLocked(x) // a map filled by an earlier run
}

// peerEntries returns the index's entries of vip (every VIP when vip is
// invalid) whose owner passes want; ok is false before the first build.
func (x *indexes) peerEntries(m *Maps, vip netip.Addr, want func(owner uint16) bool) (out []peerEntry, ok bool) {
	x.ensurePeer(m)
	p := &x.peer
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready {
		return nil, false
	}
	// sized first: a takeover's tickles wait for this copy
	n := 0
	count := func(owners map[uint16]*flowSet) {
		for o, s := range owners {
			if want(o) {
				n += s.len()
			}
		}
	}
	add := func(vip netip.Addr, owners map[uint16]*flowSet) {
		for o, s := range owners {
			if want(o) {
				s.each(vip, func(k *fshaFlowKey) { out = append(out, peerEntry{*k, o}) })
			}
		}
	}
	if vip.IsValid() {
		count(p.vips[vip.Unmap()])
		out = make([]peerEntry, 0, n)
		add(vip.Unmap(), p.vips[vip.Unmap()])
		return out, true
	}
	for _, owners := range p.vips {
		count(owners)
	}
	out = make([]peerEntry, 0, n)
	for vip, owners := range p.vips {
		add(vip, owners)
	}
	return out, true
}

// eachPeerChunk calls fn, with the peer index locked, for each of entries
// that the index still holds as it was (a concurrent write may have
// deleted it or given it to another owner meanwhile), peerChunk entries
// per hold of the lock. fn may change the map and the index.
func (x *indexes) eachPeerChunk(entries []peerEntry, fn func(e *peerEntry) error) error {
	p := &x.peer
	for len(entries) > 0 {
		n := min(len(entries), peerChunk)
		p.mu.Lock()
		for i := range entries[:n] {
			e := &entries[i]
			if !p.holdsLocked(&e.key, e.owner) {
				continue
			}
			if err := fn(e); err != nil {
				p.mu.Unlock()
				return err
			}
		}
		p.mu.Unlock()
		entries = entries[n:]
	}
	return nil
}

// ownerIs returns a filter for peerEntries: owner's flows only (none when
// owner is out of range).
func ownerIs(owner int) func(uint16) bool {
	return func(o uint16) bool { return owner >= 0 && owner < 1<<16 && int(o) == owner }
}

// PeerFlowsOf returns the replicated connections to vip whose owner is one
// of owners (every owner when owners is nil), from the index: O(their
// number), without reading the map. LastSeen and Gen are left zero. Before
// the index's first build (right after start) it walks the map.
func (m *Maps) PeerFlowsOf(vip netip.Addr, owners []int) ([]PeerFlow, error) {
	x := m.indexes()
	entries, ok := x.peerEntries(m, vip, func(o uint16) bool {
		return owners == nil || slices.Contains(owners, int(o))
	})
	if !ok {
		return m.peerFlowsWalk(vip, owners)
	}
	flows := make([]PeerFlow, len(entries))
	for i := range entries {
		k := &entries[i].key
		flows[i] = PeerFlow{VIP: keyVIP(k), VIPPort: k.Vport, Client: bytesAddr(k.Client, k.Family), ClientPort: k.Cport,
			Owner: int(entries[i].owner)}
	}
	return flows, nil
}

// peerFlowsWalk is PeerFlowsOf by a walk of the whole map.
func (m *Maps) peerFlowsWalk(vip netip.Addr, owners []int) ([]PeerFlow, error) {
	var flows []PeerFlow
	err := m.ForEachPeerFlow(func(f PeerFlow) bool {
		if f.VIP == vip && (owners == nil || slices.Contains(owners, f.Owner)) {
			flows = append(flows, f)
		}
		return true
	})
	return flows, err
}

// DropPeerFlows deletes owner's replicated connections (to vip only, when
// vip is valid) and returns how many: O(their number). Before the index's
// first build it walks the map.
func (m *Maps) DropPeerFlows(owner int, vip netip.Addr) (int, error) {
	x := m.indexes()
	entries, ok := x.peerEntries(m, vip, ownerIs(owner))
	if !ok {
		return m.DeletePeerFlowsWhere(func(f PeerFlow) bool {
			return f.Owner == owner && (!vip.IsValid() || f.VIP == vip)
		})
	}
	return m.deletePeerEntries(x, entries)
}

// deletePeerEntries deletes entries from the map and the index, those
// the index still holds for the same owner, and returns how many.
func (m *Maps) deletePeerEntries(x *indexes, entries []peerEntry) (int, error) {
	n := 0
	err := x.eachPeerChunk(entries, func(e *peerEntry) error {
		x.keyOps.Add(1)
		if err := m.deletePeerLocked(&x.peer, &e.key); err != nil {
			return err
		}
		x.peer.applyLocked(&e.key, e.owner, true)
		n++
		return nil
	})
	return n, err
}

// tickleSet is the replicated connections a takeover tickles: the peer
// index's entries, or before its first build the flows a walk found.
type tickleSet struct {
	entries []peerEntry
	flows   []PeerFlow
}

func (c *tickleSet) len() int { return len(c.entries) + len(c.flows) }

// conn returns the i-th connection, converted only now: the tickler's
// first round asks for them as it sends.
func (c *tickleSet) conn(i int) Conn {
	if c.flows != nil {
		return PeerConn(c.flows[i])
	}
	k := &c.entries[i].key
	return Conn{VIP: keyVIP(k), VIPPort: k.Vport, Client: bytesAddr(k.Client, k.Family), ClientPort: k.Cport}
}

// tickleSetOf is PeerFlowsOf for a tickle: the same connections, left as
// the index's entries (one copy, sized first, under the index's lock).
func (m *Maps) tickleSetOf(vip netip.Addr, owners []int) (*tickleSet, error) {
	x := m.indexes()
	entries, ok := x.peerEntries(m, vip, func(o uint16) bool {
		return owners == nil || slices.Contains(owners, int(o))
	})
	if ok {
		return &tickleSet{entries: entries}, nil
	}
	flows, err := m.peerFlowsWalk(vip, owners)
	if err != nil {
		return nil, err
	}
	return &tickleSet{flows: flows}, nil
}

// forgetTickleSet deletes c's connections from the peer map: those the
// index still holds for the owner they were tickled for (a connection
// replicated meanwhile by another owner stays).
func (m *Maps) forgetTickleSet(c *tickleSet) error {
	if c.flows != nil {
		return m.DeletePeerFlows(c.flows)
	}
	_, err := m.deletePeerEntries(m.indexes(), c.entries)
	return err
}

// SweepPeerFlows deletes owner's replicated connections (to vip only, when
// vip is valid) whose generation is not keep: those a snapshot of that
// generation did not renew. It reads and deletes O(owner's connections to
// vip) entries; before the index's first build it walks the map.
func (m *Maps) SweepPeerFlows(owner int, vip netip.Addr, keep uint32) (int, error) {
	x := m.indexes()
	entries, ok := x.peerEntries(m, vip, ownerIs(owner))
	if !ok {
		return m.DeletePeerFlowsWhere(func(f PeerFlow) bool {
			return f.Owner == owner && f.Gen != keep && (!vip.IsValid() || f.VIP == vip)
		})
	}
	n := 0
	var v fshaPeerFlow
	err := x.eachPeerChunk(entries, func(e *peerEntry) error {
		x.keyOps.Add(1)
		err := m.lookupPeerLocked(&x.peer, &e.key, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			x.peer.applyLocked(&e.key, e.owner, true)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read peer flow: %w", err)
		}
		if v.Owner != e.owner || v.Gen == keep {
			return nil
		}
		x.keyOps.Add(1)
		if err := m.deletePeerLocked(&x.peer, &e.key); err != nil {
			return err
		}
		x.peer.applyLocked(&e.key, e.owner, true)
		n++
		return nil
	})
	return n, err
}

// steerPeerFlows sets (on) or clears PEER_F_STEER on owner's replicated
// connections to vip: O(their number).
func (m *Maps) steerPeerFlows(vip netip.Addr, owner int, on bool) error {
	want := uint8(0)
	if on {
		want = uint8(fshaPeerFlagsPEER_F_STEER)
	}
	x := m.indexes()
	entries, ok := x.peerEntries(m, vip, ownerIs(owner))
	if !ok {
		return m.steerPeerFlowsWalk(vip, owner, on)
	}
	var v fshaPeerFlow
	return x.eachPeerChunk(entries, func(e *peerEntry) error {
		x.keyOps.Add(1)
		err := m.lookupPeerLocked(&x.peer, &e.key, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			x.peer.applyLocked(&e.key, e.owner, true)
			return nil
		}
		if err != nil {
			return fmt.Errorf("read peer flow: %w", err)
		}
		if v.Owner != e.owner || v.Flags&uint8(fshaPeerFlagsPEER_F_STEER) == want {
			return nil
		}
		v.Flags = v.Flags&^uint8(fshaPeerFlagsPEER_F_STEER) | want
		x.keyOps.Add(1)
		if err := m.updatePeerLocked(&x.peer, &e.key, &v); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("write peer flow: %w", err)
		}
		return nil
	})
}

// steerPeerFlowsWalk is steerPeerFlows by a walk of the whole map.
func (m *Maps) steerPeerFlowsWalk(vip netip.Addr, owner int, on bool) error {
	var flows []PeerFlow
	if err := m.ForEachPeerFlow(func(f PeerFlow) bool {
		if f.VIP == vip && f.Owner == owner && f.Steer != on {
			f.Steer = on
			flows = append(flows, f)
		}
		return true
	}); err != nil {
		return err
	}
	return m.UpsertPeerFlows(flows)
}

// PeerDigests returns the digest of owner's replicated connections to each
// VIP that has some; ok is false before the index's first build.
func (m *Maps) PeerDigests(owner int) (digests map[netip.Addr]Digest, ok bool) {
	x := m.indexes()
	x.ensurePeer(m)
	p := &x.peer
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.ready {
		return nil, false
	}
	digests = map[netip.Addr]Digest{}
	if owner < 0 || owner >= 1<<16 {
		return digests, true
	}
	for vip, owners := range p.vips {
		if s := owners[uint16(owner)]; s != nil {
			digests[vip] = s.digest
		}
	}
	return digests, true
}
