package main

// One failover trial: set it up (the VIP answers the client, the blocked
// client is tracked), fail the VIP's owner, measure from the failure what
// the client sees, and restore the node. trialResult is what it measured.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/tools/lab"
)

// trialResult is one failure. Durations are seconds since the failure,
// +Inf when it did not happen within the bound, NaN when not measured.
type trialResult struct {
	vip     int
	owner   string
	connect float64
	reset   float64
	outcome string
	// fsha only: the new owner's timeline (fsha timeline).
	decision, addrUp, announce, tickled float64
	tickledConns                        int
	// hooksDone is when its takeip hooks were done (the tickles wait for
	// them); tickleResets the RSTs its stack sent during the tickles.
	hooksDone    float64
	tickleResets int64
	// seen by the client (a packet socket on its eth0, kernel receive
	// times): the first ARP for the VIP and the first segment from
	// VIP:445 to the blocked client after the failure.
	garpSeen, tickleSeen float64
	// hostStall is this process's longest late wake-up during the trial
	// (the machine stalled); daemonStalls the survivors' fsha "control
	// loop slow" reports (seconds); lapses how many of the survivors' own
	// VIPs lapsed (no renewal from a majority in time).
	hostStall    time.Duration
	daemonStalls []float64
	lapses       int
	// holders is how many surviving nodes had the VIP on eth0 when the
	// trial ended (after the blocked client's wait): 1 unless it moved
	// again or was dropped after it first answered.
	holders int
	// preWait is how long the VIP took to answer before the failure,
	// when that was more than a second (the system was not stable).
	preWait time.Duration
	// fenced counts the VIP packets the survivors' data planes dropped as
	// fenced (fsha only; in the trial log). With per-VIP leases that is
	// normal: a node drops the traffic of every VIP it does not hold,
	// such as the client's ARP requests for the VIP until it takes it.
	fenced uint64
	// A link cut's clock starts when the last frame got through
	// (cutClock): cutCall is how long Lab.Cut (`nft -f` in the switch
	// namespace) took, cutWindow the time between that frame and the
	// next one sent, which did not get through: the cut fell in it.
	cutCall, cutWindow time.Duration
	// cutUntimed: the frames did not time the cut; the clock starts
	// before the call (overstating by up to cutCall).
	cutUntimed bool
	// setupRetries counts set-ups (VIP answers, blocked client tracked)
	// that failed before the failure: the system was not stable.
	setupRetries int
	// conns is what the many connections saw (-failover-conns), nil
	// without them.
	conns *connsResult
}

