package replication

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/dataplane"
)

// indexedStore is a node's data plane as replication sees it with the
// indexes (dataplane.Maps): the peers' flows with digests per owner and
// VIP, and the node's own flows with digests per VIP.
type indexedStore struct {
	*fakeStore
	local    *localFlows
	epoch    atomic.Uint64
	notReady atomic.Bool // PeerDigests answers "being built"
	// block, when set, makes UpsertPeerFlows of VIP snapshot chunks wait
	// until it is closed (a peer busy mid-resync); stalled says one does.
	block   atomic.Pointer[chan struct{}]
	stalled atomic.Bool
}

func newIndexedStore() *indexedStore {
	return &indexedStore{fakeStore: &fakeStore{flows: map[string]dataplane.PeerFlow{}}, local: &localFlows{}}
}

func digestOf(fs []dataplane.PeerFlow) map[netip.Addr]dataplane.Digest {
	out := map[netip.Addr]dataplane.Digest{}
	for _, f := range fs {
		d := out[f.VIP]
		d.Add(dataplane.ConnHash(f.VIP, f.VIPPort, f.Client, f.ClientPort))
		out[f.VIP] = d
	}
	return out
}

func (s *indexedStore) UpsertPeerFlows(fs []dataplane.PeerFlow) error {
	if ch := s.block.Load(); ch != nil && len(fs) > 0 {
		s.stalled.Store(true)
		<-*ch
	}
	return s.fakeStore.UpsertPeerFlows(fs)
}

func (s *indexedStore) PeerDigests(owner int) (map[netip.Addr]dataplane.Digest, bool) {
	if s.notReady.Load() {
		return nil, false
	}
	return digestOf(s.of(owner, netip.Addr{})), true
}

func (s *indexedStore) SweepPeerFlows(owner int, vip netip.Addr, keep uint32) (int, error) {
	return s.DeletePeerFlowsWhere(func(f dataplane.PeerFlow) bool {
		return f.Owner == owner && f.Gen != keep && (!vip.IsValid() || f.VIP == vip)
	})
}

func (s *indexedStore) LocalDigests() (map[netip.Addr]dataplane.Digest, uint64, bool) {
	var fs []dataplane.PeerFlow
	s.local.each(func(f dataplane.Flow) bool {
		fs = append(fs, dataplane.PeerFlow{VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort})
		return true
	})
	return digestOf(fs), 0, true
}

func (s *indexedStore) ForEachFlowOfVIP(vip netip.Addr, fn func(dataplane.Flow) bool) error {
	return s.local.each(func(f dataplane.Flow) bool { return f.VIP != vip || fn(f) })
}

func (s *indexedStore) IndexEpoch() uint64 { return s.epoch.Load() }

// of returns owner's flows (to vip, or all), sorted.
func (s *fakeStore) of(owner int, vip netip.Addr) []dataplane.PeerFlow {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []dataplane.PeerFlow
	for _, f := range s.flows {
		if f.Owner == owner && (!vip.IsValid() || f.VIP == vip) {
			out = append(out, f)
		}
	}
	slices.SortFunc(out, func(a, b dataplane.PeerFlow) int { return int(a.ClientPort) - int(b.ClientPort) })
	return out
}

// same tells whether store holds exactly owner's local flows. It is
// polled while copies are under way, so it is cheap and holds the owner's
// lock (which its copies take) only to copy its flows: nothing is
// compared while the counts differ.
func same(store *fakeStore, owner int, local *localFlows) bool {
	local.mu.Lock()
	flows := slices.Clone(local.flows)
	local.mu.Unlock()
	if store.count(owner) != len(flows) {
		return false
	}
	type conn struct {
		vip, client  netip.Addr
		vport, cport uint16
	}
	want := make(map[conn]bool, len(flows))
	for _, f := range flows {
		want[conn{f.VIP, f.Client, f.VIPPort, f.ClientPort}] = true
	}
	got := store.of(owner, netip.Addr{})
	for _, f := range got {
		if !want[conn{f.VIP, f.Client, f.VIPPort, f.ClientPort}] {
			return false
		}
	}
	return len(got) == len(want)
}

type indexedNode struct {
	r     *Replicator
	store *indexedStore
	ctx   context.Context
	stop  context.CancelFunc
	done  chan error
}

