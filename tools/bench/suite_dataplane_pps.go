package main

// Part 2 of suite "dataplane": packets per second through a veth pair.
//
// The sender is an XDP program run with BPF_PROG_RUN in live-frame mode
// (BPF_F_TEST_XDP_LIVE_FRAMES) on a's veth end: every frame it returns
// XDP_TX goes out of a straight into b's receive queue, far faster than a
// userspace sender (this kernel has no pktgen). The kernel sends in
// batches of 64 frames and, at the end of each batch, runs b's NAPI poll
// on the same CPU: XDP (the mode's program), GRO, IP input and a routing
// drop (the destination is not local and forwarding is off). One pinned
// CPU thus does all the work, and the packets b receives per CPU-second of
// the sending thread give 1 / (send + receive cost); the modes differ only
// on the receive side.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/fsha/fsha/dataplane"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ppsMode is one configuration of the receiving side and the traffic.
type ppsMode struct {
	name string
	// xdp is attached to b's veth end (nil: none); fsha also gets its TCX
	// egress program attached.
	xdp  *ebpf.Program
	fsha bool
	// pkt is sent; the sender rewrites the client of each copy to
	// benchClient(f), f the flow of order (flowmix.go) over flows flows:
	// in turn f = 0, 1, ... flows-1, 0, ...
	pkt   []byte
	flows int
	order flowOrder
	// tracked: every packet must be a tracked packet of an existing flow
	tracked bool
	// base is the mode without fsha this one compares with (nil: none).
	base *ppsMode
	// dp is the data plane whose programs run (nil: the suite's first);
	// steer, when set, is the path b steers every received frame back by
	// (suite_dataplane_ppssteer.go)
	dp    *dataplane.Unpinned
	steer dataplane.SteerMode
	// per round, for steer modes: the frames that came back to a per
	// frame b received
	back []float64
	// per round: packets b received per second of wall time, the share
	// of the CPU the sending thread (which also runs b's receive path) got,
	// and that thread's CPU time per packet received
	pps, cpuShare, nsPerPkt []float64
	// over all rounds, fsha modes: how b's fsha counted what it saw
	// (ingress), and the frames b received, sender start to stop
	seen     dataplane.DirectionCounters
	received uint64
}

// xdpMd is struct xdp_md, the context of a live-frame run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

