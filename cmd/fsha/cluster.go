package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ctdbclient"
	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/metrics"
	"github.com/fsha/fsha/control/node"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/quorum"
	"github.com/fsha/fsha/control/remote"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
)

// clusterFlags turn `fsha up` from standalone tracking into a cluster node:
// they apply when --nodes is given.
func clusterFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nodes", EnvVars: []string{"FSHA_NODES"},
			Usage: "CTDB-format nodes file (one node address per line); without it fsha only tracks connections"},
		&cli.StringFlag{Name: "node-address", EnvVars: []string{"FSHA_NODE_ADDRESS"},
			Usage: "this node's address in the nodes file (default: the local address found there)"},
		&cli.StringFlag{Name: "gossip-key", EnvVars: []string{"FSHA_GOSSIP_KEY"},
			Usage: "file holding the cluster's shared secret: gossip is encrypted and authenticated with it"},
		&cli.BoolFlag{Name: "insecure-gossip", EnvVars: []string{"FSHA_INSECURE_GOSSIP"},
			Usage: "run gossip without a key: anyone on the network can join and read"},
		&cli.IntFlag{Name: "gossip-port", Value: membership.DefaultPort, EnvVars: []string{"FSHA_GOSSIP_PORT"},
			Usage: "gossip port (TCP and UDP) on every node address"},
		&cli.IntFlag{Name: "replication-port", Value: replication.DefaultPort, EnvVars: []string{"FSHA_REPLICATION_PORT"},
			Usage: "TCP port on every node address for the replication of connections"},
		&cli.StringFlag{Name: "failover", Value: "default", EnvVars: []string{"FSHA_FAILOVER"},
			Usage: "default (a dead holder's VIPs are answered again within about 0.26 s; survives 200 ms stalls and lost heartbeats) or fast (about 0.07 s, for a quiet LAN and a daemon never starved of CPU for 40 ms)"},
		&cli.DurationFlag{Name: "lease", EnvVars: []string{"FSHA_LEASE"},
			Usage: "override how long the other nodes promise a VIP to its holder per renewal: the failover time after a crash"},
		&cli.DurationFlag{Name: "renew-interval", EnvVars: []string{"FSHA_RENEW_INTERVAL"},
			Usage: "override the heartbeat (lease renewal) interval; the lease must be at least three of them"},
		&cli.DurationFlag{Name: "restart-grace", EnvVars: []string{"FSHA_RESTART_GRACE"},
			Usage: "how long the other nodes keep a restarting node's VIPs for it (SIGTERM); past it they take over as after a crash (default 10s)"},
		&cli.BoolFlag{Name: "realtime", Value: true, EnvVars: []string{"FSHA_REALTIME"},
			Usage: "run with real-time scheduling (SCHED_RR, lowest priority), like ctdbd and keepalived, so that a busy machine cannot starve the lease renewals (--realtime=false: a normal process)"},
		&cli.StringFlag{Name: "gossip-timing", Value: "tolerant", EnvVars: []string{"FSHA_GOSSIP_TIMING"},
			Usage: "membership gossip (operator moves, joining): tolerant (memberlist's LAN defaults) or fast; failover does not depend on it"},
		&cli.DurationFlag{Name: "probe-interval", EnvVars: []string{"FSHA_PROBE_INTERVAL"},
			Usage: "override the gossip's probe interval"},
		&cli.DurationFlag{Name: "probe-timeout", EnvVars: []string{"FSHA_PROBE_TIMEOUT"},
			Usage: "override how long a gossip probe waits for its answer"},
		&cli.IntFlag{Name: "suspicion-mult", EnvVars: []string{"FSHA_SUSPICION_MULT"},
			Usage: "override the gossip's suspicion multiplier"},
		&cli.UintFlag{Name: "ctdb-port", Value: ctdbPort, EnvVars: []string{"FSHA_CTDB_PORT"},
			Usage: "once a peer is judged dead, end this node's TCP connections with it on this port (ctdbd's), so that CTDB recovers Samba's databases now rather than after its keepalives (0: leave them)"},
		&cli.StringFlag{Name: "dead-peer-ports", Value: glusterPorts, EnvVars: []string{"FSHA_DEAD_PEER_PORTS"},
			Usage: "ports and ranges (a,b-c) of other cluster services whose TCP connections with a peer judged dead this node ends as --ctdb-port does ctdbd's: GlusterFS's glusterd and bricks by default, so that the surviving bricks drop the dead node's locks (CTDB's cluster lock among them) and the surviving clients its brick now rather than after GlusterFS's keepalives and ping timeout (about 40 s by default); empty: none"},
		&cli.BoolFlag{Name: "ctdb-election", Value: true, EnvVars: []string{"FSHA_CTDB_ELECTION"},
			Usage: "with --ctdb-port: when the peer judged dead was CTDB's leader (as its broadcasts, heard through --ctdb-socket, said), send CTDB's own unknown-leader broadcast so that the survivors elect a new leader now rather than after CTDB's leader timeout; only when CTDB runs with a cluster lock (--ctdb-election=false: wait for CTDB)"},
		&cli.StringFlag{Name: "ctdb-socket", Value: ctdbclient.DefaultSocket, EnvVars: []string{"FSHA_CTDB_SOCKET", "CTDB_SOCKET"},
			Usage: "the local ctdbd's client socket, for --ctdb-election: the one smbd's 'ctdbd socket' and the ctdb tool use (CTDB_SOCKET, or CTDB's default)"},
		&cli.StringFlag{Name: "lock", EnvVars: []string{"FSHA_LOCK"},
			Usage: "lock file on the cluster file system (like CTDB's recovery lock): needed by two-node clusters"},
		&cli.BoolFlag{Name: "allow-two-nodes-without-lock", EnvVars: []string{"FSHA_ALLOW_TWO_NODES_WITHOUT_LOCK"},
			Usage: "run a two-node cluster with no lock: a partition makes both nodes stop holding VIPs"},
		&cli.DurationFlag{Name: "drain-timeout", Value: 5 * time.Minute, EnvVars: []string{"FSHA_DRAIN_TIMEOUT"},
			Usage: "a VIP moved away in a planned move keeps serving its old connections this long, then resets them (0: reset at once)"},
		&cli.DurationFlag{Name: "shutdown-timeout", Value: 2 * time.Minute, EnvVars: []string{"FSHA_SHUTDOWN_TIMEOUT"},
			Usage: "a shutdown (SIGINT: systemctl stop) hands the VIPs over and waits for their connections to drain, at most this long (and --drain-timeout), then resets those left (their clients reconnect to the new holders) and exits; keep it below the unit's TimeoutStopSec (0: no bound but --drain-timeout)"},
		&cli.StringFlag{Name: "failback", Value: "automatic", EnvVars: []string{"FSHA_FAILBACK"},
			Usage: "automatic (a recovered node gets its share of VIPs back) or sticky (VIPs stay until moved)"},
		&cli.StringFlag{Name: "run-dir", Value: admin.DefaultRunDir, EnvVars: []string{"FSHA_RUN_DIR"},
			Usage: "directory of the admin socket"},
		&cli.StringFlag{Name: "admin-group", EnvVars: []string{"FSHA_ADMIN_GROUP"},
			Usage: "group whose members may use the read-only commands (status, ip, ipinfo, timeline, checks): the admin socket becomes mode 0660 of this group; changes stay root's"},
		&cli.StringFlag{Name: "state-dir", Value: "/var/lib/fsha", EnvVars: []string{"FSHA_STATE_DIR"},
			Usage: "directory of what survives a reboot (maintenance mode: fsha disable)"},
		&cli.StringFlag{Name: "hooks-dir", Value: "/etc/fsha/events.d", EnvVars: []string{"FSHA_HOOKS_DIR"},
			Usage: "executables run on CTDB's events (startup, takeip, releaseip, monitor, shutdown) with CTDB's arguments and FSHA_VIP, FSHA_IFACE, FSHA_STOP... in the environment"},
		&cli.DurationFlag{Name: "hook-timeout", Value: 10 * time.Second, EnvVars: []string{"FSHA_HOOK_TIMEOUT"},
			Usage: "how long one hook may run before it is killed"},
		&cli.StringSliceFlag{Name: "check", Value: cli.NewStringSlice("tcp:445", "tcp:2049"), EnvVars: []string{"FSHA_CHECKS"},
			Usage: "health checks: tcp:PORT (on the node address), tcp:HOST:PORT or cmd:COMMAND (words split as a shell would, quotes and backslashes, nothing expanded); repeat the flag"},
		&cli.StringFlag{Name: "metrics-listen", EnvVars: []string{"FSHA_METRICS_LISTEN"},
			Usage: "address to serve Prometheus metrics on, e.g. 198.18.0.1:9465 (off when empty)"},
	}
}

