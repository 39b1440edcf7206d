package main

// The scale suite's measured part: N memberlist instances of
// control/membership in this process, on 127.0.80.1 and up, with fsha's
// gossip timings and an AES-GCM key, counted by the gossip transport
// (membership.Traffic).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/membership"
)

// gossipDelegate stands in for control/node's: the same metadata (flags,
// configuration hash, MAC; no VIP bitmaps) and push/pull state (the
// pins, none here: 4 bytes), and it counts what it receives.
type gossipDelegate struct {
	meta membership.Meta
	msgs atomic.Int64
}

func (d *gossipDelegate) LocalMeta() membership.Meta { return d.meta }
func (d *gossipDelegate) NotifyMsg([]byte)           { d.msgs.Add(1) }
func (d *gossipDelegate) LocalState() []byte         { return []byte{2, 1, 0, 0} }
func (d *gossipDelegate) MergeRemoteState([]byte)    {}

// gossipCounts counts the membership's log lines that tell of a member
// suspected or lost (memberlist's "Suspect ..." and the membership's
// "node left or died").
type gossipCounts struct {
	suspects, lost atomic.Int64
}

// logger discards the instances' logs but counts those lines.
func (g *gossipCounts) logger() *zap.Logger {
	core := zapcore.NewCore(zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel)
	return zap.New(zapcore.RegisterHooks(core, func(e zapcore.Entry) error {
		switch {
		case strings.Contains(e.Message, "Suspect"):
			g.suspects.Add(1)
		case strings.Contains(e.Message, "left or died"):
			g.lost.Add(1)
		}
		return nil
	}))
}

// gossipCluster is n instances on 127.0.80.1..n, one port.
type gossipCluster struct {
	members []*membership.Membership
	dels    []*gossipDelegate
	addrs   []netip.Addr
	counts  gossipCounts
}

func gossipAddr(i int) netip.Addr { return netip.AddrFrom4([4]byte{127, 0, 80, byte(1 + i)}) }

// freeGossipPort finds a port free on the first address, TCP and UDP.
func freeGossipPort() (int, error) {
	l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(gossipAddr(0), 0)))
	if err != nil {
		return 0, err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port, nil
}

func startGossip(n int, t membership.Timing) (_ *gossipCluster, err error) {
	port, err := freeGossipPort()
	if err != nil {
		return nil, fmt.Errorf("find a free port: %w", err)
	}
	key := membership.KeyFromSecret([]byte("fsha bench scale"))
	c := &gossipCluster{}
	defer func() {
		if err != nil {
			c.stop()
		}
	}()
	for i := range n {
		d := &gossipDelegate{meta: membership.Meta{Flags: membership.FlagHealthy | membership.FlagQuorum,
			ConfigHash: 0x5ca1ab1e, MAC: [6]byte{2, 0, 0, 0, 0, byte(i)}}}
		m, err := membership.New(c.counts.logger(), membership.Config{Addr: gossipAddr(i), Port: port, Key: key, Timing: t}, d)
		if err != nil {
			return nil, err
		}
		c.members, c.dels, c.addrs = append(c.members, m), append(c.dels, d), append(c.addrs, gossipAddr(i))
	}
	// every node joins every other, as fsha up's rejoin loop does with
	// the members it misses
	for i, m := range c.members {
		var others []netip.Addr
		for j, a := range c.addrs {
			if j != i {
				others = append(others, a)
			}
		}
		if _, err := m.Join(others); err != nil && i == 0 {
			return nil, fmt.Errorf("join: %w", err)
		}
	}
	return c, nil
}

// alive is the fewest alive members any instance sees (itself included).
func (c *gossipCluster) alive() int {
	least := len(c.members)
	for _, m := range c.members {
		k := 0
		for _, mem := range m.Members() {
			if mem.State == membership.Alive {
				k++
			}
		}
		least = min(least, k)
	}
	return least
}

