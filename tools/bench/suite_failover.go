package main

// Suite "failover": how long clients of a VIP are cut off when the VIP's
// owner fails, fsha against keepalived in the same lab and the same run.
//
// One 3-node lab cluster (tools/lab: smbd and nfs-ganesha on every node,
// one client, 3 VIPs). Each trial picks a VIP, finds its owner and
// prepares two clients in the client namespace:
//
//   - a blocked client: an SMB connection that has negotiated (so the
//     server has answered and fsha tracks it) and now waits in Read, as an
//     idle SMB session waits, with no TCP keepalive;
//   - a prober: a thread that, from the failure on, starts a non-blocking
//     TCP connect to VIP:445 every 10 ms and polls them all.
//
// Then it fails the owner: "network down" takes its eth0 down (its
// processes run on); "power down" takes eth0 down and then SIGKILLs every
// process of the node (daemon and servers, with their children). It
// measures, from the moment before the failure:
//
//   - VIP answers: until the first new connection to VIP:445 succeeds
//     (a surviving node took the VIP over and answered the SYN);
//   - blocked client reset: until the blocked client's Read fails with
//     ECONNRESET, bounded by -failover-block-timeout.
//
// Then it restores the node (link up; or, after a power down, a boot:
// addresses cleared, servers and daemon started again) and waits until
// the cluster is stable before the next trial. Trials alternate the
// failures and rotate over the VIPs (so over the nodes).
//
// Systems, one after the other in the same lab: fsha with its default
// settings, then keepalived (Debian's package) with one VRRP instance per
// VIP on the same nodes' eth0, once with its default advert interval
// (VRRPv2, 1 s) and once with the fastest it accepts (VRRPv3, 10 ms).
// fsha is stopped and its data plane unloaded before keepalived runs.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

type failoverBench struct {
	trials       int
	quick        bool
	systems      string
	failures     string
	probe        probeSpec
	blockTimeout time.Duration
	stable       time.Duration

	mon  *stallMonitor
	load machineLoad
}

func failoverSuite() *suite {
	b := &failoverBench{}
	return &suite{
		name: "failover",
		flags: func(fs *flag.FlagSet) {
			registerLabFlags(fs)
			fs.IntVar(&b.trials, "failover-trials", 20, "failover: trials per system and failure")
			fs.BoolVar(&b.quick, "failover-quick", false, "failover: 5 trials per system and failure (a smoke run, not a result)")
			fs.StringVar(&b.systems, "failover-systems", "fsha,keepalived,keepalived-fast", "failover: comma-separated systems: fsha, keepalived (advert 1 s), keepalived-fast (advert 10 ms)")
			fs.StringVar(&b.failures, "failover-failures", "network,power", "failover: comma-separated failures of the VIP owner: network, power")
			fs.DurationVar(&b.probe.Interval, "failover-probe-interval", 10*time.Millisecond, "failover: a new TCP connection to the VIP this often")
			fs.DurationVar(&b.probe.AttemptTTL, "failover-probe-ttl", 500*time.Millisecond, "failover: how long one connection attempt may wait for its SYN-ACK")
			fs.DurationVar(&b.probe.Limit, "failover-probe-limit", 15*time.Second, "failover: give up on the VIP answering after this")
			fs.DurationVar(&b.blockTimeout, "failover-block-timeout", 6*time.Second, "failover: give up on the blocked client's reset after this")
			fs.DurationVar(&b.stable, "failover-stable-timeout", 60*time.Second, "failover: bound on the wait for a stable cluster after a restore")
		},
		run: b.run,
	}
}

// Failures.
const (
	failNetwork = "network"
	failPower   = "power"
)

var failureNames = map[string]string{failNetwork: "network down", failPower: "power down"}

// Targets of the issues, for fsha with default settings.
const (
	targetVIP   = time.Second             // p95, VIP answers, both failures
	targetReset = 1500 * time.Millisecond // p95, blocked client reset after a power down
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
	// seen by the client (a packet socket on its eth0, kernel receive
	// times): the first ARP for the VIP and the first segment from
	// VIP:445 to the blocked client after the failure.
	garpSeen, tickleSeen float64
	// hostStall is this process's longest late wake-up during the trial
	// (the machine stalled); daemonStalls the survivors' fsha "control
	// loop stalled" reports.
	hostStall    time.Duration
	daemonStalls []float64
	// holders is how many surviving nodes had the VIP on eth0 when the
	// trial ended (after the blocked client's wait): 1 unless it moved
	// again or was dropped after it first answered.
	holders int
	// preWait is how long the VIP took to answer before the failure,
	// when that was more than a second (the system was not stable).
	preWait time.Duration
	// fenced counts the VIP packets the survivors' data planes dropped
	// because their lease had run out (fsha only).
	fenced uint64
}

