package main

// Suite "scale" (issue 12): failure detection and takeover, lease
// traffic, gossip traffic and replication bandwidth per node, against the
// cluster's size (3, 5, 9, 16 and 32 nodes). A 16-node lab does not run
// on this 2-vCPU machine (BENCHMARKS.md, Failover), so each column comes
// from the one source it can honestly come from here, and the output says
// which:
//
//   - SIMULATED: detection and takeover, and the ownership protocol's
//     traffic, from the deterministic simulator (control/ownership/sim):
//     the real engine on a fake clock, node clocks drifting within 1%,
//     messages through the real codec with 50-500 µs of delay, the same
//     invariants checked at every event as in its tests. Seeded: the
//     same seeds give the same numbers on any machine.
//   - MEASURED: memberlist's gossip, N instances of control/membership
//     (fsha's configuration: its timing profiles, AES-GCM) in this
//     process on 127.0.80.x, counted by the gossip transport, and the
//     envelope memberlist puts around each ownership message.
//   - DERIVED: replication, from the replication suite's bytes per
//     connection times the peers, at a stated connection rate.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/ownership"
)

type scaleBench struct {
	nodes       []int
	vipsPerNode int
	trials      int
	timings     []string
	failures    []string
	seed        int64
	workers     int
	gossip      bool
	gossipFor   time.Duration
	gossipSet   []string
	connRate    float64
	// gossipSettle: after every instance sees every other alive, before
	// the window (the join's broadcasts drain meanwhile)
	gossipSettle time.Duration
	// gossipWhole: the window starts two push/pull intervals after the
	// start and lasts whole intervals (measureGossip)
	gossipWhole bool
	// lastSims: the last run's simulated cells (for the test)
	lastSims []*simCell
}

// scaleTimings are the ownership profiles of fsha up --failover.
var scaleTimings = map[string]ownership.Timing{
	"default": ownership.DefaultTiming(),
	"fast":    ownership.FastTiming(),
}

// gossipTimings are the membership profiles of fsha up --gossip-timing
// (tolerant is its default).
var gossipTimings = map[string]membership.Timing{
	"tolerant": membership.TolerantTiming(),
	"fast":     membership.FastTiming(),
}

func scaleSuite() *suite {
	b := &scaleBench{gossipSettle: 3 * time.Second, gossipWhole: true}
	var nodes, timings, failures, gossipSet string
	return &suite{
		name: "scale",
		flags: func(fs *flag.FlagSet) {
			fs.StringVar(&nodes, "scale-nodes", "3,5,9,16,32", "scale: comma-separated cluster sizes")
			fs.IntVar(&b.vipsPerNode, "scale-vips-per-node", 2, "scale: VIPs per node in the simulated clusters")
			fs.IntVar(&b.trials, "scale-trials", 20, "scale: simulated failures per size, timing and failure")
			fs.StringVar(&timings, "scale-timings", "default,fast", "scale: ownership timings (fsha up --failover) to simulate")
			fs.StringVar(&failures, "scale-failures", "power,network", "scale: failures to simulate: power (node off) and network (every link cut, the daemon runs on)")
			fs.Int64Var(&b.seed, "scale-seed", 1, "scale: base seed of the simulated trials")
			fs.IntVar(&b.workers, "scale-workers", 1, "scale: simulated trials run at once (each takes a CPU)")
			fs.BoolVar(&b.gossip, "scale-gossip", true, "scale: measure the gossip (memberlist instances on 127.0.80.x)")
			fs.DurationVar(&b.gossipFor, "scale-gossip-for", 20*time.Second, "scale: how long the gossip is counted (rounded up to whole push/pull intervals)")
			fs.StringVar(&gossipSet, "scale-gossip-timings", "tolerant,fast", "scale: gossip timings (fsha up --gossip-timing) to measure")
			fs.Float64Var(&b.connRate, "scale-conn-rate", 100, "scale: new client connections per second per node, for the derived replication bandwidth")
		},
		run: func(ctx context.Context, log *zap.Logger, out io.Writer) error {
			var err error
			if b.nodes, err = parseSizes(nodes); err != nil {
				return err
			}
			if b.timings, err = pickNames(timings, "-scale-timings", keys(scaleTimings)); err != nil {
				return err
			}
			if b.failures, err = pickNames(failures, "-scale-failures", []string{"power", "network"}); err != nil {
				return err
			}
			if b.gossipSet, err = pickNames(gossipSet, "-scale-gossip-timings", keys(gossipTimings)); err != nil {
				return err
			}
			if b.trials < 1 || b.vipsPerNode < 1 || b.workers < 1 || b.connRate < 0 || b.gossipFor <= 0 {
				return errors.New("-scale-trials, -scale-vips-per-node, -scale-workers and -scale-gossip-for must be positive, -scale-conn-rate not negative")
			}
			return b.run(ctx, log, out)
		},
	}
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 || n > 64 {
			return nil, fmt.Errorf("-scale-nodes: %q is not a size from 2 to 64", f)
		}
		out = append(out, n)
	}
	return out, nil
}

func pickNames(s, flag string, allowed []string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if !slices.Contains(allowed, f) {
			return nil, fmt.Errorf("%s: %q is not one of %s", flag, f, strings.Join(allowed, ", "))
		}
		out = append(out, f)
	}
	return out, nil
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// scaleResults is everything the report prints.
type scaleResults struct {
	sims     []*simCell
	simTook  time.Duration
	simCPU   time.Duration
	simLoad  string
	envelope envelopeResult
	gossip   []*gossipRun
	gosLoad  string
	gosTook  time.Duration
}

func (b *scaleBench) run(ctx context.Context, log *zap.Logger, out io.Writer) error {
	var res scaleResults
	load, start, cpu := sampleLoad(), time.Now(), processCPU()
	var err error
	if res.sims, err = b.simulate(ctx, log); err != nil {
		return err
	}
	b.lastSims = res.sims
	res.simTook, res.simCPU, res.simLoad = time.Since(start), processCPU()-cpu, load.summary()
	load, start = sampleLoad(), time.Now()
	if res.envelope, err = measureEnvelope(ctx, log); err != nil {
		return fmt.Errorf("memberlist envelope: %w", err)
	}
	if b.gossip {
		if res.gossip, err = b.measureGossip(ctx, log); err != nil {
			return err
		}
	}
	res.gosTook, res.gosLoad = time.Since(start), load.summary()
	return b.report(out, &res)
}
