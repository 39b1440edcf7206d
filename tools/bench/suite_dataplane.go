package main

// Suite "dataplane": the per-packet cost of fsha's programs.
//
// Part 1 runs each program on one packet with BPF_PROG_RUN and a large
// repeat count, several interleaved rounds, on one pinned CPU, and compares
// it with an empty program of the same hook measured in the same run; its
// steering cases are in suite_dataplane_steer.go.
// Part 2 (suite_dataplane_pps.go) pushes packets through a veth pair.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"time"

	"github.com/fsha/fsha/dataplane"
	"go.uber.org/zap"
)

type dataplaneBench struct {
	repeat      int
	rounds      int
	flows       int
	cpu         int
	realtime    bool
	lease       bool
	perVIP      bool
	steer       bool
	pps         bool
	flowMix     bool
	flowCost    bool
	ppsDuration time.Duration
	ppsRounds   int
}

func dataplaneSuite() *suite {
	b := &dataplaneBench{}
	return &suite{
		name: "dataplane",
		flags: func(fs *flag.FlagSet) {
			fs.IntVar(&b.repeat, "repeat", 200_000, "dataplane: BPF_PROG_RUN repetitions per round")
			fs.IntVar(&b.rounds, "rounds", 41, "dataplane: BPF_PROG_RUN rounds per case (the median is reported)")
			fs.IntVar(&b.flows, "flows", 1_000_000, "dataplane: flows in the map for the tracked cases")
			fs.IntVar(&b.cpu, "cpu", runtime.NumCPU()-1, "dataplane: CPU to run BPF_PROG_RUN on")
			fs.BoolVar(&b.realtime, "rt", true, "dataplane: run BPF_PROG_RUN rounds as SCHED_FIFO so that other tasks cannot preempt them")
			fs.BoolVar(&b.lease, "lease", true, "dataplane: enable the fencing lease (valid), as a clustered node runs")
			fs.BoolVar(&b.perVIP, "per-vip", true, "dataplane: also measure a data plane with per-VIP leases on (fencing mode 3, the VIPs held)")
			fs.BoolVar(&b.steer, "steer", true, "dataplane: also measure steering (drain): a steered packet on the xdp and tc paths")
			fs.BoolVar(&b.pps, "pps", true, "dataplane: also measure packets per second through a veth pair")
			fs.BoolVar(&b.flowMix, "flow-mix", true, "dataplane: also measure tracked packets spread over the flows in turn, in random order and in a Zipf mix")
			fs.BoolVar(&b.flowCost, "flow-cost", false, "dataplane: with -flow-mix, also time probes of the map path's parts behind the XDP drivers (issue 12)")
			fs.DurationVar(&b.ppsDuration, "pps-duration", time.Second, "dataplane: length of one veth measurement")
			fs.IntVar(&b.ppsRounds, "pps-rounds", 9, "dataplane: veth rounds per mode (the median is reported)")
		},
		run: b.run,
	}
}

// Addresses: benchmarking ranges only (198.18.0.0/15, 2001:2::/48).
var (
	benchVIP4   = netip.MustParseAddr("198.19.0.10")
	benchVIP6   = netip.MustParseAddr("2001:2::10")
	benchOther4 = netip.MustParseAddr("198.19.0.99") // a server that is no VIP
)

const (
	trackedPort   = 445
	untrackedPort = 8080
	payloadLen    = 64 // bytes of TCP payload in every data segment
	// flows6 of the -flows flows are IPv6, the rest IPv4.
	flows6 = 1000
)

// benchClient is the i-th synthetic client: 16,384 ports on each address,
// so that a packet generator can derive client i with shifts and masks
// (see senderProgram): 198.18.128.(i>>14) : 10000+(i&0x3fff) for IPv4.
func benchClient(v6 bool, i int) netip.AddrPort {
	port := uint16(10000 + i&0x3fff)
	if v6 {
		a := benchVIP6.As16()
		a[7] = 1 // 2001:2:0:1::x
		a[14], a[15] = byte(i>>22), byte(i>>14)
		return netip.AddrPortFrom(netip.AddrFrom16(a), port)
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, 128, byte(i >> 14)}), port)
}

// maxBenchFlows keeps benchClient's IPv4 addresses inside 198.18.128.0/24.
const maxBenchFlows = 256 << 14