// startIndexed starts n replicators with indexed stores; node i starts
// with flows[i] local flows on two VIPs.
func startIndexed(t *testing.T, port int, cfg Config, flows ...int) []*indexedNode {
	t.Helper()
	nodes := map[int]netip.Addr{}
	for i := range flows {
		nodes[i] = addrOf(i)
	}
	var out []*indexedNode
	for i, nf := range flows {
		n := &indexedNode{store: newIndexedStore(), done: make(chan error, 1)}
		for c := range nf {
			vip := "198.18.1.10"
			if c%2 == 1 {
				vip = "198.18.1.11"
			}
			n.store.local.flows = append(n.store.local.flows, flow(vip, uint16(10000*i+c+1)))
		}
		c := cfg
		c.Self, c.Addr, c.Port, c.Key, c.Nodes = i, addrOf(i), port, testKey, nodes
		n.r = New(zaptest.NewLogger(t), c, n.store, n.store.local.each)
		n.ctx, n.stop = context.WithCancel(context.Background())
		go func() { n.done <- n.r.Run(n.ctx) }()
		t.Cleanup(func() { n.stop(); <-n.done })
		out = append(out, n)
	}
	time.Sleep(50 * time.Millisecond) // listeners up
	return out
}

func connectIndexed(nodes []*indexedNode) {
	var peers []Peer
	for i := range nodes {
		peers = append(peers, Peer{PNN: i, Addr: addrOf(i)})
	}
	for _, n := range nodes {
		n.r.SetPeers(n.ctx, peers)
	}
}

func waitSynced(t *testing.T, nodes []*indexedNode, what string) {
	t.Helper()
	for i, n := range nodes {
		for j, m := range nodes {
			if i != j {
				waitFor(t, fmt.Sprintf("%s: node %d holds node %d's flows", what, i, j), func() bool {
					return same(n.store.fakeStore, j, m.store.local)
				})
			}
		}
	}
}

// TestVersion2SyncsByDigest: peers with indexes speak version 2; a
// (re)connect sends no full snapshot, only the VIPs that differ.
func TestVersion2SyncsByDigest(t *testing.T) {
	nodes := startIndexed(t, freePort(), Config{DigestInterval: -1}, 100, 60, 0)
	connectIndexed(nodes)
	waitSynced(t, nodes, "first sync")
	for i, n := range nodes {
		s := n.r.Stats()
		if s.Snapshots != 0 || s.BadMessages != 0 || s.BadStreams != 0 {
			t.Errorf("node %d: %+v; want no full snapshot, nothing bad", i, s)
		}
	}
	// node 0 has two VIPs and two peers: four VIP copies
	if s := nodes[0].r.Stats(); s.VIPSnapshots != 4 || s.DigestsSent < 2 {
		t.Errorf("node 0: %+v; want 4 VIP snapshots after its first digests", s)
	}

	// node 1 reconnects to node 0 (a network blip): digests equal,
	// nothing is sent again
	before := nodes[0].r.Stats()
	nodes[0].r.SetPeers(nodes[0].ctx, []Peer{{PNN: 0, Addr: addrOf(0)}, {PNN: 2, Addr: addrOf(2)}})
	connectIndexed(nodes)
	waitFor(t, "node 1 compared node 0's digest on the new stream", func() bool {
		return nodes[1].r.Stats().DigestsCompared >= 3
	})
	time.Sleep(100 * time.Millisecond)
	if s := nodes[0].r.Stats(); s.VIPSnapshots != before.VIPSnapshots || s.Snapshots != 0 {
		t.Errorf("a reconnect with nothing missing sent %d VIP snapshots, %d snapshots", s.VIPSnapshots-before.VIPSnapshots, s.Snapshots)
	}
}

