package dataplane

// In-memory indexes of the flows maps by VIP.
//
// The control loop asks per VIP: how many connections are left (a drain),
// which to kill (a release), which to tickle or steer (a takeover). A walk
// of a whole flows map costs about 0.6 s per million entries, longer than
// the fencing lease, so these questions are answered from two indexes
// instead, each costing O(connections of that VIP):
//
//   - this node's flows (the flows map), VIP -> keys, kept by the event
//     reader from the open and close events (EventReader.Read), built from
//     a walk of the map when the reader starts and again, in the
//     background, after the ring buffer lost events (COUNTER_EVENTS_LOST
//     grew). Flows the LRU evicted without a close event stay in the index
//     until a lookup misses them; PruneFlows removes what it prunes.
//   - the other nodes' flows (peer_flows), (VIP, owner) -> keys, kept by
//     every Maps method that writes peer_flows (only replication and these
//     actions do), built from a walk when first used.
//
// A build walks the map without holding the index's lock and replays the
// changes made meanwhile, so callers never wait for a walk.
//
// Each VIP's set also keeps a Digest, for replication's anti-entropy.
//
// Memory: a connection costs one entry of a Go map keyed by its client
// side (8 bytes for IPv4, 20 for IPv6) and nothing else; measured for 1M
// flows (BenchmarkIndexMemory), 16-25 bytes a flow for IPv4 and 39-50 for
// IPv6, depending on how full the maps are after their last growth. Maps
// do not shrink: a VIP's set keeps its peak size until the VIP has no
// connection left.
//
// The indexes belong to the map handles, so every Maps value holding the
// same handles (the daemon's Actions, its event reader and replication all
// get &dp.Maps) shares them. They are found through a registry keyed by
// the flows map handle rather than a field of Maps.

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"

	"github.com/cilium/ebpf"
)

// ErrIndexNotReady is returned when an exact answer needs the index of
// local flows and it is being built (at start, or after the ring buffer
// lost events): ask again shortly.
var ErrIndexNotReady = errors.New("flow index not ready")

// indexes are the indexes of one set of map handles.
type indexes struct {
	local localIndex
	peer  peerIndex

	walks, keyOps, evicted atomic.Uint64

	// afterWalk, when set (tests), runs in a build between its walk and
	// its replay of the changes made meanwhile.
	afterWalk func()
}

// registry finds the indexes of a set of map handles. Its keys are weak,
// and an entry goes when its flows map handle is garbage collected.
var registry = struct {
	sync.Mutex
	m map[weak.Pointer[ebpf.Map]]*indexes
}{m: map[weak.Pointer[ebpf.Map]]*indexes{}}

// indexes returns the indexes of m's maps.
func (m *Maps) indexes() *indexes {
	h := m.Flows
	if h == nil {
		h = m.PeerFlows
	}
	if h == nil {
		return &indexes{}
	}
	wp := weak.Make(h)
	registry.Lock()
	defer registry.Unlock()
	if x := registry.m[wp]; x != nil {
		return x
	}
	x := &indexes{}
	registry.m[wp] = x
	runtime.AddCleanup(h, func(wp weak.Pointer[ebpf.Map]) {
		registry.Lock()
		delete(registry.m, wp)
		registry.Unlock()
	}, wp)
	return x
}

// IndexStats says what the indexes hold and what they did.
type IndexStats struct {
	LocalFlows int  `json:"local_flows"` // this node's flows in the index
	PeerFlows  int  `json:"peer_flows"`  // the other nodes' flows in the index
	LocalReady bool `json:"local_ready"` // built, and kept by a running event reader
	PeerReady  bool `json:"peer_ready"`
	// Rebuilds counts the completed builds of the local index.
	Rebuilds uint64 `json:"rebuilds"`
	// Walks counts whole-map walks: builds, ForEachFlow and
	// ForEachPeerFlow, and queries made while an index could not answer.
	Walks uint64 `json:"walks"`
	// KeyOps counts the single-key map operations of indexed queries.
	KeyOps uint64 `json:"key_ops"`
	// Evicted counts keys dropped from the local index because their
	// flow had gone without a close event (LRU eviction).
	Evicted uint64 `json:"evicted"`
	// PeerCapacity is the capacity of the peer flows map now (0 before
	// its first write), PeerGrowths how often it grew in this process,
	// PeerGrowError why its last growth failed ("" when it did not).
	PeerCapacity  uint32 `json:"peer_capacity"`
	PeerGrowing   bool   `json:"peer_growing"`
	PeerGrowths   uint64 `json:"peer_growths"`
	PeerGrowError string `json:"peer_grow_error,omitempty"`
}

