package dataplane

// The peer flows map grows with what it holds.
//
// peer_flows is an array of one map: its slot holds the hash map of the
// other nodes' flows (flow_key -> peer_flow), which the programs look up
// through it. A hash map's entries are allocated as they come
// (BPF_F_NO_PREALLOC), but its bucket array (16 bytes a bucket, one per
// max_entries rounded up to a power of two) is allocated with the map:
// 256 MB for 16M entries before it holds one. So the daemon starts with a
// map of PeerFlowsFirst entries and, once the peer index says it is 3/4
// full, creates one twice its size (at most Options.PeerFlowsMax), copies
// the entries and swaps it into the slot:
//
//   - Every write of peer_flows holds the peer index's lock (peerindex.go).
//     While a growth runs, writes go to the current map and then to the
//     bigger one (upserts, deletes, and flag updates of existing entries).
//   - The copy walks the current map in batches of peerChunk, each batch
//     read and written with the lock held: no write falls between an
//     entry's read and its copy. An entry written after its bucket was
//     walked reaches the bigger map by the write itself, one deleted by
//     both deletes. So when the walk ends the two maps hold the same
//     entries, and the swap (one update of the slot, under the lock) gives
//     the programs a map as complete as the one they had: a packet sees
//     the old map or the new one, each holding every entry. The kernel
//     frees the old map once no program runs with it (RCU).
//   - The current map keeps its own capacity during the copy: a write it
//     has no room for waits, with the lock released, until the swap, then
//     goes to the bigger map. A write that the bigger map refuses (out of
//     memory) abandons the growth and the next write past 3/4 tries again.
//   - A full map at Options.PeerFlowsMax is ErrPeerMapFull, as before:
//     what fitted is stored and indexed, the rest is not.
//
// The maps are created by the daemon, unpinned: the slot holds them, and
// the pinned array keeps them across restarts. The array's own layout
// never changes; a change of the inner map's layout is migrated like any
// pinned map's (migrate.go).

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/cilium/ebpf"
)

// PeerFlowsFirst is the capacity of the first peer flows map: 1 MB of
// buckets.
const PeerFlowsFirst = 1 << 16

// peerGrowBatch is how many entries one batch of a growth's copy moves,
// the peer index's lock held (a variable: tests make it small).
var peerGrowBatch = peerChunk

// peerGrowPause, when set (tests), runs between a copy's batches with the
// lock released.
var peerGrowPause func()

// peerGrowAt tells whether a map of capacity c holding n entries is due to
// grow: 3/4 full.
func peerGrowAt(n int, c uint32) bool { return uint64(n)*4 >= uint64(c)*3 }

// peerNextCapacity is the capacity of the map after one of capacity c.
func peerNextCapacity(c, max uint32) uint32 { return uint32(min(uint64(c)*2, uint64(max))) }

// peerCapacityFor is the capacity that holds n entries below the growth
// threshold (at most max): what a migration creates.
func peerCapacityFor(n int, first, max uint32) uint32 {
	c := min(first, max)
	for c < max && peerGrowAt(n, c) {
		c = peerNextCapacity(c, max)
	}
	return c
}

// peerMaps are the peer flows maps a writer uses: fields of peerIndex,
// guarded by its lock.
type peerMaps struct {
	inner *ebpf.Map // the map in the slot; nil until a writer needs it
	// growing: a growth runs; next, once its copy started, is the
	// bigger map every write also goes to
	growing bool
	next    *ebpf.Map
	// first, max: the first map's capacity and the largest (0: defaults)
	first, max uint32
	growths    uint64
	mirrored   uint64 // writes also made to next
	growErr    error
	grown      *sync.Cond // broadcast when a growth ends
	// logGrowth, when set, is told of every growth (from, to: the
	// capacities; n: the entries copied)
	logGrowth func(from, to uint32, n int, took time.Duration, err error)
}

func (p *peerIndex) limits() (first, max uint32) {
	first, max = p.first, p.max
	if max == 0 {
		max = DefaultPeerFlowsMax
	}
	if first == 0 {
		first = PeerFlowsFirst
	}
	return min(first, max), max
}

func (p *peerIndex) cond() *sync.Cond {
	if p.grown == nil {
		p.grown = sync.NewCond(&p.mu)
	}
	return p.grown
}

// setPeerLimits sets the first and largest capacity of the peer flows map
// (0: the defaults).
func (x *indexes) setPeerLimits(first, max uint32) {
	x.peer.mu.Lock()
	x.peer.first, x.peer.max = first, max
	x.peer.mu.Unlock()
}

// setPeerGrowthLog sets what is told of every growth.
func (x *indexes) setPeerGrowthLog(f func(from, to uint32, n int, took time.Duration, err error)) {
	x.peer.mu.Lock()
	x.peer.logGrowth = f
	x.peer.mu.Unlock()
}