// clusterConfig is everything the cluster mode reads before it starts.
type clusterConfig struct {
	nodes []config.Node
	self  int
	vips  []config.PublicAddress
	// retiring: VIPs held or drained here before a reload that
	// public_addresses no longer lists (node.RetiringVIPs)
	retiring []netip.Addr
	key      []byte
	timing   membership.Timing
	owner    ownership.Timing
	policy   allocation.Policy
	lock     *quorum.Lock
	checks   []health.Check
	// adminGID: the group the admin socket is shared with, read-only
	// (--admin-group); -1: none
	adminGID int
}

// loadClusterConfig checks all of the cluster settings before anything
// runs: a node never starts on a half-valid configuration.
func loadClusterConfig(c *cli.Context, log *zap.Logger, vips []config.PublicAddress) (*clusterConfig, error) {
	cc := &clusterConfig{vips: vips}
	if err := checkRanges(c); err != nil {
		return nil, err
	}
	nodes, err := config.LoadNodes(c.String("nodes"))
	if err != nil {
		return nil, err
	}
	if err := config.ResolveNodeRefs(vips, nodes); err != nil {
		return nil, err
	}
	cc.nodes = nodes
	if cc.self, err = findSelf(nodes, c.String("node-address")); err != nil {
		return nil, err
	}

	switch {
	case c.String("gossip-key") != "":
		secret, err := os.ReadFile(c.String("gossip-key"))
		if err != nil {
			return nil, fmt.Errorf("--gossip-key: %w", err)
		}
		if len(strings.TrimSpace(string(secret))) < 16 {
			return nil, fmt.Errorf("--gossip-key %s: the secret must be at least 16 characters", c.String("gossip-key"))
		}
		cc.key = membership.KeyFromSecret(secret)
	case c.Bool("insecure-gossip"):
		log.Warn("gossip runs WITHOUT encryption or authentication (--insecure-gossip): any host on the network can join the cluster")
	default:
		return nil, errors.New("--gossip-key FILE is required (or --insecure-gossip to run without one)")
	}

	switch c.String("gossip-timing") {
	case "fast":
		cc.timing = membership.FastTiming()
	case "tolerant":
		cc.timing = membership.TolerantTiming()
	default:
		return nil, fmt.Errorf("--gossip-timing: %q is neither fast nor tolerant", c.String("gossip-timing"))
	}
	if d := c.Duration("probe-interval"); d > 0 {
		cc.timing.ProbeInterval = d
	}
	if d := c.Duration("probe-timeout"); d > 0 {
		cc.timing.ProbeTimeout = d
	}
	if m := c.Int("suspicion-mult"); m > 0 {
		cc.timing.SuspicionMult = m
	}
	if cc.timing.ProbeTimeout >= cc.timing.ProbeInterval {
		return nil, fmt.Errorf("probe timeout %v must be shorter than the probe interval %v", cc.timing.ProbeTimeout, cc.timing.ProbeInterval)
	}

	switch c.String("failover") {
	case "default":
		cc.owner = ownership.DefaultTiming()
	case "fast":
		cc.owner = ownership.FastTiming()
	default:
		return nil, fmt.Errorf("--failover: %q is neither default nor fast", c.String("failover"))
	}
	if d := c.Duration("lease"); d > 0 {
		cc.owner.Lease = d
	}
	if d := c.Duration("renew-interval"); d > 0 {
		cc.owner.Renew = d
	}
	if d := c.Duration("restart-grace"); d > 0 {
		cc.owner.Grace = d
	}
	if err := cc.owner.Validate(); err != nil {
		return nil, fmt.Errorf("--lease, --renew-interval, --restart-grace: %w", err)
	}

	switch c.String("failback") {
	case "automatic":
		cc.policy = allocation.Automatic
	case "sticky", "manual":
		cc.policy = allocation.Sticky
	default:
		return nil, fmt.Errorf("--failback: %q is neither automatic nor sticky", c.String("failback"))
	}

	live := 0
	for _, n := range nodes {
		if !n.Deleted {
			live++
		}
	}
	if err := quorum.CheckConfig(live, c.String("lock"), c.Bool("allow-two-nodes-without-lock")); err != nil {
		return nil, err
	}
	if p := c.String("lock"); p != "" {
		cc.lock = quorum.NewLock(p)
	}

	for _, s := range c.StringSlice("check") {
		ch, err := health.ParseCheck(s, nodes[cc.self].Addr.String())
		if err != nil {
			return nil, fmt.Errorf("--check: %w", err)
		}
		cc.checks = append(cc.checks, ch)
	}
	if cc.adminGID, err = lookupGroup(c.String("admin-group")); err != nil {
		return nil, fmt.Errorf("--admin-group: %w", err)
	}
	return cc, nil
}

