package main

import (
	"errors"
	"fmt"
	"net/netip"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
)

const defaultPorts = "445,139,2049,111"

func upCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "up",
		Usage: "run fsha on this node: load the data plane and track connections to the VIPs",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "public-addresses", Value: "/etc/fsha/public_addresses", EnvVars: []string{"FSHA_PUBLIC_ADDRESSES"},
				Usage: "CTDB-format public_addresses file: ADDR/PREFIX IFACE[,IFACE] [node-list]"},
			&cli.StringFlag{Name: "ports", Value: defaultPorts, EnvVars: []string{"FSHA_PORTS"},
				Usage: "comma-separated TCP ports to track (SMB 445 139, NFS 2049, rpcbind 111)"},
			pinPathFlag(), logLevelFlag(),
			&cli.StringFlag{Name: "config", EnvVars: []string{"FSHA_CONFIG"},
				Usage: "settings file of 'flag-name = value' lines; flags and FSHA_* variables win over it"},
			&cli.UintFlag{Name: "flows-max", Value: dataplane.DefaultFlowsMax, EnvVars: []string{"FSHA_FLOWS_MAX"},
				Usage: "capacity of the flows map (least recently used flows are evicted beyond it)"},
			&cli.UintFlag{Name: "peer-flows-max", Value: dataplane.DefaultPeerFlowsMax, EnvVars: []string{"FSHA_PEER_FLOWS_MAX"},
				Usage: "capacity of the map of the other nodes' replicated connections (all nodes together)"},
			&cli.DurationFlag{Name: "prune-interval", Value: 30 * time.Second, EnvVars: []string{"FSHA_PRUNE_INTERVAL"},
				Usage: "how often flows without a local socket (a killed server, a close missed while restarting) are removed"},
			&cli.DurationFlag{Name: "stats-interval", Value: time.Minute, EnvVars: []string{"FSHA_STATS_INTERVAL"},
				Usage: "how often to log the data-plane counters (0: never)"},
		}, clusterFlags()...),
		Before: applySettingsFile,
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, e.stderr)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr sync fails on terminals
			return runUp(c, log)
		},
	}
}

func runUp(c *cli.Context, log *zap.Logger) error {
	addrs, err := config.LoadPublicAddresses(c.String("public-addresses"))
	if err != nil {
		return err
	}
	ports, err := parsePorts(c.String("ports"))
	if err != nil {
		return fmt.Errorf("--ports: %w", err)
	}
	flowsMax := c.Uint("flows-max")
	if flowsMax == 0 || flowsMax > 1<<28 {
		return fmt.Errorf("--flows-max: %d out of range 1..%d", flowsMax, 1<<28)
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

	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	dp, err := dataplane.Load(log, dataplane.Options{
		PinPath: c.String("pin-path"), FlowsMax: uint32(flowsMax), Interfaces: ifaces,
		PeerFlowsMax: uint32(min(c.Uint("peer-flows-max"), 1<<28)),
	})
	if err != nil {
		return err
	}
	defer dp.Close()
	if cc == nil {
		// Standalone tracking: no cluster decides who may answer, so no fencing.
		if err := dp.DisableLease(); err != nil {
			return err
		}
	} else if err := dp.ExpireLease(); err != nil {
		return err
	}
	if err := dp.SetPorts(ports); err != nil {
		return err
	}
	if err := dp.SetVIPs(vips); err != nil {
		return err
	}
	log.Info("tracking", zap.Stringers("vips", vips), zap.Any("ports", ports), zap.Strings("interfaces", ifaces))

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
	if cc != nil {
		go func() { cluster <- runCluster(ctx, c, log, dp, cc, repl, ifaces) }()
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

	var tick <-chan time.Time
	if iv := c.Duration("stats-interval"); iv > 0 {
		t := time.NewTicker(iv)
		defer t.Stop()
		tick = t.C
	}
	for {
		select {
		case <-ctx.Done():
			if cc != nil {
				if err := <-cluster; err != nil {
					log.Error("cluster", zap.Error(err))
				}
			}
			log.Info("stopping; programs stay attached and keep tracking", zap.String("pin_path", dp.PinPath()))
			events.Close()
			<-done
			return nil
		case err := <-cluster:
			events.Close()
			<-done
			return err
		case err := <-done:
			return err
		case <-pruneTick:
			prune()
		case <-tick:
			if ctrs, err := dp.ReadCounters(); err != nil {
				log.Warn("read counters", zap.Error(err))
			} else {
				log.Info("data plane", zap.Uint64("flows", ctrs.Flows), zap.Any("ingress", ctrs.Ingress), zap.Any("egress", ctrs.Egress))
			}
		}
	}
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
	known := map[string]bool{}
	for _, f := range c.Command.Flags {
		for _, name := range f.Names() {
			known[name] = name != "config" && name != "help"
		}
	}
	settings, err := config.LoadSettings(path, func(name string) bool { return known[name] })
	if err != nil {
		return err
	}
	for _, s := range settings {
		if c.IsSet(s.Name) {
			continue
		}
		for _, v := range strings.Split(s.Value, ",") {
			if err := c.Set(s.Name, strings.TrimSpace(v)); err != nil {
				return fmt.Errorf("%s:%d: %s: %w", s.File, s.Line, s.Name, err)
			}
		}
	}
	return nil
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
