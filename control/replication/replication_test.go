package replication

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/dataplane"
)

type fakeStore struct {
	mu    sync.Mutex
	flows map[string]dataplane.PeerFlow
	full  int // capacity, 0: unlimited
}

func key(f dataplane.PeerFlow) string {
	return fmt.Sprintf("%v:%d-%v:%d", f.VIP, f.VIPPort, f.Client, f.ClientPort)
}

func (s *fakeStore) UpsertPeerFlows(fs []dataplane.PeerFlow) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fs {
		if _, ok := s.flows[key(f)]; !ok && s.full > 0 && len(s.flows) >= s.full {
			return dataplane.ErrPeerMapFull
		}
		s.flows[key(f)] = f
	}
	return nil
}

func (s *fakeStore) DeletePeerFlows(fs []dataplane.PeerFlow) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range fs {
		delete(s.flows, key(f))
	}
	return nil
}

func (s *fakeStore) DeletePeerFlowsWhere(match func(dataplane.PeerFlow) bool) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for k, f := range s.flows {
		if match(f) {
			delete(s.flows, k)
			n++
		}
	}
	return n, nil
}

func (s *fakeStore) count(owner int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, f := range s.flows {
		if f.Owner == owner {
			n++
		}
	}
	return n
}

func (s *fakeStore) has(owner int, cport uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.flows {
		if f.Owner == owner && f.ClientPort == cport {
			return true
		}
	}
	return false
}

// localFlows is a node's own flow table.
type localFlows struct {
	mu    sync.Mutex
	flows []dataplane.Flow
}

func (l *localFlows) each(fn func(dataplane.Flow) bool) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range l.flows {
		if !fn(f) {
			return nil
		}
	}
	return nil
}

func flow(vip string, cport uint16) dataplane.Flow {
	return dataplane.Flow{VIP: netip.MustParseAddr(vip), VIPPort: 445, Client: netip.MustParseAddr("198.19.0.7"), ClientPort: cport}
}

var (
	portMu   sync.Mutex
	nextPort = 26380
)

type testNode struct {
	r     *Replicator
	store *fakeStore
	local *localFlows
	stop  context.CancelFunc
	ctx   context.Context
}

func addrOf(pnn int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 2, byte(1 + pnn)}) }

func startNodes(t *testing.T, port int, keys ...[]byte) []*testNode {
	t.Helper()
	return startNodesWith(t, port, Config{}, keys...)
}

// startNodesWith is startNodes with base's settings (FlushInterval...).
func startNodesWith(t *testing.T, port int, base Config, keys ...[]byte) []*testNode {
	t.Helper()
	nodes := map[int]netip.Addr{}
	for i := range keys {
		nodes[i] = addrOf(i)
	}
	var out []*testNode
	for i, k := range keys {
		n := &testNode{store: &fakeStore{flows: map[string]dataplane.PeerFlow{}}, local: &localFlows{}}
		cfg := base
		cfg.Self, cfg.Addr, cfg.Port, cfg.Key, cfg.Nodes = i, addrOf(i), port, k, nodes
		n.r = New(zaptest.NewLogger(t), cfg, n.store, n.local.each)
		n.ctx, n.stop = context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- n.r.Run(n.ctx) }()
		t.Cleanup(func() { n.stop(); <-errc })
		out = append(out, n)
	}
	time.Sleep(50 * time.Millisecond) // listeners up
	return out
}

func freePort() int {
	portMu.Lock()
	defer portMu.Unlock()
	nextPort++
	return nextPort
}

