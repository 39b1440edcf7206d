package main

// Suite "iofreeze": the I/O freeze an application sees on a file-server
// cluster when a node fails or is taken out for maintenance, fsha beside
// CTDB doing the IP failover itself, in the same lab and the same run (the
// guides' test matrix, issue 10).
//
// Each system gets its own 3-node lab cluster with clustered Samba: every
// node runs ctdbd (Samba's databases) and smbd with `clustering = yes`.
// The storage (-iofreeze-storage) is, by default, the GlusterFS HA guide's
// layout: a replica 3 volume, a brick per node, FUSE-mounted on every node
// in its namespace (so a cut node loses the storage too), smbd serving
// each node's mount, CTDB's cluster lock and fsha's --lock files on the
// volume; or, with "local", the lab's shared directory (every namespace
// sees it, the locks too: a cut-off node keeps any lock it holds).
//
//   - fsha: fsha moves the VIPs (ctdbd for the databases only, with the
//     tunables README recommends beside fsha: 1 s keepalives, leader
//     timeout 3 s; fsha's CTDB kick and election call on);
//   - fsha-nokick: the same with --dead-peer-ports "" (the survivors keep
//     their GlusterFS connections with a dead node until GlusterFS's own
//     keepalives end them): the baseline of that kick;
//   - ctdb-fast: CTDB moves the VIPs, with the same fast tunables;
//   - ctdb: CTDB moves the VIPs with its defaults (5 s keepalives x 5).
//
// The client mounts //VIP/share with smbnetfs (FUSE on libsmbclient) and
// an application loop writes 4 KiB and reads it back, checked, every
// 20 ms (tools/lab/iorun.go); the suite first watches it for 10 s with
// nothing failing. For each test and trial the suite finds the node that
// holds the VIP (the kernel's addresses) and who leads CTDB, and fails the
// holder (or, with -iofreeze-victim leader, CTDB's leader):
//
//   - power: cuts its power (link down, every process killed: gluster's
//     too), and powers it up again (a boot: glusterd, brick, mount, ctdbd,
//     smbd, fsha);
//   - network: takes its eth0 down inside it, its processes running (the
//     OVD guide's network-down), then up (a ctdbd that moves IPs sets it
//     up again itself: its 10.interface monitor does so for a public
//     interface without link; the suite says when it found it up);
//   - cut: cuts it off at the switch (its link stays up), then heals;
//   - move: moves the VIP to another node (`fsha move`, `ctdb moveip`);
//
// A fault lasts until the application has done 10 good operations and at
// least -iofreeze-outage. Meanwhile the suite writes a file of random
// bytes through the VIP (a survivor holds it) and, before the node comes
// back, looks at it: a cut-off node must not hold the VIP, nor have taken
// CTDB's cluster lock, and its fsha must answer its admin API (its lock
// I/O must not block it). Once the node is back (or the move is done) the
// suite waits until the cluster is settled (every VIP on one node as the
// system says, CTDB healthy), 2 s more, and 10 good operations of the
// application after that, then checks the guides' OVD Test 5: the file
// reached the node's brick (self-heal; timed from the node's return) and
// reads back identical through the node's own address.
//
// It reports per system and test the freeze (the longest time without a
// good operation ending, from the fault to the node's return, or for a
// move to the end of the wait above; an operation still hanging at the
// window's end counts up to it), the errors
// the application saw, the reads that returned other data than written,
// whether the data came back, and separately the freeze while the failed
// node came back (the failback: a move for fsha, a release and takeover
// for CTDB); then every trial: the victim, whether it led CTDB, when a
// survivor took CTDB's cluster lock, whether fsha called CTDB's election,
// what the cut-off node did.
//
// Targets (issue 10): a crash freezes SMB I/O at most 1 s at p95, a move
// 0.1 s, with no error; CTDB rows are the baseline, without a target.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/netip"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/tools/lab"
)

