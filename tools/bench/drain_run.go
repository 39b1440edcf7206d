package main

// One path of the drain suite: a lab cluster, N connections through one
// VIP, `fsha move`, the connections swept through the steering, closed,
// and the old holder's drain timed until it ends.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// drainPath is one steering path the suite measures.
type drainPath struct {
	name     string // what the table calls it, and the steering eth0 must have
	tuned    bool   // lab.Options.Tuned
	fshaArgs []string
}

var drainPaths = []drainPath{
	{name: "tc"}, // the plain lab: auto steering takes tc on a veth
	{name: "xdp", tuned: true, fshaArgs: []string{"--steer-mode", "xdp"}},
}

// drainResult is what one path measured; times in seconds.
type drainResult struct {
	path           string
	conns          int
	failed, reset  int
	firstFailure   error
	before, during []float64 // RPC NULL round trips
	vipUp          float64   // move request -> VIP on the new holder's eth0
	allAnswered    float64   // move request -> every connection answered after vipUp
	drainEnd       float64   // last close -> the old holder's drain over
	drainStep      string    // how the old holder's timeline says the drain ended
	serverSockets  int       // the old holder's established sockets of the connections, during the drain
	steeredXDP     uint64
	steeredTC      uint64
	eth0           dataplane.SteerState
	old, next      string
}

// drainPollEvery is the pace of the waits that time something.
const drainPollEvery = 2 * time.Millisecond

func (b *drainBench) runPath(ctx context.Context, log *zap.Logger, p drainPath) (_ *drainResult, err error) {
	l, err := benchLabWith(ctx, log, lab.Options{Tuned: p.tuned})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tear down lab: %w", cerr))
		}
		if labOpts.keep {
			log.Info("lab run directory kept", zap.String("dir", l.Dir))
		}
	}()
	args := append([]string{"--drain-timeout", b.drainTimeout.String()}, p.fshaArgs...)
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{Nodes: 3, FshaArgs: args})
	if err != nil {
		return nil, err
	}
	if err := balanced(ctx, c); err != nil {
		return nil, err
	}
	vip := c.VIPs[0]
	old, err := c.Owner(vip)
	if err != nil {
		return nil, err
	}
	next := c.Others(old)[0]
	res := &drainResult{path: p.name, conns: b.conns, old: old.Role, next: next.Role}
	logGaneshaLimits(log, old)

	addr := netip.AddrPortFrom(vip.Addr(), lab.NFSPort)
	t0 := time.Now()
	conns, err := dialRPC(ctx, c.Clients[0], addr, b.conns)
	if err != nil {
		return nil, err
	}
	closed := false
	defer func() {
		if !closed {
			closeRPC(conns)
		}
	}()
	log.Info("connections open", zap.Int("n", len(conns)), zap.Stringer("vip", addr),
		zap.String("owner", old.Role), zap.Duration("took", time.Since(t0)))
	// the new holder must know every connection before the move, or it
	// would not steer it
	if err := waitPeerFlows(ctx, next, old, addr, conns); err != nil {
		return nil, err
	}
	for range b.sweeps {
		rtts, _, err := sweepRPC(ctx, conns)
		if err != nil {
			return nil, err
		}
		res.before = append(res.before, rtts...)
	}
	if f, _, first := connFailures(conns); f > 0 {
		return nil, fmt.Errorf("%d connections failed before the move: %w", f, first)
	}
	c0, _, err := next.CountersAndSteering(ctx)
	if err != nil {
		return nil, err
	}

	// the move, and the VIP's arrival on the new holder's eth0
	up := make(chan time.Time, 1)
	watchCtx, stopWatch := context.WithTimeout(ctx, 30*time.Second)
	defer stopWatch()
	go func() {
		defer close(up)
		for watchCtx.Err() == nil {
			if ok, err := next.Holds(vip); err == nil && ok {
				up <- time.Now()
				return
			}
			time.Sleep(drainPollEvery)
		}
	}()
	start := time.Now()
	if out, err := old.Admin(ctx, "move", vip.Addr().String(), next.IP().String()); err != nil {
		return nil, fmt.Errorf("fsha move %s %s: %w: %s", vip.Addr(), next.IP(), err, out)
	}
	upAt, ok := <-up
	if !ok {
		return nil, fmt.Errorf("%s not on %s's eth0 30 s after the move", vip, next.Role)
	}
	res.vipUp = upAt.Sub(start).Seconds()
	for k := range b.sweeps {
		rtts, last, err := sweepRPC(ctx, conns)
		if err != nil {
			return nil, err
		}
		if k == 0 {
			res.allAnswered = last.Sub(start).Seconds()
		}
		res.during = append(res.during, rtts...)
	}
	res.failed, res.reset, res.firstFailure = connFailures(conns)
	c1, steer, err := next.CountersAndSteering(ctx)
	if err != nil {
		return nil, err
	}
	res.steeredXDP, res.steeredTC = c1.Ingress.Steered-c0.Ingress.Steered, c1.Ingress.TCSteered-c0.Ingress.TCSteered
	for _, s := range steer {
		if s.Interface == lab.HostIface {
			res.eth0 = s
		}
	}
	if ip, err := ipState(ctx, old, vip); err != nil || ip.State != "draining" || ip.DrainingFrom != old.IP().String() {
		log.Warn("the old holder does not say it drains", zap.String("node", old.Role), zap.Any("ip", ip), zap.Error(err))
	}
	if res.serverSockets, err = serverSockets(ctx, old, addr, conns); err != nil {
		return nil, err
	}
	log.Info("moved and swept", zap.String("from", old.Role), zap.String("to", next.Role),
		zap.String("vip_up", fmtDur(res.vipUp, 0)), zap.String("all_answered", fmtDur(res.allAnswered, 0)),
		zap.Int("failed", res.failed), zap.Int("old_holder_sockets", res.serverSockets),
		zap.Uint64("steered_xdp", res.steeredXDP), zap.Uint64("steered_tc", res.steeredTC), zap.Any("eth0", res.eth0))

	// close them all; the drain ends when the old holder has none left
	closeRPC(conns)
	closed = true
	lastClose := time.Now()
	ended, err := waitDrainEnd(ctx, c, old, vip, b.drainTimeout+30*time.Second)
	if err != nil {
		return res, err
	}
	res.drainEnd = ended.Sub(lastClose).Seconds()
	if rec, ok := lastDrain(ctx, old, vip); ok {
		res.drainStep = rec.Steps[len(rec.Steps)-1].Step
	}
	return res, nil
}

