package main

// The scale suite's simulated part: seeded trials of the ownership engine
// in control/ownership/sim, one cluster per trial.

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/ownership/sim"
)

const (
	// steadyRenewals: the steady-state window of each trial, in renewals
	steadyRenewals = 10
	// simStep: the resolution of the takeover times
	simStep = 100 * time.Microsecond
	// simBound: a VIP not answered this long after the failure fails the trial
	simBound = 2 * time.Second
)

// simTrial is one simulated cluster: started, settled, counted for a
// while, then one VIP holder failed.
type simTrial struct {
	seed    int64
	failure string
	// took: the failure -> the VIP answered by another node
	took time.Duration
	// steady: each node's messages over steadyFor, before the failure
	steady    []sim.Traffic
	steadyFor time.Duration
	// takeover: each node's messages over took (the failed node's too)
	takeover []sim.Traffic
	failed   int
	err      error
	done     bool // guarded by simulate's mutex
}

// simCell is one timing and size: its trials of every failure.
type simCell struct {
	timing string
	t      ownership.Timing
	nodes  int
	vips   int
	trials []*simTrial
	cpu    time.Duration // summed over its trials (each on one thread)
}

func (c *simCell) ok(failure string) []*simTrial {
	var out []*simTrial
	for _, tr := range c.trials {
		if tr.err == nil && (failure == "" || tr.failure == failure) {
			out = append(out, tr)
		}
	}
	return out
}

// trialSeed numbers the trials: base·10⁹ + nodes·10⁶ + timing·10⁵ +
// failure·10⁴ + trial.
func trialSeed(base int64, nodes, timing, failure, trial int) int64 {
	return base*1_000_000_000 + int64(nodes)*1_000_000 + int64(timing)*100_000 + int64(failure)*10_000 + int64(trial)
}

func (b *scaleBench) simulate(ctx context.Context, log *zap.Logger) ([]*simCell, error) {
	if b.trials >= 10_000 {
		return nil, fmt.Errorf("-scale-trials %d: at most 9999", b.trials)
	}
	type job struct {
		cell *simCell
		tr   *simTrial
		vip  int
	}
	var cells []*simCell
	var jobs []job
	for ti, name := range b.timings {
		for _, n := range b.nodes {
			c := &simCell{timing: name, t: scaleTimings[name], nodes: n, vips: b.vipsPerNode * n}
			if c.vips > 245 {
				return nil, fmt.Errorf("%d nodes x %d VIPs: the simulator has room for 245 VIPs", n, b.vipsPerNode)
			}
			cells = append(cells, c)
			for fi, f := range b.failures {
				for i := range b.trials {
					tr := &simTrial{seed: trialSeed(b.seed, n, ti, fi, i), failure: f}
					c.trials = append(c.trials, tr)
					jobs = append(jobs, job{cell: c, tr: tr, vip: i})
				}
			}
		}
	}
	var (
		mu   sync.Mutex
		next int
		wg   sync.WaitGroup
	)
	for range b.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				mu.Lock()
				if next == len(jobs) {
					mu.Unlock()
					return
				}
				j := jobs[next]
				next++
				mu.Unlock()
				start := time.Now()
				err := runSimTrial(j.tr, j.cell, j.vip)
				mu.Lock()
				j.tr.err, j.tr.done = err, true
				j.cell.cpu += time.Since(start)
				mu.Unlock()
			}
		}()
	}
	// progress, one line per cell as its last trial ends
	done := make(chan struct{})
	go func() {
		defer close(done)
		wg.Wait()
	}()
	reported := map[*simCell]bool{}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		case <-tick.C:
		}
		mu.Lock()
		for _, c := range cells {
			if reported[c] || !c.finished() {
				continue
			}
			reported[c] = true
			log.Info("simulated", zap.String("timing", c.timing), zap.Int("nodes", c.nodes),
				zap.Int("trials", len(c.trials)), zap.Int("failed", len(c.trials)-len(c.ok(""))), zap.Duration("took", c.cpu))
		}
		mu.Unlock()
	}
	return cells, ctx.Err()
}

func (c *simCell) finished() bool {
	for _, tr := range c.trials {
		if !tr.done {
			return false
		}
	}
	return true
}

// runSimTrial starts a cluster, waits until every VIP is answered by one
// node, counts every node's messages over steadyRenewals renewals, then
// at a random instant of a renewal period cuts the power or the network
// of the node answering for VIP vip (the trials rotate over the VIPs) and
// times until another node answers for it.
func runSimTrial(tr *simTrial, c *simCell, vip int) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("seed %d: "+format, append([]any{tr.seed}, args...)...)
	}
	w, err := sim.NewWorld(tr.seed, c.nodes, c.vips, c.t)
	if err != nil {
		return fail("%w", err)
	}
	w.Start(100 * time.Millisecond)
	vips := w.VIPs()
	all := func() bool {
		for _, v := range vips {
			if w.Holder(v) < 0 {
				return false
			}
		}
		return true
	}
	if _, ok := w.Until(10*time.Second, 10*time.Millisecond, all); !ok {
		return fail("not every VIP answered 10 s after the start (%v)", w.Violations())
	}
	if err := w.Settled(200 * time.Millisecond); err != nil {
		return fail("not settled: %w", err)
	}
	takes, drops := w.Moves()
	before, start := w.Traffic(), w.Now()
	w.Run(steadyRenewals * c.t.Renew)
	tr.steady, tr.steadyFor = trafficSince(w.Traffic(), before), w.Now()-start
	if t2, d2 := w.Moves(); t2 != takes || d2 != drops {
		return fail("%d takes and %d drops in the steady window", t2-takes, d2-drops)
	}
	addr := vips[vip%len(vips)]
	tr.failed = w.Holder(addr)
	w.Run(time.Duration(w.Rand().Int63n(int64(c.t.Renew))))
	switch tr.failure {
	case "power":
		w.PowerCut(tr.failed)
	case "network":
		w.Isolate(tr.failed, true)
	}
	before = w.Traffic()
	took, ok := w.Until(simBound, simStep, func() bool { h := w.Holder(addr); return h >= 0 && h != tr.failed })
	tr.took, tr.takeover = took, trafficSince(w.Traffic(), before)
	if v := w.Violations(); len(v) > 0 {
		return fail("invariant broken: %s", v[0])
	}
	if !ok {
		return fail("%s not answered by another node %v after the %s cut of n%d", addr, simBound, tr.failure, tr.failed)
	}
	return nil
}