type failoverRun struct {
	system  string
	failure string
	trials  []trialResult
}

// failSystem is fsha or keepalived on the lab's nodes.
type failSystem interface {
	label() string
	start(ctx context.Context) error
	stop(ctx context.Context) error
	// tracked waits until the system knows the blocked client where it
	// must (fsha: replicated to the nodes that may take over).
	tracked(ctx context.Context, survivors []*lab.ClusterNode, vip, client netip.AddrPort) error
	// procs are the node's processes a power cut kills.
	procs(n *lab.ClusterNode) []*lab.Process
	// restore undoes failure on n and waits until all is stable.
	restore(ctx context.Context, n *lab.ClusterNode, failure string) error
	// fenced sums the packets the nodes' data planes dropped as fenced.
	fenced(nodes []*lab.ClusterNode) (uint64, error)
	// explain adds the system's own account of the takeover.
	explain(ctx context.Context, newOwner *lab.ClusterNode, vip netip.Prefix, t0 time.Time, tr *trialResult)
}

func (b *failoverBench) run(ctx context.Context, log *zap.Logger, out io.Writer) (err error) {
	if b.quick {
		b.trials = 5
	}
	if b.trials < 1 || b.trials > 1000 {
		return fmt.Errorf("-failover-trials %d out of 1..1000", b.trials)
	}
	if b.probe.Interval < time.Millisecond || b.probe.AttemptTTL < b.probe.Interval || b.probe.Limit < time.Second {
		return errors.New("-failover-probe-interval >= 1ms, -failover-probe-ttl >= the interval, -failover-probe-limit >= 1s")
	}
	failures := strings.Split(b.failures, ",")
	for _, f := range failures {
		if failureNames[f] == "" {
			return fmt.Errorf("unknown -failover-failures entry %q", f)
		}
	}
	systems := strings.Split(b.systems, ",")
	for _, s := range systems {
		if s != "fsha" && s != "keepalived" && s != "keepalived-fast" {
			return fmt.Errorf("unknown -failover-systems entry %q", s)
		}
	}
	if slices.Contains(systems, "fsha") && systems[0] != "fsha" {
		return errors.New("-failover-systems: fsha must come first (keepalived runs after fsha is stopped)")
	}

	start := time.Now()
	b.load = sampleLoad()
	b.mon = startStallMonitor(100 * time.Millisecond)
	defer b.mon.Close()
	l, err := benchLab(ctx, log)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tear down lab: %w", cerr))
		}
		if labOpts.keep {
			log.Info("lab run directory kept", zap.String("dir", l.Dir))
		}
	}()
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{})
	if err != nil {
		return err
	}
	log.Info("cluster up", zap.String("lab", l.ID), zap.Duration("took", time.Since(start)))

	var runs []*failoverRun
	defer func() {
		// whatever was measured, even when a later phase failed
		if len(runs) > 0 {
			if werr := b.report(out, runs, time.Since(start)); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}()
	seq := 0
	fshaRuns := true // NewCluster started it everywhere
	for _, name := range systems {
		var sys failSystem
		switch name {
		case "fsha":
			sys = &fshaSystem{c: c, stable: b.stable}
		case "keepalived":
			sys = newKeepalivedSystem(c, kaDefault, b.stable)
		case "keepalived-fast":
			sys = newKeepalivedSystem(c, kaFastest, b.stable)
		}
		if _, ka := sys.(*keepalivedSystem); ka && fshaRuns {
			// keepalived gets the VIPs to itself
			if err := (&fshaSystem{c: c}).stop(ctx); err != nil {
				return fmt.Errorf("stop fsha: %w", err)
			}
			fshaRuns = false
		}
		if err := sys.start(ctx); err != nil {
			return fmt.Errorf("start %s: %w", sys.label(), err)
		}
		byFailure := map[string]*failoverRun{}
		for _, f := range failures {
			r := &failoverRun{system: sys.label(), failure: f}
			byFailure[f] = r
			runs = append(runs, r)
		}
		for k := range b.trials {
			for _, f := range failures {
				if err := ctx.Err(); err != nil {
					return err
				}
				vip := seq % len(c.VIPs)
				seq++
				tr, err := b.trial(ctx, log, c, sys, f, vip)
				if err != nil && ctx.Err() != nil {
					return fmt.Errorf("interrupted: %w", ctx.Err())
				}
				if err != nil {
					return fmt.Errorf("%s, %s, trial %d: %w", sys.label(), failureNames[f], k+1, err)
				}
				byFailure[f].trials = append(byFailure[f].trials, tr)
				log.Info("trial", zap.String("system", name), zap.String("failure", f), zap.Int("n", k+1),
					zap.String("vip_owner", tr.owner), zap.String("connect", fmtDur(tr.connect, b.probe.Limit)),
					zap.String("reset", fmtDur(tr.reset, b.blockTimeout)), zap.String("outcome", tr.outcome),
					zap.Int("holders_after", tr.holders), zap.Duration("host_stall", tr.hostStall), zap.Float64s("fsha_stalls", tr.daemonStalls),
					zap.Uint64("fenced", tr.fenced), zap.String("decision", fmtDur(tr.decision, 0)),
					zap.String("arp_at_client", fmtDur(tr.garpSeen, 0)), zap.String("tickle_at_client", fmtDur(tr.tickleSeen, 0)))
			}
		}
		if err := sys.stop(ctx); err != nil {
			return fmt.Errorf("stop %s: %w", sys.label(), err)
		}
		if _, ok := sys.(*fshaSystem); ok {
			fshaRuns = false
		}
	}
	return nil
}

