// Package replication copies every node's connections to every other node,
// so that whichever node takes a VIP over knows whom to tickle, and the new
// owner of a draining VIP knows which packets to steer back.
//
// Each node is the only authority on its own connections: it streams its
// opens and closes (deltas, batched every few milliseconds) to each peer
// over a dedicated TCP connection. memberlist's gossip is not used for
// this: its broadcasts are ~1,400-byte UDP packets retransmitted to a few
// nodes per gossip round, a few hundred records per second at best, far
// from a million connections per node; a stream per peer carries tens of
// megabytes per second.
//
// Anti-entropy. Deltas get lost: a slow peer's queue overflows, the ring
// buffer drops events, the LRU evicts a flow without a close, a stream
// breaks. With a peer that speaks version 2 (stream.go) the owner sends,
// every DigestInterval, after every (re)connect and after its index was
// rebuilt because events were lost, the digest of its flows to each VIP
// (dataplane.Digest: count, XOR and sum of a hash of each connection) at
// its exact place among the deltas; the peer compares it with the digests
// of what it holds of that owner and answers with the VIPs that differ,
// which the owner then copies again one VIP at a time (a VIP snapshot:
// O(connections of that VIP) on both sides). Equal digests mean nothing
// to send. With a version 1 peer the owner sends a full snapshot on every
// (re)connect and resync instead, after which the peer drops whatever that
// owner had that the copy lacks.
//
// Stream generations. A peer numbers the streams each owner opens to it
// in the order it accepts them; once a newer stream delivered a message,
// whatever still arrives on an older one (a delta sent before the owner
// gave up on that connection) is dropped and that stream closed, so a
// delta in flight on an old stream never undoes a newer snapshot.
package replication

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
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

// PeerIndex is what a Store offers when it indexes the peers' flows by
// owner and VIP (dataplane.Maps does): with it this node answers digests
// (it accepts version 2 streams) and sweeps what a snapshot did not renew
// in O(that owner's connections to the VIP) instead of a walk.
type PeerIndex interface {
	// PeerDigests returns the digest of owner's flows to each VIP that
	// has some; false while the index is being built.
	PeerDigests(owner int) (map[netip.Addr]dataplane.Digest, bool)
	// SweepPeerFlows deletes owner's flows (to vip, or every VIP when vip
	// is invalid) whose generation is not keep.
	SweepPeerFlows(owner int, vip netip.Addr, keep uint32) (int, error)
}

// LocalIndex is this node's flows by VIP (dataplane.Maps, when the daemon
// reads its events). With it, and when the Store is a PeerIndex too, this
// node proposes version 2 streams: digests and one-VIP snapshots.
type LocalIndex interface {
	// LocalDigests returns the digest of this node's flows to each VIP
	// that has some, after the event numbered seq (dataplane.Event.Seq);
	// false while the index may miss flows.
	LocalDigests() (digests map[netip.Addr]dataplane.Digest, seq uint64, ok bool)
	// ForEachFlowOfVIP calls fn with each of this node's flows to vip.
	ForEachFlowOfVIP(vip netip.Addr, fn func(dataplane.Flow) bool) error
	// IndexEpoch counts the index's builds, starting one when the ring
	// buffer lost events: a new epoch calls for a digest round.
	IndexEpoch() uint64
}

// The daemon's store is the data plane's maps: they must offer both
// indexes, or streams silently stay version 1.
var (
	_ PeerIndex  = (*dataplane.Maps)(nil)
	_ LocalIndex = (*dataplane.Maps)(nil)
)

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
	// FlushInterval batches deltas: at most one flush per interval (a
	// record after a quiet one goes at once); it bounds the replication
	// delay.
	FlushInterval time.Duration
	// QueueLen is how many messages may wait for a slow peer before it is
	// resynced instead (a digest round, or a full snapshot).
	QueueLen int
	// DigestInterval is how often this node's digests are compared with
	// every peer's copy of its flows (version 2 peers); 0 means
	// DefaultDigestInterval, negative only after (re)connects and lost
	// events.
	DigestInterval time.Duration
	// Steer tells whether a peer's flow must be steered to it (its VIP is
	// draining from that peer to this node).
	Steer func(vip netip.Addr, owner int) bool
}

// DefaultPort is the replication port: the gossip port + 1.
const DefaultPort = 4381

