package main

// Suite "tickle": how fast a node that took over a VIP tickles its
// clients (dataplane.Tickler), for 1,000 / 10,000 / 100,000 connections.
//
// Side a of a veth pair holds the VIP (its own address) and routes the
// client prefixes through b. Each measurement is one Tickle call with no
// repeats; "first round" is its FirstRound (resolve next hops, build,
// send). Receivers on b:
//
//   - tc drop: a counting TCX ingress program drops every frame, so the
//     time is mostly the sender's, plus veth's hand-over and b's cheapest
//     receive path (on veth it runs in the sender's softirq);
//   - XDP drop: the same in XDP, which on veth costs an skb copy per
//     frame and funnels all senders into one NAPI ring;
//   - kernel TCP: b owns the client addresses and, having no such sockets,
//     answers every tickle with a RST, which a's kernel drops: the cost
//     of both ends on the same two CPUs, as in a one-machine lab, more
//     than a real NIC and real clients would cost the sender.
//
// Every measurement checks that b got every segment, with a valid
// checksum (the counter, or TCP OutRsts and InCsumErrors).

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/fsha/fsha/dataplane"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

type tickleBench struct {
	sizes     string
	methods   string
	rounds    int
	cpu       int
	realtime  bool
	receivers string
}

func tickleSuite() *suite {
	b := &tickleBench{}
	return &suite{
		name: "tickle",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&b.sizes, "tickle-conns", "1000,10000,100000", "tickle: comma-separated connection counts")
			fs.StringVar(&b.methods, "tickle-methods", "packet,packet-qdisc,raw", "tickle: comma-separated senders: packet (the default), packet-qdisc, raw")
			fs.IntVar(&b.rounds, "tickle-rounds", 5, "tickle: measurements per case (the median is reported)")
			fs.StringVar(&b.receivers, "tickle-receivers", "tc-drop,xdp-drop,kernel-tcp", "tickle: comma-separated receivers on veth b: tc-drop, xdp-drop, kernel-tcp")
			fs.IntVar(&b.cpu, "tickle-cpu", runtime.NumCPU()-1, "tickle: CPU the sending thread is pinned to")
			fs.BoolVar(&b.realtime, "tickle-rt", true, "tickle: send as SCHED_FIFO, so that other tasks cannot preempt the sender")
		},
		run: b.run,
	}
}

var tickleMethods = map[string]dataplane.TickleMethod{
	"packet":       dataplane.TicklePacket,
	"packet-qdisc": dataplane.TicklePacketQdisc,
	"raw":          dataplane.TickleRaw,
}

// Client prefixes routed through b: 98,304 addresses, all in 198.18.0.0/15.
var tickleClientPrefixes = []netip.Prefix{
	netip.MustParsePrefix("198.19.0.0/16"),
	netip.MustParsePrefix("198.18.128.0/17"),
}

// tickleConns returns n connections to a's address, port 445, one client
// address each (then more ports on the same addresses), Seq/Ack unknown as
// for replicated connections.
func tickleConns(n int) []dataplane.Conn {
	var pool []netip.Addr
	for _, p := range tickleClientPrefixes {
		for a := p.Addr(); p.Contains(a) && len(pool) < n; a = a.Next() {
			pool = append(pool, a)
		}
	}
	conns := make([]dataplane.Conn, n)
	for i := range conns {
		conns[i] = dataplane.Conn{VIP: vethAddrA.Addr(), VIPPort: 445, Client: pool[i%len(pool)], ClientPort: uint16(40000 + i/len(pool))}
	}
	return conns
}

// Receivers on veth b.
const (
	tickleTCDrop    = "tc-drop"
	tickleXDPDrop   = "xdp-drop"
	tickleKernelTCP = "kernel-tcp"
)

type tickleCase struct {
	method   string
	receiver string
	conns    int
	first    []float64 // seconds
	cpu      []float64 // seconds of the sending thread's CPU time
}