// trial fails the owner of VIP vip once and restores it.
func (b *failoverBench) trial(ctx context.Context, log *zap.Logger, c *lab.Cluster, sys failSystem, failure string, vip int) (tr trialResult, err error) {
	tr = trialResult{vip: vip, connect: math.Inf(1), reset: math.Inf(1),
		decision: math.NaN(), addrUp: math.NaN(), announce: math.NaN(), tickled: math.NaN(),
		garpSeen: math.NaN(), tickleSeen: math.NaN()}
	prefix := c.VIPs[vip]
	dst := netip.AddrPortFrom(prefix.Addr(), lab.SMBPort)
	client := c.Clients[0]
	owner, err := c.Owner(prefix)
	if err != nil {
		return tr, err
	}
	tr.owner = owner.Role
	survivors := c.Others(owner)

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
		return tr, err
	}
	if w := time.Since(pre); w > time.Second {
		tr.preWait = w
		log.Warn("VIP answered late before the trial", zap.String("vip", dst.String()), zap.Duration("after", w))
	}
	blocked, err := dialSMB(ctx, client, dst)
	if err != nil {
		return tr, err
	}
	defer blocked.closeAbort()
	if err := sys.tracked(ctx, survivors, dst, blocked.Local); err != nil {
		return tr, err
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
	t0 := time.Now()
	if err := owner.LinkDown(); err != nil {
		return tr, err
	}
	go func() {
		at, outcome := blocked.awaitReset(t0.Add(b.blockTimeout))
		readDone <- readEnd{at, outcome}
	}()
	pr.begin(t0)
	began = true
	var killErr error
	if failure == failPower {
		for _, p := range sys.procs(owner) {
			killErr = errors.Join(killErr, p.Kill())
		}
	}
	res, perr := pr.wait()
	end := <-readDone
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
		st, err := fshaStalls(n, t0.Add(-time.Second), tEnd)
		if err != nil {
			return tr, err
		}
		tr.daemonStalls = append(tr.daemonStalls, st...)
	}
	holders, err := c.Holders(prefix, survivors...)
	if err != nil {
		return tr, err
	}
	tr.holders = len(holders)
	if len(holders) == 1 {
		sys.explain(ctx, holders[0], prefix, t0, &tr)
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

	if err := sys.restore(ctx, owner, failure); err != nil {
		return tr, fmt.Errorf("restore %s: %w", owner.Role, err)
	}
	return tr, nil
}

// fshaSystem is fsha as the lab cluster runs it: `fsha up --nodes` with
// its defaults (the lab adds only paths, the gossip key and debug logs).
type fshaSystem struct {
	c *lab.Cluster
	// stable bounds the wait for convergence after a restore.
	stable time.Duration
}