// DefaultDigestInterval is how often digests are compared by default.
const DefaultDigestInterval = 10 * time.Second

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
	// StaleMessages counts messages dropped because they came on a stream
	// its owner had since replaced.
	StaleMessages uint64 `json:"stale_messages"`
	// DigestsSent counts digests sent to peers; DigestsCompared the
	// peers' digests compared here, VIPsDiffering the VIPs found to
	// differ in them (each asked for again), and VIPSnapshots the
	// one-VIP copies sent on such requests.
	DigestsSent     uint64 `json:"digests_sent"`
	DigestsCompared uint64 `json:"digests_compared"`
	VIPsDiffering   uint64 `json:"vips_differing"`
	VIPSnapshots    uint64 `json:"vip_snapshots_sent"`
}

// Replicator sends this node's flows and receives the peers'.
type Replicator struct {
	log   *zap.Logger
	cfg   Config
	store Store
	local LocalFlows
	// localIdx and peerIdx are nil when the store does not offer them:
	// then streams are version 1.
	localIdx LocalIndex
	peerIdx  PeerIndex

	mu      sync.Mutex
	pending []Record
	marks   []mark // digests to send after pending[:mark.pos]
	// published is the Seq of the last event published; waiting is a
	// digest of a later event, placed once that event is published.
	published uint64
	waiting   *waitingDigest
	// digestAll and digestFor are the digest rounds asked for: to every
	// peer, or to some.
	digestAll bool
	digestFor map[int]bool
	peers     map[int]*peerConn
	owners    map[int]*ownerState
	// wake asks the flush loop to send at once (a full delta pending);
	// dirty that there is something to send (kick).
	wake, dirty chan struct{}
	genSeq      atomic.Uint32
	round       atomic.Uint32

	recordsSent, bytesSent, recordsReceived, snapshots, resyncs atomic.Uint64
	badMessages, badStreams, storeErrors, staleMessages         atomic.Uint64
	digestsSent, digestsCompared, vipsDiffering, vipSnapshots   atomic.Uint64
}

// mark is a digest to place among the pending records.
type mark struct {
	pos int
	msg []byte
	to  map[int]bool // nil: every peer
}

type waitingDigest struct {
	seq   uint64
	msg   []byte
	to    map[int]bool
	since time.Time
}

// New returns a replicator; Run starts it. When store also implements
// PeerIndex and LocalIndex (dataplane.Maps does), streams with peers that
// do too are version 2: anti-entropy by digests, one VIP at a time;
// otherwise version 1: a full snapshot on every (re)connect and resync.
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
	if cfg.DigestInterval == 0 {
		cfg.DigestInterval = DefaultDigestInterval
	}
	if cfg.Steer == nil {
		cfg.Steer = func(netip.Addr, int) bool { return false }
	}
	r := &Replicator{
		log: log.Named("replication"), cfg: cfg, store: store, local: local,
		peers: map[int]*peerConn{}, owners: map[int]*ownerState{}, digestFor: map[int]bool{},
		wake: make(chan struct{}, 1), dirty: make(chan struct{}, 1),
	}
	if pi, ok := store.(PeerIndex); ok {
		r.peerIdx = pi
		if li, ok := store.(LocalIndex); ok {
			r.localIdx = li
		}
	}
	// Generations only need to differ from the ones a peer may still hold
	// of this node, those of an earlier run included: start anywhere.
	var seed [4]byte
	_, _ = rand.Read(seed[:])
	r.genSeq.Store(binary.BigEndian.Uint32(seed[:]))
	return r
}

// nextGen returns a fresh snapshot generation (never 0).
func (r *Replicator) nextGen() uint32 {
	for {
		if g := r.genSeq.Add(1); g != 0 {
			return g
		}
	}
}

// SetSteer sets the steering policy (see Config.Steer) once the node that
// decides it exists; call it before Run.
func (r *Replicator) SetSteer(fn func(vip netip.Addr, owner int) bool) { r.cfg.Steer = fn }

// Resync makes every peer's copy of this node's flows right again, e.g.
// after flows were removed without close events: a digest round with
// version 2 peers (only what differs is sent), a full snapshot to the
// others.
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
		"replication_stale_messages": s.StaleMessages, "replication_digests_sent": s.DigestsSent,
		"replication_digests_compared": s.DigestsCompared, "replication_vips_differing": s.VIPsDiffering,
		"replication_vip_snapshots_sent": s.VIPSnapshots,
	}
}

