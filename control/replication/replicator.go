// Package replication copies every node's connections to every other node,
// so that whichever node takes a VIP over knows whom to tickle, and the new
// owner of a draining VIP knows which packets to steer back.
//
// Each node is the only authority on its own connections: it streams its
// opens and closes (deltas, batched every few milliseconds) to each peer
// over a dedicated TCP connection, and starts every connection with a full
// copy (a snapshot), after which the peer drops whatever that node had that
// the copy lacks. memberlist's gossip is not used for this: its broadcasts
// are ~1,400-byte UDP packets retransmitted to a few nodes per gossip round,
// a few hundred records per second at best, far from a million connections
// per node; a stream per peer carries tens of megabytes per second.
package replication

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

// Store is where peers' flows go: the data plane's peer flows map.
type Store interface {
	UpsertPeerFlows([]dataplane.PeerFlow) error
	DeletePeerFlows([]dataplane.PeerFlow) error
	DeletePeerFlowsWhere(func(dataplane.PeerFlow) bool) (int, error)
}

// LocalFlows walks this node's own flows (dataplane.Maps.ForEachFlow).
type LocalFlows func(fn func(dataplane.Flow) bool) error

// Peer is another node to replicate to.
type Peer struct {
	PNN  int
	Addr netip.Addr
}

// Config configures a Replicator.
type Config struct {
	Self int
	Addr netip.Addr // this node's address: listen here
	Port int
	// Key authenticates and encrypts the streams; nil sends them in clear
	// (only with --insecure-gossip).
	Key []byte
	// Nodes maps every PNN to its address: a stream is accepted only from
	// the address of the node it claims to be.
	Nodes map[int]netip.Addr
	// FlushInterval batches deltas; it bounds the replication delay.
	FlushInterval time.Duration
	// QueueLen is how many messages may wait for a slow peer before it is
	// given a fresh snapshot instead.
	QueueLen int
	// Steer tells whether a peer's flow must be steered to it (its VIP is
	// draining from that peer to this node).
	Steer func(vip netip.Addr, owner int) bool
}

// DefaultPort is the replication port: the gossip port + 1.
const DefaultPort = 4381

// Stats counts what the replicator did.
type Stats struct {
	RecordsSent     uint64 `json:"records_sent"`
	BytesSent       uint64 `json:"bytes_sent"`
	RecordsReceived uint64 `json:"records_received"`
	Snapshots       uint64 `json:"snapshots_sent"`
	Resyncs         uint64 `json:"resyncs"`
	BadMessages     uint64 `json:"bad_messages"`
	BadStreams      uint64 `json:"bad_streams"`
	StoreErrors     uint64 `json:"store_errors"`
}

// Replicator sends this node's flows and receives the peers'.
type Replicator struct {
	log   *zap.Logger
	cfg   Config
	store Store
	local LocalFlows

	mu      sync.Mutex
	pending []Record
	peers   map[int]*peerConn
	gens    map[int]uint32 // current snapshot generation per owner
	wake    chan struct{}
	genSeq  atomic.Uint32

	recordsSent, bytesSent, recordsReceived, snapshots, resyncs atomic.Uint64
	badMessages, badStreams, storeErrors                        atomic.Uint64
}

// New returns a replicator; Run starts it.
func New(log *zap.Logger, cfg Config, store Store, local LocalFlows) *Replicator {
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = 10 * time.Millisecond
	}
	if cfg.QueueLen == 0 {
		cfg.QueueLen = 256
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Steer == nil {
		cfg.Steer = func(netip.Addr, int) bool { return false }
	}
	r := &Replicator{
		log: log.Named("replication"), cfg: cfg, store: store, local: local,
		peers: map[int]*peerConn{}, gens: map[int]uint32{}, wake: make(chan struct{}, 1),
	}
	// generations differ across restarts, so a restarted node's snapshot
	// never matches its previous one
	r.genSeq.Store(uint32(time.Now().Unix()))
	return r
}

// SetSteer sets the steering policy (see Config.Steer) once the node that
// decides it exists; call it before Run.
func (r *Replicator) SetSteer(fn func(vip netip.Addr, owner int) bool) { r.cfg.Steer = fn }

