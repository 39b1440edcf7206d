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
// With -failover-conns N, each trial also holds N idle connections to
// VIP:139 of the owner (failover_conns.go): opened before the failure,
// replicated to every survivor, held by a minimal listener the bench
// starts in the owner's namespace (smbd forks a process per connection),
// and timed one by one from the failure to their reset.
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
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

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
	// conns connections on the owner besides, on connsPort
	// (failover_conns.go); connsSysctls the client's limits that bear on
	// their resets, read at the first trial
	conns        int
	connsPort    uint16
	connsSysctls map[string]string

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
	b := &failoverBench{connsPort: 139}
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
			fs.IntVar(&b.conns, "failover-conns", 0, "failover: before each failure also open this many TCP connections from the client to VIP:-failover-conns-port on the owner (held by a minimal listener the bench starts there), wait until they are replicated, and time each one's reset; 0 = off. Meant for -failover-systems fsha -failover-failures power; 10000 adds about 5 s per trial")
			fs.Func("failover-conns-port", "failover: the port of -failover-conns: one fsha tracks (--ports 445,139,2049,111) that no lab server listens on (default 139)", func(v string) error {
				p, err := strconv.ParseUint(v, 10, 16)
				if err != nil || p == 0 {
					return fmt.Errorf("port %q", v)
				}
				b.connsPort = uint16(p)
				return nil
			})
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

type failoverRun struct {
	system  string
	profile string // fsha's --failover, "" for keepalived
	failure string
	trials  []trialResult
	// failed says why the system's trials stopped early, "" when they
	// did not.
	failed string
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
	if b.conns < 0 || b.conns > 25000 {
		return fmt.Errorf("-failover-conns %d out of 0..25000 (one client address, ports 32768-60999)", b.conns)
	}
	if b.conns > 0 {
		lim, err := raiseNoFile(b.conns)
		if err != nil {
			return err
		}
		log.Info("open files limit", zap.Uint64("soft", lim.Cur), zap.Uint64("hard", lim.Max), zap.Int("conns", b.conns))
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

// worstSlow is the longest of a trial's "control loop slow" reports.
func worstSlow(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return fmtDur(slices.Max(xs), 0)
}