// checkRanges refuses values that would leave the node unable to work,
// naming the flag: a duration that must be positive (an explicit 0 would
// otherwise mean "the default" for some and "never" for others), a port
// out of range, a drain timeout below zero (0 resets at once), a lock file
// whose directory does not exist (its every check would fail).
func checkRanges(c *cli.Context) error {
	for _, name := range []string{"lease", "renew-interval", "restart-grace", "probe-interval", "probe-timeout", "hook-timeout"} {
		if c.IsSet(name) && c.Duration(name) <= 0 {
			return fmt.Errorf("--%s %v: must be positive", name, c.Duration(name))
		}
	}
	if c.IsSet("suspicion-mult") && c.Int("suspicion-mult") <= 0 {
		return fmt.Errorf("--suspicion-mult %d: must be positive", c.Int("suspicion-mult"))
	}
	if d := c.Duration("drain-timeout"); d < 0 {
		return fmt.Errorf("--drain-timeout %v: must be 0 (reset at once) or more", d)
	}
	if d := c.Duration("shutdown-timeout"); d < 0 {
		return fmt.Errorf("--shutdown-timeout %v: must be 0 (no bound) or more", d)
	}
	if p := c.Int("gossip-port"); p < 1 || p > 65535 {
		return fmt.Errorf("--gossip-port %d: want 1 to 65535", p)
	}
	if p := c.Uint("ctdb-port"); p > 65535 {
		return fmt.Errorf("--ctdb-port %d: want 1 to 65535, or 0 to leave CTDB's connections alone", p)
	}
	if _, err := dataplane.ParsePortSet(c.String("dead-peer-ports")); err != nil {
		return fmt.Errorf("--dead-peer-ports: %w", err)
	}
	if p := c.String("lock"); p != "" {
		if st, err := os.Stat(filepath.Dir(p)); err != nil || !st.IsDir() {
			return fmt.Errorf("--lock %s: its directory does not exist (is the cluster file system mounted?)", p)
		}
	}
	return nil
}

