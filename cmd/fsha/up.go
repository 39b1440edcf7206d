package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/node"
	"github.com/fsha/fsha/control/realtime"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
)

const defaultPorts = "445,139,2049,111"

// upFlags are `fsha up`'s flags, which `fsha check-config` reads too.
func upFlags() []cli.Flag {
	return append([]cli.Flag{
		&cli.StringFlag{Name: "public-addresses", Value: "/etc/fsha/public_addresses", EnvVars: []string{"FSHA_PUBLIC_ADDRESSES"},
			Usage: "CTDB-format public_addresses file: ADDR/PREFIX IFACE[,IFACE] [node-list]"},
		&cli.StringFlag{Name: "ports", Value: defaultPorts, EnvVars: []string{"FSHA_PORTS"},
			Usage: "comma-separated TCP ports to track (SMB 445 139, NFS 2049, rpcbind 111)"},
		pinPathFlag(), logLevelFlag(), logFormatFlag(),
		&cli.StringFlag{Name: "config", EnvVars: []string{"FSHA_CONFIG"},
			Usage: "settings file of 'flag-name = value' lines; flags and FSHA_* variables win over it"},
		&cli.UintFlag{Name: "flows-max", Value: dataplane.DefaultFlowsMax, EnvVars: []string{"FSHA_FLOWS_MAX"},
			Usage: "capacity of the flows map (least recently used flows are evicted beyond it)"},
		&cli.UintFlag{Name: "peer-flows-max", Value: dataplane.DefaultPeerFlowsMax, EnvVars: []string{"FSHA_PEER_FLOWS_MAX"},
			Usage: "the most entries the map of the other nodes' replicated connections (all nodes together) grows to; it starts at 65,536"},
		&cli.UintFlag{Name: "peer-flows-first", EnvVars: []string{"FSHA_PEER_FLOWS_FIRST"}, Hidden: true,
			Usage: "the first capacity of the map of the other nodes' replicated connections (tests: to see it grow)"},
		&cli.StringFlag{Name: "steer-mode", Value: string(dataplane.SteerAuto), EnvVars: []string{"FSHA_STEER_MODE"},
			Usage: "how a planned move steers old connections to their node: auto (per interface: xdp for native XDP on NICs known for XDP_TX, else tc), xdp (XDP_TX) or tc (TC ingress redirect)"},
		&cli.StringFlag{Name: "xdp-mode", Value: string(dataplane.XDPAttachAuto), EnvVars: []string{"FSHA_XDP_MODE"},
			Usage: "how the XDP program attaches: auto (native, generic where the driver refuses native), native (fail where refused) or generic (skb mode everywhere; steering then takes tc)"},
		&cli.DurationFlag{Name: "prune-interval", Value: 30 * time.Second, EnvVars: []string{"FSHA_PRUNE_INTERVAL"},
			Usage: "how often flows without a local socket (a killed server, a close missed while restarting) are removed"},
		&cli.DurationFlag{Name: "stats-interval", Value: time.Minute, EnvVars: []string{"FSHA_STATS_INTERVAL"},
			Usage: "how often to log the data-plane counters (0: never)"},
	}, clusterFlags()...)
}

func upCommand(e env) *cli.Command {
	return &cli.Command{
		Name:   "up",
		Usage:  "run fsha on this node: load the data plane and track connections to the VIPs",
		Flags:  upFlags(),
		Before: applySettingsFile,
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, e.stderr)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr sync fails on terminals
			err = runUp(c, log)
			if errors.Is(err, errReexec) {
				_ = log.Sync()
				return reexec()
			}
			return err
		},
	}
}

// upBasics reads what every fsha up needs, cluster or not: the public
// addresses, the ports, the flow table's capacity.
func upBasics(c *cli.Context) ([]config.PublicAddress, []uint16, uint, error) {
	addrs, err := config.LoadPublicAddresses(c.String("public-addresses"))
	if err != nil {
		return nil, nil, 0, err
	}
	ports, err := parsePorts(c.String("ports"))
	if err != nil {
		return nil, nil, 0, fmt.Errorf("--ports: %w", err)
	}
	flowsMax := c.Uint("flows-max")
	if flowsMax == 0 || flowsMax > 1<<28 {
		return nil, nil, 0, fmt.Errorf("--flows-max: %d out of range 1..%d", flowsMax, 1<<28)
	}
	return addrs, ports, flowsMax, nil
}