func (b *tickleBench) run(ctx context.Context, log *zap.Logger, out io.Writer) error {
	var sizes []int
	for _, s := range strings.Split(b.sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 || n > 1_000_000 {
			return fmt.Errorf("bad -tickle-conns entry %q", s)
		}
		sizes = append(sizes, n)
	}
	var methods []string
	for _, m := range strings.Split(b.methods, ",") {
		if _, ok := tickleMethods[m]; !ok {
			return fmt.Errorf("unknown -tickle-methods entry %q", m)
		}
		if !slices.Contains(methods, m) {
			methods = append(methods, m)
		}
	}
	var receivers []string
	for _, r := range strings.Split(b.receivers, ",") {
		if r != tickleTCDrop && r != tickleXDPDrop && r != tickleKernelTCP {
			return fmt.Errorf("unknown -tickle-receivers entry %q", r)
		}
		receivers = append(receivers, r)
	}
	if b.rounds < 1 || b.rounds > 100 {
		return fmt.Errorf("-tickle-rounds %d out of 1..100", b.rounds)
	}

	pair, err := newVethPair()
	if err != nil {
		return err
	}
	defer pair.Close()
	if err := routeClientsThroughB(pair); err != nil {
		return err
	}
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Name: "tickle_rx", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create counter map: %w", err)
	}
	defer counter.Close()
	xdpDropper, err := countingDropProgram(counter, ebpf.XDP, 1 /* XDP_DROP */)
	if err != nil {
		return err
	}
	defer xdpDropper.Close()
	tcDropper, err := countingDropProgram(counter, ebpf.SchedCLS, 2 /* TC_ACT_SHOT */)
	if err != nil {
		return err
	}
	defer tcDropper.Close()

	ticklers := map[string]*dataplane.Tickler{}
	defer func() {
		for _, t := range ticklers {
			t.Close()
		}
	}()
	// The Tickler logs every call at info level: too chatty here.
	quiet := log.WithOptions(zap.IncreaseLevel(zap.WarnLevel))
	for _, m := range methods {
		err := inNetns(pair.ns[sideA], func() error {
			t, err := dataplane.NewTickler(quiet, pair.ifName[sideA], dataplane.WithTickleMethod(tickleMethods[m]))
			ticklers[m] = t
			return err
		})
		if err != nil {
			return fmt.Errorf("tickler %s: %w", m, err)
		}
	}
	var cases []*tickleCase
	for _, receiver := range receivers {
		rc, err := b.runReceiver(ctx, log, pair, receiver, sizes, methods, ticklers, counter, xdpDropper, tcDropper)
		if err != nil {
			return err
		}
		cases = append(cases, rc...)
	}

	t := &table{header: []string{"sender", "receiver (veth b)", "conns", "first round", "pps", "spread", "CPU", "ns/conn CPU"}}
	for _, c := range cases {
		med := median(c.first)
		cpu := median(c.cpu)
		t.add(tickleMethods[c.method].String(), c.receiver, thousands(c.conns),
			fmt.Sprintf("%.1f ms", med*1000), thousands(int(float64(c.conns)/med)), fmt.Sprintf("%.0f%%", spread(c.first)),
			fmt.Sprintf("%.1f ms", cpu*1000), fmt.Sprintf("%.0f", cpu*1e9/float64(c.conns)))
	}
	fmt.Fprintf(out, "\ntickle ACKs, one round, IPv4, veth pair; first round = resolve next hops + build + send\n")
	fmt.Fprintf(out, "(dataplane.TickleStats.FirstRound), median of %d, sender pinned to CPU %d (SCHED_FIFO: %v);\n", b.rounds, b.cpu, b.realtime)
	fmt.Fprintf(out, "CPU = the process's CPU time for it (with b's receive path run in the senders' softirqs); every\n")
	fmt.Fprintf(out, "segment counted at b. Rounds of %s+ frames are sent from up to %d goroutines.\n", thousands(2*dataplane.TickleWorkerFrames), dataplane.TickleMaxWorkers)
	fmt.Fprintf(out, "fsha sends with: %s (dataplane.NewTickler's default)\n\n", dataplane.TicklePacket)
	return t.write(out)
}

