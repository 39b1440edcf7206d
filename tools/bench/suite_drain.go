package main

// Suite "drain": a planned move of a VIP with many live connections, on
// each steering path (issue 9: "drain with 1,000 live connections on each
// path").
//
// For each path, a 3-node lab cluster (tools/lab) whose fsha runs
// --drain-timeout -drain-timeout (long: the drains end because their
// connections closed):
//
//   - tc: the default lab (plain veth and bridge, as container networks
//     are), where auto steering takes the tc path: XDP passes the old
//     connections' packets, TC ingress redirects them to eth0's egress;
//   - xdp: the tuned lab (lab.Options.Tuned: XDP_PASS on the bridge side,
//     transmit checksum offload off) with --steer-mode xdp: XDP_TX.
//
// One lab client opens -drain-conns TCP connections to one VIP's NFS port
// (nfs-ganesha serves them all in one process; an SMB connection would be
// an smbd process each), each answering an ONC RPC NULL call, and waits
// until the node the VIP will go to has them all in its peer flows. Then:
//
//   - before: -drain-sweeps sweeps over all connections, one NULL call
//     each, one at a time (the baseline, in the same lab and run);
//   - `fsha move VIP NODE` on the owner; a thread polls NODE's eth0 for
//     the VIP (VIP up = from the request until it is there);
//   - during: the same sweeps, from the moment the VIP is up, through the
//     steering (the new holder sends the packets back to the old one);
//     all answered = from the request until the last connection answered
//     in the first of them;
//   - the new holder's steering counters (`fsha counters`) before and
//     after: the packets each path steered, which must be the path's own;
//   - the connections close (FIN) one after the other; drain end = from
//     the last close until the VIP has left the old holder's loopback and
//     no node's `fsha ip` says it drains.
//
// A connection that fails (reset, timeout, a wrong answer) is counted and
// not used again; it and the steering path are what fail the suite.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
)

type drainBench struct {
	conns        int
	sweeps       int
	paths        string
	drainTimeout time.Duration
}

func drainSuite() *suite {
	b := &drainBench{}
	return &suite{
		name: "drain",
		flags: func(fs *flag.FlagSet) {
			registerLabFlags(fs)
			fs.IntVar(&b.conns, "drain-conns", 1000, "drain: live NFS (RPC NULL) connections through the VIP that moves")
			fs.IntVar(&b.sweeps, "drain-sweeps", 5, "drain: NULL calls per connection before the move and again during the drain")
			fs.StringVar(&b.paths, "drain-paths", "tc,xdp", "drain: comma-separated steering paths: tc (default lab, auto steering), xdp (tuned lab, --steer-mode xdp)")
			fs.DurationVar(&b.drainTimeout, "drain-timeout", 120*time.Second, "drain: fsha's --drain-timeout in the lab (long: the drains must end because the connections closed)")
		},
		run: b.run,
	}
}

func (b *drainBench) run(ctx context.Context, log *zap.Logger, out io.Writer) (err error) {
	if b.conns < 1 || b.conns > 10000 {
		return fmt.Errorf("-drain-conns %d out of 1..10000", b.conns)
	}
	if b.sweeps < 1 || b.sweeps > 100 {
		return fmt.Errorf("-drain-sweeps %d out of 1..100", b.sweeps)
	}
	if b.drainTimeout < 10*time.Second {
		return fmt.Errorf("-drain-timeout %v: want 10s or more", b.drainTimeout)
	}
	var paths []drainPath
	for _, name := range strings.Split(b.paths, ",") {
		i := -1
		for j, p := range drainPaths {
			if p.name == name {
				i = j
			}
		}
		if i < 0 {
			return fmt.Errorf("unknown -drain-paths entry %q", name)
		}
		paths = append(paths, drainPaths[i])
	}
	lim, err := raiseNoFile(b.conns)
	if err != nil {
		return err
	}
	log.Info("open files limit", zap.Uint64("soft", lim.Cur), zap.Uint64("hard", lim.Max))

	start := time.Now()
	load := sampleLoad()
	var results []*drainResult
	var failures []error
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		log.Info("path", zap.String("path", p.name), zap.Int("connections", b.conns))
		r, err := b.runPath(ctx, log.With(zap.String("path", p.name)), p)
		if r != nil {
			results = append(results, r)
			failures = append(failures, r.check()...)
		}
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			// the other path still gets its turn
			failures = append(failures, fmt.Errorf("path %s: %w", p.name, err))
			log.Error("path failed", zap.String("path", p.name), zap.Error(err))
		}
	}
	if len(results) > 0 {
		if err := b.report(out, results, time.Since(start), load); err != nil {
			failures = append(failures, err)
		}
	}
	return errors.Join(failures...)
}