type iofreezeBench struct {
	trials  int
	systems string
	tests   string
	storage string
	// resume bounds the wait for the application after a fault
	resume time.Duration
	// outage is the shortest time a node stays out
	outage time.Duration
	// victim: the VIP's holder, or CTDB's leader (every test but move)
	victim string
	// keepalive: the bricks' short TCP keepalives (glusterKeepalive)
	keepalive bool
}

// glusterKeepalive are the volume options README gives for the bricks to
// drop a dead client's locks in seconds rather than 41-44 s: CTDB's
// cluster lock, held by a leader that died, blocks every survivor's
// election until they do.
var glusterKeepalive = [][2]string{
	{"server.keepalive-time", "2"},
	{"server.keepalive-interval", "1"},
	{"server.keepalive-count", "2"},
	{"server.tcp-user-timeout", "5"},
}

var iofreeze iofreezeBench

// iofreezeTests are the tests in the order a trial runs them.
var iofreezeTests = []string{"power", "network", "cut", "move"}

func iofreezeSuite() *suite {
	return &suite{
		name: "iofreeze",
		flags: func(fs *flag.FlagSet) {
			registerLabFlags(fs)
			fs.IntVar(&iofreeze.trials, "iofreeze-trials", 5, "iofreeze: trials per system and test")
			fs.StringVar(&iofreeze.systems, "iofreeze-systems", "fsha,ctdb-fast,ctdb", "iofreeze: systems (fsha, fsha-nokick: without the kick on GlusterFS's ports, ctdb-fast, ctdb)")
			fs.StringVar(&iofreeze.tests, "iofreeze-tests", "power,network,move", "iofreeze: tests (power, network: eth0 down in the node, cut: at the switch, move)")
			fs.StringVar(&iofreeze.storage, "iofreeze-storage", "gluster", "iofreeze: the share and the locks on a replica 3 GlusterFS volume (gluster) or on the lab's shared directory (local)")
			fs.DurationVar(&iofreeze.resume, "iofreeze-resume-timeout", 120*time.Second, "iofreeze: how long to wait for the application's I/O after a fault")
			fs.DurationVar(&iofreeze.outage, "iofreeze-outage", 10*time.Second, "iofreeze: the shortest time a failed node stays out")
			fs.StringVar(&iofreeze.victim, "iofreeze-victim", "holder", "iofreeze: the node power, network and cut fail: the application's VIP's holder (holder) or CTDB's leader (leader)")
			fs.BoolVar(&iofreeze.keepalive, "iofreeze-gluster-keepalive", false, "iofreeze: the bricks' TCP keepalive and user timeout short (2 s, 1 s x 2, 5 s), as README advises, instead of GlusterFS's defaults")
		},
		run: func(ctx context.Context, log *zap.Logger, out io.Writer) error { return iofreeze.run(ctx, log, out) },
	}
}

// freezeSystem is one way to run the cluster.
type freezeSystem struct {
	name string
	opts lab.ClusterOptions
	fsha bool // fsha moves the VIPs (else CTDB does)
}

var freezeSystems = []freezeSystem{
	{name: "fsha", opts: lab.ClusterOptions{Nodes: 3, CTDB: true, CTDBFast: true}, fsha: true},
	// the baseline of fsha's kick on GlusterFS's ports: the bricks keep a
	// dead node's locks until their keepalives give it up
	{name: "fsha-nokick", opts: lab.ClusterOptions{Nodes: 3, CTDB: true, CTDBFast: true,
		FshaArgs: []string{"--dead-peer-ports", ""}}, fsha: true},
	{name: "ctdb-fast", opts: lab.ClusterOptions{Nodes: 3, CTDB: true, CTDBFast: true, CTDBMovesIPs: true}},
	{name: "ctdb", opts: lab.ClusterOptions{Nodes: 3, CTDB: true, CTDBMovesIPs: true}},
}