// TestMissedDeltasConvergeAfterOneDigest: a peer that missed deltas (and
// holds one the owner never had) converges after one digest exchange,
// which resends only the VIP that differs, and only to that peer.
func TestMissedDeltasConvergeAfterOneDigest(t *testing.T) {
	nodes := startIndexed(t, freePort(), Config{DigestInterval: -1}, 100, 10, 10)
	connectIndexed(nodes)
	waitSynced(t, nodes, "first sync")

	// node 1 lost two of node 0's flows to 198.18.1.10 and has a ghost
	lost := nodes[0].store.local.flows[:4:4] // cports 1..4: .10 and .11 alternate
	nodes[1].store.DeletePeerFlows([]dataplane.PeerFlow{
		{VIP: lost[0].VIP, VIPPort: 445, Client: lost[0].Client, ClientPort: lost[0].ClientPort},
		{VIP: lost[2].VIP, VIPPort: 445, Client: lost[2].Client, ClientPort: lost[2].ClientPort},
	})
	nodes[1].store.UpsertPeerFlows([]dataplane.PeerFlow{{VIP: lost[0].VIP, VIPPort: 445, Client: lost[0].Client, ClientPort: 65000, Owner: 0}})
	if same(nodes[1].store.fakeStore, 0, nodes[0].store.local) {
		t.Fatal("setup: node 1 still in sync")
	}
	before0, before1, before2 := nodes[0].r.Stats(), nodes[1].r.Stats(), nodes[2].r.Stats()
	nodes[0].r.Resync()
	waitFor(t, "node 1 converged", func() bool { return same(nodes[1].store.fakeStore, 0, nodes[0].store.local) })
	waitFor(t, "node 2 compared", func() bool { return nodes[2].r.Stats().DigestsCompared > before2.DigestsCompared })
	time.Sleep(100 * time.Millisecond)
	s0, s1, s2 := nodes[0].r.Stats(), nodes[1].r.Stats(), nodes[2].r.Stats()
	if d := s0.VIPSnapshots - before0.VIPSnapshots; d != 1 {
		t.Errorf("node 0 sent %d VIP snapshots, want 1 (one VIP of one peer differed)", d)
	}
	if d := s1.DigestsCompared - before1.DigestsCompared; d != 1 || s1.VIPsDiffering-before1.VIPsDiffering != 1 {
		t.Errorf("node 1 compared %d digests, found %d VIPs differing; want 1, 1", d, s1.VIPsDiffering-before1.VIPsDiffering)
	}
	if s2.VIPsDiffering != before2.VIPsDiffering {
		t.Errorf("node 2, in sync, found VIPs differing")
	}
	if s0.Snapshots != 0 {
		t.Errorf("full snapshots sent: %+v", s0)
	}
}

// TestLostEventsAndPeriodicDigests: flows the owner gained and lost
// without events (a ring buffer overflow) reach the peers once its index
// was rebuilt (a new epoch), and a peer's drift is repaired by the
// periodic digest without any trigger.
func TestLostEventsAndPeriodicDigests(t *testing.T) {
	nodes := startIndexed(t, freePort(), Config{DigestInterval: 300 * time.Millisecond}, 20, 20)
	connectIndexed(nodes)
	waitSynced(t, nodes, "first sync")

	// node 0 gains flows and loses one, no events published
	l := nodes[0].store.local
	l.mu.Lock()
	l.flows = append(l.flows[1:], flow("198.18.1.12", 7001), flow("198.18.1.12", 7002))
	l.mu.Unlock()
	nodes[0].store.epoch.Add(1) // rebuilt after the loss
	waitFor(t, "node 1 has node 0's flows after the rebuild", func() bool {
		return same(nodes[1].store.fakeStore, 0, nodes[0].store.local)
	})

	// node 1's copy drifts; the periodic digest repairs it
	nodes[1].store.UpsertPeerFlows([]dataplane.PeerFlow{{VIP: netip.MustParseAddr("198.18.1.99"), VIPPort: 445,
		Client: netip.MustParseAddr("198.19.0.7"), ClientPort: 9, Owner: 0}})
	waitFor(t, "drift repaired by the periodic digest", func() bool {
		return same(nodes[1].store.fakeStore, 0, nodes[0].store.local)
	})
}

// TestPeerNotReadyIsAskedAgain: a peer whose index is being built answers
// "not ready"; the owner asks again until it can compare.
func TestPeerNotReadyIsAskedAgain(t *testing.T) {
	nodes := startIndexed(t, freePort(), Config{DigestInterval: -1}, 30, 0)
	nodes[1].store.notReady.Store(true)
	connectIndexed(nodes)
	waitFor(t, "node 1 answered not ready", func() bool { return nodes[1].r.Stats().DigestsCompared >= 2 })
	if same(nodes[1].store.fakeStore, 0, nodes[0].store.local) {
		t.Fatal("synced without a comparison")
	}
	nodes[1].store.notReady.Store(false)
	waitFor(t, "synced once node 1 is ready", func() bool { return same(nodes[1].store.fakeStore, 0, nodes[0].store.local) })
}