func connectAll(nodes []*testNode) {
	var peers []Peer
	for i := range nodes {
		peers = append(peers, Peer{PNN: i, Addr: addrOf(i)})
	}
	for _, n := range nodes {
		n.r.SetPeers(n.ctx, peers)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within 5s: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

var testKey = bytes.Repeat([]byte{7}, 32)

func TestSnapshotDeltasAndResync(t *testing.T) {
	nodes := startNodes(t, freePort(), testKey, testKey, testKey)
	for i, n := range nodes {
		for c := range 100 {
			n.local.flows = append(n.local.flows, flow("198.18.1.10", uint16(10000*i+c+1)))
		}
	}
	connectAll(nodes)
	for i, n := range nodes {
		for j := range nodes {
			if i != j {
				waitFor(t, fmt.Sprintf("node %d has node %d's 100 flows", i, j), func() bool { return n.store.count(j) == 100 })
			}
		}
	}

	// deltas: node 0 opens one and closes one
	opened := flow("198.18.1.10", 555)
	closed := nodes[0].local.flows[0]
	nodes[0].local.mu.Lock()
	nodes[0].local.flows = append(nodes[0].local.flows[1:], opened)
	nodes[0].local.mu.Unlock()
	nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventOpen, Flow: opened})
	nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventClose, Flow: closed})
	for _, n := range nodes[1:] {
		waitFor(t, "delta applied", func() bool { return n.store.has(0, 555) && !n.store.has(0, 1) })
	}

	// node 2 restarts with an empty store: it gets everything again, and
	// what node 1 lost meanwhile (a close it never saw) is swept by the
	// next snapshot.
	nodes[1].store.UpsertPeerFlows([]dataplane.PeerFlow{{VIP: opened.VIP, VIPPort: 445, Client: opened.Client, ClientPort: 9999, Owner: 0}})
	nodes[0].r.SetPeers(nodes[0].ctx, []Peer{{PNN: 0, Addr: addrOf(0)}, {PNN: 2, Addr: addrOf(2)}})
	nodes[0].r.SetPeers(nodes[0].ctx, []Peer{{PNN: 0, Addr: addrOf(0)}, {PNN: 1, Addr: addrOf(1)}, {PNN: 2, Addr: addrOf(2)}})
	waitFor(t, "stale flow swept by a new snapshot", func() bool { return !nodes[1].store.has(0, 9999) })
	if c := nodes[1].store.count(0); c != 100 || !nodes[1].store.has(0, 555) || nodes[1].store.has(0, 1) {
		t.Fatalf("node 1 has %d of node 0's flows after the snapshot, want the 100 of its table", c)
	}
	if s := nodes[0].r.Stats(); s.Snapshots < 3 || s.RecordsSent == 0 || s.BadMessages != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWrongKeyIsRejected(t *testing.T) {
	other := bytes.Repeat([]byte{9}, 32)
	nodes := startNodes(t, freePort(), testKey, other, nil)
	nodes[1].local.flows = []dataplane.Flow{flow("198.18.1.10", 1)}
	nodes[2].local.flows = []dataplane.Flow{flow("198.18.1.10", 2)}
	connectAll(nodes)
	waitFor(t, "streams rejected", func() bool { return nodes[0].r.Stats().BadStreams >= 2 })
	time.Sleep(200 * time.Millisecond)
	if nodes[0].store.count(1)+nodes[0].store.count(2) != 0 {
		t.Fatal("flows accepted from a node with another key or none")
	}
}

// dialAs opens a raw stream to node 0 from address from, claiming pnn.
func dialAs(t *testing.T, port int, from netip.Addr, pnn int, key []byte) (net.Conn, *framer) {
	t.Helper()
	conn, fr, _ := dialVersion(t, port, from, pnn, key, streamVersion1)
	return conn, fr
}