// withStorage is sys on the storage the flags name: with gluster, the
// volume, and fsha's --lock on it beside CTDB's cluster lock.
func (sys freezeSystem) withStorage(storage string, keepalive bool) freezeSystem {
	if storage == "gluster" {
		sys.opts.Gluster = true
		sys.opts.Lock = sys.fsha
		if keepalive {
			sys.opts.GlusterOptions = glusterKeepalive
		}
	}
	return sys
}

// freezeTrial is what one trial measured.
type freezeTrial struct {
	fault, failback lab.IOReport
	resumed         bool
	victim          string
	ctdb            ctdbView
	cutOff          *cutOffView // network and cut
	data            *ovdCheck   // every test but move
	// trouble lists the application's failed and slow operations from
	// the fault to the end of the failback, for the log
	trouble string
}

// freezeSystemRun is one system's lab and trials.
type freezeSystemRun struct {
	start  time.Duration // the cluster's start, volume included
	took   time.Duration // the whole system, lab to close
	trials map[string][]freezeTrial
	// quiet is the application before any fault, over quietWindow: its
	// longest gap, and its operations' durations (p50, p99)
	quiet              lab.IOReport
	quietP50, quietP99 time.Duration
}

// quietWindow is how long the suite watches the application before the
// first fault: what it does with nothing failing.
const quietWindow = 10 * time.Second

func (b *iofreezeBench) run(ctx context.Context, log *zap.Logger, out io.Writer) error {
	tests := strings.Split(b.tests, ",")
	for _, t := range tests {
		if !slices.Contains(iofreezeTests, t) {
			return fmt.Errorf("iofreeze: no test %q", t)
		}
	}
	if b.storage != "gluster" && b.storage != "local" {
		return fmt.Errorf("iofreeze: storage %q: want gluster or local", b.storage)
	}
	if b.victim != "holder" && b.victim != "leader" {
		return fmt.Errorf("iofreeze: victim %q: want holder or leader", b.victim)
	}
	results := map[string]freezeSystemRun{}
	var order []string
	for _, name := range strings.Split(b.systems, ",") {
		i := slices.IndexFunc(freezeSystems, func(s freezeSystem) bool { return s.name == name })
		if i < 0 {
			return fmt.Errorf("iofreeze: no system %q", name)
		}
		res, err := b.system(ctx, log.With(zap.String("system", name)), freezeSystems[i].withStorage(b.storage, b.keepalive), tests)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		results[name] = res
		order = append(order, name)
	}
	return b.report(out, order, tests, results)
}

// system measures every test on one system, in a lab of its own.
func (b *iofreezeBench) system(ctx context.Context, log *zap.Logger, sys freezeSystem, tests []string) (freezeSystemRun, error) {
	began := time.Now()
	run := freezeSystemRun{trials: map[string][]freezeTrial{}}
	l, err := benchLab(ctx, log)
	if err != nil {
		return run, err
	}
	defer l.Close()
	c, err := lab.NewCluster(ctx, l, sys.opts)
	if err != nil {
		return run, err
	}
	run.start = time.Since(began)
	log.Info("cluster up", zap.String("storage", b.storage), zap.Duration("took", run.start))
	vip := c.VIPs[0]
	m, err := c.Clients[0].MountSMB(ctx, vip.Addr())
	if err != nil {
		return run, err
	}
	app := lab.StartIO(m.Dir, "app.dat", 20*time.Millisecond)
	defer app.Stop(5 * time.Second)
	if err := waitGoodOps(ctx, app, 0, time.Time{}, 10, 30*time.Second); err != nil {
		return run, fmt.Errorf("the application does not run: %w", err)
	}
	from := len(app.Ops())
	time.Sleep(quietWindow)
	quiet := app.Ops()[from:]
	run.quiet = lab.Report(quiet)
	var durs []float64
	for _, op := range quiet {
		durs = append(durs, op.End.Sub(op.Start).Seconds())
	}
	run.quietP50 = time.Duration(percentile(durs, 50) * float64(time.Second))
	run.quietP99 = time.Duration(percentile(durs, 99) * float64(time.Second))
	log.Info("no fault", zap.Stringer("app", run.quiet), zap.Duration("op_p50", run.quietP50), zap.Duration("op_p99", run.quietP99))
	for trial := range b.trials {
		for _, test := range tests {
			tr, err := b.trial(ctx, c, sys, app, vip, test, trial+1)
			if err != nil {
				return run, fmt.Errorf("%s trial %d: %w", test, trial+1, err)
			}
			log.Info("trial", zap.String("test", test), zap.Int("trial", trial+1), zap.String("victim", tr.victim),
				zap.String("ctdb", tr.ctdb.String()), zap.Stringer("fault", tr.fault), zap.Stringer("failback", tr.failback),
				zap.Stringer("cut_off", tr.cutOff), zap.Stringer("data", tr.data), zap.String("trouble", tr.trouble))
			run.trials[test] = append(run.trials[test], tr)
		}
	}
	run.took = time.Since(began)
	return run, nil
}