// TestDeltaOnReplacedStreamDropped: node 1 opens a stream, snapshots, then
// opens a newer one whose snapshot no longer has a flow; a delta that
// still arrives on the old stream (reopening that flow) is dropped and the
// old stream closed: it cannot undo the newer snapshot.
func TestDeltaOnReplacedStreamDropped(t *testing.T) {
	port := freePort()
	nodes := startNodes(t, port, testKey, testKey)
	vip, client := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.19.0.1")
	open := func(cport uint16) Record {
		return Record{Op: OpOpen, VIP: vip, VIPPort: 445, Client: client, ClientPort: cport, LastSeen: 1}
	}
	snapshot := func(conn net.Conn, fr *framer, gen uint32, recs ...Record) {
		t.Helper()
		for _, m := range []*Message{
			{Kind: KindSnapBegin, Owner: 1, Gen: gen},
			{Kind: KindSnapChunk, Owner: 1, Gen: gen, Records: recs},
			{Kind: KindSnapEnd, Owner: 1, Gen: gen},
		} {
			if err := fr.write(conn, mustEncode(m)); err != nil {
				t.Fatal(err)
			}
		}
	}
	oldConn, oldFr := dialAs(t, port, addrOf(1), 1, testKey)
	snapshot(oldConn, oldFr, 100, open(1), open(2))
	waitFor(t, "old stream's snapshot applied", func() bool { return nodes[0].store.has(1, 1) && nodes[0].store.has(1, 2) })

	newConn, newFr := dialAs(t, port, addrOf(1), 1, testKey)
	snapshot(newConn, newFr, 200, open(2))
	waitFor(t, "newer snapshot swept flow 1", func() bool { return !nodes[0].store.has(1, 1) })

	// the old stream's late delta
	if err := oldFr.write(oldConn, mustEncode(&Message{Kind: KindDelta, Owner: 1, Records: []Record{open(1)}})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stale delta counted", func() bool { return nodes[0].r.Stats().StaleMessages == 1 })
	oldConn.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := oldConn.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("the replaced stream was not closed: %v", err)
	}
	if nodes[0].store.has(1, 1) || !nodes[0].store.has(1, 2) {
		t.Fatal("a delta of a replaced stream undid a newer snapshot")
	}
	// the new stream goes on
	if err := newFr.write(newConn, mustEncode(&Message{Kind: KindDelta, Owner: 1, Records: []Record{open(3)}})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "new stream's delta applied", func() bool { return nodes[0].store.has(1, 3) })
	if s := nodes[0].r.Stats(); s.BadMessages != 0 {
		t.Fatalf("%+v", s)
	}
}

