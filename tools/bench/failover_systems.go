package main

// The systems the failover suite measures, behind failSystem: fsha, run
// with one --failover profile, and keepalived's VRRP (its configuration is
// in failover_keepalived.go), each on the same lab nodes.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

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
			tr.hooksDone, tr.tickleResets = since("hooks done"), r.Resets
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