// findSelf finds this node in the nodes file: the given address, or the one
// local address the file lists, as CTDB does.
func findSelf(nodes []config.Node, given string) (int, error) {
	if given != "" {
		addr, err := netip.ParseAddr(given)
		if err != nil {
			return 0, fmt.Errorf("--node-address: %w", err)
		}
		for _, n := range nodes {
			if !n.Deleted && n.Addr == addr.Unmap() {
				return n.PNN, nil
			}
		}
		return 0, fmt.Errorf("--node-address %s is not in the nodes file", addr)
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("list local addresses: %w", err)
	}
	found := -1
	for _, ia := range ifaddrs {
		p, err := netip.ParsePrefix(ia.String())
		if err != nil {
			continue
		}
		for _, n := range nodes {
			if !n.Deleted && n.Addr == p.Addr().Unmap() {
				if found >= 0 && found != n.PNN {
					return 0, errors.New("several local addresses are in the nodes file: pick one with --node-address")
				}
				found = n.PNN
			}
		}
	}
	if found < 0 {
		return 0, errors.New("no local address is in the nodes file: fix the file or pass --node-address")
	}
	return found, nil
}

// newReplicator sets up the replication of this node's flows to its peers
// and theirs into the data plane's peer flows map.
func newReplicator(c *cli.Context, log *zap.Logger, dp *dataplane.Dataplane, cc *clusterConfig) *replication.Replicator {
	nodes := map[int]netip.Addr{}
	for _, n := range cc.nodes {
		if !n.Deleted {
			nodes[n.PNN] = n.Addr
		}
	}
	return replication.New(log, replication.Config{
		Self: cc.self, Addr: cc.nodes[cc.self].Addr, Port: c.Int("replication-port"), Key: cc.key, Nodes: nodes,
	}, &dp.Maps, dp.ForEachFlow)
}

