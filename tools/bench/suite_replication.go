package main

// Suite "replication": how fast and at what cost a node's connections
// reach the other nodes (control/replication into the peer_flows map).
//
// Part 1, lab: a 3-node fsha cluster with default settings (as the
// failover suite). A client opens SMB connections to a VIP one at a
// time; each is timed from the server's answer (the flow exists on the
// owner) until it is in both other nodes' pinned peer_flows map, then
// closed (RST) and timed until it is gone there. The owner's replication
// sockets (sock_diag tcp_info) give the bytes per connection.
//
// Part 2, in process: three replicators on 127.0.0.1-3, each with a real
// data plane loaded unpinned (its peer_flows map, as the daemon's, is the
// store), node 0 streaming to nodes 1 and 2 with an encryption key, as
// `fsha up --gossip-key` does. It times Publish -> stored for opens at a
// low rate and for a storm, full snapshots of 100,000 and 1,000,000
// flows, and the peer map's memory with what it holds.

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

type replicationBench struct {
	lab       bool
	labConns  int
	conns     int
	gap       time.Duration
	storm     int
	snapshots string
}

func replicationSuite() *suite {
	b := &replicationBench{}
	return &suite{
		name: "replication",
		flags: func(fs *flag.FlagSet) {
			registerLabFlags(fs)
			fs.BoolVar(&b.lab, "repl-lab", true, "replication: also measure in a 3-node lab cluster")
			fs.IntVar(&b.labConns, "repl-lab-conns", 200, "replication: connections opened and closed one at a time in the lab")
			fs.IntVar(&b.conns, "repl-conns", 2000, "replication: connections published one at a time in process")
			fs.DurationVar(&b.gap, "repl-gap", 2*time.Millisecond, "replication: mean gap between two of those (exponential)")
			fs.IntVar(&b.storm, "repl-storm", 100_000, "replication: connections published at once (a reconnect storm)")
			fs.StringVar(&b.snapshots, "repl-snapshots", "100000,1000000", "replication: comma-separated snapshot sizes (flows), ascending")
		},
		run: b.run,
	}
}

func (b *replicationBench) run(ctx context.Context, log *zap.Logger, out io.Writer) error {
	var sizes []int
	for _, s := range strings.Split(b.snapshots, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 || n > dataplane.DefaultFlowsMax || (len(sizes) > 0 && n <= sizes[len(sizes)-1]) {
			return fmt.Errorf("bad -repl-snapshots entry %q (ascending, up to %d)", s, dataplane.DefaultFlowsMax)
		}
		sizes = append(sizes, n)
	}
	if b.labConns < 1 || b.labConns > 10_000 || b.conns < 1 || b.conns > 100_000 || b.storm < 1 || b.storm > 1_000_000 {
		return errors.New("-repl-lab-conns in 1..10000, -repl-conns in 1..100000, -repl-storm in 1..1000000")
	}
	var labRes *replLabResult
	if b.lab {
		var err error
		if labRes, err = b.runLab(ctx, log); err != nil {
			return fmt.Errorf("lab: %w", err)
		}
	}
	ip, err := b.runInProcess(ctx, log, sizes)
	if err != nil {
		return fmt.Errorf("in process: %w", err)
	}
	return b.report(out, labRes, ip)
}

// ---- part 1: the lab ----

type replLabResult struct {
	open, close [][]float64 // per peer, seconds
	peers       []string
	streams     []streamDelta // owner -> each peer
	conns       int
}

// streamDelta is what one replication stream carried during the
// measurement: TCP payload and segments each way.
type streamDelta struct {
	payload  uint64 // bytes the sender's TCP had acknowledged
	segsOut  uint64 // the sender's segments (data)
	segsBack uint64 // the receiver's segments (ACKs)
}