func runUp(c *cli.Context, log *zap.Logger) error {
	addrs, ports, flowsMax, err := upBasics(c)
	if err != nil {
		return err
	}
	var cc *clusterConfig
	if c.String("nodes") != "" {
		if cc, err = loadClusterConfig(c, log, addrs); err != nil {
			return err
		}
	}
	var (
		vips   []netip.Addr
		ifaces []string
	)
	for _, a := range addrs {
		vips = append(vips, a.VIP())
		for _, i := range a.Interfaces {
			if !slices.Contains(ifaces, i) {
				ifaces = append(ifaces, i)
			}
		}
	}

	// SIGTERM (systemctl stop/restart, package upgrades): stop for a
	// restart, VIPs and connections stay. SIGINT (^C): shut down, VIPs go
	// to the other nodes and their connections drain. SIGHUP: check the
	// configuration, then restart in place with it (a bad one is refused
	// and the node goes on). A second SIGTERM or SIGINT stops at once.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancel(c.Context)
	defer cancel()
	steerMode, err := dataplane.ParseSteerMode(c.String("steer-mode"))
	if err != nil {
		return fmt.Errorf("--steer-mode: %w", err)
	}
	xdpMode, err := dataplane.ParseXDPAttach(c.String("xdp-mode"))
	if err != nil {
		return fmt.Errorf("--xdp-mode: %w", err)
	}
	// the reply interfaces now, so that a restart keeps their links
	// (pinned, pruned like the public ones'): replypath.go
	reply, replyErr := replyInterfaces(addrs, kernelRoutes)
	if replyErr != nil {
		log.Warn("reply interfaces: route lookup failed; answers through the interfaces it would name may leave untracked", zap.Error(replyErr))
	}
	if err := realtime.Normal(); err != nil {
		log.Warn("starting at the inherited real-time priority", zap.Error(err))
	}
	dp, err := dataplane.Load(log, dataplane.Options{
		PinPath: c.String("pin-path"), FlowsMax: uint32(flowsMax), Interfaces: ifaces, ReplyInterfaces: replyNames(reply),
		PeerFlowsMax: uint32(min(c.Uint("peer-flows-max"), 1<<28)), PeerFlowsFirst: uint32(min(c.Uint("peer-flows-first"), 1<<28)), SteerMode: steerMode, XDPAttach: xdpMode,
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	replies := newReplyTracker(log, dp, addrs, kernelRoutes)
	replies.warned(replyErr, reply, dp.ReplyInterfaces())
	// Standalone tracking: no cluster decides who may answer, so no
	// fencing. In a cluster each VIP's own lease decides; a restart keeps
	// the leases the previous run left, so the VIPs it held stay answered.
	if err := dp.SetFencingMode(false, cc != nil); err != nil {
		return err
	}
	if err := dp.SetPorts(ports); err != nil {
		return err
	}
	tracked := vips
	if cc != nil {
		// A reload that dropped a VIP this node held or drained: it stays
		// tracked and fenced until the node has drained it out.
		leases, err := dp.VIPLeases()
		if err != nil {
			return fmt.Errorf("read the pinned VIP leases: %w", err)
		}
		cc.retiring = node.RetiringVIPs(leases, cc.vips)
		tracked = append(slices.Clone(vips), cc.retiring...)
		if len(cc.retiring) > 0 {
			log.Info("VIPs no longer in public_addresses that this node held or drained: retiring them",
				zap.Stringers("vips", cc.retiring))
		}
	}
	if err := dp.SetVIPs(tracked); err != nil {
		return err
	}
	log.Info("tracking", zap.Stringers("vips", vips), zap.Any("ports", ports), zap.Strings("interfaces", ifaces))
	if on := dp.ReplyInterfaces(); len(on) > 0 {
		var why []string
		for _, r := range reply {
			if slices.Contains(on, r.Name) {
				why = append(why, r.String())
			}
		}
		log.Info("tracking answers to VIP clients on reply interfaces too: the kernel routes clients through them",
			zap.Strings("reply_interfaces", on), zap.Strings("why", why))
	}
	// Real-time only now: loading the programs (the verifier, a
	// migration) is the heaviest work of a start, and at real-time
	// priority it would starve the other daemons of a small machine (the
	// lab's nodes share its CPUs) of their lease renewals.
	if cc != nil && c.Bool("realtime") {
		realtime.Keep(ctx, log)
	}

	events, err := dp.NewEventReader()
	if err != nil {
		return err
	}
	// In a cluster every open and close also goes to the other nodes.
	var repl *replication.Replicator
	publish := func(dataplane.Event) {}
	if cc != nil {
		repl = newReplicator(c, log, dp, cc)
		publish = repl.Publish
	}
	done := make(chan error, 1)
	go func() { done <- logEvents(log, events, publish) }()

	cluster := make(chan error, 1)
	stopCluster := make(chan node.StopMode, 1)
	if cc != nil {
		go func() { cluster <- runCluster(ctx, c, log, dp, cc, repl, ifaces, stopCluster) }()
	}

	prune := func() {
		n, err := dp.PruneFlows()
		if err != nil {
			log.Warn("prune flows", zap.Error(err))
		} else if n > 0 {
			log.Info("removed flows without a local socket", zap.Int("flows", n))
			if repl != nil {
				repl.Resync() // the peers never saw these close
			}
		}
	}
	prune()
	var pruneTick <-chan time.Time
	if iv := c.Duration("prune-interval"); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		pruneTick = t.C
	}

	replyTick := time.NewTicker(replyCheckInterval)
	defer replyTick.Stop()

	var tick <-chan time.Time
	if iv := c.Duration("stats-interval"); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		tick = t.C
	}
	var (
		stopping bool
		reexec   bool
		// a shutdown's bound (--shutdown-timeout): then the drains are
		// reset, and hardStop bounds that
		shutdownDeadline, hardStop <-chan time.Time
	)
	// systemd (Type=notify): serving. A SIGHUP's restart in place keeps
	// the pid, and the new process says READY again.
	notify := func(state string) {
		if err := sdNotify(state); err != nil {
			log.Warn("tell systemd", zap.Error(err))
		}
	}
	notify("READY=1")
	for {
		select {
		case sig := <-sigs:
			switch {
			case stopping && sig != syscall.SIGHUP:
				log.Warn("second signal: stopping now", zap.Stringer("signal", sig))
				cancel()
			case stopping:
				log.Info("SIGHUP while stopping: nothing to reload")
			case sig == syscall.SIGHUP:
				if err := checkConfig(c); err != nil {
					log.Error("SIGHUP: configuration refused, going on with the running one", zap.Error(err))
					continue
				}
				log.Info("SIGHUP: configuration checked; restarting in place with it")
				notify("RELOADING=1")
				stopping, reexec = true, true
				if cc == nil {
					cancel()
				} else {
					stopCluster <- node.Restart
				}
			case cc == nil:
				stopping = true
				cancel()
			case sig == syscall.SIGTERM:
				notify("STOPPING=1")
				log.Info("SIGTERM: stopping for a restart: VIPs and connections stay, the other nodes wait for the restart grace")
				stopping = true
				stopCluster <- node.Restart
			default:
				notify("STOPPING=1")
				log.Info("SIGINT: shutting down: the VIPs go to the other nodes, their connections drain")
				stopping = true
				stopCluster <- node.Shutdown
				if d := c.Duration("shutdown-timeout"); d > 0 {
					shutdownDeadline = time.After(d)
				}
			}
			if cc == nil && stopping {
				log.Info("stopping; programs stay attached and keep tracking", zap.String("pin_path", dp.PinPath()))
				events.Close()
				<-done
				if reexec {
					return errReexec
				}
				return nil
			}
		case err := <-cluster:
			log.Info("stopping; programs stay attached and keep tracking", zap.String("pin_path", dp.PinPath()))
			events.Close()
			<-done
			if err == nil && reexec {
				return errReexec
			}
			return err
		case <-shutdownDeadline:
			// The connections still draining are reset (their clients
			// reconnect at once, to the VIPs' new holders); if that does
			// not end the shutdown soon, it stops at once.
			log.Warn("shutdown: the drains did not end within --shutdown-timeout: resetting their connections and stopping",
				zap.Duration("shutdown_timeout", c.Duration("shutdown-timeout")))
			shutdownDeadline = nil
			select {
			case stopCluster <- node.EndDrains:
			default: // the shutdown not even taken yet: the bound below
			}
			hardStop = time.After(5 * time.Second)
		case <-hardStop:
			log.Warn("shutdown: still not stopped 5 s after resetting the drains: stopping now")
			cancel()
		case err := <-done:
			return err
		case <-pruneTick:
			prune()
		case <-replyTick.C:
			replies.check()
		case <-tick:
			if ctrs, err := dp.ReadCounters(); err != nil {
				log.Warn("read counters", zap.Error(err))
			} else {
				log.Info("data plane", zap.Uint64("flows", ctrs.Flows), zap.Any("ingress", ctrs.Ingress), zap.Any("egress", ctrs.Egress))
			}
		}
	}
}