// trial fails the VIP's holder (or CTDB's leader) one way, measures,
// restores and settles.
func (b *iofreezeBench) trial(ctx context.Context, c *lab.Cluster, sys freezeSystem, app *lab.IORun, vip netip.Prefix, test string, n int) (tr freezeTrial, err error) {
	holder, err := c.Owner(vip, c.Nodes...)
	if err != nil {
		return tr, err
	}
	victim := holder
	var leader *lab.ClusterNode
	tr.ctdb, leader = ctdbBefore(ctx, c)
	if b.victim == "leader" && test != "move" {
		if leader == nil {
			return tr, errors.New("the ctdbd do not agree on a leader to fail")
		}
		victim = leader
	}
	tr.victim = victim.Role
	tr.ctdb.led = leader == victim
	from := len(app.Ops())
	start := time.Now()
	defer func() { tr.trouble = trouble(app.Ops()[from:], start) }()
	var restore func() error
	switch test {
	case "power":
		if err := victim.PowerDown(); err != nil {
			return tr, err
		}
		restore = func() error { return victim.PowerUp(ctx) }
	case "network":
		if err := victim.NetworkDown(); err != nil {
			return tr, err
		}
		restore = victim.NetworkUp
	case "cut":
		if err := c.Lab.Cut(victim.Host); err != nil {
			return tr, err
		}
		restore = func() error { return uncut(ctx, c.Lab, victim) }
	case "move":
		to := c.Others(holder)[0]
		if err := moveVIP(ctx, c, sys, vip, holder, to); err != nil {
			return tr, err
		}
	}
	err = waitGoodOps(ctx, app, from, start, 10, b.resume)
	tr.resumed = err == nil
	if restore == nil {
		// the move is over when the system says so; the application
		// must not have noticed anything until then, nor just after
		if err := b.settled(ctx, c, sys, app, from); err != nil {
			return tr, err
		}
		tr.fault = lab.ReportUntil(app.Ops()[from:], time.Now())
		tr.ctdb.after(c, holder, start, time.Now())
		return tr, nil
	}
	if tr.resumed {
		tr.data = writeDuring(ctx, c, vip, victim, fmt.Sprintf("ovd5-%s-%s-%d.bin", sys.name, test, n))
	}
	time.Sleep(time.Until(start.Add(b.outage)))
	if test != "power" {
		v := observeCutOff(ctx, sys, test, victim, tr.ctdb, start)
		tr.cutOff = &v
	}
	tr.fault = lab.ReportUntil(app.Ops()[from:], time.Now())
	if !tr.resumed {
		tr.fault.Freeze = time.Duration(math.MaxInt64)
	}
	fb := len(app.Ops())
	tr.ctdb.after(c, victim, start, time.Now())
	// timed from the return's start: a power-up's boot (glusterd, the
	// brick, the mount, ctdbd, smbd, fsha) lets self-heal run before it
	// ends
	tr.data.watchHeal(ctx, victim, time.Now())
	if err := restore(); err != nil {
		return tr, err
	}
	if err := b.settled(ctx, c, sys, app, fb); err != nil {
		return tr, err
	}
	tr.failback = lab.ReportUntil(app.Ops()[fb:], time.Now())
	tr.data.readBack(ctx, c, victim)
	return tr, settle(ctx, c, sys)
}