func (b *replicationBench) runLab(ctx context.Context, log *zap.Logger) (_ *replLabResult, err error) {
	l, err := benchLab(ctx, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tear down lab: %w", cerr))
		}
	}()
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{})
	if err != nil {
		return nil, err
	}
	vip := netip.AddrPortFrom(c.VIPs[0].Addr(), lab.SMBPort)
	owner, err := c.Owner(c.VIPs[0])
	if err != nil {
		return nil, err
	}
	peers := c.Others(owner)
	res := &replLabResult{conns: b.labConns}
	var maps []*ebpf.Map
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, p := range peers {
		m, err := ebpf.LoadPinnedMap(filepath.Join(p.PinPath, "peer_flows"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open peer_flows of %s: %w", p.Role, err)
		}
		maps = append(maps, m)
		res.peers = append(res.peers, p.Role)
	}
	res.open = make([][]float64, len(peers))
	res.close = make([][]float64, len(peers))
	before, err := labStreams(owner, peers)
	if err != nil {
		return nil, err
	}
	val := make([]byte, maps[0].ValueSize())
	// present polls each map until the key is there (want) or gone.
	poll := func(key []byte, want bool, t0 time.Time, into [][]float64) error {
		done := make([]bool, len(maps))
		left := len(maps)
		deadline := t0.Add(3 * time.Second)
		for left > 0 {
			for i, m := range maps {
				if done[i] {
					continue
				}
				err := m.Lookup(key, val)
				if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
				if (err == nil) == want {
					into[i] = append(into[i], time.Since(t0).Seconds())
					done[i] = true
					left--
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("not replicated within 3 s (want present %v)", want)
			}
			time.Sleep(200 * time.Microsecond)
		}
		return nil
	}
	for i := range b.labConns {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s, err := dialSMB(ctx, c.Clients[0], vip)
		if err != nil {
			return nil, err
		}
		t0 := s.Sent
		key := flowKeyBytes(vip, s.Local)
		if err := poll(key, true, t0, res.open); err != nil {
			s.closeAbort()
			return nil, fmt.Errorf("connection %d open: %w", i, err)
		}
		s.closeAbort()
		t1 := time.Now()
		if err := poll(key, false, t1, res.close); err != nil {
			return nil, fmt.Errorf("connection %d close: %w", i, err)
		}
		// out of step with the 10 ms flush ticker
		time.Sleep(time.Duration(mrand.Int64N(int64(20 * time.Millisecond))))
	}
	after, err := labStreams(owner, peers)
	if err != nil {
		return nil, err
	}
	for i := range peers {
		if before[i].cookie != after[i].cookie {
			return nil, fmt.Errorf("the stream to %s was reconnected during the measurement", peers[i].Role)
		}
		res.streams = append(res.streams, streamDelta{
			payload: after[i].payload - before[i].payload, segsOut: after[i].segsOut - before[i].segsOut,
			segsBack: after[i].segsBack - before[i].segsBack,
		})
	}
	log.Info("lab replication measured", zap.Int("connections", b.labConns))
	return res, nil
}

// flowKeyBytes is bpf/fsha.h's struct flow_key for an IPv4 connection:
// vip[16], client[16] (network order, IPv4 in the first 4 bytes), vport,
// cport (host order), family, pad[3].
func flowKeyBytes(vip, client netip.AddrPort) []byte {
	k := make([]byte, 40)
	v, c := vip.Addr().As4(), client.Addr().As4()
	copy(k[0:4], v[:])
	copy(k[16:20], c[:])
	binary.NativeEndian.PutUint16(k[32:34], vip.Port())
	binary.NativeEndian.PutUint16(k[34:36], client.Port())
	k[36] = unix.AF_INET
	return k
}

// diagIn dumps the TCP sockets of h's namespace. The netlink library
// opens its sock_diag socket on the calling thread: it must be in h.
func diagIn(h *lab.ClusterNode) ([]*netlink.InetDiagTCPInfoResp, error) {
	var res []*netlink.InetDiagTCPInfoResp
	err := h.Do(func() error {
		var err error
		res, err = netlink.SocketDiagTCPInfo(unix.AF_INET)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			err = nil
		}
		return err
	})
	return res, err
}

type streamCounters struct {
	cookie                     [2]uint32
	payload, segsOut, segsBack uint64
}