// Resync sends every peer a fresh snapshot, e.g. after flows were removed
// without close events.
func (r *Replicator) Resync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, pc := range r.peers {
		pc.resync.Store(true)
	}
}

// Counters returns Stats as named counters for `fsha status --json`.
func (r *Replicator) Counters() map[string]uint64 {
	s := r.Stats()
	return map[string]uint64{
		"replication_records_sent": s.RecordsSent, "replication_bytes_sent": s.BytesSent,
		"replication_records_received": s.RecordsReceived, "replication_snapshots_sent": s.Snapshots,
		"replication_resyncs": s.Resyncs, "replication_bad_messages": s.BadMessages,
		"replication_bad_streams": s.BadStreams, "replication_store_errors": s.StoreErrors,
	}
}

// Stats returns the counters.
func (r *Replicator) Stats() Stats {
	return Stats{
		RecordsSent: r.recordsSent.Load(), BytesSent: r.bytesSent.Load(), RecordsReceived: r.recordsReceived.Load(),
		Snapshots: r.snapshots.Load(), Resyncs: r.resyncs.Load(), BadMessages: r.badMessages.Load(),
		BadStreams: r.badStreams.Load(), StoreErrors: r.storeErrors.Load(),
	}
}

// Publish queues a local open or close for every peer.
func (r *Replicator) Publish(ev dataplane.Event) {
	f := ev.Flow
	rec := Record{Op: OpOpen, VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort,
		LastSeen: time.Now().UnixNano()}
	if ev.Type == dataplane.EventClose {
		rec.Op = OpClose
	}
	r.mu.Lock()
	r.pending = append(r.pending, rec)
	flush := len(r.pending) >= MaxRecords
	r.mu.Unlock()
	if flush {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// SetPeers says which nodes are alive: streams to new ones start (with a
// snapshot), streams to gone ones stop.
func (r *Replicator) SetPeers(ctx context.Context, peers []Peer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	want := map[int]Peer{}
	for _, p := range peers {
		if p.PNN != r.cfg.Self {
			want[p.PNN] = p
		}
	}
	for pnn, pc := range r.peers {
		if w, ok := want[pnn]; !ok || w.Addr != pc.peer.Addr {
			pc.cancel()
			delete(r.peers, pnn)
		}
	}
	for pnn, p := range want {
		if _, ok := r.peers[pnn]; ok {
			continue
		}
		pctx, cancel := context.WithCancel(ctx)
		pc := &peerConn{peer: p, queue: make(chan []byte, r.cfg.QueueLen), cancel: cancel}
		r.peers[pnn] = pc
		go r.runPeer(pctx, pc)
	}
}

// Run listens for the peers' streams and flushes deltas until ctx ends.
func (r *Replicator) Run(ctx context.Context) error {
	addr := net.JoinHostPort(r.cfg.Addr.String(), strconv.Itoa(r.cfg.Port))
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("replication listen on %s: %w", addr, err)
	}
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	go r.flushLoop(ctx)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("replication accept: %w", err)
		}
		go r.serve(ctx, conn)
	}
}

func (r *Replicator) flushLoop(ctx context.Context) {
	t := time.NewTicker(r.cfg.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.wake:
		}
		r.flush()
	}
}

// flush encodes the pending records once and queues them for every peer.
func (r *Replicator) flush() {
	r.mu.Lock()
	recs := r.pending
	r.pending = nil
	peers := make([]*peerConn, 0, len(r.peers))
	for _, pc := range r.peers {
		peers = append(peers, pc)
	}
	r.mu.Unlock()
	for len(recs) > 0 {
		n := min(len(recs), MaxRecords)
		msg, err := AppendMessage(nil, &Message{Kind: KindDelta, Owner: uint16(r.cfg.Self), Records: recs[:n]})
		if err != nil {
			r.log.Error("encode delta", zap.Error(err))
			return
		}
		for _, pc := range peers {
			pc.enqueue(msg, n, r)
		}
		recs = recs[n:]
	}
}

type peerConn struct {
	peer   Peer
	queue  chan []byte
	cancel context.CancelFunc
	resync atomic.Bool
}