// IndexStats returns the indexes' sizes and counters.
func (m *Maps) IndexStats() IndexStats {
	x := m.indexes()
	s := IndexStats{Rebuilds: x.local.epoch.Load(), Walks: x.walks.Load(), KeyOps: x.keyOps.Load(), Evicted: x.evicted.Load()}
	x.local.mu.Lock()
	s.LocalFlows, s.LocalReady = x.local.n, x.local.ready
	x.local.mu.Unlock()
	x.peer.mu.Lock()
	s.PeerFlows, s.PeerReady = x.peer.n, x.peer.ready
	if x.peer.inner != nil {
		s.PeerCapacity = x.peer.inner.MaxEntries()
	}
	s.PeerGrowing, s.PeerGrowths = x.peer.growing, x.peer.growths
	if x.peer.growErr != nil {
		s.PeerGrowError = x.peer.growErr.Error()
	}
	x.peer.mu.Unlock()
	return s
}

// localIndex is this node's flows by VIP.
type localIndex struct {
	mu   sync.Mutex
	vips map[netip.Addr]*flowSet
	n    int
	// seq counts the events applied: Event.Seq.
	seq     uint64
	readers int
	// ready: a build completed while a reader ran, and one still runs.
	ready    bool
	building bool
	log      []localOp // changes made while building
	// lostBase is COUNTER_EVENTS_LOST when the last build started; lost
	// says it has grown since, so the index may miss flows.
	lostBase  uint64
	lost      bool
	lastBuild time.Time
	buildErr  error
	epoch     atomic.Uint64 // completed builds
}

type localOp struct {
	key  fshaFlowKey
	open bool
}

// rebuildGap is the least time between two builds after losses, so that
// a ring buffer that keeps overflowing does not keep a CPU walking.
const rebuildGap = time.Second

func (x *localIndex) applyLocked(k *fshaFlowKey, open bool) bool {
	if x.vips == nil {
		// an event read before the first build began: the build, which
		// walks the map afterwards, replaces this
		x.vips = map[netip.Addr]*flowSet{}
	}
	if x.building {
		x.log = append(x.log, localOp{*k, open})
	}
	return applyLocal(x.vips, &x.n, k, open)
}

func applyLocal(vips map[netip.Addr]*flowSet, n *int, k *fshaFlowKey, open bool) bool {
	vip := keyVIP(k)
	s := vips[vip]
	if open {
		if s == nil {
			s = &flowSet{}
			vips[vip] = s
		}
		if s.add(k) {
			*n++
			return true
		}
		return false
	}
	if s == nil || !s.remove(k) {
		return false
	}
	*n--
	if s.len() == 0 {
		delete(vips, vip)
	}
	return true
}

// event applies an open or close event read from the ring buffer and
// returns its sequence number.
func (x *localIndex) event(k *fshaFlowKey, typ EventType) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.seq++
	if typ == EventOpen || typ == EventClose {
		x.applyLocked(k, typ == EventOpen)
	}
	return x.seq
}

// attachReader is called by a new event reader: the index is kept from
// now on, and built.
func (x *indexes) attachReader(m *Maps) {
	x.local.mu.Lock()
	x.local.readers++
	x.local.mu.Unlock()
	x.startLocalBuild(m)
}

// detachReader is called when an event reader closes.
func (x *indexes) detachReader() {
	x.local.mu.Lock()
	defer x.local.mu.Unlock()
	x.local.readers--
	if x.local.readers <= 0 {
		x.local.readers = 0
		x.local.ready = false
	}
}

// startLocalBuild builds the local index again in the background unless a
// build runs.
func (x *indexes) startLocalBuild(m *Maps) {
	l := &x.local
	l.mu.Lock()
	if l.building {
		l.mu.Unlock()
		return
	}
	l.building, l.log, l.lastBuild = true, nil, time.Now()
	l.mu.Unlock()
	go x.buildLocal(m)
}