func (b *dataplaneBench) run(ctx context.Context, log *zap.Logger, out io.Writer) error {
	if b.flows <= flows6 || b.flows > maxBenchFlows {
		return fmt.Errorf("-flows must be in (%d, %d]", flows6, maxBenchFlows)
	}
	if b.repeat < 1000 || b.rounds < 1 || b.ppsRounds < 1 {
		return errors.New("-repeat must be >= 1000, -rounds and -pps-rounds >= 1")
	}
	capacity := uint32(dataplane.DefaultFlowsMax)
	if uint32(b.flows) > capacity {
		capacity = uint32(b.flows)
	}
	n4 := b.flows - flows6
	// The orders the packet generators walk the flows in (the veth
	// sender's and the flow mix rows' drivers).
	mix, err := newFlowMix(n4)
	if err != nil {
		return err
	}
	defer mix.Close()
	log.Info("flow mix", zap.Int("flows", n4), zap.Int("random_walk", mix.walk), zap.Float64("zipf_s", zipfS),
		zap.Float64("zipf_top1_share", mix.zipfTop1), zap.Int("zipf_flows", mix.zipfUsed))
	u, err := b.load(log, dataplane.UnpinnedOptions{FlowsMax: capacity}, n4, false)
	if err != nil {
		return err
	}
	defer u.Close()
	// The same, with the flow cache off: every tracked packet looks its
	// flow up in the map, as the first one of a flow in a jiffy does.
	uncached, err := b.load(log, dataplane.UnpinnedOptions{FlowsMax: capacity, NoFlowCache: true}, n4, false)
	if err != nil {
		return err
	}
	defer uncached.Close()
	// The same again, with per-VIP leases: every VIP packet also checks
	// its VIP's deadline bucket.
	var perVIP *dataplane.Unpinned
	if b.perVIP {
		if perVIP, err = b.load(log, dataplane.UnpinnedOptions{FlowsMax: capacity}, n4, true); err != nil {
			return err
		}
		defer perVIP.Close()
	}
	// And with steering on, one peer flow to steer (a drain).
	var steer *dataplane.Unpinned
	if b.steer {
		if steer, err = b.loadSteer(log, dataplane.UnpinnedOptions{FlowsMax: capacity}, n4); err != nil {
			return err
		}
		defer steer.Close()
	}

	pair, err := newVethPair()
	if err != nil {
		return err
	}
	defer func() {
		if cerr := pair.Close(); cerr != nil {
			log.Error("clean up namespaces", zap.Error(cerr))
		}
	}()
	log.Debug("namespaces", zap.Strings("netns", pair.nsName[:]), zap.Strings("veth", pair.ifName[:]))

	if err := b.progRun(ctx, log, out, u, uncached, perVIP, steer, pair, mix, n4); err != nil {
		return err
	}
	if !b.pps {
		return nil
	}
	return b.vethPPS(ctx, log, out, u, pair, mix, n4)
}

// load loads a data plane as a clustered node runs it and fills its flows
// map with n4 IPv4 and flows6 IPv6 flows. perVIP turns per-VIP leases on
// too (fencing mode 3), with both VIPs held for an hour.
func (b *dataplaneBench) load(log *zap.Logger, opts dataplane.UnpinnedOptions, n4 int, perVIP bool) (*dataplane.Unpinned, error) {
	u, err := dataplane.LoadUnpinnedWith(opts)
	if err != nil {
		return nil, err
	}
	err = func() error {
		if err := u.SetVIPs([]netip.Addr{benchVIP4, benchVIP6}); err != nil {
			return err
		}
		if err := u.SetPorts([]uint16{445, 139, 2049, 111}); err != nil {
			return err
		}
		// As in a cluster: fencing on, lease valid (every VIP packet checks it).
		if b.lease || perVIP {
			if err := u.RenewLease(time.Hour); err != nil {
				return err
			}
		}
		if perVIP {
			if err := u.SetFencingMode(true, true); err != nil {
				return err
			}
			held := dataplane.VIPLease{Epoch: 1, State: dataplane.VIPLeaseHeld, Until: dataplane.MonotonicNow() + uint64(time.Hour)}
			for _, vip := range []netip.Addr{benchVIP4, benchVIP6} {
				if err := u.SetVIPLease(vip, held); err != nil {
					return err
				}
			}
		}
		start := time.Now()
		if err := u.FillFlows(netip.AddrPortFrom(benchVIP4, trackedPort), n4,
			func(i int) netip.AddrPort { return benchClient(false, i) }); err != nil {
			return err
		}
		if err := u.FillFlows(netip.AddrPortFrom(benchVIP6, trackedPort), flows6,
			func(i int) netip.AddrPort { return benchClient(true, i) }); err != nil {
			return err
		}
		log.Info("filled the flows map", zap.Int("flows", b.flows), zap.Uint32("capacity", opts.FlowsMax),
			zap.Bool("flow_cache", !opts.NoFlowCache), zap.Duration("took", time.Since(start)))
		return nil
	}()
	if err != nil {
		u.Close()
		return nil, err
	}
	return u, nil
}