// labStreams reads the owner's replication streams to each peer: the
// owner's socket (to the peer's replication port) and the peer's end.
func labStreams(owner *lab.ClusterNode, peers []*lab.ClusterNode) ([]streamCounters, error) {
	mine, err := diagIn(owner)
	if err != nil {
		return nil, fmt.Errorf("sock_diag in %s: %w", owner.Role, err)
	}
	out := make([]streamCounters, len(peers))
	for i, p := range peers {
		found := false
		for _, s := range mine {
			id := s.InetDiagMsg.ID
			if s.TCPInfo != nil && s.InetDiagMsg.State == unix.BPF_TCP_ESTABLISHED && id.DestinationPort == replication.DefaultPort &&
				id.Source.Equal(owner.IP().AsSlice()) && id.Destination.Equal(p.IP().AsSlice()) {
				out[i].cookie = id.Cookie
				out[i].payload, out[i].segsOut = s.TCPInfo.Bytes_acked, uint64(s.TCPInfo.Segs_out)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("no replication stream from %s to %s", owner.Role, p.Role)
		}
		theirs, err := diagIn(p)
		if err != nil {
			return nil, fmt.Errorf("sock_diag in %s: %w", p.Role, err)
		}
		for _, s := range theirs {
			id := s.InetDiagMsg.ID
			if s.TCPInfo != nil && s.InetDiagMsg.State == unix.BPF_TCP_ESTABLISHED && id.SourcePort == replication.DefaultPort &&
				id.Source.Equal(p.IP().AsSlice()) && id.Destination.Equal(owner.IP().AsSlice()) {
				out[i].segsBack = uint64(s.TCPInfo.Segs_out)
			}
		}
	}
	return out, nil
}

// ---- part 2: in process ----

type replInProcResult struct {
	openLat, closeLat, stormLat []float64 // seconds, both peers
	stormTook                   time.Duration
	conns, storm                int
	deltaBytes, stormBytes      uint64 // Stats().BytesSent per peer
	deltaWire, stormWire        streamDelta
	snaps                       []snapResult
	mem                         []memPoint
	walkEmpty, walkFull         time.Duration
	walkFullN                   int
	parts                       *snapParts
}

// snapParts times, one after the other on one thread, the steps a
// snapshot of n flows goes through.
type snapParts struct {
	n                                 int
	read, encode, seal, open, decode  time.Duration
	apply                             time.Duration
	readN, encodedBytes, appliedFlows int
}

type snapResult struct {
	flows       int
	took        time.Duration // SetPeers -> both peers swept
	sweep       time.Duration // the peer's stale-entry sweep at the end
	bytes       uint64        // Stats().BytesSent per peer
	wire        streamDelta
	received    int64
	resyncs     uint64
	storeErrors uint64
}

type memPoint struct {
	entries int
	maps    int    // peer maps holding them (the slab delta is theirs)
	memlock uint64 // /proc/self/fdinfo of the map
	slab    int64  // /proc/meminfo Slab + Percpu, kB
}

// timedStore is a peer's store (its peer_flows map) that notes when each
// connection was written, while watching.
type timedStore struct {
	m       *dataplane.Maps
	records atomic.Int64

	mu     sync.Mutex
	watch  bool
	opened map[netip.AddrPort]time.Time
	closed map[netip.AddrPort]time.Time
	sweeps []sweep
}

type sweep struct{ start, end time.Time }

func newTimedStore(m *dataplane.Maps) *timedStore {
	return &timedStore{m: m, opened: map[netip.AddrPort]time.Time{}, closed: map[netip.AddrPort]time.Time{}}
}

func (s *timedStore) UpsertPeerFlows(f []dataplane.PeerFlow) error {
	err := s.m.UpsertPeerFlows(f)
	now := time.Now()
	s.records.Add(int64(len(f)))
	s.mu.Lock()
	if s.watch {
		for _, pf := range f {
			s.opened[netip.AddrPortFrom(pf.Client, pf.ClientPort)] = now
		}
	}
	s.mu.Unlock()
	return err
}

func (s *timedStore) DeletePeerFlows(f []dataplane.PeerFlow) error {
	err := s.m.DeletePeerFlows(f)
	now := time.Now()
	s.mu.Lock()
	if s.watch {
		for _, pf := range f {
			s.closed[netip.AddrPortFrom(pf.Client, pf.ClientPort)] = now
		}
	}
	s.mu.Unlock()
	return err
}

// DeletePeerFlowsWhere is called once per snapshot, at its end.
func (s *timedStore) DeletePeerFlowsWhere(match func(dataplane.PeerFlow) bool) (int, error) {
	start := time.Now()
	n, err := s.m.DeletePeerFlowsWhere(match)
	s.mu.Lock()
	s.sweeps = append(s.sweeps, sweep{start, time.Now()})
	s.mu.Unlock()
	return n, err
}

func (s *timedStore) setWatch(on bool) {
	s.mu.Lock()
	s.watch = on
	clear(s.opened)
	clear(s.closed)
	s.mu.Unlock()
}

// latencies returns, for each client of pub, stored - published; it
// fails if some have not arrived.
func (s *timedStore) latencies(pub map[netip.AddrPort]time.Time, closes bool) ([]float64, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	got := s.opened
	if closes {
		got = s.closed
	}
	var out []float64
	missing := 0
	for k, t := range pub {
		at, ok := got[k]
		if !ok {
			missing++
			continue
		}
		out = append(out, at.Sub(t).Seconds())
	}
	return out, missing
}

// lastStored is when the latest watched open was stored.
func (s *timedStore) lastStored() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for _, t := range s.opened {
		last = later(last, t)
	}
	return last
}

func (s *timedStore) sweepCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sweeps)
}

func (s *timedStore) lastSweep() sweep {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sweeps[len(s.sweeps)-1]
}

// replNode is one in-process node.
type replNode struct {
	addr  netip.Addr
	dp    *dataplane.Unpinned
	store *timedStore
	r     *replication.Replicator
}

// Addresses of the in-process nodes: loopback, in this namespace.
var replAddrs = []netip.Addr{
	netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2"), netip.MustParseAddr("127.0.0.3"),
}

// Connections the in-process part publishes: VIP 198.19.0.10:445 (as the
// dataplane suite's), clients 198.19.1.0 on; snapshots use the dataplane
// suite's clients (198.18.128.0/24), so the two never collide.
func replClient(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(1 + i>>16), byte(i >> 8)}), uint16(20000+i&0xff))
}