// enqueue never blocks: a peer too slow to keep up loses its queue and
// gets a full snapshot instead, which is always correct.
func (pc *peerConn) enqueue(msg []byte, records int, r *Replicator) {
	select {
	case pc.queue <- msg:
		return
	default:
	}
	if !pc.resync.Swap(true) {
		r.resyncs.Add(1)
		r.log.Warn("peer too slow, it will get a snapshot", zap.Int("peer", pc.peer.PNN), zap.Int("dropped_records", records))
	}
	pc.drain()
}

// drain empties the queue: deltas dropped together with their later
// closes can never resurrect a closed connection.
func (pc *peerConn) drain() {
	for {
		select {
		case <-pc.queue:
		default:
			return
		}
	}
}

// runPeer keeps a stream to one peer: connect, snapshot, then deltas;
// after any error, reconnect (and snapshot again) until ctx ends.
func (r *Replicator) runPeer(ctx context.Context, pc *peerConn) {
	log := r.log.With(zap.Int("peer", pc.peer.PNN))
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := r.stream(ctx, pc)
		if ctx.Err() != nil {
			return
		}
		log.Debug("replication stream ended, reconnecting", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

const ioTimeout = 5 * time.Second

func (r *Replicator) stream(ctx context.Context, pc *peerConn) error {
	// from the node address: the peer checks it against the nodes file
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: r.cfg.Addr.AsSlice()}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(pc.peer.Addr.String(), strconv.Itoa(r.cfg.Port)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	mine, err := newHello(r.cfg.Self, r.cfg.Key)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	if err := writeHello(conn, mine); err != nil {
		return err
	}
	theirs, err := readHello(conn)
	if err != nil {
		return err
	}
	if theirs.flags != mine.flags {
		return fmt.Errorf("%w: peer %d disagrees on encryption (is --gossip-key the same everywhere?)", ErrHandshake, pc.peer.PNN)
	}
	aead, err := sessionAEAD(r.cfg.Key, mine.salt, theirs.salt)
	if err != nil {
		return err
	}
	fr := &framer{aead: aead}
	send := func(msg []byte, records int) error {
		conn.SetWriteDeadline(time.Now().Add(ioTimeout))
		if err := fr.write(conn, msg); err != nil {
			return err
		}
		r.bytesSent.Add(uint64(len(msg)))
		r.recordsSent.Add(uint64(records))
		return nil
	}

	// Deltas queued before this snapshot are dropped: the snapshot already
	// holds their result.
	pc.drain()
	pc.resync.Store(false)
	if err := r.sendSnapshot(send); err != nil {
		return err
	}
	for {
		if pc.resync.Swap(false) {
			pc.drain()
			if err := r.sendSnapshot(send); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case msg := <-pc.queue:
			if err := send(msg, (len(msg)-headerSize)/recordSize); err != nil {
				return err
			}
		case <-time.After(time.Second):
			// a keepalive of sorts: an empty delta shows a dead peer
			if err := send(mustEncode(&Message{Kind: KindDelta, Owner: uint16(r.cfg.Self)}), 0); err != nil {
				return err
			}
		}
	}
}

func mustEncode(m *Message) []byte {
	b, err := AppendMessage(nil, m)
	if err != nil {
		panic(err) // only called with record-free messages
	}
	return b
}

// sendSnapshot sends every local flow, framed by begin and end markers
// that carry a fresh generation.
func (r *Replicator) sendSnapshot(send func([]byte, int) error) error {
	gen := r.genSeq.Add(1)
	owner := uint16(r.cfg.Self)
	if err := send(mustEncode(&Message{Kind: KindSnapBegin, Owner: owner, Gen: gen}), 0); err != nil {
		return err
	}
	now := time.Now().UnixNano()
	recs := make([]Record, 0, 1024)
	var sendErr error
	flushChunk := func() bool {
		msg, err := AppendMessage(nil, &Message{Kind: KindSnapChunk, Owner: owner, Gen: gen, Records: recs})
		if err == nil {
			err = send(msg, len(recs))
		}
		recs = recs[:0]
		sendErr = err
		return err == nil
	}
	err := r.local(func(f dataplane.Flow) bool {
		last := now
		if !f.LastSeen.IsZero() {
			last = f.LastSeen.UnixNano()
		}
		recs = append(recs, Record{Op: OpOpen, VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort, LastSeen: last})
		return len(recs) < MaxRecords || flushChunk()
	})
	if sendErr != nil {
		return sendErr
	}
	if err != nil {
		return fmt.Errorf("read local flows for a snapshot: %w", err)
	}
	if len(recs) > 0 && !flushChunk() {
		return sendErr
	}
	r.snapshots.Add(1)
	return send(mustEncode(&Message{Kind: KindSnapEnd, Owner: owner, Gen: gen}), 0)
}

// serve receives one peer's stream and applies it to the store.
func (r *Replicator) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log := r.log.With(zap.Stringer("from", conn.RemoteAddr()))
	fail := func(err error) {
		r.badStreams.Add(1)
		log.Warn("replication stream rejected", zap.Error(err))
	}

	conn.SetDeadline(time.Now().Add(ioTimeout))
	theirs, err := readHello(conn)
	if err != nil {
		fail(err)
		return
	}
	owner := int(theirs.pnn)
	remote, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
	if want, ok := r.cfg.Nodes[owner]; !ok || want != remote.Addr().Unmap() || owner == r.cfg.Self {
		fail(fmt.Errorf("%w: claims to be node %d from %s", ErrHandshake, owner, remote.Addr()))
		return
	}
	mine, err := newHello(r.cfg.Self, r.cfg.Key)
	if err != nil {
		fail(err)
		return
	}
	if theirs.flags != mine.flags {
		fail(fmt.Errorf("%w: node %d disagrees on encryption", ErrHandshake, owner))
		return
	}
	if err := writeHello(conn, mine); err != nil {
		return
	}
	aead, err := sessionAEAD(r.cfg.Key, theirs.salt, mine.salt)
	if err != nil {
		fail(err)
		return
	}
	fr := &framer{aead: aead}
	for {
		// a live peer sends at least a keepalive every second
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := fr.read(conn)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				fail(err)
			}
			return
		}
		m, err := DecodeMessage(b)
		if err == nil && int(m.Owner) != owner {
			err = fmt.Errorf("%w: node %d sent flows of node %d", ErrBadMessage, owner, m.Owner)
		}
		if err != nil {
			r.badMessages.Add(1)
			log.Warn("replication message rejected", zap.Error(err))
			continue
		}
		r.apply(owner, m)
	}
}