// check says what in r fails the suite: lost connections, steering by
// the wrong path or none, a drain that did not end by its last close.
func (r *drainResult) check() []error {
	var errs []error
	if r.failed > 0 {
		errs = append(errs, fmt.Errorf("path %s: %d of %d connections failed (%d reset), first: %w", r.path, r.failed, r.conns, r.reset, r.firstFailure))
	}
	if live := r.conns - r.failed; r.serverSockets != live {
		errs = append(errs, fmt.Errorf("path %s: the old holder %s serves %d of the %d live connections during the drain", r.path, r.old, r.serverSockets, live))
	}
	mine, other := r.steeredTC, r.steeredXDP
	if r.path == "xdp" {
		mine, other = r.steeredXDP, r.steeredTC
	}
	if r.eth0.Steer != r.path || mine == 0 || other != 0 {
		errs = append(errs, fmt.Errorf("path %s: the new holder's eth0 steers by %q (%+v), steered %d packets by XDP_TX and %d by TC ingress",
			r.path, r.eth0.Steer, r.eth0, r.steeredXDP, r.steeredTC))
	}
	if r.drainStep != "" && r.drainStep != "drain ended: last connection closed" {
		errs = append(errs, fmt.Errorf("path %s: the old holder's drain ended with %q, want the last connection closed", r.path, r.drainStep))
	}
	return errs
}

func (b *drainBench) report(out io.Writer, results []*drainResult, took time.Duration, load machineLoad) error {
	fmt.Fprintf(out, "\nPlanned move (`fsha move`) of one VIP with %s live NFS connections from one client, 3-node lab, fsha --drain-timeout %v; %s\n",
		thousands(b.conns), b.drainTimeout, seconds(took))
	fmt.Fprintf(out, "(RTT = one ONC RPC NULL call to nfs-ganesha, %d sweeps over all connections, one call at a time: before = on the owner,\n"+
		" during = from the VIP up on the new holder, steered back to the old one; p50/p99/max over all calls; VIP up and all answered\n"+
		" from the move request (all answered = the last answer of the first sweep during); drain end from the last close (FIN) until\n"+
		" the VIP left the old holder's loopback and no node's `fsha ip` said draining; steered = the new holder's counters, XDP_TX / TC)\n\n",
		b.sweeps)
	t := &table{header: []string{"path", "conns", "failed/reset", "on old holder", "RTT before p50/p99/max µs", "RTT during p50/p99/max µs",
		"VIP up", "all answered", "drain end", "steered xdp/tc", "drain ended by"}}
	for _, r := range results {
		end := fmtDur(r.drainEnd, 0)
		if r.drainStep == "" {
			end = "-"
		}
		step := r.drainStep
		if step == "" {
			step = "-"
		}
		t.add(r.path+" ("+r.old+" -> "+r.next+")", thousands(r.conns), fmt.Sprintf("%d/%d", r.failed, r.reset),
			fmt.Sprintf("%d", r.serverSockets), rttCell(r.before), rttCell(r.during),
			fmtDur(r.vipUp, 0), fmtDur(r.allAnswered, 0), end,
			fmt.Sprintf("%s/%s", thousands(int(r.steeredXDP)), thousands(int(r.steeredTC))), step)
	}
	if err := t.write(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\n(on old holder = the old holder's established server sockets of the connections after the sweeps during the drain; %s)\n", load.summary())
	return nil
}

// rttCell prints p50/p99/max of round trips (seconds) in microseconds.
func rttCell(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	us := func(s float64) string { return thousands(int(math.Round(s * 1e6))) }
	return us(percentile(xs, 50)) + "/" + us(percentile(xs, 99)) + "/" + us(slices.Max(xs))
}