// peerInnerSpec is the inner map of the spec's peer_flows.
var peerInnerSpec = sync.OnceValues(func() (*ebpf.MapSpec, error) {
	spec, err := loadFsha()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	ms := spec.Maps[fshaMapPeerFlows]
	if ms == nil || ms.InnerMap == nil {
		return nil, errors.New("no inner map in the spec's peer_flows")
	}
	inner := ms.InnerMap.Copy()
	inner.Name, inner.Pinning = "peer_flows", ebpf.PinNone
	return inner, nil
})

// newPeerInner creates an empty peer flows map of the given capacity.
func newPeerInner(capacity uint32) (*ebpf.Map, error) {
	ms, err := peerInnerSpec()
	if err != nil {
		return nil, err
	}
	ms = ms.Copy()
	ms.MaxEntries = capacity
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return nil, fmt.Errorf("create a peer flows map of %d entries: %w", capacity, err)
	}
	return m, nil
}

// peerSlot returns a handle of the map in peer_flows' slot, its caller's
// to close; ebpf.ErrKeyNotExist when the slot is empty.
func peerSlot(outer *ebpf.Map) (*ebpf.Map, error) {
	var in *ebpf.Map
	if err := outer.Lookup(uint32(0), &in); err != nil {
		return nil, err
	}
	return in, nil
}

// peerInnerLocked returns the map writers use: the one in the slot, or,
// when the slot is empty, a new one of the first capacity put there.
func (m *Maps) peerInnerLocked(p *peerIndex) (*ebpf.Map, error) {
	if p.inner != nil {
		return p.inner, nil
	}
	in, err := peerSlot(m.PeerFlows)
	if err == nil {
		p.inner = in
		return in, nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, fmt.Errorf("read peer flows slot: %w", err)
	}
	first, _ := p.limits()
	if in, err = newPeerInner(first); err != nil {
		return nil, err
	}
	if err := m.PeerFlows.Put(uint32(0), in); err != nil {
		in.Close()
		return nil, fmt.Errorf("put the peer flows map in its slot: %w", err)
	}
	p.inner = in
	return in, nil
}

// initPeer makes sure the slot holds a map, as the daemon starts.
func (m *Maps) initPeer() error {
	p := &m.indexes().peer
	p.mu.Lock()
	defer p.mu.Unlock()
	_, err := m.peerInnerLocked(p)
	return err
}

// putPeerLocked writes entries into the peer map, and into the bigger one
// while it grows; it returns how many it wrote (all, without an error).
func (m *Maps) putPeerLocked(p *peerIndex, keys []fshaFlowKey, vals []fshaPeerFlow) (int, error) {
	in, err := m.peerInnerLocked(p)
	if err != nil {
		return 0, err
	}
	done, err := in.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		done, err = putOneByOne(in, keys, vals)
	}
	if err == nil {
		done = len(keys)
	}
	done = min(max(done, 0), len(keys))
	if p.next != nil && done > 0 {
		p.mirrored++
		if _, err := p.next.BatchUpdate(keys[:done], vals[:done], nil); err != nil {
			p.abortGrowthLocked(fmt.Errorf("write the bigger peer flows map: %w", err))
		}
	}
	if errors.Is(err, errNoSpace) {
		_, max := p.limits()
		if in.MaxEntries() >= max {
			return done, fmt.Errorf("%w (%d entries, --peer-flows-max)", ErrPeerMapFull, in.MaxEntries())
		}
		return done, fmt.Errorf("%w (%d entries, growing)", ErrPeerMapFull, in.MaxEntries())
	}
	if err != nil {
		return done, fmt.Errorf("write peer flows: %w", err)
	}
	return done, nil
}

func putOneByOne(in *ebpf.Map, keys []fshaFlowKey, vals []fshaPeerFlow) (int, error) {
	for i := range keys {
		if err := in.Put(&keys[i], &vals[i]); err != nil {
			return i, err
		}
	}
	return len(keys), nil
}

// deletePeerLocked deletes k from the peer map (and the bigger one); a
// missing key is not an error.
func (m *Maps) deletePeerLocked(p *peerIndex, k *fshaFlowKey) error {
	in, err := m.peerInnerLocked(p)
	if err != nil {
		return err
	}
	if err := in.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete peer flow: %w", err)
	}
	if p.next != nil {
		p.mirrored++
		if err := p.next.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.abortGrowthLocked(fmt.Errorf("delete from the bigger peer flows map: %w", err))
		}
	}
	return nil
}

// lookupPeerLocked reads k from the peer map.
func (m *Maps) lookupPeerLocked(p *peerIndex, k *fshaFlowKey, v *fshaPeerFlow) error {
	in, err := m.peerInnerLocked(p)
	if err != nil {
		return err
	}
	return in.Lookup(k, v)
}