func (x *indexes) buildLocal(m *Maps) {
	l := &x.local
	lost, err := m.eventsLost()
	vips := map[netip.Addr]*flowSet{}
	n := 0
	if err == nil {
		err = walkMap(x, m.Flows, func(k *fshaFlowKey, _ *fshaFlow) bool {
			applyLocal(vips, &n, k, true)
			return true
		})
	}
	if x.afterWalk != nil {
		x.afterWalk()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.building = false
	l.buildErr = err
	if err != nil {
		l.log = nil
		return
	}
	for i := range l.log {
		applyLocal(vips, &n, &l.log[i].key, l.log[i].open)
	}
	l.vips, l.n, l.log = vips, n, nil
	l.lostBase, l.lost = lost, false
	l.ready = l.readers > 0
	l.epoch.Add(1)
}

// walkMap calls fn with every entry of a map keyed by flow keys (flows,
// peer_flows), in batches where the kernel can, until fn returns false.
// Entries added or removed meanwhile may or may not be seen.
func walkMap[V any](x *indexes, fm *ebpf.Map, fn func(k *fshaFlowKey, v *V) bool) error {
	x.walks.Add(1)
	keys := make([]fshaFlowKey, flowBatch)
	vals := make([]V, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := fm.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if !fn(&keys[i], &vals[i]) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return fmt.Errorf("walk %v: %w", fm, err)
		}
	}
	var (
		k fshaFlowKey
		v V
	)
	it := fm.Iterate()
	for it.Next(&k, &v) {
		if !fn(&k, &v) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("walk %v: %w", fm, err)
	}
	return nil
}

// eventsLost reads COUNTER_EVENTS_LOST of both directions, summed over
// CPUs.
func (m *Maps) eventsLost() (uint64, error) {
	var total uint64
	for dir := range uint32(directionMax) {
		var perCPU []uint64
		idx := dir*uint32(fshaCounterCOUNTER_MAX) + uint32(fshaCounterCOUNTER_EVENTS_LOST)
		if err := m.Counters.Lookup(idx, &perCPU); err != nil {
			return 0, fmt.Errorf("read lost events: %w", err)
		}
		for _, v := range perCPU {
			total += v
		}
	}
	return total, nil
}

// checkLocal reports whether the local index is exact: built, kept by a
// reader, and no event lost since its build started. When events were
// lost it starts a build (at most one per rebuildGap).
func (x *indexes) checkLocal(m *Maps) bool {
	lost, err := m.eventsLost()
	l := &x.local
	l.mu.Lock()
	if l.readers == 0 {
		l.mu.Unlock()
		return false
	}
	if err != nil || lost != l.lostBase {
		l.lost = true
	}
	exact := l.ready && !l.building && !l.lost
	rebuild := l.lost && !l.building && time.Since(l.lastBuild) >= rebuildGap
	l.mu.Unlock()
	if rebuild {
		x.startLocalBuild(m)
	}
	return exact
}

// localKeys returns the keys of vip's flows in the index. ok is false when
// the index cannot answer (no event reader, or before its first build);
// after lost events it answers with what it has until rebuilt.
func (x *indexes) localKeys(vip netip.Addr) (keys []fshaFlowKey, ok, reader bool) {
	l := &x.local
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready {
		return nil, false, l.readers > 0
	}
	vip = vip.Unmap()
	if s := l.vips[vip]; s != nil {
		keys = s.appendKeys(make([]fshaFlowKey, 0, s.len()), vip)
	}
	return keys, true, true
}

// lookupLocal looks up each key's flow and calls fn with those found; it
// drops the keys of flows that are gone from the index.
func (x *indexes) lookupLocal(m *Maps, keys []fshaFlowKey, fn func(k *fshaFlowKey, v *fshaFlow)) error {
	var (
		v       fshaFlow
		missing []fshaFlowKey
	)
	for i := range keys {
		x.keyOps.Add(1)
		err := m.Flows.Lookup(&keys[i], &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			missing = append(missing, keys[i])
			continue
		}
		if err != nil {
			return fmt.Errorf("look up flow: %w", err)
		}
		fn(&keys[i], &v)
	}
	if len(missing) > 0 {
		x.dropLocal(m, missing)
	}
	return nil
}

