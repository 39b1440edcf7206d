package main

// Suite "failover": how long clients of a VIP are cut off when the VIP's
// owner fails, fsha against keepalived in the same lab and the same run.
//
// One lab cluster (tools/lab: smbd and nfs-ganesha on every node, one
// client, one VIP per node; 3 nodes, -failover-nodes up to 16). Each
// trial picks a VIP, finds its owner and prepares two clients in the
// client namespace:
//
//   - a blocked client: an SMB connection that has negotiated (so the
//     server has answered and fsha tracks it) and now waits in Read, as an
//     idle SMB session waits, with no TCP keepalive;
//   - a prober: a thread that, from the failure on, starts a non-blocking
//     TCP connect to VIP:445 every 10 ms and polls them all.
//
// Then it fails the owner:
//
//   - power: the owner's eth0 goes down, then every process of the node
//     (daemon and servers, with their children) gets SIGKILL;
//   - network: the owner's eth0 goes down inside the node (its processes
//     run on, and see their link go);
//   - link: the switch drops every frame to and from the owner's port,
//     links up on both ends (lab.Cut: a dead switch port or upstream
//     fault; the owner's processes run on and see nothing but silence).
//
// It measures, from the moment before the failure:
//
//   - VIP answers: until the first new connection to VIP:445 succeeds
//     (a surviving node took the VIP over and answered the SYN);
//   - blocked client reset: until the blocked client's Read fails with
//     ECONNRESET, bounded by -failover-block-timeout.
//
// Then it restores the node (link up or switch port back; after a power
// cut, a boot: addresses cleared, servers and daemon started again) and
// waits until the cluster is stable before the next trial. Trials
// alternate the failures and rotate over the VIPs (so over the nodes).
//
// Systems, one after the other in the same lab: fsha with its default
// settings (--failover default), fsha --failover fast, then keepalived
// (Debian's package) with one VRRP instance per VIP on the same nodes'
// eth0, at VRRPv3 10 ms (the fastest it accepts) and 100 ms, and, when
// asked, with its default (VRRPv2, 1 s). fsha is stopped and its data
// plane unloaded before keepalived runs.

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
	"golang.org/x/sync/errgroup"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

type failoverBench struct {
	trials       int
	quick        bool
	nodes        int
	systems      string
	failures     string
	probe        probeSpec
	blockTimeout time.Duration
	stable       time.Duration

	mon  *stallMonitor
	logs *fshaLogs
	load machineLoad
}

// systemSpec is one system the suite can measure.
type systemSpec struct {
	name    string
	profile string // fsha's --failover, "" for keepalived
	ka      kaConfig
}

func lookupSystem(name string) (systemSpec, bool) {
	i := slices.IndexFunc(failoverSystems, func(x systemSpec) bool { return x.name == name })
	if i < 0 {
		return systemSpec{}, false
	}
	return failoverSystems[i], true
}

// failoverSystems are the systems -failover-systems names, in the order
// they must run: every fsha profile before keepalived.
var failoverSystems = []systemSpec{
	{name: "fsha", profile: "default"},
	{name: "fsha-fast", profile: "fast"},
	{name: "keepalived", ka: kaDefault},
	{name: "keepalived-fast", ka: kaFastest},
	{name: "keepalived-100ms", ka: ka100ms},
}