// setARPSysctls makes iface answer ARP only for its own addresses and use
// them as ARP sources, like an LVS real server (arp_ignore=1,
// arp_announce=2).
func setARPSysctls(iface string) error {
	for name, v := range map[string]string{"arp_ignore": "1", "arp_announce": "2"} {
		p := filepath.Join("/proc/sys/net/ipv4/conf", iface, name)
		if err := os.WriteFile(p, []byte(v), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// linkedMAC is the MAC of the first of ifaces with link (zero: none):
// where peers steer a drain of this node's connections. A VIP on a second
// interface, after the first lost link, is reached there.
func linkedMAC(ifaces []string, linkUp func(string) bool) [6]byte {
	if l := linkedIfaceMACs(ifaces, linkUp); len(l) > 0 {
		return l[0].MAC
	}
	return [6]byte{}
}

// linkedIfaceMACs is the MAC of each of ifaces with link, in order: where
// peers steer a drain of this node's connections that reach them on the
// network of that interface (a VIP on eth1 while eth0 is another network).
func linkedIfaceMACs(ifaces []string, linkUp func(string) bool) []ownership.IfaceMAC {
	var out []ownership.IfaceMAC
	for _, name := range ifaces {
		if !linkUp(name) {
			continue
		}
		if ifi, err := net.InterfaceByName(name); err == nil && len(ifi.HardwareAddr) == 6 {
			out = append(out, ownership.IfaceMAC{Name: name, MAC: [6]byte(ifi.HardwareAddr)})
		}
	}
	return out
}

// runCluster runs this node in the cluster until a stop request has done
// its work (see node.StopMode), or ctx ends (at once, as a crash would).
func runCluster(ctx context.Context, c *cli.Context, log *zap.Logger, dp *dataplane.Dataplane, cc *clusterConfig,
	repl *replication.Replicator, ifaces []string, stop <-chan node.StopMode) error {
	runDir := c.String("run-dir")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		return fmt.Errorf("create run dir: %w", err)
	}
	actions := dataplane.NewActions(log, &dp.Maps)
	defer actions.Close()
	checks := cc.checks
	hookRunner := newHookRunner(log, c.String("hooks-dir"), cc.nodes[cc.self].Addr.String(), c.Duration("hook-timeout"))
	checks = append(checks, newHookChecks(hookRunner)...)
	// Each VIP's interface list is a preference order: the node is fit
	// while every VIP has one with link, and an interface that appears
	// later gets the programs and the sysctls then.
	var groups [][]string
	for _, a := range cc.vips {
		groups = append(groups, a.Interfaces)
	}
	appeared := func(name string) {
		if err := actions.ForgetInterface(name); err != nil {
			log.Warn("close the packet sockets of a former interface", zap.String("interface", name), zap.Error(err))
		}
		if _, err := dp.AttachInterface(name); err != nil {
			log.Error("attach to a public interface that appeared", zap.String("interface", name), zap.Error(err))
		}
		if err := setARPSysctls(name); err != nil {
			log.Warn("arp sysctls", zap.String("interface", name), zap.Error(err))
		}
	}
	attached := func(name string) bool {
		return slices.ContainsFunc(dp.Attachments(), func(a dataplane.Attachment) bool { return a.Interface == name && a.Hook == "xdp" })
	}
	checker := health.New(log, health.Config{Interfaces: ifaces, Groups: groups, Appeared: appeared, Attached: attached, Checks: checks})

	takeovers := metrics.NewTakeovers()
	// No public interface: a public_addresses file with no address (a
	// node that only votes) serves nothing and steers nothing.
	var mac [6]byte
	if len(ifaces) == 0 {
		log.Warn("public_addresses lists no address: this node holds no VIP, it only votes")
	} else {
		// the first public interface present: peers steer a drain's
		// packets to it until health says which has link (MACNow)
		mac = linkedMAC(ifaces, func(string) bool { return true })
	}

	// A VIP draining from here lives on loopback: the public interfaces
	// must not answer ARP for it, nor announce it as a source.
	for _, iface := range ifaces {
		if _, err := net.InterfaceByName(iface); err != nil {
			continue // set when it appears
		}
		if err := setARPSysctls(iface); err != nil {
			log.Warn("arp sysctls", zap.String("interface", iface), zap.Error(err))
		}
	}
	deadPeerPorts, err := dataplane.ParsePortSet(c.String("dead-peer-ports"))
	if err != nil {
		return fmt.Errorf("--dead-peer-ports: %w", err)
	}
	kick := newPeerKick(log, uint16(c.Uint("ctdb-port")), deadPeerPorts, c.Bool("ctdb-election"), c.String("ctdb-socket"))
	nd, err := node.New(log, node.Config{
		Nodes: cc.nodes, Self: cc.self, VIPs: cc.vips, Policy: cc.policy, Lock: cc.lock, Timing: cc.owner,
		StateFile: filepath.Join(c.String("state-dir"), "state.json"), LegacyStateFile: filepath.Join(runDir, "state.json"), DrainTimeout: c.Duration("drain-timeout"), MAC: mac,
		MACNow:    func() [6]byte { return linkedMAC(ifaces, checker.LinkUp) },
		IfacesNow: func() []ownership.IfaceMAC { return linkedIfaceMACs(ifaces, checker.LinkUp) },
		PeerDead:  kick.peerDead(), Retiring: cc.retiring,
	}, nil, actions, checker, hookRunnerFor(hookRunner), takeovers)
	if err != nil {
		return err
	}
	// fsha -n: the admin server serves requests other nodes forward here
	// and forwards this node's CLI's requests for them (control/remote).
	reload := func() error {
		if err := checkConfig(c); err != nil {
			return fmt.Errorf("configuration refused, the running one goes on: %w", err)
		}
		// the SIGHUP path: it checks again and restarts in place
		return syscall.Kill(os.Getpid(), syscall.SIGHUP)
	}
	srv := admin.NewServer(log, adminBackend{Node: nd, checker: checker, hooks: hookRunner, dp: dp, ifaces: ifaces, reload: reload})
	srv.ShareReadOnly(cc.adminGID)
	peers := map[int]netip.Addr{}
	for _, n := range cc.nodes {
		if !n.Deleted {
			peers[n.PNN] = n.Addr
		}
	}
	rem := remote.New(log, cc.self, peers, srv.ServeForwarded)
	srv.SetForwarder(cc.self, rem)
	nd.SetRemote(rem.Receive)
	gossip, err := membership.New(log, membership.Config{
		Addr: cc.nodes[cc.self].Addr, Port: c.Int("gossip-port"), Key: cc.key, Timing: cc.timing,
	}, nd)
	if err != nil {
		return err
	}
	nd.SetGossip(gossip)
	rem.SetSender(gossip)
	repl.SetSteer(nd.SteerFor)
	nd.SetCounters(func() map[string]uint64 {
		ctrs := repl.Counters()
		if ctrs == nil {
			ctrs = map[string]uint64{}
		}
		maps.Copy(ctrs, rem.Counters())
		return ctrs
	})
	nd.OnAlive(func(alive map[int]netip.Addr) {
		peers := make([]replication.Peer, 0, len(alive))
		for pnn, addr := range alive {
			peers = append(peers, replication.Peer{PNN: pnn, Addr: addr})
		}
		repl.SetPeers(ctx, peers)
	})
	log.Info("cluster node starting", zap.Int("pnn", cc.self), zap.Stringer("address", cc.nodes[cc.self].Addr),
		zap.Int("nodes", len(cc.nodes)), zap.Int("vips", len(cc.vips)), zap.String("failback", cc.policy.String()))

	defer gossip.Shutdown()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return checker.Run(gctx) })
	g.Go(func() error {
		// the node's stop ends everything else
		defer cancel()
		return nd.Run(gctx)
	})
	// how the daemon stops, for the shutdown hooks: abort unless a stop
	// request came first
	var stopHow atomic.Value
	stopHow.Store(hooks.StopAbort)
	go func() {
		for first := true; ; first = false {
			select {
			case mode := <-stop:
				if first && mode == node.Restart {
					stopHow.Store(hooks.StopRestart)
				} else if first {
					stopHow.Store(hooks.StopShutdown)
				}
				nd.Stop(mode)
			case <-gctx.Done():
				return
			}
		}
	}()
	g.Go(func() error { return repl.Run(gctx) })
	// never stops the node: a death only looks at what it learnt
	go kick.run(gctx)
	g.Go(func() error {
		return srv.Serve(gctx, admin.SocketPath(runDir))
	})
	if addr := c.String("metrics-listen"); addr != "" {
		collector := metrics.NewCollector(log, metrics.Sources{
			Backend: adminBackend{Node: nd, checker: checker, hooks: hookRunner, dp: dp, ifaces: ifaces}, Counters: dp.ReadCounters, Steering: dp.Steering, Gossip: gossip.Members, Takeovers: takeovers,
			Version: version, FlowsMax: uint32(c.Uint("flows-max")),
		})
		// never stops the node: failover does not wait for metrics
		go collector.KeepServing(gctx, addr)
	}
	err = g.Wait()
	// every way out: a restart in place, a hand-over, an abort
	runShutdownHooks(log, hookRunner, stopHow.Load().(string))
	return err
}

// lookupGroup resolves --admin-group, a name or a number; "" is -1 (the
// socket is not shared).
func lookupGroup(name string) (int, error) {
	if name == "" {
		return -1, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		if g, err = user.LookupGroupId(name); err != nil {
			return 0, fmt.Errorf("no group %q on this machine", name)
		}
	}
	return strconv.Atoi(g.Gid)
}