// attachTCXIngress attaches prog to side's veth end at TCX ingress.
func (p *vethPair) attachTCXIngress(side int, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := inNetns(p.ns[side], func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: p.ifIdx[side], Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx ingress to %s: %w", p.ifName[side], err)
	}
	return l, nil
}

// routeClientsThroughB routes the client prefixes from a through b, makes
// b own them (for the kernel TCP receiver) and fixes both neighbour
// entries.
func routeClientsThroughB(pair *vethPair) error {
	gw := vethAddrB.Addr().AsSlice()
	for _, p := range tickleClientPrefixes {
		dst := &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}
		if err := pair.nl[sideA].RouteAdd(&netlink.Route{LinkIndex: pair.ifIdx[sideA], Dst: dst, Gw: gw}); err != nil {
			return fmt.Errorf("route %s via b: %w", p, err)
		}
		lo, err := pair.nl[sideB].LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo in b: %w", err)
		}
		if err := pair.nl[sideB].LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up in b: %w", err)
		}
		err = pair.nl[sideB].RouteAdd(&netlink.Route{LinkIndex: lo.Attrs().Index, Dst: dst, Type: unix.RTN_LOCAL,
			Table: unix.RT_TABLE_LOCAL, Scope: unix.RT_SCOPE_HOST})
		if err != nil {
			return fmt.Errorf("local route %s in b: %w", p, err)
		}
	}
	for side, n := range map[int]struct {
		ip  netip.Addr
		mac net.HardwareAddr
	}{sideA: {vethAddrB.Addr(), macB}, sideB: {vethAddrA.Addr(), macA}} {
		err := pair.nl[side].NeighAdd(&netlink.Neigh{LinkIndex: pair.ifIdx[side], Family: netlink.FAMILY_V4,
			State: netlink.NUD_PERMANENT, IP: n.ip.AsSlice(), HardwareAddr: n.mac})
		if err != nil {
			return fmt.Errorf("neighbour %s: %w", n.ip, err)
		}
	}
	return nil
}

// runReceiver measures every size and method with receiver on b.
func (b *tickleBench) runReceiver(ctx context.Context, log *zap.Logger, pair *vethPair, receiver string, sizes []int,
	methods []string, ticklers map[string]*dataplane.Tickler, counter *ebpf.Map, xdpDropper, tcDropper *ebpf.Program) ([]*tickleCase, error) {
	var prog link.Link
	var err error
	switch receiver {
	case tickleXDPDrop:
		prog, err = pair.attachXDP(sideB, xdpDropper)
	case tickleTCDrop:
		prog, err = pair.attachTCXIngress(sideB, tcDropper)
	}
	if err != nil {
		return nil, err
	}
	if prog != nil {
		defer prog.Close()
	}
	var cases []*tickleCase
	for _, n := range sizes {
		conns := tickleConns(n)
		for _, m := range methods {
			c := &tickleCase{method: m, receiver: receiver, conns: n}
			cases = append(cases, c)
			for r := range b.rounds {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				var d, cpu time.Duration
				err := onThread(func() (err error) {
					if err := b.pinThread(); err != nil {
						return err
					}
					d, cpu, err = b.measure(ctx, pair, ticklers[m], conns, receiver, counter)
					return err
				})
				if err != nil {
					return nil, fmt.Errorf("%s, %s, %d conns, round %d: %w", m, receiver, n, r, err)
				}
				c.first = append(c.first, d.Seconds())
				c.cpu = append(c.cpu, cpu.Seconds())
				log.Debug("tickle round", zap.String("method", m), zap.String("receiver", receiver),
					zap.Int("conns", n), zap.Duration("first_round", d), zap.Duration("cpu", cpu))
				// Leave the CPU to others between SCHED_FIFO runs.
				time.Sleep(d/4 + 10*time.Millisecond)
			}
		}
	}
	return cases, nil
}