func (s *fshaSystem) label() string { return "fsha (default settings)" }

func (s *fshaSystem) start(ctx context.Context) error {
	return s.c.WaitConverged(ctx, 30*time.Second, s.c.Nodes...)
}

// stop stops every daemon (they release their VIPs) and unloads the data
// planes: keepalived runs next on bare nodes.
func (s *fshaSystem) stop(ctx context.Context) error {
	var errs []error
	for _, n := range s.c.Nodes {
		errs = append(errs, n.StopFsha())
	}
	for _, n := range s.c.Nodes {
		if _, err := n.Fsha(ctx, "unload"); err != nil {
			errs = append(errs, fmt.Errorf("unload on %s: %w", n.Role, err))
		}
		held, err := n.HeldVIPs()
		errs = append(errs, err)
		for _, v := range held {
			errs = append(errs, n.DelAddr(v))
		}
	}
	return errors.Join(errs...)
}

func (s *fshaSystem) tracked(ctx context.Context, survivors []*lab.ClusterNode, vip, client netip.AddrPort) error {
	return lab.Eventually(ctx, 5*time.Second, "blocked client replicated", func(context.Context) error {
		for _, n := range survivors {
			ok, err := hasPeerFlow(n, vip, client)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%s has no peer flow %s -> %s", n.Role, client, vip)
			}
		}
		return nil
	})
}

func (s *fshaSystem) procs(n *lab.ClusterNode) []*lab.Process { return n.Processes() }

func (s *fshaSystem) fenced(nodes []*lab.ClusterNode) (uint64, error) {
	var sum uint64
	for _, n := range nodes {
		pm, err := dataplane.OpenPinned(n.PinPath)
		if err != nil {
			return 0, err
		}
		c, err := pm.ReadCounters()
		pm.Close()
		if err != nil {
			return 0, err
		}
		sum += c.Ingress.Fenced + c.Egress.Fenced
	}
	return sum, nil
}

func (s *fshaSystem) restore(ctx context.Context, n *lab.ClusterNode, failure string) error {
	var err error
	if failure == failPower {
		err = n.PowerUp(ctx)
	} else {
		err = n.NetworkUp()
	}
	if err != nil {
		return err
	}
	return s.c.WaitConverged(ctx, s.stable, s.c.Nodes...)
}

// explain reads the new owner's takeover record of vip: when it decided,
// put the address up, announced it and sent the tickles.
func (s *fshaSystem) explain(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix, t0 time.Time, tr *trialResult) {
	// the tickle step is recorded after its repeats (about 0.6 s)
	_ = lab.Eventually(ctx, 3*time.Second, "takeover recorded", func(ctx context.Context) error {
		tl, err := n.Timeline(ctx)
		if err != nil {
			return err
		}
		for i := len(tl) - 1; i >= 0; i-- {
			r := tl[i]
			if r.Kind != "takeover" || r.VIP != vip.String() || len(r.Steps) == 0 || r.Steps[0].At.Before(t0) {
				continue
			}
			since := func(prefix string) float64 {
				for _, st := range r.Steps {
					if strings.HasPrefix(st.Step, prefix) {
						return st.At.Sub(t0).Seconds()
					}
				}
				return math.NaN()
			}
			tr.decision, tr.addrUp, tr.announce = since("decision"), since("address up"), since("first announcement")
			tr.tickled, tr.tickledConns = since("tickles sent"), r.Tickled
			if math.IsNaN(tr.tickled) {
				return errors.New("no tickle step yet")
			}
			return nil
		}
		return fmt.Errorf("no takeover of %s on %s", vip, n.Role)
	})
}

// keepalivedSystem is keepalived's VRRP on the lab's nodes.
type keepalivedSystem struct {
	c      *lab.Cluster
	cfg    kaConfig
	stable time.Duration
	confs  map[*lab.ClusterNode]string
	ka     map[*lab.ClusterNode]*lab.Process
}

func newKeepalivedSystem(c *lab.Cluster, cfg kaConfig, stable time.Duration) *keepalivedSystem {
	return &keepalivedSystem{c: c, cfg: cfg, stable: stable, confs: map[*lab.ClusterNode]string{}, ka: map[*lab.ClusterNode]*lab.Process{}}
}

func (s *keepalivedSystem) label() string { return s.cfg.name }