func replEvent(typ dataplane.EventType, i int) dataplane.Event {
	c := replClient(i)
	return dataplane.Event{Type: typ, Flow: dataplane.Flow{VIP: benchVIP4, VIPPort: trackedPort, Client: c.Addr(), ClientPort: c.Port()}}
}

func (b *replicationBench) runInProcess(ctx context.Context, log *zap.Logger, sizes []int) (_ *replInProcResult, err error) {
	port, err := freePort(replAddrs[0])
	if err != nil {
		return nil, err
	}
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, err
	}
	key := membership.KeyFromSecret([]byte(fmt.Sprintf("%x", secret)))
	nodes := map[int]netip.Addr{}
	for i, a := range replAddrs {
		nodes[i] = a
	}
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var rn []*replNode
	defer func() {
		cancel()
		wg.Wait()
		for _, n := range rn {
			err = errors.Join(err, n.dp.Close())
		}
	}()
	rlog := log.Named("replicator").WithOptions(zap.IncreaseLevel(zap.WarnLevel))
	runErr := make(chan error, len(replAddrs))
	for i, a := range replAddrs {
		flowsMax := uint32(1024)
		if i == 0 {
			flowsMax = dataplane.DefaultFlowsMax
		}
		dp, err := dataplane.LoadUnpinned(flowsMax)
		if err != nil {
			return nil, err
		}
		n := &replNode{addr: a, dp: dp, store: newTimedStore(&dp.Maps)}
		rn = append(rn, n)
		n.r = replication.New(rlog, replication.Config{Self: i, Addr: a, Port: port, Key: key, Nodes: nodes}, n.store, dp.ForEachFlow)
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.r.Run(rctx); err != nil {
				runErr <- err
			}
		}()
	}
	for _, n := range rn {
		if err := waitListen(ctx, netip.AddrPortFrom(n.addr, uint16(port))); err != nil {
			return nil, err
		}
	}
	src, dsts := rn[0], rn[1:]
	peers := []replication.Peer{{PNN: 1, Addr: replAddrs[1]}, {PNN: 2, Addr: replAddrs[2]}}
	res := &replInProcResult{conns: b.conns, storm: b.storm}

	if res.walkEmpty, _, err = timeWalk(&dsts[0].dp.Maps); err != nil {
		return nil, err
	}

	// The streams start with an (empty) snapshot.
	src.r.SetPeers(rctx, peers)
	if err := waitSweeps(ctx, dsts, 1, 10*time.Second); err != nil {
		return nil, err
	}
	checkRun := func() error {
		select {
		case err := <-runErr:
			return fmt.Errorf("replicator: %w", err)
		default:
			return nil
		}
	}

	// Opens and closes one at a time.
	for _, d := range dsts {
		d.store.setWatch(true)
	}
	stats0 := src.r.Stats()
	wire0, err := loopStreams(port)
	if err != nil {
		return nil, err
	}
	for _, typ := range []dataplane.EventType{dataplane.EventOpen, dataplane.EventClose} {
		pub := make(map[netip.AddrPort]time.Time, b.conns)
		for i := range b.conns {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			pub[replClient(i)] = time.Now()
			src.r.Publish(replEvent(typ, i))
			time.Sleep(time.Duration(mrand.ExpFloat64() * float64(b.gap)))
		}
		closes := typ == dataplane.EventClose
		for _, d := range dsts {
			lat, err := waitLatencies(ctx, d.store, pub, closes)
			if err != nil {
				return nil, err
			}
			if closes {
				res.closeLat = append(res.closeLat, lat...)
			} else {
				res.openLat = append(res.openLat, lat...)
			}
		}
		if err := checkRun(); err != nil {
			return nil, err
		}
	}
	stats1 := src.r.Stats()
	wire1, err := loopStreams(port)
	if err != nil {
		return nil, err
	}
	res.deltaBytes = (stats1.BytesSent - stats0.BytesSent) / uint64(len(dsts))
	if res.deltaWire, err = wireDelta(wire0, wire1); err != nil {
		return nil, err
	}
	log.Info("deltas measured", zap.Int("connections", b.conns))

	// A storm: opens published as fast as the loop goes, then closes.
	for _, d := range dsts {
		d.store.setWatch(true)
	}
	pub := make(map[netip.AddrPort]time.Time, b.storm)
	stats0, wire0 = src.r.Stats(), wire1
	start := time.Now()
	for i := range b.storm {
		pub[replClient(i)] = time.Now()
		src.r.Publish(replEvent(dataplane.EventOpen, i))
	}
	for _, d := range dsts {
		lat, err := waitLatencies(ctx, d.store, pub, false)
		if err != nil {
			return nil, err
		}
		res.stormLat = append(res.stormLat, lat...)
		res.stormTook = max(res.stormTook, d.store.lastStored().Sub(start))
	}
	stats1 = src.r.Stats()
	if wire1, err = loopStreams(port); err != nil {
		return nil, err
	}
	res.stormBytes = (stats1.BytesSent - stats0.BytesSent) / uint64(len(dsts))
	if res.stormWire, err = wireDelta(wire0, wire1); err != nil {
		return nil, err
	}
	for i := range b.storm {
		src.r.Publish(replEvent(dataplane.EventClose, i))
	}
	for _, d := range dsts {
		if _, err := waitLatencies(ctx, d.store, pub, true); err != nil {
			return nil, err
		}
		d.store.setWatch(false)
	}
	if err := checkRun(); err != nil {
		return nil, err
	}
	log.Info("storm measured", zap.Int("connections", b.storm), zap.Duration("took", res.stormTook))

	// Snapshots: the source's own flows map holds n flows; new streams
	// start with a full copy. The peers' maps are empty again.
	emptyMem, err := peerMapMemory(dsts[0].dp, 0)
	if err != nil {
		return nil, err
	}
	res.mem = append(res.mem, emptyMem)
	filled := 0
	for _, n := range sizes {
		if err := src.dp.FillFlows(netip.AddrPortFrom(benchVIP4, trackedPort), n-filled,
			func(i int) netip.AddrPort { return benchClient(false, filled+i) }); err != nil {
			return nil, err
		}
		filled = n
		src.r.SetPeers(rctx, nil)
		// let the old streams end before the new ones start
		time.Sleep(100 * time.Millisecond)
		sweeps := dsts[0].store.sweepCount()
		recs := dsts[0].store.records.Load()
		stats0 := src.r.Stats()
		t0 := time.Now()
		src.r.SetPeers(rctx, peers)
		if err := waitSweeps(ctx, dsts, sweeps+1, 5*time.Minute); err != nil {
			return nil, err
		}
		var last time.Time
		sr := snapResult{flows: n}
		for _, d := range dsts {
			sw := d.store.lastSweep()
			last = later(last, sw.end)
			sr.sweep = max(sr.sweep, sw.end.Sub(sw.start))
		}
		sr.took = last.Sub(t0)
		stats1 := src.r.Stats()
		sr.bytes = (stats1.BytesSent - stats0.BytesSent) / uint64(len(dsts))
		sr.received = dsts[0].store.records.Load() - recs
		sr.resyncs = stats1.Resyncs - stats0.Resyncs
		for _, d := range dsts {
			sr.storeErrors += d.r.Stats().StoreErrors
		}
		wire, err := loopStreams(port)
		if err != nil {
			return nil, err
		}
		// fresh streams: everything they carried is the snapshot (plus
		// a keepalive or two)
		var zero map[int]streamCounters
		if sr.wire, err = wireDelta(zero, wire); err != nil {
			return nil, err
		}
		res.snaps = append(res.snaps, sr)
		m, err := peerMapMemory(dsts[0].dp, n)
		if err != nil {
			return nil, err
		}
		m.maps = len(dsts)
		res.mem = append(res.mem, m)
		log.Info("snapshot measured", zap.Int("flows", n), zap.Duration("took", sr.took))
		if err := checkRun(); err != nil {
			return nil, err
		}
	}
	var cnt int
	if res.walkFull, cnt, err = timeWalk(&dsts[0].dp.Maps); err != nil {
		return nil, err
	}
	res.walkFullN = cnt
	if res.parts, err = timeSnapshotParts(src.dp, &dsts[1].dp.Maps, filled); err != nil {
		return nil, err
	}
	return res, nil
}

