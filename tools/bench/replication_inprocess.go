package main

// Part 2 of the replication suite, in process: three replicators on
// loopback, node 0 publishing opens, closes, a storm and full snapshots to
// the other two; what it measures (replInProcResult) and how it runs.

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

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
	entries  int
	note     string // what state the map is in, beside its entries
	capacity uint32 // of the map in the slot
	maps     int    // peer maps holding them (the slab delta is theirs)
	memlock  uint64 // /proc/self/fdinfo of the array and of the map in its slot
	slab     int64  // /proc/meminfo Slab + Percpu, kB
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
	fresh, err := peerMapMemory(ctx, dsts[0].dp, 0, "as loaded")
	if err != nil {
		return nil, err
	}
	res.mem = append(res.mem, fresh)

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
	emptyMem, err := peerMapMemory(ctx, dsts[0].dp, 0, "emptied after the storm")
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
		m, err := peerMapMemory(ctx, dsts[0].dp, n, "")
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