// Stats returns the counters.
func (r *Replicator) Stats() Stats {
	return Stats{
		RecordsSent: r.recordsSent.Load(), BytesSent: r.bytesSent.Load(), RecordsReceived: r.recordsReceived.Load(),
		Snapshots: r.snapshots.Load(), Resyncs: r.resyncs.Load(), BadMessages: r.badMessages.Load(),
		BadStreams: r.badStreams.Load(), StoreErrors: r.storeErrors.Load(), StaleMessages: r.staleMessages.Load(),
		DigestsSent: r.digestsSent.Load(), DigestsCompared: r.digestsCompared.Load(),
		VIPsDiffering: r.vipsDiffering.Load(), VIPSnapshots: r.vipSnapshots.Load(),
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
	first := len(r.pending) == 0
	r.pending = append(r.pending, rec)
	r.published = max(r.published, ev.Seq)
	if w := r.waiting; w != nil && r.published >= w.seq {
		// the digest is of the flows right after this event
		r.waiting = nil
		if r.published == w.seq {
			r.marks = append(r.marks, mark{pos: len(r.pending), msg: w.msg, to: w.to})
		} else {
			r.requestDigestLocked(w.to)
		}
	}
	flush := len(r.pending) >= MaxRecords
	r.mu.Unlock()
	switch {
	case flush:
		select {
		case r.wake <- struct{}{}:
		default:
		}
	case first:
		r.kick()
	}
}

// requestDigest asks for a digest round with peer pnn, or every peer when
// pnn < 0; the flush loop sends it.
func (r *Replicator) requestDigest(pnn int) {
	r.mu.Lock()
	if pnn < 0 {
		r.requestDigestLocked(nil)
	} else {
		r.requestDigestLocked(map[int]bool{pnn: true})
	}
	r.mu.Unlock()
	r.kick()
}

func (r *Replicator) requestDigestLocked(to map[int]bool) {
	if to == nil {
		r.digestAll = true
		return
	}
	for pnn := range to {
		r.digestFor[pnn] = true
	}
}

// placeDigestLocked puts a digest of the local flows among the pending
// records where it belongs, if a round was asked for: right after the
// last event it reflects.
func (r *Replicator) placeDigestLocked() {
	if r.localIdx == nil {
		r.digestAll, r.digestFor = false, map[int]bool{}
		return
	}
	if w := r.waiting; w != nil {
		if time.Since(w.since) < time.Second {
			return
		}
		// the event never came (the reader stopped?): try again
		r.waiting = nil
		r.requestDigestLocked(w.to)
	}
	if !r.digestAll && len(r.digestFor) == 0 {
		return
	}
	var to map[int]bool
	if !r.digestAll {
		to = r.digestFor
	}
	r.digestAll, r.digestFor = false, map[int]bool{}
	digests, seq, ok := r.localIdx.LocalDigests()
	if !ok {
		// being built: its next epoch asks for a round to everyone
		r.log.Debug("digest round put off: the index of local flows is being built")
		return
	}
	m := &Message{Kind: KindDigest, Owner: uint16(r.cfg.Self), Gen: r.round.Add(1)}
	for vip, d := range digests {
		if d.Count > 0 {
			m.Digests = append(m.Digests, VIPDigest{VIP: vip, Digest: d})
		}
	}
	slices.SortFunc(m.Digests, func(a, b VIPDigest) int { return a.VIP.Compare(b.VIP) })
	msg, err := AppendMessage(nil, m)
	if err != nil {
		r.log.Error("encode digest", zap.Error(err))
		return
	}
	if seq > r.published {
		r.waiting = &waitingDigest{seq: seq, msg: msg, to: to, since: time.Now()}
		return
	}
	r.marks = append(r.marks, mark{pos: len(r.pending), msg: msg, to: to})
}

// SetPeers says which nodes are alive: streams to new ones start, streams
// to gone ones stop.
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
		pc := &peerConn{peer: p, queue: make(chan []byte, r.cfg.QueueLen), cancel: cancel, propose: r.maxVersion()}
		r.peers[pnn] = pc
		go r.runPeer(pctx, pc)
	}
}

// maxVersion is the newest stream version this node speaks as a client.
func (r *Replicator) maxVersion() byte {
	if r.localIdx != nil && r.peerIdx != nil {
		return streamVersion2
	}
	return streamVersion1
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

func mustEncode(m *Message) []byte {
	b, err := AppendMessage(nil, m)
	if err != nil {
		panic(err) // only called with record-free messages
	}
	return b
}