func (s *keepalivedSystem) start(ctx context.Context) error {
	for _, n := range s.c.Nodes {
		conf, err := writeKeepalivedConf(n, len(s.c.Nodes), s.c.VIPs, s.cfg)
		if err != nil {
			return err
		}
		s.confs[n] = conf
		p, err := startKeepalived(n, conf)
		if err != nil {
			return err
		}
		s.ka[n] = p
	}
	return kaStable(ctx, s.c, 30*time.Second)
}

func (s *keepalivedSystem) stop(ctx context.Context) error {
	var errs []error
	for _, p := range s.ka {
		errs = append(errs, p.Stop())
	}
	for _, n := range s.c.Nodes {
		held, err := n.HeldVIPs()
		errs = append(errs, err)
		for _, v := range held {
			errs = append(errs, n.DelAddr(v))
		}
	}
	return errors.Join(errs...)
}

func (s *keepalivedSystem) tracked(context.Context, []*lab.ClusterNode, netip.AddrPort, netip.AddrPort) error {
	return nil
}

func (s *keepalivedSystem) fenced([]*lab.ClusterNode) (uint64, error) { return 0, nil }

func (s *keepalivedSystem) procs(n *lab.ClusterNode) []*lab.Process {
	return append(n.Processes(), s.ka[n])
}

func (s *keepalivedSystem) restore(ctx context.Context, n *lab.ClusterNode, failure string) error {
	if failure == failPower {
		// a boot: the addresses are gone, the daemons start again
		held, err := n.HeldVIPs()
		if err != nil {
			return err
		}
		for _, v := range held {
			if err := n.DelAddr(v); err != nil {
				return err
			}
		}
		if err := n.LinkUp(); err != nil {
			return err
		}
		if err := n.StartServers(ctx); err != nil {
			return err
		}
		p, err := startKeepalived(n, s.confs[n])
		if err != nil {
			return err
		}
		s.ka[n] = p
	} else if err := n.LinkUp(); err != nil {
		return err
	}
	return kaStable(ctx, s.c, s.stable)
}

func (s *keepalivedSystem) explain(context.Context, *lab.ClusterNode, netip.Prefix, time.Time, *trialResult) {
}