// errReexec asks the command to execute itself again (SIGHUP).
var errReexec = errors.New("restart in place")

// checkConfig loads the configuration files again, as a start would, and
// reports the first problem.
func checkConfig(c *cli.Context) error {
	_, err := describeConfig(c)
	return err
}

// describeSteering checks --steer-mode and says, per public interface,
// whether it exists and which steering path fsha up would take there.
func describeSteering(mode, xdpMode string, addrs []config.PublicAddress) (string, error) {
	want, err := dataplane.ParseSteerMode(mode)
	if err != nil {
		return "", fmt.Errorf("--steer-mode: %w", err)
	}
	if _, err := dataplane.ParseXDPAttach(xdpMode); err != nil {
		return "", fmt.Errorf("--xdp-mode: %w", err)
	}
	var ifaces []string
	for _, a := range addrs {
		for _, i := range a.Interfaces {
			if !slices.Contains(ifaces, i) {
				ifaces = append(ifaces, i)
			}
		}
	}
	var lines []string
	for _, name := range ifaces {
		if _, err := net.InterfaceByName(name); err != nil {
			lines = append(lines, fmt.Sprintf("interface %s: missing (fsha up starts without it and attaches when it appears)", name))
			continue
		}
		driver, path, reason, err := dataplane.PredictSteer(want, name)
		if err != nil {
			lines = append(lines, fmt.Sprintf("interface %s: %v", name, err))
			continue
		}
		lines = append(lines, fmt.Sprintf("interface %s (driver %s): steering %s (--steer-mode %s: %s)", name, cmp.Or(driver, "none"), path, want, reason))
	}
	return strings.Join(append(lines, describeReplies(addrs, kernelRoutes)...), "\n"), nil
}