func (b *dataplaneBench) vethPPS(ctx context.Context, log *zap.Logger, out io.Writer, u *dataplane.Unpinned, pair *vethPair, mix *flowMix, n4 int) error {
	// NAPI on b is what lets a's XDP_TX frames in when no XDP program is
	// attached there: GRO turns it on. It stays on in every mode.
	if err := pair.exec(sideB, "ethtool", "-K", pair.ifName[sideB], "gro", "on"); err != nil {
		return err
	}

	state, err := newGenState("bench_sender")
	if err != nil {
		return err
	}
	defer state.Close()
	sender, err := senderProgram(state, mix)
	if err != nil {
		return err
	}
	defer sender.Close()
	// Attached, the sender stays in the kernel's XDP dispatcher instead of
	// being added and removed (with an RCU grace period) on every run. It
	// sees nothing on a: with IPv6 off, b never sends anything.
	senderLink, err := pair.attachXDP(sideA, sender)
	if err != nil {
		return err
	}
	defer senderLink.Close()
	xdpEmpty, err := emptyProgram(ebpf.XDP, 2 /* XDP_PASS */)
	if err != nil {
		return err
	}
	defer xdpEmpty.Close()

	vip := netip.AddrPortFrom(benchVIP4, trackedPort)
	tracked, err := segment{src: benchClient(false, 0), dst: vip, ack: true, payload: payloadLen, ipID: senderIPID}.build()
	if err != nil {
		return err
	}
	other, err := segment{src: benchClient(false, 0), dst: netip.AddrPortFrom(benchOther4, trackedPort),
		ack: true, payload: payloadLen, ipID: senderIPID}.build()
	if err != nil {
		return err
	}
	// Packets from n4 different clients may cost the kernel more than
	// one client's (GRO, caches) with or without fsha: they get their own
	// baseline.
	none := &ppsMode{name: "no XDP program, 1 client", pkt: tracked, flows: 1}
	noneMany := &ppsMode{name: "no XDP program, " + thousands(n4) + " clients in turn", pkt: tracked, flows: n4}
	modes := []*ppsMode{
		none,
		{name: "empty XDP program, 1 client", xdp: xdpEmpty, pkt: tracked, flows: 1, base: none},
		{name: "fsha, non-VIP traffic, 1 client", xdp: u.XDP, fsha: true, pkt: other, flows: 1, base: none},
		{name: "fsha, tracked, 1 flow", xdp: u.XDP, fsha: true, pkt: tracked, flows: 1, tracked: true, base: none},
		noneMany,
		{name: "fsha, tracked, " + thousands(n4) + " flows in turn", xdp: u.XDP, fsha: true, pkt: tracked, flows: n4, tracked: true, base: noneMany},
	}
	if b.flowMix {
		// Each order gets a baseline of its own: the sender's work
		// differs a little between them.
		for _, o := range []flowOrder{orderRandom, orderZipf} {
			base := &ppsMode{name: "no XDP program, " + thousands(n4) + " clients, " + orderName(o), pkt: tracked, flows: n4, order: o}
			modes = append(modes, base, &ppsMode{name: "fsha, tracked, " + thousands(n4) + " flows, " + orderName(o),
				xdp: u.XDP, fsha: true, pkt: tracked, flows: n4, order: o, tracked: true, base: base})
		}
	}
	if b.steer {
		us, err := b.loadPPSSteer()
		if err != nil {
			return err
		}
		defer us.Close()
		modes = append(modes,
			&ppsMode{name: "fsha, steered back by XDP_TX (xdp path)", xdp: us.XDP, fsha: true, dp: us, steer: dataplane.SteerXDP, pkt: tracked, flows: 1, base: none},
			&ppsMode{name: "fsha, steered back by TC redirect (tc path)", xdp: us.XDP, fsha: true, dp: us, steer: dataplane.SteerTC, pkt: tracked, flows: 1, base: none})
	}
	log.Info("veth pps", zap.Int("modes", len(modes)), zap.Int("rounds", b.ppsRounds),
		zap.Duration("duration", b.ppsDuration), zap.Int("cpu", b.cpu))
	before, err := u.ReadCounters()
	if err != nil {
		return err
	}
	for r := range b.ppsRounds {
		for _, m := range modes {
			if err := ctx.Err(); err != nil {
				return err
			}
			res, err := b.measurePPS(ctx, pair, u, m, sender, state, mix)
			if err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
			m.seen = combineCounters(m.seen, res.seen, func(a, b uint64) uint64 { return a + b })
			m.received += res.received
			m.pps = append(m.pps, res.pps)
			m.cpuShare = append(m.cpuShare, res.cpuShare)
			m.nsPerPkt = append(m.nsPerPkt, res.nsPerPkt)
			if m.steer != "" {
				m.back = append(m.back, res.back)
			}
			log.Debug("pps round", zap.Int("round", r), zap.String("mode", m.name), zap.Float64("pps", res.pps),
				zap.Float64("cpu_share", res.cpuShare), zap.Float64("ns_per_pkt", res.nsPerPkt))
		}
	}
	after, err := u.ReadCounters()
	if err != nil {
		return err
	}
	// fsha saw the traffic it was meant to: tracked packets were tracked.
	if after.Ingress.Tracked-before.Ingress.Tracked == 0 || after.Ingress.Other-before.Ingress.Other == 0 {
		return fmt.Errorf("fsha counted %d tracked and %d other packets on the veth, want both > 0",
			after.Ingress.Tracked-before.Ingress.Tracked, after.Ingress.Other-before.Ingress.Other)
	}
	if n := after.Ingress.Untracked - before.Ingress.Untracked; n != 0 {
		return fmt.Errorf("%d packets of the tracked modes found no flow: the sender and the flows disagree", n)
	}
	// Mode by mode: every packet of a tracked mode was a tracked packet of
	// an existing flow (no other outcome, no flow created).
	var checks []string
	for _, m := range modes {
		if !m.tracked {
			continue
		}
		s := m.seen
		if s.Tracked == 0 || s.Tracked != s.Packets || s.Created != 0 || s.Closed != 0 || s.Evicted != 0 {
			return fmt.Errorf("%s: fsha counted %+v over the rounds, want every packet tracked and no flow created", m.name, s)
		}
		checks = append(checks, fmt.Sprintf("%s: %s tracked of %s b received (%.2f%%), 0 untracked, 0 created",
			m.name, thousands(int(s.Tracked)), thousands(int(m.received)), float64(s.Tracked)/float64(m.received)*100))
	}

	t := &table{header: []string{"receiver (veth b)", "pps", "CPU", "pps per CPU", "spread", "ns/pkt", "vs no program"}}
	for _, m := range modes {
		ns := median(m.nsPerPkt)
		vs := "baseline"
		if m.base != nil {
			baseNS := median(m.base.nsPerPkt)
			vs = fmt.Sprintf("%+.0f ns (x%.2f pps)", ns-baseNS, baseNS/ns)
			if m.steer != "" {
				// the thread's time is not the whole cost (see the legend)
				vs = fmt.Sprintf("x%.2f pps (wall)", median(m.pps)/median(m.base.pps))
			}
		}
		t.add(m.name, thousands(int(median(m.pps))), fmt.Sprintf("%.0f%%", median(m.cpuShare)*100),
			thousands(int(1e9/ns)), fmt.Sprintf("%.0f%%", spread(m.nsPerPkt)), fmt.Sprintf("%.0f", ns), vs)
	}
	fmt.Fprintf(out, "\nveth pair, %d-byte TCP segments, XDP live-frame sender and b's receive path (NAPI: XDP, GRO,\n", len(tracked))
	fmt.Fprintf(out, "IP, routing drop) on one thread pinned to CPU %d; %s per round, median of %d rounds.\n",
		b.cpu, seconds(b.ppsDuration), b.ppsRounds)
	fmt.Fprintf(out, "pps = b received per second; CPU = share of the CPU the thread got; pps per CPU and ns/pkt =\n")
	fmt.Fprintf(out, "packets per CPU-second of the thread, send + receive; spread = (max-min)/median of ns/pkt\n")
	if b.flowMix {
		fmt.Fprintf(out, "clients in turn = 0, 1, 2, ...; random order = a full-period permutation of the %s flows, each\n", thousands(n4))
		fmt.Fprintf(out, "once per period; Zipf = a table of %s flows drawn with P(rank k) ~ k^-%g, ranks given to flows\n",
			thousands(zipfEntries), zipfS)
		fmt.Fprintf(out, "at random (the top 1%% of flows get %.1f%% of its packets; it names %s flows)\n",
			mix.zipfTop1*100, thousands(mix.zipfUsed))
	}
	if b.steer {
		fmt.Fprintf(out, "steered back = b's fsha (steering on, the flow a peer flow of node %d) sends every frame back\n", ownerPNN)
		fmt.Fprintf(out, "out of b to that node's MAC: by XDP_TX, or passed up and redirected by TC ingress; a's sender\n")
		fmt.Fprintf(out, "counts and drops what comes back (median share of b's received frames, per mode:")
		for _, m := range modes {
			if m.steer != "" {
				fmt.Fprintf(out, " %s %.1f%%", m.steer, median(m.back)*100)
			}
		}
		fmt.Fprintf(out, "). Their CPU, pps per CPU and ns/pkt are the sending thread's only: a's\n")
		fmt.Fprintf(out, "receive of the returning frames runs in a's NAPI outside it (on the xdp path the thread\n")
		fmt.Fprintf(out, "waits for the page pool meanwhile); compare their pps, not their ns/pkt\n")
	}
	fmt.Fprintln(out)
	if err := t.write(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nfsha's counters over every round of each tracked mode (the packets its XDP program saw):\n")
	for _, c := range checks {
		fmt.Fprintf(out, "  %s\n", c)
	}
	return nil
}

// senderIPID is the IPv4 identification the sender starts from: it lowers
// it by as much as it raises the source address, which keeps the header
// checksum valid (see senderProgram).
const senderIPID = 0x1000

// senderProgram returns an XDP program that sends every frame back out
// (XDP_TX) after writing a client into it: the flow of the order state[0]
// says (mix.rewrite). IPv4 frames with a 20-byte IP header only.
func senderProgram(state *ebpf.Map, mix *flowMix) (*ebpf.Program, error) {
	insns := append(steeredBack(state), asm.Mov.Reg(asm.R6, asm.R1).WithSymbol("send"))
	insns = append(insns, mix.rewrite(state, xdpToServer, "tx")...)
	insns = append(insns,
		asm.Mov.Imm(asm.R0, 3).WithSymbol("tx"), // XDP_TX
		asm.Return(),
	)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_sender", Type: ebpf.XDP, Instructions: insns, License: "GPL"})
	if err != nil {
		return nil, fmt.Errorf("load sender program: %w", err)
	}
	return p, nil
}

type ppsResult struct {
	pps, cpuShare, nsPerPkt float64
	back                    float64 // frames back at a per frame b received
	// fsha modes: how b's fsha counted what it saw (ingress), and the
	// frames b received, from the sender's start to its stop
	seen     dataplane.DirectionCounters
	received uint64
}

// measurePPS runs one mode for one round.
func (b *dataplaneBench) measurePPS(ctx context.Context, pair *vethPair, u *dataplane.Unpinned,
	m *ppsMode, sender *ebpf.Program, state *ebpf.Map, mix *flowMix) (res ppsResult, err error) {
	var links []link.Link
	defer func() {
		for _, l := range links {
			_ = l.Close()
		}
	}()
	if m.xdp != nil {
		l, err := pair.attachXDP(sideB, m.xdp)
		if err != nil {
			return ppsResult{}, err
		}
		links = append(links, l)
	}
	dp := u
	if m.dp != nil {
		dp = m.dp
	}
	if m.fsha {
		l, err := pair.attachTCXEgress(sideB, dp.TCEgress)
		if err != nil {
			return ppsResult{}, err
		}
		links = append(links, l)
	}
	if m.steer != "" {
		if err := dp.SetSteerPath(pair.ifIdx[sideB], m.steer); err != nil {
			return ppsResult{}, err
		}
		if m.steer == dataplane.SteerTC {
			l, err := pair.attachTCXIngress(sideB, dp.TCIngress)
			if err != nil {
				return ppsResult{}, err
			}
			links = append(links, l)
		}
	}
	if err := mix.setOrder(state, m.order, m.flows); err != nil {
		return ppsResult{}, err
	}
	// What fsha and b saw from the sender's start to its stop (the
	// deferred function below waits for the sender first).
	before, err := dp.ReadCounters()
	if err != nil {
		return ppsResult{}, err
	}
	rxStart, err := pair.rxPackets(sideB)
	if err != nil {
		return ppsResult{}, err
	}
	defer func() {
		if err != nil || !m.fsha {
			return
		}
		after, cerr := dp.ReadCounters()
		rxEnd, rerr := pair.rxPackets(sideB)
		if err = errors.Join(cerr, rerr); err != nil {
			return
		}
		res.seen = combineCounters(after.Ingress, before.Ingress, func(a, b uint64) uint64 { return a - b })
		res.received = rxEnd - rxStart
	}()

	stop := make(chan struct{})
	tid := make(chan int, 1)
	var (
		wg        sync.WaitGroup
		senderErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		senderErr = inNetns(pair.ns[sideA], func() error {
			return b.sendLoop(sender, m.pkt, pair.ifIdx[sideA], tid, stop)
		})
	}()
	defer func() {
		close(stop)
		wg.Wait()
		err = errors.Join(err, senderErr)
	}()
	var thread int
	select {
	case thread = <-tid:
	case <-time.After(5 * time.Second):
		return ppsResult{}, errors.New("sender did not start")
	}

	// Warm up, then count what b received over the measurement window,
	// and the CPU time the sending thread used for it.
	select {
	case <-time.After(300 * time.Millisecond):
	case <-ctx.Done():
		return ppsResult{}, ctx.Err()
	}
	rx0, err := pair.rxPackets(sideB)
	if err != nil {
		return ppsResult{}, err
	}
	var back0, back1 [2]uint64 // the count, then padding
	if err := state.Lookup(uint32(1), &back0); err != nil {
		return ppsResult{}, fmt.Errorf("read the sender's count: %w", err)
	}
	cpu0, err := threadCPUTime(thread)
	if err != nil {
		return ppsResult{}, err
	}
	t0 := time.Now()
	select {
	case <-time.After(b.ppsDuration):
	case <-ctx.Done():
		return ppsResult{}, ctx.Err()
	}
	rx1, err := pair.rxPackets(sideB)
	if err != nil {
		return ppsResult{}, err
	}
	if err := state.Lookup(uint32(1), &back1); err != nil {
		return ppsResult{}, fmt.Errorf("read the sender's count: %w", err)
	}
	cpu1, err := threadCPUTime(thread)
	if err != nil {
		return ppsResult{}, err
	}
	elapsed := time.Since(t0)
	if rx1 <= rx0 || cpu1 <= cpu0 {
		return ppsResult{}, fmt.Errorf("%s received no packets", pair.ifName[sideB])
	}
	pkts := float64(rx1 - rx0)
	return ppsResult{
		pps:      pkts / elapsed.Seconds(),
		cpuShare: float64(cpu1-cpu0) / float64(elapsed),
		nsPerPkt: float64(cpu1-cpu0) / pkts,
		back:     float64(back1[0]-back0[0]) / pkts,
	}, nil
}

// sendLoop runs the sender program in live-frame mode on ifindex, in
// batches, until stop is closed. It must run on a locked thread in that
// interface's namespace; it sends that thread's id on tid.
func (b *dataplaneBench) sendLoop(sender *ebpf.Program, pkt []byte, ifindex int, tid chan<- int, stop <-chan struct{}) error {
	if err := b.pinThread(); err != nil {
		return err
	}
	tid <- unix.Gettid()
	opts := &ebpf.RunOptions{
		Data:    pkt,
		Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: uint32(ifindex)},
		Repeat:  1 << 16,
		Flags:   unix.BPF_F_TEST_XDP_LIVE_FRAMES,
	}
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		start := time.Now()
		if _, err := sender.Run(opts); err != nil {
			return fmt.Errorf("live-frame sender: %w", err)
		}
		// As in part 1: stay clear of RT throttling.
		threadSleep(time.Since(start)/8 + time.Millisecond)
	}
}

// rxPackets returns the packets side's veth end received.
func (p *vethPair) rxPackets(side int) (uint64, error) {
	l, err := p.nl[side].LinkByName(p.ifName[side])
	if err != nil {
		return 0, fmt.Errorf("read %s statistics: %w", p.ifName[side], err)
	}
	return l.Attrs().Statistics.RxPackets, nil
}

// threadCPUTime returns the CPU time thread tid of this process has used,
// from /proc/self/task/<tid>/schedstat (its first field, in nanoseconds).
func threadCPUTime(tid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		return 0, fmt.Errorf("read cpu time: %w", err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("read cpu time of thread %d: empty schedstat", tid)
	}
	ns, err := strconv.ParseInt(f[0], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read cpu time of thread %d: %w", tid, err)
	}
	return time.Duration(ns), nil
}