func (c *gossipCluster) traffic() []membership.Traffic {
	out := make([]membership.Traffic, len(c.members))
	for i, m := range c.members {
		out[i] = m.Traffic()
	}
	return out
}

func (c *gossipCluster) stop() {
	var wg sync.WaitGroup
	for _, m := range c.members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = m.Shutdown()
		}()
	}
	wg.Wait()
}

// waitUntil polls cond every 50 ms until it holds or bound passes.
func waitUntil(ctx context.Context, bound time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// processCPU is this process's user + system CPU time.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// gossipCell is one timing and size, counted over a window.
type gossipCell struct {
	timing   string
	t        membership.Timing
	nodes    int
	joined   time.Duration // start -> every instance sees every other alive
	window   time.Duration
	traffic  []membership.Traffic // per instance, over the window
	suspects int64                // during the window
	lost     int64
	aliveEnd int // the fewest alive members an instance saw at the end
	err      error
}

// gossipRun is one timing profile: every size at once.
type gossipRun struct {
	timing string
	cells  []*gossipCell
	warm   time.Duration // the start -> the window
	window time.Duration
	cpu    time.Duration // this process over the window, every instance
}

// measureGossip runs, per timing profile, a cluster of every size at
// once (each on its own port), and counts them over the same window.
// memberlist's first push/pull comes between one and two intervals after
// an instance starts, then one every interval: the window begins two
// intervals after the start (and gossipSettle after every cluster saw all
// its members alive) and lasts a whole number of intervals, so that each
// instance starts exactly window/interval state exchanges in it.
func (b *scaleBench) measureGossip(ctx context.Context, log *zap.Logger) ([]*gossipRun, error) {
	var runs []*gossipRun
	for _, name := range b.gossipSet {
		r, err := b.gossipProfile(ctx, name)
		if err != nil {
			return runs, err
		}
		for _, g := range r.cells {
			log.Info("gossip measured", zap.String("timing", name), zap.Int("nodes", g.nodes), zap.Duration("window", g.window), zap.Error(g.err))
		}
		runs = append(runs, r)
	}
	return runs, nil
}

// gossipSpan is when the window starts (after the instances' start, at
// least) and how long it lasts: with whole, two push/pull intervals after
// the start and whole intervals long.
func gossipSpan(t membership.Timing, window, settle time.Duration, whole bool) (warm, span time.Duration) {
	if !whole {
		return settle, window
	}
	return max(settle, 2*t.PushPullInterval), (window + t.PushPullInterval - 1) / t.PushPullInterval * t.PushPullInterval
}

func (b *scaleBench) gossipProfile(ctx context.Context, name string) (*gossipRun, error) {
	t := gossipTimings[name]
	r := &gossipRun{timing: name}
	r.warm, r.window = gossipSpan(t, b.gossipFor, b.gossipSettle, b.gossipWhole)
	start := time.Now()
	var clusters []*gossipCluster
	defer func() {
		for _, c := range clusters {
			if c != nil {
				c.stop()
			}
		}
	}()
	for _, n := range b.nodes {
		g := &gossipCell{timing: name, t: t, nodes: n}
		r.cells = append(r.cells, g)
		c, err := startGossip(n, t)
		g.err = err
		clusters = append(clusters, c)
	}
	joined := time.Now()
	for i, g := range r.cells {
		if g.err != nil {
			continue
		}
		c := clusters[i]
		if !waitUntil(ctx, 30*time.Second-time.Since(start), func() bool { return c.alive() == g.nodes }) {
			g.err = fmt.Errorf("30 s after the start an instance sees %d of %d members alive", c.alive(), g.nodes)
			continue
		}
		g.joined = time.Since(start)
		joined = time.Now()
	}
	if err := sleepCtx(ctx, max(r.warm-time.Since(start), b.gossipSettle-time.Since(joined))); err != nil {
		return r, err
	}
	r.warm = time.Since(start)
	before := make([][]membership.Traffic, len(clusters))
	sus := make([][2]int64, len(clusters))
	for i, c := range clusters {
		if r.cells[i].err == nil {
			before[i] = c.traffic()
			sus[i] = [2]int64{c.counts.suspects.Load(), c.counts.lost.Load()}
		}
	}
	cpu, t0 := processCPU(), time.Now()
	if err := sleepCtx(ctx, r.window); err != nil {
		return r, err
	}
	r.window, r.cpu = time.Since(t0), processCPU()-cpu
	for i, c := range clusters {
		g := r.cells[i]
		if g.err != nil {
			continue
		}
		after := c.traffic()
		g.window = r.window
		g.suspects, g.lost = c.counts.suspects.Load()-sus[i][0], c.counts.lost.Load()-sus[i][1]
		g.aliveEnd = c.alive()
		for k := range after {
			g.traffic = append(g.traffic, subTraffic(after[k], before[i][k]))
		}
	}
	return r, nil
}

func subTraffic(a, b membership.Traffic) membership.Traffic {
	return membership.Traffic{
		PacketsSent: a.PacketsSent - b.PacketsSent, PacketsReceived: a.PacketsReceived - b.PacketsReceived,
		PacketBytesSent: a.PacketBytesSent - b.PacketBytesSent, PacketBytesReceived: a.PacketBytesReceived - b.PacketBytesReceived,
		StreamsOpened: a.StreamsOpened - b.StreamsOpened, StreamsAccepted: a.StreamsAccepted - b.StreamsAccepted,
		StreamBytesSent: a.StreamBytesSent - b.StreamBytesSent, StreamBytesReceived: a.StreamBytesReceived - b.StreamBytesReceived,
	}
}

// envelopeResult is what memberlist adds to each ownership message
// (control/membership SendTo) between two members, measured.
type envelopeResult struct {
	msgs, size int
	perMsg     float64 // bytes of UDP payload beyond the message
}

// measureEnvelope sends ownership-sized messages from one member to
// another with probing, gossip and push/pull out of the way (hour-long
// intervals), and counts the datagrams' bytes beyond the messages: the
// user-message type, the CRC memberlist adds between members of protocol
// 5, and AES-GCM's version, nonce and tag.
func measureEnvelope(ctx context.Context, log *zap.Logger) (envelopeResult, error) {
	quiet := membership.Timing{ProbeInterval: time.Hour, ProbeTimeout: time.Second, SuspicionMult: 4,
		SuspicionMaxTimeoutMult: 6, GossipInterval: time.Hour, PushPullInterval: time.Hour}
	c, err := startGossip(2, quiet)
	if err != nil {
		return envelopeResult{}, err
	}
	defer c.stop()
	if !waitUntil(ctx, 10*time.Second, func() bool { return c.alive() == 2 }) {
		return envelopeResult{}, errors.New("the two members do not see each other")
	}
	if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
		return envelopeResult{}, err
	}
	r := envelopeResult{msgs: 50, size: 200}
	before := c.traffic()[0]
	got := c.dels[1].msgs.Load()
	for range r.msgs {
		if err := c.members[0].SendTo(c.addrs[1], make([]byte, r.size)); err != nil {
			return r, err
		}
	}
	if !waitUntil(ctx, 5*time.Second, func() bool { return c.dels[1].msgs.Load()-got == int64(r.msgs) }) {
		return r, fmt.Errorf("%d of %d messages arrived", c.dels[1].msgs.Load()-got, r.msgs)
	}
	d := subTraffic(c.traffic()[0], before)
	if d.PacketsSent != uint64(r.msgs) {
		return r, fmt.Errorf("%d datagrams sent for %d messages: something else was sent", d.PacketsSent, r.msgs)
	}
	r.perMsg = float64(d.PacketBytesSent)/float64(r.msgs) - float64(r.size)
	log.Info("memberlist envelope", zap.Float64("bytes_per_message", r.perMsg))
	return r, nil
}