// describeConfig loads and checks the configuration as a start would
// (settings, public addresses, ports, capacities, and in a cluster the
// nodes file, this node, the key, ranges and health checks) and says
// what it found.
func describeConfig(c *cli.Context) (string, error) {
	if path := c.String("config"); path != "" {
		if _, err := config.LoadSettings(path, settingNames(c)); err != nil {
			return "", err
		}
	}
	addrs, _, _, err := upBasics(c)
	if err != nil {
		return "", err
	}
	what := fmt.Sprintf("%s: %d public addresses; ports %s", c.String("public-addresses"), len(addrs), c.String("ports"))
	steer, err := describeSteering(c.String("steer-mode"), c.String("xdp-mode"), addrs)
	if err != nil {
		return "", err
	}
	what += "\n" + steer
	if c.String("nodes") == "" {
		return what + "; no --nodes: standalone tracking, no cluster", nil
	}
	cc, err := loadClusterConfig(c, zap.NewNop(), addrs)
	if err != nil {
		return "", err
	}
	live := 0
	for _, n := range cc.nodes {
		if !n.Deleted {
			live++
		}
	}
	lock := "no cluster lock"
	if cc.lock != nil {
		lock = "cluster lock " + cc.lock.Path()
	}
	if g := c.String("admin-group"); g != "" {
		lock += fmt.Sprintf("; admin socket readable by group %s (gid %d)", g, cc.adminGID)
	}
	return fmt.Sprintf("%s\n%s: %d nodes; this node is pnn %d (%s); %d health checks; %s",
		what, c.String("nodes"), live, cc.self, cc.nodes[cc.self].Addr, len(cc.checks), lock), nil
}