// apply writes one message of owner's to the store.
func (r *Replicator) apply(owner int, m *Message) {
	r.mu.Lock()
	gen := r.gens[owner]
	switch m.Kind {
	case KindSnapBegin:
		r.gens[owner] = m.Gen
		gen = m.Gen
	case KindSnapChunk, KindSnapEnd:
		if m.Gen != gen {
			r.mu.Unlock()
			r.badMessages.Add(1)
			r.log.Warn("snapshot part of an unknown generation", zap.Int("owner", owner), zap.Uint32("gen", m.Gen))
			return
		}
	}
	r.mu.Unlock()

	var opens, closes []dataplane.PeerFlow
	for _, rec := range m.Records {
		pf := dataplane.PeerFlow{VIP: rec.VIP, VIPPort: rec.VIPPort, Client: rec.Client, ClientPort: rec.ClientPort,
			Owner: owner, Gen: gen, LastSeen: time.Unix(0, rec.LastSeen)}
		if rec.Op == OpClose {
			closes = append(closes, pf)
			continue
		}
		pf.Steer = r.cfg.Steer(rec.VIP, owner)
		opens = append(opens, pf)
	}
	r.recordsReceived.Add(uint64(len(m.Records)))
	if err := r.store.UpsertPeerFlows(opens); err != nil {
		r.storeErrors.Add(1)
		r.log.Error("store peer flows", zap.Int("owner", owner), zap.Error(err))
	}
	if err := r.store.DeletePeerFlows(closes); err != nil {
		r.storeErrors.Add(1)
		r.log.Error("delete peer flows", zap.Int("owner", owner), zap.Error(err))
	}
	if m.Kind == KindSnapEnd {
		n, err := r.store.DeletePeerFlowsWhere(func(f dataplane.PeerFlow) bool { return f.Owner == owner && f.Gen != gen })
		if err != nil {
			r.storeErrors.Add(1)
			r.log.Error("sweep peer flows", zap.Int("owner", owner), zap.Error(err))
		} else if n > 0 {
			r.log.Info("dropped stale peer flows after snapshot", zap.Int("owner", owner), zap.Int("flows", n))
		}
	}
}