// timeSnapshotParts reads the n flows of src's flows map, encodes them
// as snapshot chunks, seals and opens them with AES-256-GCM (the streams'
// cipher), decodes them and stores them as new peer flows into dst, timing
// each step.
func timeSnapshotParts(src *dataplane.Unpinned, dst *dataplane.Maps, n int) (*snapParts, error) {
	p := &snapParts{n: n}
	recs := make([]replication.Record, 0, n)
	start := time.Now()
	now := start.UnixNano()
	if err := src.ForEachFlow(func(f dataplane.Flow) bool {
		recs = append(recs, replication.Record{Op: replication.OpOpen, VIP: f.VIP, VIPPort: f.VIPPort,
			Client: f.Client, ClientPort: f.ClientPort, LastSeen: now})
		return true
	}); err != nil {
		return nil, err
	}
	p.read, p.readN = time.Since(start), len(recs)

	start = time.Now()
	var msgs [][]byte
	for rest := recs; len(rest) > 0; {
		k := min(len(rest), replication.MaxRecords)
		m, err := replication.AppendMessage(nil, &replication.Message{Kind: replication.KindSnapChunk, Gen: 1, Records: rest[:k]})
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
		p.encodedBytes += len(m)
		rest = rest[k:]
	}
	p.encode = time.Since(start)

	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	sealed := make([][]byte, len(msgs))
	start = time.Now()
	for i, m := range msgs {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		sealed[i] = aead.Seal(nil, nonce, m, nil)
	}
	p.seal = time.Since(start)
	start = time.Now()
	for i, c := range sealed {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		if msgs[i], err = aead.Open(c[:0], nonce, c, nil); err != nil {
			return nil, err
		}
	}
	p.open = time.Since(start)

	start = time.Now()
	var decoded []*replication.Message
	for _, m := range msgs {
		d, err := replication.DecodeMessage(m)
		if err != nil {
			return nil, err
		}
		decoded = append(decoded, d)
	}
	p.decode = time.Since(start)

	// as apply does per message: PeerFlows, then one upsert; under new
	// keys (another VIP port), so every one is an insert
	start = time.Now()
	for _, m := range decoded {
		flows := make([]dataplane.PeerFlow, 0, len(m.Records))
		for _, r := range m.Records {
			flows = append(flows, dataplane.PeerFlow{VIP: r.VIP, VIPPort: r.VIPPort + 1, Client: r.Client, ClientPort: r.ClientPort,
				Owner: 0, Gen: m.Gen, LastSeen: time.Unix(0, r.LastSeen)})
		}
		if err := dst.UpsertPeerFlows(flows); err != nil {
			return nil, err
		}
		p.appliedFlows += len(flows)
	}
	p.apply = time.Since(start)
	return p, nil
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// freePort asks the kernel for a free TCP port on addr.
func freePort(addr netip.Addr) (int, error) {
	ln, err := net.Listen("tcp", netip.AddrPortFrom(addr, 0).String())
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func waitListen(ctx context.Context, ap netip.AddrPort) error {
	return lab.Eventually(ctx, 5*time.Second, "replicator listens on "+ap.String(), func(ctx context.Context) error {
		for _, s := range mustDiag() {
			id := s.InetDiagMsg.ID
			if s.InetDiagMsg.State == unix.BPF_TCP_LISTEN && id.SourcePort == ap.Port() && id.Source.Equal(ap.Addr().AsSlice()) {
				return nil
			}
		}
		return errors.New("not yet")
	})
}

func mustDiag() []*netlink.InetDiagTCPInfoResp {
	res, _ := netlink.SocketDiagTCPInfo(unix.AF_INET)
	return res
}

func waitSweeps(ctx context.Context, dsts []*replNode, n int, timeout time.Duration) error {
	return lab.Eventually(ctx, timeout, "snapshots applied", func(context.Context) error {
		for i, d := range dsts {
			if got := d.store.sweepCount(); got < n {
				return fmt.Errorf("node %d applied %d snapshots, want %d", i+1, got, n)
			}
		}
		return nil
	})
}

func waitLatencies(ctx context.Context, s *timedStore, pub map[netip.AddrPort]time.Time, closes bool) ([]float64, error) {
	var lat []float64
	err := lab.Eventually(ctx, 30*time.Second, "records stored", func(context.Context) error {
		var missing int
		lat, missing = s.latencies(pub, closes)
		if missing > 0 {
			return fmt.Errorf("%d of %d not stored", missing, len(pub))
		}
		return nil
	})
	return lat, err
}

// loopStreams reads the in-process streams (node 0 -> the peer's port)
// by the peer's node number.
func loopStreams(port int) (map[int]streamCounters, error) {
	res, err := netlink.SocketDiagTCPInfo(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	out := map[int]streamCounters{}
	src := replAddrs[0].AsSlice()
	for _, s := range res {
		id := s.InetDiagMsg.ID
		if s.TCPInfo == nil || s.InetDiagMsg.State != unix.BPF_TCP_ESTABLISHED {
			continue
		}
		for pnn, a := range replAddrs[1:] {
			sc := out[pnn+1]
			switch {
			case id.DestinationPort == uint16(port) && id.Source.Equal(src) && id.Destination.Equal(a.AsSlice()):
				sc.cookie = id.Cookie
				sc.payload, sc.segsOut = s.TCPInfo.Bytes_acked, uint64(s.TCPInfo.Segs_out)
			case id.SourcePort == uint16(port) && id.Source.Equal(a.AsSlice()) && id.Destination.Equal(src):
				sc.segsBack = uint64(s.TCPInfo.Segs_out)
			default:
				continue
			}
			out[pnn+1] = sc
		}
	}
	if len(out) != len(replAddrs)-1 {
		return nil, fmt.Errorf("found %d replication streams, want %d", len(out), len(replAddrs)-1)
	}
	return out, nil
}

// wireDelta sums after - before over the peers' streams, per peer.
func wireDelta(before, after map[int]streamCounters) (streamDelta, error) {
	var d streamDelta
	for pnn, a := range after {
		b := before[pnn]
		if before != nil && b.cookie != a.cookie {
			return d, fmt.Errorf("the stream to node %d was reconnected during the measurement", pnn)
		}
		d.payload += a.payload - b.payload
		d.segsOut += a.segsOut - b.segsOut
		d.segsBack += a.segsBack - b.segsBack
	}
	n := uint64(len(after))
	return streamDelta{d.payload / n, d.segsOut / n, d.segsBack / n}, nil
}

// peerMapMemory reads the peer flows map's memory as the kernel accounts
// it (memlock in /proc/self/fdinfo, what bpftool shows as bytes_memlock),
// and the kernel's slab + per-cpu memory (noisy: the whole machine).
func peerMapMemory(dp *dataplane.Unpinned, entries int) (memPoint, error) {
	p := memPoint{entries: entries}
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", dp.PeerFlows.FD()))
	if err != nil {
		return p, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			p.memlock, err = strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return p, fmt.Errorf("parse memlock: %w", err)
			}
		}
	}
	if p.memlock == 0 {
		return p, errors.New("no memlock in the map's fdinfo")
	}
	mi, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(mi), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && (fields[0] == "Slab:" || fields[0] == "Percpu:") {
			v, _ := strconv.ParseInt(fields[1], 10, 64)
			p.slab += v
		}
	}
	return p, nil
}