// report prints the tables.
func (b *failoverBench) report(out io.Writer, runs []*failoverRun, took time.Duration) error {
	fmt.Fprintf(out, "\nfailover of a VIP owner, 3-node lab (smbd + nfs-ganesha on every node, 1 client), one run of %s\n", took.Round(time.Second))
	fmt.Fprintf(out, "VIP answers = failure -> first new TCP connection to VIP:445 accepted (a connect every %v, each\n", b.probe.Interval)
	fmt.Fprintf(out, "given %v); blocked reset = failure -> ECONNRESET in an idle SMB client blocked in read (bound %v).\n", b.probe.AttemptTTL, b.blockTimeout)
	fmt.Fprintf(out, "network down = owner's eth0 down; power down = eth0 down, then SIGKILL to all its processes.\n")
	fmt.Fprintf(out, "p95 = nearest rank (%s of %d); trials alternate the failures and rotate over the VIPs.\n",
		ordinal(int(math.Ceil(0.95*float64(b.trials)))), b.trials)
	fmt.Fprintf(out, "machine during the run: %s\n\n", b.load.summary())
	t := &table{header: []string{"system", "failure", "metric", "n", "median", "p95", "max", "target", "result"}}
	var notes []string
	for _, r := range runs {
		var connect, reset []float64
		outcomes := map[string]int{}
		for _, tr := range r.trials {
			connect = append(connect, tr.connect)
			reset = append(reset, tr.reset)
			outcomes[tr.outcome]++
		}
		isFsha := strings.HasPrefix(r.system, "fsha")
		for _, m := range []struct {
			name   string
			xs     []float64
			bound  time.Duration
			target time.Duration
		}{
			{"VIP answers", connect, b.probe.Limit, targetVIP},
			{"blocked client reset", reset, b.blockTimeout, targetReset},
		} {
			tgt, result := "baseline", "-"
			if isFsha {
				tgt, result = "-", "-"
				if m.name == "VIP answers" || r.failure == failPower {
					p95 := percentile(m.xs, 95)
					tgt = fmt.Sprintf("p95 < %g s", m.target.Seconds())
					result = "MISS"
					if p95 < m.target.Seconds() {
						result = "PASS"
					}
				}
			}
			if len(m.xs) == 0 {
				continue
			}
			t.add(r.system, failureNames[r.failure], m.name, fmt.Sprint(len(m.xs)),
				fmtDur(percentile(m.xs, 50), m.bound), fmtDur(percentile(m.xs, 95), m.bound),
				fmtDur(slices.Max(m.xs), m.bound), tgt, result)
		}
		var hostStalls, daemonStalls, fencedTrials, notHeld, late int
		var fenced uint64
		var worstHost time.Duration
		var worstDaemon float64
		for _, tr := range r.trials {
			if tr.hostStall > 0 {
				hostStalls++
				worstHost = max(worstHost, tr.hostStall)
			}
			if tr.holders != 1 {
				notHeld++
			}
			if tr.preWait > 0 {
				late++
			}
			if tr.fenced > 0 {
				fencedTrials++
				fenced += tr.fenced
			}
			if len(tr.daemonStalls) > 0 {
				daemonStalls++
				worstDaemon = max(worstDaemon, slices.Max(tr.daemonStalls))
			}
		}
		if hostStalls > 0 || daemonStalls > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials with this process stalled >= 100 ms (worst %v); %d with a survivor's fsha reporting \"control loop stalled\" (worst %.0f ms)",
				r.system, failureNames[r.failure], hostStalls, worstHost.Round(time.Millisecond), daemonStalls, worstDaemon*1000))
		}
		if late > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which the VIP, stable on its node, did not answer the client for more than 1 s before the failure",
				r.system, failureNames[r.failure], late))
		}
		if notHeld > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which, at their end, the VIP was not on exactly one surviving node (it answered, then was dropped or moved again)",
				r.system, failureNames[r.failure], notHeld))
		}
		if fencedTrials > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which a survivor dropped VIP packets as fenced (lease run out), %d packets",
				r.system, failureNames[r.failure], fencedTrials, fenced))
		}
		if len(outcomes) > 1 || outcomes[outcomeReset] == 0 {
			var parts []string
			for _, o := range slices.Sorted(maps.Keys(outcomes)) {
				parts = append(parts, fmt.Sprintf("%s %d", o, outcomes[o]))
			}
			notes = append(notes, fmt.Sprintf("%s, %s: blocked client reads ended with %s", r.system, failureNames[r.failure], strings.Join(parts, ", ")))
		}
	}
	if err := t.write(out); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, "  "+n)
	}

	// Where fsha's time goes: its own timeline against the client's view.
	bt := &table{header: []string{"fsha, failure", "n", "decision", "first GARP sent", "tickles sent", "ARP at client", "tickle at client", "VIP answers", "client reset"}}
	for _, r := range runs {
		if !strings.HasPrefix(r.system, "fsha") {
			continue
		}
		col := func(get func(trialResult) float64) string {
			var xs []float64
			for _, tr := range r.trials {
				if v := get(tr); !math.IsNaN(v) {
					xs = append(xs, v)
				}
			}
			if len(xs) == 0 {
				return "-"
			}
			return fmtDur(percentile(xs, 50), b.blockTimeout) + " / " + fmtDur(percentile(xs, 95), b.blockTimeout)
		}
		bt.add(failureNames[r.failure], fmt.Sprint(len(r.trials)),
			col(func(t trialResult) float64 { return t.decision }), col(func(t trialResult) float64 { return t.announce }),
			col(func(t trialResult) float64 { return t.tickled }), col(func(t trialResult) float64 { return t.garpSeen }),
			col(func(t trialResult) float64 { return t.tickleSeen }),
			col(func(t trialResult) float64 { return t.connect }), col(func(t trialResult) float64 { return t.reset }))
	}
	if len(bt.rows) > 0 {
		fmt.Fprintf(out, "\nfsha: where the time goes, median / p95 since the failure. From the new owner's `fsha timeline`:\n")
		fmt.Fprintf(out, "decision = it saw the owner dead and chose to take the VIP; first GARP sent; tickles sent = its\n")
		fmt.Fprintf(out, "record of the first round of tickle ACKs. From the client's eth0 (packet socket, kernel time): the\n")
		fmt.Fprintf(out, "first ARP for the VIP and the first segment from VIP:445 to the blocked client (the tickle)\n\n")
		return bt.write(out)
	}
	return nil
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprint(n) + suffix
}