// prepare readies a trial on VIP prefix: it finds its owner, waits until
// the VIP answers the client, connects the blocked client and waits until
// the system tracks it. The caller closes the blocked client.
func (b *failoverBench) prepare(ctx context.Context, log *zap.Logger, c *lab.Cluster, sys failSystem, prefix netip.Prefix, tr *trialResult) (
	owner *lab.ClusterNode, survivors []*lab.ClusterNode, blocked *smbClient, err error) {
	dst := netip.AddrPortFrom(prefix.Addr(), lab.SMBPort)
	client := c.Clients[0]
	owner, err = c.Owner(prefix)
	if err != nil {
		return nil, nil, nil, err
	}
	survivors = c.Others(owner)

	// The VIP must answer the client before the failure. Right after a
	// restore it may not yet (keepalived at 10 ms can flap and leave the
	// client's ARP entry on a node that let the VIP go, until its next
	// GARPs 5 s later): wait, and count it.
	pre := time.Now()
	err = lab.Eventually(ctx, 20*time.Second, dst.String()+" answers before the failure", func(ctx context.Context) error {
		_, err := client.TryConnect(ctx, dst, time.Second)
		return err
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if w := time.Since(pre); w > time.Second {
		tr.preWait = w
		log.Warn("VIP answered late before the trial", zap.String("vip", dst.String()), zap.Duration("after", w))
	}
	blocked, err = dialSMB(ctx, client, dst)
	if err != nil {
		return nil, nil, nil, err
	}
	if err := sys.tracked(ctx, survivors, dst, blocked.Local); err != nil {
		blocked.closeAbort()
		return nil, nil, nil, err
	}
	// the owner may have changed meanwhile
	if now, err := c.Owner(prefix); err != nil || now != owner {
		blocked.closeAbort()
		return nil, nil, nil, errors.Join(fmt.Errorf("%s moved off %s during the set-up", prefix, owner.Role), err)
	}
	return owner, survivors, blocked, nil
}

// trial fails the owner of VIP vip once and restores it.
func (b *failoverBench) trial(ctx context.Context, log *zap.Logger, c *lab.Cluster, sys failSystem, failure string, vip int) (tr trialResult, err error) {
	tr = trialResult{vip: vip, connect: math.Inf(1), reset: math.Inf(1),
		decision: math.NaN(), addrUp: math.NaN(), announce: math.NaN(), tickled: math.NaN(), hooksDone: math.NaN(),
		garpSeen: math.NaN(), tickleSeen: math.NaN()}
	prefix := c.VIPs[vip]
	dst := netip.AddrPortFrom(prefix.Addr(), lab.SMBPort)
	client := c.Clients[0]
	// Before the failure: the VIP answers, the blocked client has
	// negotiated and is tracked. When that fails (the VIP moved or was
	// dropped meanwhile: the system is not stable), wait until it is
	// stable again and start over, at most three times, and count it.
	var (
		owner     *lab.ClusterNode
		survivors []*lab.ClusterNode
		blocked   *smbClient
	)
	for attempt := 1; ; attempt++ {
		owner, survivors, blocked, err = b.prepare(ctx, log, c, sys, prefix, &tr)
		if err == nil {
			break
		}
		if attempt == 3 || ctx.Err() != nil {
			return tr, err
		}
		tr.setupRetries++
		log.Warn("trial set-up failed: the system is not stable; waiting and starting over", zap.Error(err))
		if err := sys.settle(ctx); err != nil {
			return tr, err
		}
	}
	defer blocked.closeAbort()
	tr.owner = owner.Role
	var many *connsTrial // -failover-conns
	if b.conns > 0 {
		many, err = b.prepareConns(ctx, log, c, sys, owner, survivors, prefix)
		if err != nil {
			return tr, err
		}
		defer many.close()
		tr.conns = many.res
	}
	watch, err := client.WatchAddr(prefix.Addr())
	if err != nil {
		return tr, err
	}
	defer watch.Close()
	fenced0, err := sys.fenced(survivors)
	if err != nil {
		return tr, err
	}
	pr := startProber(ctx, client, dst, b.probe)
	began := false
	defer func() {
		if !began {
			pr.cancel()
			pr.wait()
		}
	}()

	type readEnd struct {
		at      time.Time
		outcome string
	}
	readDone := make(chan readEnd, 1)

	// The failure. The prober begins once the link is down: before, the
	// old owner would still answer. A power down cuts the link before it
	// kills anything: killed first (as lab.ClusterNode.PowerDown does),
	// the servers' sockets would close while the link is up, and their
	// FINs would tell the clients what a real power cut never tells them.
	var t0 time.Time
	if failure == failLink {
		// at the switch: timed by the frames the switch stops delivering
		// (see cutClock), not by the call, which may take 100s of ms
		clock, err := newCutClock(c.Lab, client, owner)
		if err != nil {
			return tr, err
		}
		cut := false
		ct, err := clock.around(func() error {
			err := c.Lab.Cut(owner.Host)
			cut = err == nil
			return err
		})
		clock.Close()
		if err != nil && !cut {
			return tr, err
		}
		if err != nil {
			// the cut landed but the frames did not time it: from the call
			log.Warn("link cut timed from the nft call", zap.Error(err))
			tr.cutUntimed = true
		}
		t0, tr.cutCall, tr.cutWindow = ct.last, ct.call, ct.next.Sub(ct.last)
	} else {
		t0 = time.Now()
		if err := owner.LinkDown(); err != nil {
			return tr, err
		}
	}
	go func() {
		at, outcome := blocked.awaitReset(t0.Add(b.blockTimeout))
		readDone <- readEnd{at, outcome}
	}()
	if many != nil {
		many.begin(t0, t0.Add(b.blockTimeout))
	}
	pr.begin(t0)
	began = true
	var killErr error
	if failure == failPower {
		procs := sys.procs(owner)
		if many != nil {
			procs = append(procs, many.holder)
		}
		for _, p := range procs {
			killErr = errors.Join(killErr, p.Kill())
		}
	}
	res, perr := pr.wait()
	end := <-readDone
	if many != nil {
		many.wait()
	}
	if perr != nil {
		return tr, perr
	}
	if killErr != nil {
		return tr, fmt.Errorf("power down %s: %w", owner.Role, killErr)
	}
	if res.OK {
		tr.connect = res.At.Sub(t0).Seconds()
	}
	tr.outcome = end.outcome
	if end.outcome == outcomeReset {
		tr.reset = end.at.Sub(t0).Seconds()
	}
	tEnd := time.Now()
	fenced1, err := sys.fenced(survivors)
	if err != nil {
		return tr, err
	}
	tr.fenced = fenced1 - fenced0
	tr.hostStall = b.mon.worst(t0.Add(-200*time.Millisecond), tEnd)
	for _, n := range survivors {
		slow, lapses, err := b.logs.events(n, t0.Add(-time.Second), tEnd)
		if err != nil {
			return tr, err
		}
		tr.daemonStalls = append(tr.daemonStalls, slow...)
		tr.lapses += lapses
	}
	holders, err := c.Holders(prefix, survivors...)
	if err != nil {
		return tr, err
	}
	tr.holders = len(holders)
	if len(holders) == 1 {
		sys.explain(ctx, holders[0], prefix, t0, &tr)
		if many != nil {
			many.res.firstRound = tickleFirstRound(holders[0], prefix, t0)
		}
	}
	// the watch reads its socket on its own goroutine: let it catch up
	time.Sleep(100 * time.Millisecond)
	watch.Close()
	for _, f := range watch.Frames() {
		if !f.At.After(t0) {
			continue
		}
		if f.ARP && math.IsNaN(tr.garpSeen) {
			tr.garpSeen = f.At.Sub(t0).Seconds()
		}
		if !f.ARP && f.SrcPort == lab.SMBPort && f.DstPort == blocked.Local.Port() && math.IsNaN(tr.tickleSeen) {
			tr.tickleSeen = f.At.Sub(t0).Seconds()
		}
	}
	blocked.closeAbort()
	if many != nil {
		many.finish(c, watch, t0)
		// reset ones are gone; the others end with a RST
		many.close()
	}

	if err := sys.restore(ctx, owner, failure); err != nil {
		return tr, fmt.Errorf("restore %s: %w", owner.Role, err)
	}
	return tr, nil
}