// updatePeerLocked rewrites k's existing entry (and the bigger map's, if
// it was copied yet: if not, the copy will carry this value).
func (m *Maps) updatePeerLocked(p *peerIndex, k *fshaFlowKey, v *fshaPeerFlow) error {
	in, err := m.peerInnerLocked(p)
	if err != nil {
		return err
	}
	if err := in.Update(k, v, ebpf.UpdateExist); err != nil {
		return err
	}
	if p.next != nil {
		p.mirrored++
		if err := p.next.Update(k, v, ebpf.UpdateExist); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			p.abortGrowthLocked(fmt.Errorf("write the bigger peer flows map: %w", err))
		}
	}
	return nil
}

// maybeGrowLocked starts a growth when the index (once built) says the
// map is 3/4 full.
func (m *Maps) maybeGrowLocked(x *indexes) {
	p := &x.peer
	if !p.ready || p.growing || p.inner == nil || !peerGrowAt(p.n, p.inner.MaxEntries()) {
		return
	}
	m.startGrowthLocked(x)
}

// startGrowthLocked starts a growth unless one runs or the map is at its
// largest; false when none runs.
func (m *Maps) startGrowthLocked(x *indexes) bool {
	p := &x.peer
	if p.growing {
		return true
	}
	_, max := p.limits()
	if p.inner == nil || p.inner.MaxEntries() >= max {
		return false
	}
	outer, err := m.PeerFlows.Clone() // the daemon may close its handles meanwhile
	if err != nil {
		p.growErr = fmt.Errorf("grow the peer flows map: %w", err)
		return false
	}
	p.growing = true
	go m.growPeer(x, outer, peerNextCapacity(p.inner.MaxEntries(), max))
	return true
}

// growPeerLocked waits, with the lock released, for a growth to end,
// starting one if none runs; true when the map grew.
func (m *Maps) growPeerLocked(x *indexes) bool {
	p := &x.peer
	before := p.growths
	if !m.startGrowthLocked(x) {
		return false
	}
	for p.growing {
		p.cond().Wait()
	}
	return p.growths > before
}

// growPeer copies the current map into a new one of the given capacity
// and swaps it into outer's slot (see the top of this file).
func (m *Maps) growPeer(x *indexes, outer *ebpf.Map, capacity uint32) {
	defer outer.Close()
	p := &x.peer
	start, copied := time.Now(), 0
	next, err := newPeerInner(capacity)
	p.mu.Lock()
	from := p.inner.MaxEntries()
	defer func() {
		if p.logGrowth != nil {
			p.logGrowth(from, capacity, copied, time.Since(start), p.growErr)
		}
		p.mu.Unlock()
	}()
	if err != nil {
		p.abortGrowthLocked(err)
		return
	}
	p.next = next
	old := p.inner
	keys, vals := make([]fshaFlowKey, peerGrowBatch), make([]fshaPeerFlow, peerGrowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		if p.next != next {
			return // a writer abandoned it (p.growErr says why)
		}
		n, err := old.BatchLookup(&cursor, keys, vals, nil)
		end := errors.Is(err, ebpf.ErrKeyNotExist)
		if err != nil && !end {
			p.abortGrowthLocked(fmt.Errorf("read the peer flows map: %w", err))
			return
		}
		if n > 0 {
			if _, err := next.BatchUpdate(keys[:n], vals[:n], nil); err != nil {
				p.abortGrowthLocked(fmt.Errorf("copy into the bigger peer flows map: %w", err))
				return
			}
			copied += n
		}
		if end {
			break
		}
		// let the writers in between batches
		p.mu.Unlock()
		if peerGrowPause != nil {
			peerGrowPause()
		}
		runtime.Gosched()
		p.mu.Lock()
	}
	if err := outer.Put(uint32(0), next); err != nil {
		p.abortGrowthLocked(fmt.Errorf("swap the bigger peer flows map in: %w", err))
		return
	}
	old.Close()
	p.inner, p.next, p.growing, p.growErr = next, nil, false, nil
	p.growths++
	p.cond().Broadcast()
}

// abortGrowthLocked abandons the running growth: the current map stays.
func (p *peerIndex) abortGrowthLocked(err error) {
	if p.next != nil {
		p.next.Close()
		p.next = nil
	}
	p.growing, p.growErr = false, err
	p.cond().Broadcast()
}

// walkPeer walks the map in the slot, as a program would find it now (a
// growth may swap it meanwhile: the walk goes on over the old one, which
// then no longer changes).
func (m *Maps) walkPeer(x *indexes, fn func(k *fshaFlowKey, v *fshaPeerFlow) bool) error {
	in, err := peerSlot(m.PeerFlows)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		x.walks.Add(1)
		return nil // no map yet: no peer flows
	}
	if err != nil {
		return fmt.Errorf("read peer flows slot: %w", err)
	}
	defer in.Close()
	return walkMap(x, in, fn)
}

// PeerFlowsInner returns a handle of the map in peer_flows' slot (the
// flows the programs find now; a growth may swap it later), the caller's
// to close; nil when the slot is empty.
func (m *Maps) PeerFlowsInner() (*ebpf.Map, error) {
	in, err := peerSlot(m.PeerFlows)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read peer flows slot: %w", err)
	}
	return in, nil
}
