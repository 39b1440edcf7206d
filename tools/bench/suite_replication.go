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
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
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