func trafficSince(now, before []sim.Traffic) []sim.Traffic {
	out := make([]sim.Traffic, len(now))
	for i := range now {
		out[i] = now[i].Sub(before[i])
	}
	return out
}

// leaseStats are one cell's per-node rates in steady state, per second:
// means over nodes and trials, and the busiest node of any trial.
type leaseStats struct {
	hbSent, replySent, releaseSent float64 // messages
	msgsSent, msgsRecv             float64
	bytesSent, bytesRecv           float64 // encoded payload
	hbSize, replySize              float64 // mean encoded size
	maxBytesSent, maxMsgsSent      float64 // the busiest node (payload)
	nodeSeconds                    float64
}

func steadyStats(c *simCell) leaseStats {
	var s leaseStats
	var hbBytes, hbMsgs, rpBytes, rpMsgs float64
	for _, tr := range c.ok("") {
		secs := tr.steadyFor.Seconds()
		for _, t := range tr.steady {
			s.nodeSeconds += secs
			s.hbSent += float64(t.Sent.Heartbeats.Msgs)
			s.replySent += float64(t.Sent.Replies.Msgs)
			s.releaseSent += float64(t.Sent.Releases.Msgs)
			s.msgsSent += float64(t.Sent.Total().Msgs)
			s.msgsRecv += float64(t.Received.Total().Msgs)
			s.bytesSent += float64(t.Sent.Total().Bytes)
			s.bytesRecv += float64(t.Received.Total().Bytes)
			hbBytes += float64(t.Sent.Heartbeats.Bytes)
			hbMsgs += float64(t.Sent.Heartbeats.Msgs)
			rpBytes += float64(t.Sent.Replies.Bytes)
			rpMsgs += float64(t.Sent.Replies.Msgs)
			s.maxBytesSent = max(s.maxBytesSent, float64(t.Sent.Total().Bytes)/secs)
			s.maxMsgsSent = max(s.maxMsgsSent, float64(t.Sent.Total().Msgs)/secs)
		}
	}
	if s.nodeSeconds == 0 {
		return s
	}
	for _, p := range []*float64{&s.hbSent, &s.replySent, &s.releaseSent, &s.msgsSent, &s.msgsRecv, &s.bytesSent, &s.bytesRecv} {
		*p /= s.nodeSeconds
	}
	if hbMsgs > 0 {
		s.hbSize = hbBytes / hbMsgs
	}
	if rpMsgs > 0 {
		s.replySize = rpBytes / rpMsgs
	}
	return s
}

// takeoverStats are the surviving nodes' rates, per second, from the
// failure until the VIP was answered: means over survivors and trials,
// and the busiest survivor of any trial.
type takeoverStats struct {
	n                    int
	window               []float64 // seconds, per trial
	msgsSent, msgsRecv   float64
	bytesSent, bytesRecv float64
	releases             float64 // releases sent per survivor per second
	maxMsgs, maxBytes    float64 // sent: the busiest survivor's messages and bytes per second
}

func takeoverStatsOf(c *simCell, failure string) takeoverStats {
	var s takeoverStats
	var nodeSecs float64
	for _, tr := range c.ok(failure) {
		s.n++
		secs := tr.took.Seconds()
		s.window = append(s.window, secs)
		if secs == 0 {
			continue
		}
		for i, t := range tr.takeover {
			if i == tr.failed {
				continue
			}
			nodeSecs += secs
			s.msgsSent += float64(t.Sent.Total().Msgs)
			s.msgsRecv += float64(t.Received.Total().Msgs)
			s.bytesSent += float64(t.Sent.Total().Bytes)
			s.bytesRecv += float64(t.Received.Total().Bytes)
			s.releases += float64(t.Sent.Releases.Msgs)
			s.maxMsgs = max(s.maxMsgs, float64(t.Sent.Total().Msgs)/secs)
			s.maxBytes = max(s.maxBytes, float64(t.Sent.Total().Bytes)/secs)
		}
	}
	if nodeSecs > 0 {
		for _, p := range []*float64{&s.msgsSent, &s.msgsRecv, &s.bytesSent, &s.bytesRecv, &s.releases} {
			*p /= nodeSecs
		}
	}
	return s
}

// tookOf lists the trials' takeover times of a failure, in seconds.
func tookOf(c *simCell, failure string) []float64 {
	var xs []float64
	for _, tr := range c.ok(failure) {
		xs = append(xs, tr.took.Seconds())
	}
	slices.Sort(xs)
	return xs
}
