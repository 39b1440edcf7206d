package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

// Retiring VIPs. A reload (SIGHUP: a restart in place with the new
// files) whose public_addresses no longer lists a VIP this node held or
// drained finds the VIP's lease in the pinned maps and its address still
// up. The engine of the new configuration knows nothing of it, so nothing
// would ever take the address down, and the data plane, told of the new
// VIPs only, would stop fencing it: another node that still lists it
// takes it once this node's promises run out, and both answer. So the
// node retires it, as `ctdb reloadips` releases a removed address, but
// without a reset: the VIP stays tracked and fenced, its lease becomes a
// drain (the data plane answers no ARP or neighbour discovery for it, its
// connections go on), its address moves to loopback (no longer
// announced), and once its last connection has closed, or at the drain
// timeout (the rest reset), the address and the lease go and the data
// plane stops tracking it. A shutdown waits for it as for its other
// drains, and at its bound (--shutdown-timeout) resets what is left. A
// crash meanwhile leaves the drain's lease, and the next start retires
// it again.

// RetiringVIPs returns the VIPs a node of configuration vips must retire:
// those that leases (the data plane's, read from the pins before the node
// starts) hold or drain here and vips no longer lists, sorted. The caller
// keeps them tracked until Run has retired them.
func RetiringVIPs(leases map[netip.Addr]dataplane.VIPLease, vips []config.PublicAddress) []netip.Addr {
	var out []netip.Addr
	for vip, l := range leases {
		if l.State != dataplane.VIPLeaseHeld && l.State != dataplane.VIPLeaseDraining {
			continue
		}
		if !slices.ContainsFunc(vips, func(c config.PublicAddress) bool { return c.VIP().Unmap() == vip.Unmap() }) {
			out = append(out, vip)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// retireCheckEvery is how often a retiring VIP's connections are counted.
const retireCheckEvery = time.Second

// retire retires vip (see above); it returns once the VIP is gone or ctx
// ends (a stop: the drain's lease stays for the next start).
func (n *Node) retire(ctx context.Context, vip netip.Addr, lease dataplane.VIPLease) {
	log := n.log.With(zap.Stringer("vip", vip))
	t0 := time.Now()
	host := netip.PrefixFrom(vip, vip.BitLen())
	rec := admin.Takeover{VIP: host.String(), Iface: "lo", Kind: "drain", Reason: "no longer in public_addresses: retired",
		Steps: []admin.TimelineStep{{Step: "decision", At: t0}}}
	step := func(what string) {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: what, At: now, Took: now.Sub(t0)})
	}
	drain := dataplane.VIPLease{Epoch: lease.Epoch, State: dataplane.VIPLeaseDraining, Holder: n.cfg.Self}
	if err := n.dp.SetVIPLease(vip, drain); err != nil {
		// Left as it was: a held lease runs out at its deadline and the
		// data plane stops answering by itself.
		log.Error("retire a VIP no longer configured: write its drain", zap.Error(err))
		rec.Error = "data plane lease: " + err.Error()
		n.record(rec)
		return
	}
	step("lease draining")
	up, err := n.dp.LocalVIPs(nil, []netip.Prefix{host})
	if err != nil {
		log.Warn("retire: find the VIP's addresses", zap.Error(err))
	}
	errs := []error{n.addVerified("lo", host)}
	var ifaces []string
	for _, a := range up {
		if a.Iface == "lo" {
			continue
		}
		ifaces = append(ifaces, a.Iface)
		errs = append(errs, n.removeVerified(a.Iface, a.Prefix))
	}
	for _, a := range up {
		if a.Iface != "lo" {
			errs = append(errs, n.dp.SetDrainRoute(a.Iface, a.Prefix, true))
		}
	}
	if err := errors.Join(errs...); err != nil {
		rec.Error = err.Error()
		log.Error("retire", zap.Error(err))
	}
	step("address moved to loopback, no longer announced")
	log.Info("retiring a VIP no longer in public_addresses: its connections drain here", zap.Strings("from", ifaces),
		zap.Duration("drain_timeout", n.cfg.DrainTimeout))
	n.record(rec)
	pa := config.PublicAddress{Prefix: host, Interfaces: ifaces}
	iface := "lo"
	if len(ifaces) > 0 {
		iface = ifaces[0]
	}
	go n.runHooks(context.Background(), "releaseip", pa, iface, lease.Epoch, t0)

	timeout := n.cfg.DrainTimeout
	if lease.State == dataplane.VIPLeaseHeld && ownership.Mono(lease.Until) <= monoNow() {
		// Its lease ran out before this start (a crash, not a reload):
		// the data plane has long stopped answering, and another node
		// may hold the VIP by now. Nothing is left to drain.
		timeout = 0
	}
	why := n.waitRetired(ctx, vip, t0, timeout)
	if why == "" {
		return
	}
	if err := n.dp.SetVIPLease(vip, dataplane.VIPLease{State: dataplane.VIPLeaseNone, Holder: n.cfg.Self}); err != nil {
		log.Error("retire: end the drain's lease", zap.Error(err))
		return
	}
	err = n.removeVerified("lo", host)
	for _, a := range up {
		if a.Iface != "lo" {
			err = errors.Join(err, n.dp.SetDrainRoute(a.Iface, a.Prefix, false))
		}
	}
	if terr := n.untrack(vip); terr != nil {
		err = errors.Join(err, terr)
	}
	log.Info("retired", zap.String("why", why), zap.Error(err))
	now := time.Now()
	n.updateRecord(pa, t0, "drain", func(r *admin.Takeover) {
		r.Steps = append(r.Steps, admin.TimelineStep{Step: "drain ended: " + why, At: now, Took: now.Sub(t0)})
		if err != nil && r.Error == "" {
			r.Error = err.Error()
		}
	})
}

// waitRetired waits until vip has no connection left here, or resets
// those left after timeout or when a shutdown's bound passed (retireNow);
// it says which ("" if ctx ended).
func (n *Node) waitRetired(ctx context.Context, vip netip.Addr, since time.Time, timeout time.Duration) string {
	tick := time.NewTicker(retireCheckEvery)
	defer tick.Stop()
	kill := func(why string) string {
		ks, err := n.dp.KillVIP(vip)
		if err != nil {
			n.log.Warn("reset a retiring VIP's connections", zap.Stringer("vip", vip), zap.Error(err))
		}
		return fmt.Sprintf("%s: %d connections reset", why, ks.Destroyed+ks.Reset)
	}
	for {
		left, err := n.dp.CountFlows(vip)
		switch {
		case err != nil:
			n.log.Warn("count a retiring VIP's connections", zap.Stringer("vip", vip), zap.Error(err))
		case left == 0:
			return "last connection closed"
		case time.Since(since) >= timeout:
			return kill("drain timeout")
		}
		select {
		case <-ctx.Done():
			return ""
		case <-n.retireNow:
			return kill("shutdown timeout")
		case <-tick.C:
		}
	}
}

// untrack stops the data plane tracking vip, once retired: it tracks the
// configured VIPs and those still retiring.
func (n *Node) untrack(vip netip.Addr) error {
	n.mu.Lock()
	n.retiring = slices.DeleteFunc(n.retiring, func(a netip.Addr) bool { return a == vip })
	keep := slices.Clone(n.retiring)
	n.mu.Unlock()
	for _, v := range n.cfg.VIPs {
		keep = append(keep, v.VIP())
	}
	return n.dp.SetVIPs(keep)
}

// startRetiring retires each VIP of Config.Retiring in a goroutine of its
// own.
func (n *Node) startRetiring(ctx context.Context) {
	if len(n.cfg.Retiring) == 0 {
		return
	}
	leases, err := n.dp.VIPLeases()
	if err != nil {
		n.log.Error("read the data plane's leases: the VIPs no longer configured stay as they are until the next start",
			zap.Error(err))
		return
	}
	for _, vip := range n.cfg.Retiring {
		go n.retire(ctx, vip, leases[vip])
	}
}