func checkConfigCommand(e env) *cli.Command {
	return &cli.Command{
		Name:   "check-config",
		Usage:  "check the configuration `fsha up` would start with (same flags, settings file and FSHA_* variables), like keepalived -t, without starting anything",
		Flags:  upFlags(),
		Before: applySettingsFile,
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			what, err := describeConfig(c)
			if err != nil {
				return fmt.Errorf("configuration refused: %w", err)
			}
			_, err = fmt.Fprintf(e.stdout, "configuration OK\n%s\n", what)
			return err
		},
	}
}

// reexec replaces this process with the fsha binary on disk (the same, or
// the one an upgrade just installed), with the same arguments.
func reexec() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("restart in place: %w", err)
	}
	return syscall.Exec(exe, os.Args, os.Environ())
}

func logEvents(log *zap.Logger, r *dataplane.EventReader, publish func(dataplane.Event)) error {
	for {
		ev, err := r.Read()
		if errors.Is(err, dataplane.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		publish(ev)
		f := ev.Flow
		log.Debug("flow "+ev.Type.String(),
			zap.Stringer("vip", netip.AddrPortFrom(f.VIP, f.VIPPort)),
			zap.Stringer("client", netip.AddrPortFrom(f.Client, f.ClientPort)),
			zap.String("reason", ev.Reason.String()),
			zap.Uint64("bytes_in", f.BytesIn), zap.Uint64("bytes_out", f.BytesOut))
	}
}

// applySettingsFile fills the flags not given on the command line or in the
// environment from the --config file; a bad line stops the start.
func applySettingsFile(c *cli.Context) error {
	path := c.String("config")
	if path == "" {
		return nil
	}
	fromFile := map[string]bool{}
	settings, err := config.LoadSettings(path, settingNames(c))
	if err != nil {
		return err
	}
	for _, s := range settings {
		if c.IsSet(s.Name) && !fromFile[s.Name] {
			continue // the command line or the environment wins
		}
		// a value whole: "ports = 445,2049" is one value, and so is a
		// check command with commas; a repeated check is another line
		fromFile[s.Name] = true
		if err := c.Set(s.Name, s.Value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", s.File, s.Line, s.Name, err)
		}
	}
	return nil
}

// settingNames: every flag of the command is a setting but config and
// help; slice flags (check) take one value per line.
func settingNames(c *cli.Context) config.Names {
	known, multi := map[string]bool{}, map[string]bool{}
	for _, f := range c.Command.Flags {
		_, isMulti := f.(*cli.StringSliceFlag)
		for _, name := range f.Names() {
			known[name] = name != "config" && name != "help"
			multi[name] = isMulti
		}
	}
	return config.Names{Known: func(n string) bool { return known[n] }, Multi: func(n string) bool { return multi[n] }, Check: checkSetting}
}

// checkSetting refuses a bad health check while the settings file is
// read, so the error names its file and line. The address only fills a
// bare tcp:PORT; the check itself is built later, on this node's address.
func checkSetting(name, value string) error {
	if name != "check" {
		return nil
	}
	_, err := health.ParseCheck(value, "127.0.0.1")
	return err
}

// parsePorts reads "445,139,2049".
func parsePorts(s string) ([]uint16, error) {
	var ports []uint16
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := strconv.ParseUint(f, 10, 16)
		if err != nil || p == 0 {
			return nil, fmt.Errorf("invalid port %q", f)
		}
		if !slices.Contains(ports, uint16(p)) {
			ports = append(ports, uint16(p))
		}
	}
	if len(ports) == 0 {
		return nil, errors.New("no ports")
	}
	return ports, nil
}