// pinThread pins the calling thread to b.cpu and, with -tickle-rt, makes
// it SCHED_FIFO. The thread must be one onThread throws away.
func (b *tickleBench) pinThread() error { return pinThread(b.cpu, b.realtime) }

// measure tickles conns once and checks that b received them all. It
// returns the first round's time and the CPU time the process used for it.
func (b *tickleBench) measure(ctx context.Context, pair *vethPair, t *dataplane.Tickler, conns []dataplane.Conn,
	receiver string, counter *ebpf.Map) (first, cpu time.Duration, err error) {
	var before, after uint64
	var snmpBefore, snmpAfter map[string]int64
	if receiver != tickleKernelTCP {
		if err := counter.Lookup(uint32(0), &before); err != nil {
			return 0, 0, fmt.Errorf("read counter: %w", err)
		}
	} else if snmpBefore, err = pair.tcpCounters(sideB); err != nil {
		return 0, 0, err
	}
	cpu0, err := processCPUTime()
	if err != nil {
		return 0, 0, err
	}
	st, err := t.Tickle(ctx, conns, 0, 0)
	if err != nil {
		return 0, 0, err
	}
	cpu1, err := processCPUTime()
	if err != nil {
		return 0, 0, err
	}
	if st.Sent != len(conns) {
		return 0, 0, fmt.Errorf("sent %d of %d", st.Sent, len(conns))
	}
	// Wait (bounded) until b has seen them all: on veth they normally
	// have when the send returns.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var got int64
		if receiver != tickleKernelTCP {
			if err := counter.Lookup(uint32(0), &after); err != nil {
				return 0, 0, fmt.Errorf("read counter: %w", err)
			}
			got = int64(after - before)
		} else {
			if snmpAfter, err = pair.tcpCounters(sideB); err != nil {
				return 0, 0, err
			}
			if bad := snmpAfter["InCsumErrors"] - snmpBefore["InCsumErrors"]; bad != 0 {
				return 0, 0, fmt.Errorf("b counted %d TCP checksum errors", bad)
			}
			got = snmpAfter["OutRsts"] - snmpBefore["OutRsts"]
		}
		if got == int64(len(conns)) {
			return st.FirstRound, cpu1 - cpu0, nil
		}
		if got > int64(len(conns)) || time.Now().After(deadline) {
			return 0, 0, fmt.Errorf("b received %d segments, want %d", got, len(conns))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// processCPUTime returns the user + system CPU time of this process.
func processCPUTime() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("getrusage: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// tcpCounters reads the Tcp line of side's /proc/net/snmp.
func (p *vethPair) tcpCounters(side int) (map[string]int64, error) {
	var m map[string]int64
	err := inNetns(p.ns[side], func() error {
		f, err := os.Open("/proc/thread-self/net/snmp")
		if err != nil {
			return err
		}
		defer f.Close()
		var names []string
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) == 0 || fields[0] != "Tcp:" {
				continue
			}
			if names == nil {
				names = fields[1:]
				continue
			}
			m = map[string]int64{}
			for i, v := range fields[1:] {
				if i < len(names) {
					m[names[i]], _ = strconv.ParseInt(v, 10, 64)
				}
			}
			return nil
		}
		return fmt.Errorf("no Tcp counters in snmp: %v", sc.Err())
	})
	if err != nil {
		return nil, fmt.Errorf("tcp counters of %s: %w", p.nsName[side], err)
	}
	return m, nil
}

// countingDropProgram returns a program of type typ that adds 1 to
// counter[0] and returns verdict.
func countingDropProgram(counter *ebpf.Map, typ ebpf.ProgramType, verdict int32) (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, counter.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, verdict).WithSymbol("drop"),
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "tickle_rx", Type: typ, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load counting drop program: %w", err)
	}
	return prog, nil
}