// settled waits until the cluster is settled, 2 s more, and the
// application's 10 good operations (among those from index from on) since
// then: an operation that hangs across the settling is the trial's, not
// the next one's.
func (b *iofreezeBench) settled(ctx context.Context, c *lab.Cluster, sys freezeSystem, app *lab.IORun, from int) error {
	if err := settle(ctx, c, sys); err != nil {
		return err
	}
	time.Sleep(2 * time.Second)
	// no error when it does not come: the report's tail gap says so
	_ = waitGoodOps(ctx, app, from, time.Now(), 10, b.resume)
	return nil
}

// trouble lists the operations that failed, read other data than written
// or took more than 500 ms: kind, start from t0, duration, error.
func trouble(ops []lab.IOOp, t0 time.Time) string {
	var out []string
	for _, op := range ops {
		took := op.End.Sub(op.Start)
		if op.Err == nil && !op.Mismatch && took <= 500*time.Millisecond {
			continue
		}
		s := fmt.Sprintf("%s at +%.2fs took %.2fs", op.Kind, op.Start.Sub(t0).Seconds(), took.Seconds())
		switch {
		case op.Err != nil:
			s += ": " + op.Err.Error()
		case op.Mismatch:
			s += ": other data"
		}
		out = append(out, s)
	}
	return strings.Join(out, "; ")
}

// waitGoodOps waits until the application has n good operations that
// ended after since, among its operations from index from on.
func waitGoodOps(ctx context.Context, app *lab.IORun, from int, since time.Time, n int, timeout time.Duration) error {
	return lab.Eventually(ctx, timeout, fmt.Sprintf("%d good operations", n), func(context.Context) error {
		if good := lab.GoodSince(app.Ops()[from:], since); good < n {
			return fmt.Errorf("%d so far", good)
		}
		return nil
	})
}

// moveVIP asks the system to move vip from holder to to, and waits until
// it is on to's eth0.
func moveVIP(ctx context.Context, c *lab.Cluster, sys freezeSystem, vip netip.Prefix, holder, to *lab.ClusterNode) error {
	var err error
	if sys.fsha {
		_, err = holder.Admin(ctx, "move", vip.Addr().String(), to.IP().String())
	} else {
		_, err = holder.CTDB(ctx, "moveip", vip.Addr().String(), fmt.Sprint(to.PNN))
	}
	if err != nil {
		return fmt.Errorf("move %s to %s: %w", vip, to.Role, err)
	}
	return lab.Eventually(ctx, 60*time.Second, vip.String()+" on "+to.Role, func(context.Context) error {
		o, err := c.Owner(vip, c.Nodes...)
		if err == nil && o != to {
			err = fmt.Errorf("on %s", o.Role)
		}
		return err
	})
}

// settle waits until every node runs and agrees: CTDB healthy on all,
// and every VIP placed as the system that moves them says.
func settle(ctx context.Context, c *lab.Cluster, sys freezeSystem) error {
	if err := c.WaitCTDB(ctx, 120*time.Second, c.Nodes...); err != nil {
		return err
	}
	if sys.fsha {
		// a failback steers the application's connection to the node it
		// lives on for as long as it lives: the VIP is placed, draining
		return lab.Eventually(ctx, 60*time.Second, "every VIP placed", func(ctx context.Context) error {
			return c.Placed(ctx, c.Nodes...)
		})
	}
	return c.WaitCTDBIPs(ctx, 120*time.Second)
}

// seconds64 is d in seconds, +Inf for a freeze that never ended.
func seconds64(d time.Duration) float64 {
	if d == time.Duration(math.MaxInt64) {
		return math.Inf(1)
	}
	return d.Seconds()
}