// balanced waits until the cluster has converged with every node holding
// its VIP and none draining: NewCluster may return while a node is still
// in its start-up hold-down, and the rebalance after it would move VIPs.
func balanced(ctx context.Context, c *lab.Cluster) error {
	return lab.Eventually(ctx, 60*time.Second, "every node holds its share of the VIPs", func(ctx context.Context) error {
		if err := c.Converged(ctx, c.Nodes...); err != nil {
			return err
		}
		for _, n := range c.Nodes {
			h, err := n.HeldVIPs()
			if err != nil {
				return err
			}
			if len(h) < len(c.VIPs)/len(c.Nodes) {
				return fmt.Errorf("%s holds %v", n.Role, h)
			}
			if lo, err := loopbackVIPs(n, c.VIPs); err != nil || len(lo) > 0 {
				return fmt.Errorf("%s drains %v (%v)", n.Role, lo, err)
			}
		}
		return nil
	})
}

// waitPeerFlows waits until n's peer flows map holds every connection as
// owner's, not steered (yet).
func waitPeerFlows(ctx context.Context, n, owner *lab.ClusterNode, vip netip.AddrPort, conns []*rpcConn) error {
	want := map[uint16]bool{}
	for _, rc := range conns {
		want[rc.local.Port()] = true
	}
	client := conns[0].local.Addr()
	return lab.Eventually(ctx, 30*time.Second, fmt.Sprintf("%s knows the %d connections as %s's", n.Role, len(conns), owner.Role), func(context.Context) error {
		pm, err := dataplane.OpenPinned(n.PinPath)
		if err != nil {
			return err
		}
		defer pm.Close()
		have := 0
		err = pm.ForEachPeerFlow(func(f dataplane.PeerFlow) bool {
			if f.VIP == vip.Addr() && f.VIPPort == vip.Port() && f.Client == client && want[f.ClientPort] &&
				f.Owner == owner.PNN && !f.Steer {
				have++
			}
			return true
		})
		if err != nil {
			return err
		}
		if have < len(want) {
			return fmt.Errorf("%d of %d", have, len(want))
		}
		return nil
	})
}