// TestDeadPeerMidResync: a peer dies while a VIP is being copied to it;
// the owner and the other peer lose nothing, and an owner that dies in
// the middle of a VIP copy leaves its peer's copy as it was (nothing is
// swept without the copy's end).
func TestDeadPeerMidResync(t *testing.T) {
	port := freePort()
	nodes := startIndexed(t, port, Config{DigestInterval: -1}, 3000, 50, 50)
	block := make(chan struct{})
	nodes[1].store.block.Store(&block) // node 1 stalls on its first copy
	connectIndexed(nodes)
	waitFor(t, "node 1 stuck in node 0's copy", nodes[1].store.stalled.Load)
	// Before node 1 dies, node 0's copies reach node 2 and node 1's own
	// reach the others (what it never sent, no node can hold): each
	// stream runs on its own while node 1 is stuck, in an order of its
	// own. How much of node 0's copy to node 1 is sent by then depends on
	// the socket buffers: all of it, or node 0 is blocked writing.
	for _, pair := range [][2]int{{2, 0}, {0, 1}, {2, 1}} {
		waitFor(t, fmt.Sprintf("node %d holds node %d's flows", pair[0], pair[1]), func() bool {
			return same(nodes[pair[0]].store.fakeStore, pair[1], nodes[pair[1]].store.local)
		})
	}
	nodes[1].stop() // dies mid-copy
	close(block)
	<-nodes[1].done
	nodes[1].done <- nil // for the cleanup

	// the others still converge and hold everything
	for _, pair := range [][2]int{{0, 2}, {2, 0}} {
		waitFor(t, fmt.Sprintf("node %d holds node %d's flows", pair[0], pair[1]), func() bool {
			return same(nodes[pair[0]].store.fakeStore, pair[1], nodes[pair[1]].store.local)
		})
	}
	for _, i := range []int{0, 2} {
		if got := len(nodes[i].store.of(1, netip.Addr{})); got != 50 {
			t.Errorf("node %d holds %d of dead node 1's 50 flows", i, got)
		}
	}

	// an owner dying mid-copy: node 1 (as a raw stream) begins a copy of
	// 198.18.1.10 with only one of its flows, and is gone
	held := len(nodes[0].store.of(1, netip.MustParseAddr("198.18.1.10")))
	if held == 0 {
		t.Fatal("node 0 holds none of node 1's flows to 198.18.1.10")
	}
	conn, fr := dialAs(t, port, addrOf(1), 1, testKey)
	part := nodes[0].store.of(1, netip.MustParseAddr("198.18.1.10"))[0]
	for _, m := range []*Message{
		{Kind: KindDelta, Owner: 1},
		{Kind: KindSnapBegin, Owner: 1, Gen: 77},
		{Kind: KindSnapChunk, Owner: 1, Gen: 77, Records: []Record{{Op: OpOpen, VIP: part.VIP, VIPPort: 445, Client: part.Client, ClientPort: part.ClientPort}}},
	} {
		if err := fr.write(conn, mustEncode(m)); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close()
	time.Sleep(200 * time.Millisecond)
	if got := len(nodes[0].store.of(1, netip.MustParseAddr("198.18.1.10"))); got != held {
		t.Fatalf("an unfinished copy changed node 0's copy: %d flows, had %d", got, held)
	}
}

// TestOldPeerGetsVersion1: a peer of an older release (version 1 only)
// refuses a version 2 hello; the next attempt proposes version 1 and it
// gets a full snapshot and deltas it understands, no digest.
func TestOldPeerGetsVersion1(t *testing.T) {
	port := freePort()
	nodes := startIndexed(t, port, Config{DigestInterval: 50 * time.Millisecond}, 10)
	ln, err := net.Listen("tcp", net.JoinHostPort(addrOf(1).String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var (
		mu     sync.Mutex
		hellos []byte
		kinds  []Kind
	)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				h, err := readHello(c)
				mu.Lock()
				hellos = append(hellos, h.version)
				mu.Unlock()
				if err != nil || h.version != streamVersion1 {
					return // what a version 1 fsha does
				}
				mine, _ := newHello(streamVersion1, 1, testKey)
				writeHello(c, mine)
				aead, _ := sessionAEAD(testKey, h.salt, mine.salt)
				fr := &framer{aead: aead}
				for {
					b, err := fr.read(c)
					if err != nil {
						return
					}
					m, err := DecodeMessage(b)
					if err != nil {
						t.Errorf("old peer got a message it cannot decode: %v", err)
						return
					}
					mu.Lock()
					kinds = append(kinds, m.Kind)
					mu.Unlock()
				}
			}()
		}
	}()
	nodes[0].r.SetPeers(nodes[0].ctx, []Peer{{PNN: 0, Addr: addrOf(0)}, {PNN: 1, Addr: addrOf(1)}})
	waitFor(t, "old peer got a full snapshot", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.Contains(kinds, KindSnapEnd)
	})
	time.Sleep(200 * time.Millisecond) // digest rounds go on meanwhile
	mu.Lock()
	defer mu.Unlock()
	if len(hellos) < 2 || hellos[0] != streamVersion2 || hellos[1] != streamVersion1 {
		t.Errorf("hellos %v: want version 2, then 1", hellos)
	}
	for _, k := range kinds {
		if k.version() != wireVersion1 {
			t.Errorf("old peer got a %s", k)
		}
	}
}