// dialVersion opens a raw stream to node 0 from address from, claiming
// pnn and proposing version; it returns the version node 0 answered.
func dialVersion(t *testing.T, port int, from netip.Addr, pnn int, key []byte, version byte) (net.Conn, *framer, byte) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}}
	conn, err := d.Dial("tcp", net.JoinHostPort(addrOf(0).String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	mine, _ := newHello(version, pnn, key)
	if err := writeHello(conn, mine); err != nil {
		t.Fatal(err)
	}
	theirs, err := readHello(conn)
	if err != nil {
		return conn, nil, 0
	}
	aead, _ := sessionAEAD(key, mine.salt, theirs.salt)
	return conn, &framer{aead: aead}, theirs.version
}

func TestBadMessagesAreCountedNotApplied(t *testing.T) {
	port := freePort()
	nodes := startNodes(t, port, testKey, testKey)
	conn, fr := dialAs(t, port, addrOf(1), 1, testKey)
	if fr == nil {
		t.Fatal("handshake refused")
	}
	good, _ := AppendMessage(nil, &Message{Kind: KindDelta, Owner: 1, Records: []Record{
		{Op: OpOpen, VIP: netip.MustParseAddr("198.18.1.10"), VIPPort: 445, Client: netip.MustParseAddr("198.19.0.1"), ClientPort: 7},
	}})
	bad := [][]byte{
		{1, 2, 3},                      // short
		append([]byte{9}, good[1:]...), // version
		good[:len(good)-1],             // truncated record
		func() []byte { b := append([]byte(nil), good...); b[headerSize] = 7; return b }(),   // op
		func() []byte { b := append([]byte(nil), good...); b[headerSize+1] = 5; return b }(), // family
		func() []byte { b := append([]byte(nil), good...); b[5] = 0; return b }(),            // owner 0 != sender 1
	}
	for _, b := range bad {
		if err := fr.write(conn, b); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.write(conn, good); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "good message applied after the bad ones", func() bool { return nodes[0].store.has(1, 7) })
	if got := nodes[0].r.Stats().BadMessages; got != uint64(len(bad)) {
		t.Fatalf("bad messages %d, want %d", got, len(bad))
	}
	if nodes[0].store.count(1) != 1 {
		t.Fatal("a bad message changed the store")
	}

	// an oversized frame ends the stream
	var l [4]byte
	l[0] = 0x7f
	conn.Write(l[:])
	waitFor(t, "oversized frame rejected", func() bool { return nodes[0].r.Stats().BadStreams == 1 })

	// a stream claiming another node's number from this address is refused
	dialAs(t, port, addrOf(1), 5, testKey)
	waitFor(t, "impostor rejected", func() bool { return nodes[0].r.Stats().BadStreams == 2 })

	// garbage instead of a hello
	c, err := net.Dial("tcp", net.JoinHostPort(addrOf(0).String(), strconv.Itoa(port)))
	if err != nil {
		t.Fatal(err)
	}
	c.Write(bytes.Repeat([]byte("garbage!"), 8))
	c.Close()
	waitFor(t, "garbage rejected", func() bool { return nodes[0].r.Stats().BadStreams == 3 })
}

func TestFullStoreIsCounted(t *testing.T) {
	nodes := startNodes(t, freePort(), testKey, testKey)
	nodes[0].store.full = 5
	for c := range 10 {
		nodes[1].local.flows = append(nodes[1].local.flows, flow("198.18.1.10", uint16(c+1)))
	}
	connectAll(nodes)
	waitFor(t, "store errors counted", func() bool { return nodes[0].r.Stats().StoreErrors > 0 })
}

func TestDeadPeerMidReplication(t *testing.T) {
	port := freePort()
	nodes := startNodes(t, port, testKey, testKey)
	for c := range 50 {
		nodes[0].local.flows = append(nodes[0].local.flows, flow("198.18.1.10", uint16(c+1)))
	}
	nodes[1].stop() // dead before anything was sent
	connectAll(nodes[:1])
	nodes[0].r.SetPeers(nodes[0].ctx, []Peer{{PNN: 1, Addr: addrOf(1)}})
	for c := range 1000 {
		nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventOpen, Flow: flow("198.18.1.10", uint16(1000+c))})
	}
	time.Sleep(300 * time.Millisecond)
	// it comes back with an empty store and gets the whole table
	store := &fakeStore{flows: map[string]dataplane.PeerFlow{}}
	r := New(zaptest.NewLogger(t), Config{Self: 1, Addr: addrOf(1), Port: port, Key: testKey,
		Nodes: map[int]netip.Addr{0: addrOf(0), 1: addrOf(1)}}, store, (&localFlows{}).each)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx)
	waitFor(t, "restarted peer has the full table", func() bool { return store.count(0) == 50 })
}

func TestWireRoundTrip(t *testing.T) {
	m := &Message{Kind: KindDelta, Owner: 3, Gen: 9, Records: []Record{
		{Op: OpOpen, VIP: netip.MustParseAddr("198.18.1.10"), VIPPort: 445, Client: netip.MustParseAddr("198.19.0.1"), ClientPort: 50000, LastSeen: 123},
		{Op: OpClose, VIP: netip.MustParseAddr("2001:2::10"), VIPPort: 2049, Client: netip.MustParseAddr("2001:2::99"), ClientPort: 800, LastSeen: -1},
	}}
	b, err := AppendMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != headerSize+2*recordSize {
		t.Fatalf("%d bytes", len(b))
	}
	got, err := DecodeMessage(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != m.Kind || got.Owner != 3 || got.Gen != 9 || len(got.Records) != 2 || got.Records[0] != m.Records[0] || got.Records[1] != m.Records[1] {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := AppendMessage(nil, &Message{Records: make([]Record, MaxRecords+1)}); err == nil {
		t.Fatal("oversized message encoded")
	}
	if _, err := DecodeMessage(append(b, 0)); !errors.Is(err, ErrBadMessage) {
		t.Fatalf("trailing byte: %v", err)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	b, _ := AppendMessage(nil, &Message{Kind: KindSnapChunk, Owner: 1, Gen: 2, Records: []Record{
		{Op: OpOpen, VIP: netip.MustParseAddr("198.18.1.10"), VIPPort: 445, Client: netip.MustParseAddr("198.19.0.1"), ClientPort: 5},
	}})
	f.Add(b)
	f.Add(mustEncode(&Message{Kind: KindSnapEnd, Owner: 1, Gen: 2}))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeMessage(b)
		if err != nil {
			if !errors.Is(err, ErrBadMessage) {
				t.Fatalf("error without ErrBadMessage: %v", err)
			}
			return
		}
		again, err := AppendMessage(nil, m)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("re-encode differs: %v", err)
		}
	})
}