// serverSockets counts the established sockets of the connections on n,
// as `ss` in its namespace lists them (nfs-ganesha's are AF_INET6 sockets
// with v4-mapped addresses).
func serverSockets(ctx context.Context, n *lab.ClusterNode, vip netip.AddrPort, conns []*rpcConn) (int, error) {
	out, err := n.Output(ctx, "ss", "-Htn", "state", "established", fmt.Sprintf("( sport = :%d )", vip.Port()))
	if err != nil {
		return 0, fmt.Errorf("ss in %s: %w: %s", n.Role, err, out)
	}
	want := map[netip.AddrPort]bool{}
	for _, rc := range conns {
		want[rc.local] = true
	}
	count := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line) // Recv-Q Send-Q Local Peer
		if len(f) < 4 {
			continue
		}
		local, err1 := netip.ParseAddrPort(f[2])
		peer, err2 := netip.ParseAddrPort(f[3])
		if err1 != nil || err2 != nil {
			continue
		}
		// Ganesha's sockets are IPv6 ones: [::ffff:198.18.0.201]:2049
		local = netip.AddrPortFrom(local.Addr().Unmap(), local.Port())
		peer = netip.AddrPortFrom(peer.Addr().Unmap(), peer.Port())
		if local == vip && want[peer] {
			count++
		}
	}
	return count, nil
}

// waitDrainEnd waits until the VIP has left old's loopback and every
// node's `fsha ip` has it drain no more; it returns when it saw that.
func waitDrainEnd(ctx context.Context, c *lab.Cluster, old *lab.ClusterNode, vip netip.Prefix, timeout time.Duration) (time.Time, error) {
	var at time.Time
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		last = func() error {
			lo, err := loopbackVIPs(old, c.VIPs)
			if err != nil {
				return err
			}
			if slices.Contains(lo, vip.Addr()) {
				return fmt.Errorf("%s still on %s's loopback", vip.Addr(), old.Role)
			}
			for _, n := range c.Nodes {
				ip, err := ipState(ctx, n, vip)
				if err != nil {
					return err
				}
				if ip.State == "draining" || ip.DrainingFrom != "" {
					return fmt.Errorf("%s says %+v", n.Role, ip)
				}
			}
			return nil
		}()
		if last == nil {
			at = time.Now()
			return at, nil
		}
		select {
		case <-ctx.Done():
			return at, fmt.Errorf("the drain of %s does not end: %w (%w)", vip, last, ctx.Err())
		case <-time.After(drainPollEvery):
		}
	}
}

// loopbackVIPs lists the cluster's VIPs on n's loopback: those it drains.
func loopbackVIPs(n *lab.ClusterNode, vips []netip.Prefix) ([]netip.Addr, error) {
	nl := n.Netlink()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in %s: %w", n.NS, err)
	}
	addrs, err := nl.AddrList(lo, unix.AF_UNSPEC)
	if err != nil {
		return nil, fmt.Errorf("list lo addresses in %s: %w", n.NS, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && slices.ContainsFunc(vips, func(v netip.Prefix) bool { return v.Addr() == ip.Unmap() }) {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// ipState is n's `fsha ip` line of vip.
func ipState(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix) (admin.IP, error) {
	ips, err := n.IPs(ctx)
	if err != nil {
		return admin.IP{}, err
	}
	i := slices.IndexFunc(ips, func(ip admin.IP) bool { return ip.VIP == vip.String() })
	if i < 0 {
		return admin.IP{}, fmt.Errorf("%s does not list %s", n.Role, vip)
	}
	return ips[i], nil
}

// lastDrain is n's latest drain record of vip in its timeline.
func lastDrain(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix) (admin.Takeover, bool) {
	tl, err := n.Timeline(ctx)
	if err != nil {
		return admin.Takeover{}, false
	}
	for i := len(tl) - 1; i >= 0; i-- {
		if tl[i].VIP == vip.String() && tl[i].Kind == "drain" && len(tl[i].Steps) > 0 {
			return tl[i], true
		}
	}
	return admin.Takeover{}, false
}

// logGaneshaLimits logs the open-files limit of n's nfs-ganesha: each
// connection is one of its descriptors.
func logGaneshaLimits(log *zap.Logger, n *lab.ClusterNode) {
	for _, p := range n.Processes() {
		if p.Name != "ganesha" || p.Exited() {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", p.PID()))
		if err != nil {
			log.Warn("ganesha limits", zap.Error(err))
			return
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(line, "Max open files") {
				log.Info("ganesha open files limit", zap.String("node", n.Role), zap.Int("pid", p.PID()),
					zap.String("soft_hard", strings.Join(strings.Fields(line)[3:5], " ")))
			}
		}
	}
}