func failoverSuite() *suite {
	b := &failoverBench{}
	return &suite{
		name: "failover",
		flags: func(fs *flag.FlagSet) {
			registerLabFlags(fs)
			fs.IntVar(&b.trials, "failover-trials", 20, "failover: trials per system and failure")
			fs.BoolVar(&b.quick, "failover-quick", false, "failover: 5 trials per system and failure (a smoke run, not a result)")
			fs.IntVar(&b.nodes, "failover-nodes", 3, fmt.Sprintf("failover: nodes in the lab cluster (3 to %d), one VIP each; with many nodes, keepalived at 10 ms may not keep up on a small machine: -failover-systems fsha,fsha-fast", lab.MaxClusterNodes))
			fs.StringVar(&b.systems, "failover-systems", "fsha,fsha-fast,keepalived-fast,keepalived-100ms",
				"failover: comma-separated systems, fsha ones first: fsha (--failover default), fsha-fast (--failover fast), keepalived-fast (VRRPv3, advert 10 ms), keepalived-100ms (VRRPv3, 100 ms), keepalived (its default: VRRPv2, 1 s; adds about 10 minutes)")
			fs.StringVar(&b.failures, "failover-failures", "power,network,link", "failover: comma-separated failures of the VIP owner: power (eth0 down, then SIGKILL to all its processes), network (eth0 down inside the node), link (every frame dropped at the switch port, links up)")
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
	failPower   = "power"
	failNetwork = "network"
	failLink    = "link"
)

var failureNames = map[string]string{failPower: "power cut", failNetwork: "network cut", failLink: "link cut"}

// fshaTargets are the bounds on the p95 of both measures after a
// power cut, by fsha's --failover profile.
var fshaTargets = map[string]time.Duration{
	"default": 350 * time.Millisecond,
	"fast":    100 * time.Millisecond,
}

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
}

type failoverRun struct {
	system  string
	profile string // fsha's --failover, "" for keepalived
	failure string
	trials  []trialResult
	// failed says why the system's trials stopped early, "" when they
	// did not.
	failed string
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
	// settle waits until all is stable.
	settle(ctx context.Context) error
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
	if b.nodes < 3 || b.nodes > lab.MaxClusterNodes {
		return fmt.Errorf("-failover-nodes %d out of 3..%d", b.nodes, lab.MaxClusterNodes)
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
	keepalivedSeen := false
	for i, s := range systems {
		spec, ok := lookupSystem(s)
		if !ok {
			return fmt.Errorf("unknown -failover-systems entry %q", s)
		}
		if slices.Contains(systems[:i], s) {
			return fmt.Errorf("-failover-systems names %q twice", s)
		}
		if spec.profile == "" {
			keepalivedSeen = true
		} else if keepalivedSeen {
			return errors.New("-failover-systems: fsha systems must come first (keepalived runs after fsha is stopped and unloaded)")
		}
	}
	if keepalivedSeen && b.nodes > 3 {
		log.Warn("keepalived on many nodes: every node runs one VRRP instance per VIP; at 10 ms adverts a small machine may not keep up",
			zap.Int("nodes", b.nodes))
	}

	start := time.Now()
	b.load = sampleLoad()
	b.mon = startStallMonitor(100 * time.Millisecond)
	defer b.mon.Close()
	b.logs = newFshaLogs()
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
	// NewCluster starts fsha everywhere with the lab's arguments (its
	// defaults: --failover default); each fsha system below restarts it
	// with its own profile.
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{Nodes: b.nodes})
	if err != nil {
		return err
	}
	log.Info("cluster up", zap.String("lab", l.ID), zap.Int("nodes", len(c.Nodes)), zap.Int("vips", len(c.VIPs)),
		zap.Duration("took", time.Since(start)))

	var runs []*failoverRun
	defer func() {
		// whatever was measured, even when a later phase failed
		if len(runs) > 0 {
			if werr := b.report(out, c, runs, time.Since(start)); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}()
	seq := 0
	fshaProfile := "" // what the daemons run now: "" = the lab's start, "none" = stopped
	for _, name := range systems {
		spec, _ := lookupSystem(name)
		var sys failSystem
		if spec.profile != "" {
			fs := &fshaSystem{c: c, profile: spec.profile, stable: b.stable}
			if fshaProfile != spec.profile {
				log.Info("starting fsha", zap.String("failover", spec.profile))
				if err := fs.restart(ctx); err != nil {
					return fmt.Errorf("start fsha --failover %s: %w", spec.profile, err)
				}
				fshaProfile = spec.profile
			}
			sys = fs
		} else {
			if fshaProfile != "none" {
				// keepalived gets the VIPs and the nodes to itself
				if err := (&fshaSystem{c: c}).stop(ctx); err != nil {
					return fmt.Errorf("stop fsha: %w", err)
				}
				fshaProfile = "none"
			}
			sys = newKeepalivedSystem(c, spec.ka, b.stable)
		}
		if err := sys.start(ctx); err != nil {
			return fmt.Errorf("start %s: %w", sys.label(), err)
		}
		byFailure := map[string]*failoverRun{}
		for _, f := range failures {
			r := &failoverRun{system: sys.label(), profile: spec.profile, failure: f}
			byFailure[f] = r
			runs = append(runs, r)
		}
		var failed error
	trials:
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
					if tr.outcome != "" {
						// measured; the restore after it failed
						byFailure[f].trials = append(byFailure[f].trials, tr)
					}
					// The other systems still get their turn: this one's
					// runs say where it stopped and why.
					failed = fmt.Errorf("%s, %s, trial %d: %w", sys.label(), failureNames[f], k+1, err)
					break trials
				}
				byFailure[f].trials = append(byFailure[f].trials, tr)
				log.Info("trial", zap.String("system", name), zap.String("failure", f), zap.Int("n", k+1),
					zap.String("vip_owner", tr.owner), zap.String("connect", fmtDur(tr.connect, b.probe.Limit)),
					zap.String("reset", fmtDur(tr.reset, b.blockTimeout)), zap.String("outcome", tr.outcome),
					zap.Int("holders_after", tr.holders), zap.Duration("host_stall", tr.hostStall), zap.Int("fsha_slow_loops", len(tr.daemonStalls)), zap.String("worst_slow_loop", worstSlow(tr.daemonStalls)),
					zap.Int("survivor_lapses", tr.lapses), zap.Uint64("fenced", tr.fenced), zap.Duration("cut_call", tr.cutCall), zap.Duration("cut_window", tr.cutWindow), zap.Int("setup_retries", tr.setupRetries), zap.String("decision", fmtDur(tr.decision, 0)),
					zap.String("arp_at_client", fmtDur(tr.garpSeen, 0)), zap.String("tickle_at_client", fmtDur(tr.tickleSeen, 0)))
			}
		}
		if failed != nil {
			log.Error("system stopped early; going on with the next one", zap.Error(failed))
			for _, r := range byFailure {
				r.failed = failed.Error()
			}
			failures := failed
			defer func() { err = errors.Join(err, failures) }()
			if err := heal(ctx, c); err != nil {
				return fmt.Errorf("after %w: heal the lab: %w", failed, err)
			}
		}
		if _, ka := sys.(*keepalivedSystem); ka {
			if err := sys.stop(ctx); err != nil {
				return fmt.Errorf("stop %s: %w", sys.label(), err)
			}
		}
	}
	return nil
}