// TestVersion2ProtocolViolations: messages that decode but break the
// protocol are counted and not applied, and the stream goes on.
func TestVersion2ProtocolViolations(t *testing.T) {
	port := freePort()
	nodes := startIndexed(t, port, Config{DigestInterval: -1}, 0, 0)
	vip, other := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("198.18.1.11")
	rec := func(vip netip.Addr, cport uint16) Record {
		return Record{Op: OpOpen, VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.19.0.1"), ClientPort: cport}
	}
	// version 2 kinds on a version 1 stream
	conn1, fr1 := dialAs(t, port, addrOf(1), 1, testKey)
	for _, m := range []*Message{
		{Kind: KindDigest, Owner: 1},
		{Kind: KindVIPSnapBegin, Owner: 1, Gen: 1, VIPs: []netip.Addr{vip}},
	} {
		if err := fr1.write(conn1, mustEncode(m)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "version 2 kinds refused on a version 1 stream", func() bool { return nodes[0].r.Stats().BadMessages == 2 })
	conn1.Close()

	conn, fr, version := dialVersion(t, port, addrOf(1), 1, testKey, streamVersion2)
	if version != streamVersion2 {
		t.Fatalf("answered version %d", version)
	}
	bad := []*Message{
		{Kind: KindResync, Owner: 1, VIPs: []netip.Addr{vip}},                     // only answers digests
		{Kind: KindNotReady, Owner: 1},                                            // idem
		{Kind: KindSnapChunk, Owner: 1, Gen: 5, Records: []Record{rec(vip, 1)}},   // no snapshot begun
		{Kind: KindVIPSnapEnd, Owner: 1, Gen: 5, VIPs: []netip.Addr{vip}},         // idem
		{Kind: KindVIPSnapBegin, Owner: 1, Gen: 5, VIPs: []netip.Addr{vip}},       // fine
		{Kind: KindSnapChunk, Owner: 1, Gen: 5, Records: []Record{rec(other, 2)}}, // another VIP's flow
		{Kind: KindSnapChunk, Owner: 1, Gen: 6, Records: []Record{rec(vip, 3)}},   // another generation
		{Kind: KindVIPSnapEnd, Owner: 1, Gen: 5, VIPs: []netip.Addr{other}},       // another VIP's end
		{Kind: KindSnapEnd, Owner: 1, Gen: 5},                                     // a full snapshot's end
		{Kind: KindSnapChunk, Owner: 1, Gen: 5, Records: []Record{rec(vip, 4)}},   // fine
		{Kind: KindVIPSnapEnd, Owner: 1, Gen: 5, VIPs: []netip.Addr{vip}},         // fine
	}
	for _, m := range bad {
		if err := fr.write(conn, mustEncode(m)); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the good copy applied", func() bool { return nodes[0].store.has(1, 4) })
	if got := nodes[0].r.Stats().BadMessages; got != 2+8 {
		t.Errorf("bad messages %d, want %d", got, 2+8)
	}
	if n := nodes[0].store.count(1); n != 1 {
		t.Errorf("node 0 holds %d of node 1's flows, want the 1 of the good copy", n)
	}
}

// seqIndex is a LocalIndex whose digests are those after event seq.
type seqIndex struct {
	*indexedStore
	seq uint64
}

func (s *seqIndex) LocalDigests() (map[netip.Addr]dataplane.Digest, uint64, bool) {
	d, _, ok := s.indexedStore.LocalDigests()
	return d, s.seq, ok
}

// TestDigestPlacedAfterItsEvent: a digest of the flows after event 5 goes
// out right after the delta of event 5, even when it is taken while the
// reader has applied event 5 to the index but not yet published it.
func TestDigestPlacedAfterItsEvent(t *testing.T) {
	idx := &seqIndex{indexedStore: newIndexedStore(), seq: 5}
	r := New(zaptest.NewLogger(t), Config{Self: 0, Addr: addrOf(0), Nodes: map[int]netip.Addr{0: addrOf(0), 1: addrOf(1)}}, idx, idx.local.each)
	pc := &peerConn{peer: Peer{PNN: 1}, queue: make(chan []byte, 16), cancel: func() {}}
	r.peers[1] = pc
	ev := func(seq uint64) dataplane.Event {
		return dataplane.Event{Type: dataplane.EventOpen, Flow: flow("198.18.1.10", uint16(seq)), Seq: seq}
	}
	for seq := range uint64(4) {
		r.Publish(ev(seq + 1))
	}
	r.requestDigest(-1)
	r.flush() // the digest waits for event 5
	r.Publish(ev(5))
	r.Publish(ev(6))
	r.flush()
	var got []string
	for len(pc.queue) > 0 {
		m, err := DecodeMessage(<-pc.queue)
		if err != nil {
			t.Fatal(err)
		}
		s := m.Kind.String()
		for _, rec := range m.Records {
			s += fmt.Sprintf(" %d", rec.ClientPort)
		}
		got = append(got, s)
	}
	want := []string{"delta 1 2 3 4", "delta 5", "digest", "delta 6"}
	if !slices.Equal(got, want) {
		t.Fatalf("sent %q, want %q", got, want)
	}
}