// dropLocal removes the keys whose flows are gone. Each is looked up again
// under the lock, so that a flow created again since (its open event
// applied meanwhile) stays.
func (x *indexes) dropLocal(m *Maps, keys []fshaFlowKey) {
	l := &x.local
	l.mu.Lock()
	defer l.mu.Unlock()
	var v fshaFlow
	for i := range keys {
		x.keyOps.Add(1)
		if err := m.Flows.Lookup(&keys[i], &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if l.applyLocked(&keys[i], false) {
			x.evicted.Add(1)
		}
	}
}

// forgetLocal removes keys whose flows were deleted without close events
// (PruneFlows).
func (x *indexes) forgetLocal(keys []fshaFlowKey) {
	l := &x.local
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := range keys {
		l.applyLocked(&keys[i], false)
	}
}

// CountFlows counts this node's connections to vip: exactly, or not at
// all. With an event reader running it counts the keys of vip in the
// index that are still in the flows map, O(connections of vip); while the
// index may miss flows (being built at start, or events were lost and it
// is being rebuilt) it returns ErrIndexNotReady: ask again shortly. Like a
// walk, it misses a flow created during the call (its open event not yet
// read). Without an event reader it walks the map.
func (m *Maps) CountFlows(vip netip.Addr) (int, error) {
	x := m.indexes()
	exact := x.checkLocal(m)
	keys, ok, reader := x.localKeys(vip)
	if !ok && !reader {
		return m.countFlowsWalk(vip)
	}
	if !exact {
		return 0, fmt.Errorf("count flows of %s: %w", vip, ErrIndexNotReady)
	}
	n := 0
	if err := x.lookupLocal(m, keys, func(*fshaFlowKey, *fshaFlow) { n++ }); err != nil {
		return 0, err
	}
	return n, nil
}

// countFlowsWalk counts vip's flows with a walk of the whole map.
func (m *Maps) countFlowsWalk(vip netip.Addr) (int, error) {
	n := 0
	err := m.ForEachFlow(func(f Flow) bool {
		if f.VIP == vip {
			n++
		}
		return true
	})
	return n, err
}

// vipConns returns this node's connections to vip with their sequence
// numbers (for KillConns), from the index: O(connections of vip). After
// lost events, until the index is rebuilt, it may miss the connections
// whose open event was lost. Without an event reader, or before the
// index's first build, it walks the map.
func (m *Maps) vipConns(vip netip.Addr) ([]Conn, error) {
	x := m.indexes()
	x.checkLocal(m)
	keys, ok, _ := x.localKeys(vip)
	if !ok {
		return m.vipConnsWalk(vip)
	}
	pend, err := m.pending()
	if err != nil {
		return nil, err
	}
	conns := make([]Conn, 0, len(keys))
	err = x.lookupLocal(m, keys, func(k *fshaFlowKey, v *fshaFlow) {
		pend.apply(k, v)
		conns = append(conns, Conn{VIP: keyVIP(k), VIPPort: k.Vport, Client: bytesAddr(k.Client, k.Family), ClientPort: k.Cport,
			Seq: v.SeqOut, Ack: v.SeqIn})
	})
	return conns, err
}

func (m *Maps) vipConnsWalk(vip netip.Addr) ([]Conn, error) {
	var conns []Conn
	err := m.ForEachFlow(func(f Flow) bool {
		if f.VIP == vip {
			conns = append(conns, ConnOf(f))
		}
		return true
	})
	return conns, err
}

// ForEachFlowOfVIP calls fn with each of this node's flows to vip, from
// the index (O(connections of vip)), until fn returns false. The counts
// leave out what the flow cache holds. It returns ErrIndexNotReady when
// the index cannot answer.
func (m *Maps) ForEachFlowOfVIP(vip netip.Addr, fn func(Flow) bool) error {
	x := m.indexes()
	keys, ok, _ := x.localKeys(vip)
	if !ok {
		return fmt.Errorf("flows of %s: %w", vip, ErrIndexNotReady)
	}
	c := newClock()
	more := true
	return x.lookupLocal(m, keys, func(k *fshaFlowKey, v *fshaFlow) {
		if more {
			more = fn(flowOf(k, v, c))
		}
	})
}

// LocalDigests returns the digest of this node's flows to each VIP that
// has some, and the sequence number of the last event applied to them
// (Event.Seq): the digests are those of the flows after that event. ok is
// false when the index is not exact (see CountFlows).
func (m *Maps) LocalDigests() (digests map[netip.Addr]Digest, seq uint64, ok bool) {
	x := m.indexes()
	if !x.checkLocal(m) {
		return nil, 0, false
	}
	l := &x.local
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.ready || l.building || l.lost {
		return nil, 0, false
	}
	digests = make(map[netip.Addr]Digest, len(l.vips))
	for vip, s := range l.vips {
		digests[vip] = s.digest
	}
	return digests, l.seq, true
}

// IndexEpoch returns how many builds of the local index completed. It
// first checks whether the ring buffer lost events since the last build
// and if so starts another in the background: poll it to learn when the
// index was rebuilt after a loss.
func (m *Maps) IndexEpoch() uint64 {
	x := m.indexes()
	x.checkLocal(m)
	return x.local.epoch.Load()
}