// timeWalk times one ForEachPeerFlow over the whole map, as a takeover's
// tickle and every snapshot's sweep do.
func timeWalk(m *dataplane.Maps) (time.Duration, int, error) {
	n := 0
	start := time.Now()
	err := m.ForEachPeerFlow(func(dataplane.PeerFlow) bool { n++; return true })
	return time.Since(start), n, err
}

// ---- report ----

func quantiles(xs []float64) (p50, p99, mx float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	return percentile(xs, 50), percentile(xs, 99), slices.Max(xs)
}

func ms(sec float64) string {
	if math.IsNaN(sec) {
		return "-"
	}
	if sec < 0.01 {
		return fmt.Sprintf("%.2f ms", sec*1000)
	}
	return fmt.Sprintf("%.1f ms", sec*1000)
}

// wireBytes is what a stream's segments take on an Ethernet link:
// payload + 66 bytes per segment (Ethernet 14, IPv4 20, TCP 20 + 12 of
// timestamps), both directions.
func wireBytes(d streamDelta) uint64 { return d.payload + 66*(d.segsOut+d.segsBack) }

func (b *replicationBench) report(out io.Writer, lr *replLabResult, ip *replInProcResult) error {
	if lr != nil {
		fmt.Fprintf(out, "\nreplication in a 3-node lab cluster (fsha defaults: deltas flushed every 10 ms, AES-GCM streams):\n")
		fmt.Fprintf(out, "%d SMB connections to a VIP opened one at a time; open = the client's first request written (the\n", lr.conns)
		fmt.Fprintf(out, "server's quick ACK of it creates the flow) -> the connection is in the other node's peer_flows map\n")
		fmt.Fprintf(out, "(polled every 0.2 ms); close = the client's RST sent -> gone from it. Bytes: the owner's\n")
		fmt.Fprintf(out, "replication socket to that node (tcp_info)\n\n")
		t := &table{header: []string{"to node", "event", "n", "p50", "p99", "max"}}
		for i, p := range lr.peers {
			for _, ev := range []struct {
				name string
				xs   []float64
			}{{"open", lr.open[i]}, {"close", lr.close[i]}} {
				p50, p99, mx := quantiles(ev.xs)
				t.add(p, ev.name, fmt.Sprint(len(ev.xs)), ms(p50), ms(p99), ms(mx))
			}
		}
		if err := t.write(out); err != nil {
			return err
		}
		fmt.Fprintln(out)
		bt := &table{header: []string{"to node", "TCP payload / conn", "segments / conn (data + ACKs)", "on the wire / conn"}}
		for i, p := range lr.peers {
			s := lr.streams[i]
			n := float64(lr.conns)
			bt.add(p, fmt.Sprintf("%.0f B", float64(s.payload)/n), fmt.Sprintf("%.2f + %.2f", float64(s.segsOut)/n, float64(s.segsBack)/n),
				fmt.Sprintf("%.0f B", float64(wireBytes(s))/n))
		}
		if err := bt.write(out); err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "\nreplication in process: 3 replicators on 127.0.0.1-3 (one process, this machine's 2 CPUs), each\n")
	fmt.Fprintf(out, "storing into a real peer_flows map (data plane loaded unpinned); node 0 streams to nodes 1 and 2,\n")
	fmt.Fprintf(out, "encrypted. Latency = Publish -> UpsertPeerFlows/DeletePeerFlows returned on the peer; both peers.\n\n")
	t := &table{header: []string{"case", "n (2 peers)", "p50", "p99", "max", "payload / conn / peer", "on the wire / conn / peer"}}
	perConn := func(payload uint64, d streamDelta, n int) (string, string) {
		return fmt.Sprintf("%.1f B (%.1f B framed)", float64(payload)/float64(n), float64(d.payload)/float64(n)),
			fmt.Sprintf("%.1f B", float64(wireBytes(d))/float64(n))
	}
	p50, p99, mx := quantiles(ip.openLat)
	pl, wire := perConn(ip.deltaBytes, ip.deltaWire, ip.conns)
	t.add(fmt.Sprintf("opens, one every %v (exp.)", b.gap), fmt.Sprint(len(ip.openLat)), ms(p50), ms(p99), ms(mx), pl+", open + close", wire)
	p50, p99, mx = quantiles(ip.closeLat)
	t.add(fmt.Sprintf("closes, one every %v (exp.)", b.gap), fmt.Sprint(len(ip.closeLat)), ms(p50), ms(p99), ms(mx), "", "")
	p50, p99, mx = quantiles(ip.stormLat)
	pl, wire = perConn(ip.stormBytes, ip.stormWire, ip.storm)
	t.add(fmt.Sprintf("storm: %s opens at once (all in %v)", thousands(ip.storm), ip.stormTook.Round(time.Millisecond)), fmt.Sprint(len(ip.stormLat)),
		ms(p50), ms(p99), ms(mx), pl+", open only", wire)
	if err := t.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nsnapshots (a new stream starts with a full copy of the node's flows, read from its flows map):\n")
	fmt.Fprintf(out, "took = SetPeers -> both peers applied it, their stale-entry sweep included\n\n")
	st := &table{header: []string{"flows", "took", "records/s", "peer's sweep", "payload / flow / peer", "on the wire / peer", "resyncs", "store errors"}}
	for _, s := range ip.snaps {
		st.add(thousands(s.flows), s.took.Round(time.Millisecond).String(), thousands(int(float64(s.flows)/s.took.Seconds())),
			s.sweep.Round(time.Millisecond).String(), fmt.Sprintf("%.1f B", float64(s.bytes)/float64(s.flows)),
			fmt.Sprintf("%.1f MB", float64(wireBytes(s.wire))/1e6), fmt.Sprint(s.resyncs), fmt.Sprint(s.storeErrors))
	}
	if err := st.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\npeer_flows map memory (hash, BPF_F_NO_PREALLOC, max_entries %s as the daemon loads it):\n", thousands(dataplane.DefaultPeerFlowsMax))
	fmt.Fprintf(out, "memlock = the kernel's own account (/proc/self/fdinfo, bpftool's bytes_memlock); slab = /proc/meminfo\n")
	fmt.Fprintf(out, "Slab + Percpu of the whole machine since the maps were emptied (noisy: other work, and the slab\n")
	fmt.Fprintf(out, "pages the storm's deleted entries left behind are reused first)\n\n")
	mt := &table{header: []string{"entries", "memlock (one map)", "per entry above empty", "slab delta (both peers' maps)", "per entry"}}
	base := ip.mem[0]
	for _, m := range ip.mem {
		per, sper := "-", "-"
		if m.entries > 0 {
			per = fmt.Sprintf("%.1f B", float64(m.memlock-base.memlock)/float64(m.entries))
			sper = fmt.Sprintf("%.1f B", float64(m.slab-base.slab)*1024/float64(m.entries*m.maps))
		}
		mt.add(thousands(m.entries), fmt.Sprintf("%.1f MB", float64(m.memlock)/1e6), per,
			fmt.Sprintf("%.1f MB", float64(m.slab-base.slab)/1e3), sper)
	}
	if err := mt.write(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\none walk of the peer map (ForEachPeerFlow, as a takeover's tickle and a snapshot's sweep read it):\n")
	fmt.Fprintf(out, "empty %v, %s entries %v\n", ip.walkEmpty.Round(time.Microsecond), thousands(ip.walkFullN), ip.walkFull.Round(time.Millisecond))
	if p := ip.parts; p != nil {
		fmt.Fprintf(out, "\nwhere a snapshot's time goes: its steps one after the other on one thread, %s flows\n\n", thousands(p.n))
		pt := &table{header: []string{"step", "time", "ns / flow"}}
		for _, st := range []struct {
			name string
			d    time.Duration
		}{
			{"sender: read the flows map (ForEachFlow)", p.read},
			{"sender: encode (AppendMessage)", p.encode},
			{"sender: seal (AES-256-GCM)", p.seal},
			{"peer: open (AES-256-GCM)", p.open},
			{"peer: decode (DecodeMessage)", p.decode},
			{"peer: store as new entries (UpsertPeerFlows)", p.apply},
			{"peer: sweep, one walk of the map", ip.walkFull},
		} {
			pt.add(st.name, st.d.Round(time.Millisecond).String(), fmt.Sprintf("%.0f", float64(st.d.Nanoseconds())/float64(p.n)))
		}
		return pt.write(out)
	}
	return nil
}
