package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// A drain's route back to its clients. A VIP being drained lives on
// loopback while its old connections are served here. Its prefix route
// left with the address: a node with no address of its own in the VIP's
// subnet (a public interface carrying only VIPs, as CTDB's often do) then
// has no route to the clients, and every answer of a drained connection
// fails with "network unreachable". The drain keeps a route to the VIP's
// subnet through the interface the VIP was on, behind any other route to
// it (a node address's connected route keeps winning), until it ends.

// DrainRouteMetric is the metric of a drain's route: behind the kernel's
// connected routes (IPv4 0, IPv6 256) and the usual static ones.
const DrainRouteMetric = 9245

// drainRouteProto marks the routes as fsha's in `ip route` (proto 245).
const drainRouteProto = netlink.RouteProtocol(245)

// drainRoute is the route a drain of prefix keeps through link; ok is
// false for a host prefix, whose clients are routed elsewhere anyway.
func drainRoute(link netlink.Link, prefix netip.Prefix) (netlink.Route, bool) {
	p := prefix.Masked()
	if p.Bits() == p.Addr().BitLen() {
		return netlink.Route{}, false
	}
	r := netlink.Route{LinkIndex: link.Attrs().Index, Dst: prefixNet(p), Priority: DrainRouteMetric, Protocol: drainRouteProto}
	if p.Addr().Is4() {
		r.Scope = netlink.SCOPE_LINK
	}
	return r, true
}

// SetDrainRoute adds (on) or removes the route a drain of prefix keeps
// through iface. Idempotent; an interface or route already gone is no
// error when removing.
func (v *VIPAddrs) SetDrainRoute(iface string, prefix netip.Prefix, on bool) error {
	link, err := netlink.LinkByName(iface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if !on && errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("drain route to %s via %s: %w", prefix.Masked(), iface, err)
	}
	r, ok := drainRoute(link, prefix)
	if !ok {
		return nil
	}
	if on {
		if err := netlink.RouteReplace(&r); err != nil {
			return fmt.Errorf("add drain route to %s via %s: %w", prefix.Masked(), iface, err)
		}
		v.log.Info("drain route added", zap.String("iface", iface), zap.Stringer("subnet", prefix.Masked()), zap.Int("metric", DrainRouteMetric))
		return nil
	}
	if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("remove drain route to %s via %s: %w", prefix.Masked(), iface, err)
	}
	return nil
}

// prefixNet is p as the net package has it.
func prefixNet(p netip.Prefix) *net.IPNet {
	a := p.Addr().Unmap()
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}
}