// heal undoes what a failed trial may have left behind, so that the next
// system starts on a whole lab: faults at the switch, a link down, a node
// whose boot stopped before its servers ran.
func heal(ctx context.Context, c *lab.Cluster) error {
	errs := []error{c.Lab.HealFaults()}
	for _, n := range c.Nodes {
		errs = append(errs, n.LinkUp())
		servers := 0
		for _, p := range n.Processes() {
			if p.Name == "smbd" || p.Name == "ganesha" {
				servers++
			}
		}
		if servers == 0 {
			errs = append(errs, n.StartServers(ctx))
		}
	}
	return errors.Join(errs...)
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
		decision: math.NaN(), addrUp: math.NaN(), announce: math.NaN(), tickled: math.NaN(),
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
// its defaults and `--failover profile` (the lab adds only paths, the
// gossip key and debug logs).
type fshaSystem struct {
	c       *lab.Cluster
	profile string
	// stable bounds the wait for convergence after a restore.
	stable time.Duration
}

func (s *fshaSystem) label() string {
	t := ownership.DefaultTiming()
	if s.profile == "fast" {
		t = ownership.FastTiming()
	}
	return fmt.Sprintf("fsha --failover %s (lease %v, renew %v)", s.profile, t.Lease, t.Renew)
}

func (s *fshaSystem) start(ctx context.Context) error {
	return s.c.WaitConverged(ctx, 30*time.Second, s.c.Nodes...)
}

// restart starts the cluster afresh with s's profile: every daemon is
// killed, every data plane unloaded and every VIP taken off, as after a
// power cut of the whole cluster; then every node runs `fsha up
// --failover profile` (PowerUp starts it again with the same arguments).
func (s *fshaSystem) restart(ctx context.Context) error {
	if err := s.stop(ctx); err != nil {
		return err
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range s.c.Nodes {
		g.Go(func() error {
			_, err := n.StartFsha(gctx, lab.FshaOptions{Args: []string{"--failover", s.profile}})
			return err
		})
	}
	return g.Wait()
}

// stop kills every daemon (SIGKILL: a SIGTERM now stops for a restart,
// which keeps the VIPs anyway) and unloads the data planes, and takes the
// VIPs off: keepalived, or fsha with another profile, runs next on bare
// nodes.
func (s *fshaSystem) stop(ctx context.Context) error {
	var errs []error
	for _, n := range s.c.Nodes {
		if p := n.FshaProcess(); p != nil && !p.Exited() {
			errs = append(errs, n.KillFsha())
		}
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

func (s *fshaSystem) settle(ctx context.Context) error {
	return s.c.WaitConverged(ctx, s.stable, s.c.Nodes...)
}

func (s *fshaSystem) restore(ctx context.Context, n *lab.ClusterNode, failure string) error {
	var err error
	switch failure {
	case failPower:
		err = n.PowerUp(ctx)
	case failLink:
		err = uncut(ctx, s.c.Lab, n)
	default:
		err = n.NetworkUp()
	}
	if err != nil {
		return err
	}
	return s.c.WaitConverged(ctx, s.stable, s.c.Nodes...)
}

// uncut ends a Cut of n, trying three times: its `nft -f` has a 10 s
// bound that a loaded machine can exceed (nft being atomic, a failed try
// changes nothing).
func uncut(ctx context.Context, l *lab.Lab, n *lab.ClusterNode) error {
	var err error
	for range 3 {
		if err = l.Uncut(n.Host); err == nil || ctx.Err() != nil {
			return err
		}
	}
	return err
}

// explain reads the new owner's takeover record of vip: when it decided,
// put the address up, announced it and sent the tickles. It takes the
// first takeover after the failure: that one made the VIP answer (a
// renewal that still names the dead node's connections records a second
// one, with tickles of its own, a renew interval later).
func (s *fshaSystem) explain(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix, t0 time.Time, tr *trialResult) {
	// the tickle step is recorded after its repeats (about 0.6 s)
	_ = lab.Eventually(ctx, 3*time.Second, "takeover recorded", func(ctx context.Context) error {
		tl, err := n.Timeline(ctx)
		if err != nil {
			return err
		}
		for _, r := range tl {
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
			if math.IsNaN(tr.tickled) && time.Since(r.Steps[0].At) < 1500*time.Millisecond {
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

func (s *keepalivedSystem) settle(ctx context.Context) error { return kaStable(ctx, s.c, s.stable) }

func (s *keepalivedSystem) restore(ctx context.Context, n *lab.ClusterNode, failure string) error {
	switch failure {
	case failPower:
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
	case failLink:
		if err := uncut(ctx, s.c.Lab, n); err != nil {
			return err
		}
	default:
		if err := n.LinkUp(); err != nil {
			return err
		}
	}
	return kaStable(ctx, s.c, s.stable)
}

func (s *keepalivedSystem) explain(context.Context, *lab.ClusterNode, netip.Prefix, time.Time, *trialResult) {
}

// report prints the tables.
func (b *failoverBench) report(out io.Writer, c *lab.Cluster, runs []*failoverRun, took time.Duration) error {
	fmt.Fprintf(out, "\nfailover of a VIP owner, %d-node lab (smbd + nfs-ganesha on every node, %d VIPs, 1 client), one run of %s\n",
		len(c.Nodes), len(c.VIPs), took.Round(time.Second))
	fmt.Fprintf(out, "VIP answers = failure -> first new TCP connection to VIP:445 accepted (a connect every %v, each\n", b.probe.Interval)
	fmt.Fprintf(out, "given %v); blocked reset = failure -> ECONNRESET in an idle SMB client blocked in read (bound %v).\n", b.probe.AttemptTTL, b.blockTimeout)
	fmt.Fprintf(out, "power cut = owner's eth0 down, then SIGKILL to all its processes; network cut = owner's eth0 down\n")
	fmt.Fprintf(out, "(its processes run on); link cut = every frame to and from the owner dropped at the switch, links up.\n")
	fmt.Fprintf(out, "p50 = median (nearest rank), p95 = nearest rank (%s of %d); trials alternate the failures and\n",
		ordinal(int(math.Ceil(0.95*float64(b.trials)))), b.trials)
	fmt.Fprintf(out, "rotate over the VIPs. Targets (the issue's, fsha only, power cut): p95 of both measures <= %s\n",
		fmtDur(fshaTargets["default"].Seconds(), 0))
	fmt.Fprintf(out, "with --failover default, <= %s with --failover fast, from this run's trials. A link cut's clock\n", fmtDur(fshaTargets["fast"].Seconds(), 0))
	fmt.Fprintf(out, "starts at the last frame the switch delivered to the owner (a frame every 1 ms from the client).\n")
	fmt.Fprintf(out, "machine during the run: %s\n\n", b.load.summary())
	t := &table{header: []string{"system", "failure", "metric", "n", "p50", "p95", "max", "target", "result"}}
	var notes, verdicts []string
	for _, r := range runs {
		var connect, reset []float64
		outcomes := map[string]int{}
		for _, tr := range r.trials {
			connect = append(connect, tr.connect)
			reset = append(reset, tr.reset)
			outcomes[tr.outcome]++
		}
		if r.failed != "" && r.failure == failures0(runs, r.system) {
			notes = append(notes, fmt.Sprintf("%s: STOPPED EARLY, after %d trials of %d per failure: %s", r.system, len(r.trials), b.trials, r.failed))
		}
		if len(r.trials) == 0 {
			continue
		}
		for _, m := range []struct {
			name  string
			xs    []float64
			bound time.Duration
		}{
			{"VIP answers", connect, b.probe.Limit},
			{"blocked client reset", reset, b.blockTimeout},
		} {
			tgt, result := "baseline", "-"
			if r.profile != "" {
				tgt = "-"
				if bound, ok := fshaTargets[r.profile]; ok && r.failure == failPower {
					p95 := percentile(m.xs, 95)
					tgt = "p95 <= " + fmtDur(bound.Seconds(), 0)
					result = "MISS"
					if p95 <= bound.Seconds() {
						result = "PASS"
					}
					if len(r.trials) < 20 {
						result += " (n < 20)"
					}
					verdicts = append(verdicts, fmt.Sprintf("%s, %s, %s: p95 %s, target <= %s: %s",
						r.system, failureNames[r.failure], m.name, fmtDur(p95, m.bound), fmtDur(bound.Seconds(), 0), result))
				}
			}
			t.add(r.system, failureNames[r.failure], m.name, fmt.Sprint(len(m.xs)),
				fmtDur(percentile(m.xs, 50), m.bound), fmtDur(percentile(m.xs, 95), m.bound),
				fmtDur(slices.Max(m.xs), m.bound), tgt, result)
		}
		var hostStalls, daemonStalls, lapseTrials, lapses, notHeld, late, retries int
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
			retries += tr.setupRetries
			if len(tr.daemonStalls) > 0 {
				daemonStalls++
				worstDaemon = max(worstDaemon, slices.Max(tr.daemonStalls))
			}
			if tr.lapses > 0 {
				lapseTrials++
				lapses += tr.lapses
			}
		}
		if hostStalls > 0 || daemonStalls > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials with this process stalled >= 100 ms (worst %v); %d with a survivor's fsha reporting \"control loop slow\" (worst %.0f ms)",
				r.system, failureNames[r.failure], hostStalls, worstHost.Round(time.Millisecond), daemonStalls, worstDaemon*1000))
		}
		if lapseTrials > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which a survivor's own VIP lapsed (no renewal from a majority in time: it stopped answering for it), %d lapses",
				r.system, failureNames[r.failure], lapseTrials, lapses))
		}
		if late > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which the VIP, stable on its node, did not answer the client for more than 1 s before the failure",
				r.system, failureNames[r.failure], late))
		}
		if notHeld > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which, at their end, the VIP was not on exactly one surviving node (it answered, then was dropped or moved again)",
				r.system, failureNames[r.failure], notHeld))
		}
		if r.failure == failLink {
			var calls, windows []float64
			untimed := 0
			for _, tr := range r.trials {
				calls = append(calls, tr.cutCall.Seconds())
				windows = append(windows, tr.cutWindow.Seconds())
				if tr.cutUntimed {
					untimed++
				}
			}
			if untimed > 0 {
				notes = append(notes, fmt.Sprintf("%s, %s: %d trials timed from the start of the `nft -f` call: the frames through the switch port did not time the cut",
					r.system, failureNames[r.failure], untimed))
			}
			notes = append(notes, fmt.Sprintf("%s, %s: clock from the last frame through the switch port; the cut fell within %.1f ms (p50), %.1f ms (max) after it; the `nft -f` call took %s (p50), %s (max)",
				r.system, failureNames[r.failure], percentile(windows, 50)*1000, slices.Max(windows)*1000,
				fmtDur(percentile(calls, 50), 0), fmtDur(slices.Max(calls), 0)))
		}
		if retries > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trial set-ups failed before the failure (the VIP moved, was dropped or the blocked client was reset): waited for a stable system and started over",
				r.system, failureNames[r.failure], retries))
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
	if len(verdicts) > 0 {
		fmt.Fprintf(out, "\ntargets (power cut, p95 of this run's trials, %d nodes):\n", len(c.Nodes))
		for _, v := range verdicts {
			fmt.Fprintln(out, "  "+v)
		}
	}

	// Where fsha's time goes: its own timeline against the client's view.
	bt := &table{header: []string{"system", "failure", "n", "decision", "first GARP sent", "tickles sent", "ARP at client", "tickle at client", "VIP answers", "client reset"}}
	for _, r := range runs {
		if r.profile == "" || len(r.trials) == 0 {
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
		bt.add("fsha --failover "+r.profile, failureNames[r.failure], fmt.Sprint(len(r.trials)),
			col(func(t trialResult) float64 { return t.decision }), col(func(t trialResult) float64 { return t.announce }),
			col(func(t trialResult) float64 { return t.tickled }), col(func(t trialResult) float64 { return t.garpSeen }),
			col(func(t trialResult) float64 { return t.tickleSeen }),
			col(func(t trialResult) float64 { return t.connect }), col(func(t trialResult) float64 { return t.reset }))
	}
	if len(bt.rows) > 0 {
		fmt.Fprintf(out, "\nfsha: where the time goes, p50 / p95 since the failure. From the new owner's `fsha timeline`:\n")
		fmt.Fprintf(out, "decision = its worker starts the takeover (the majority's promises are in); first GARP sent;\n")
		fmt.Fprintf(out, "tickles sent = its record of the first round of tickle ACKs. From the client's eth0 (packet socket,\n")
		fmt.Fprintf(out, "kernel time): the first ARP for the VIP and the first segment from VIP:445 to the blocked client\n\n")
		return bt.write(out)
	}
	return nil
}

// failures0 is the first failure of system's runs (its notes come once).
func failures0(runs []*failoverRun, system string) string {
	for _, r := range runs {
		if r.system == system {
			return r.failure
		}
	}
	return ""
}

// worstSlow is the longest of a trial's "control loop slow" reports.
func worstSlow(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmtDur(slices.Max(xs), 0)
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
