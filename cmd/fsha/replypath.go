package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/dataplane"
)

// Reply interfaces: fsha tracks a connection from the server's first
// answer, with its TC egress program. The answers leave wherever the
// kernel routes the client, which is not always a VIP's interface: a
// node whose own address is in the VIPs' subnet (eth0) answers through
// eth0, and clients behind a router are answered through the default
// route's interface. Without the program there such connections are
// neither tracked nor replicated, and after a crash the new holder has
// nothing to tickle. So the data plane runs TC egress, alone, on these
// "reply interfaces" too (dataplane/reply.go). This file decides which
// they are (a pure function over a view of the kernel's routes); the
// effect of attaching is replytrack.go's.

// replyIface is one reply interface and why answers leave through it.
type replyIface struct {
	Name string
	// Why: "198.18.0.0/24 (VIP 198.18.0.201/24)", "default route (IPv4)"
	Why []string
}

func (r replyIface) String() string { return r.Name + ": " + strings.Join(r.Why, ", ") }

// routeView is what replyInterfaces asks of the kernel's routing.
type routeView struct {
	// subnetDev says through which interface the kernel reaches the
	// hosts of subnet p now ("" and no error: no route).
	subnetDev func(p netip.Prefix) (string, error)
	// defaultDevs lists the interfaces of the default routes of a
	// family (IPv6 if ipv6).
	defaultDevs func(ipv6 bool) ([]string, error)
}

// replyInterfaces says through which interfaces that are not public
// (not in any VIP's interface list) the node's answers to VIP clients
// leave: the one the kernel routes each VIP's subnet through, and those
// of the default routes of every family that has a VIP. Lookups that
// fail are reported, the others still used. Loopback is never one.
func replyInterfaces(addrs []config.PublicAddress, rv routeView) ([]replyIface, error) {
	var (
		public     []string
		out        []replyIface
		errs       []error
		fam4, fam6 bool
	)
	for _, a := range addrs {
		public = append(public, a.Interfaces...)
		fam4 = fam4 || a.VIP().Is4()
		fam6 = fam6 || a.VIP().Is6()
	}
	add := func(dev, why string) {
		if dev == "" || dev == "lo" || slices.Contains(public, dev) {
			return
		}
		i := slices.IndexFunc(out, func(r replyIface) bool { return r.Name == dev })
		if i < 0 {
			out = append(out, replyIface{Name: dev})
			i = len(out) - 1
		}
		if !slices.Contains(out[i].Why, why) {
			out[i].Why = append(out[i].Why, why)
		}
	}
	seen := map[netip.Prefix]bool{}
	for _, a := range addrs {
		p := a.Prefix.Masked()
		if p.Bits() == p.Addr().BitLen() || seen[p] {
			continue // a host route: no subnet of clients; or done
		}
		seen[p] = true
		dev, err := rv.subnetDev(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("route to %s: %w", p, err))
			continue
		}
		add(dev, fmt.Sprintf("%s (VIP %s)", p, a.Prefix))
	}
	for _, f := range []struct {
		has  bool
		ipv6 bool
		name string
	}{{fam4, false, "IPv4"}, {fam6, true, "IPv6"}} {
		if !f.has {
			continue
		}
		devs, err := rv.defaultDevs(f.ipv6)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s default routes: %w", f.name, err))
			continue
		}
		for _, d := range devs {
			add(d, "default route ("+f.name+")")
		}
	}
	return out, errors.Join(errs...)
}

// replyNames are the names of rs.
func replyNames(rs []replyIface) []string {
	var out []string
	for _, r := range rs {
		out = append(out, r.Name)
	}
	return out
}

// kernelRoutes is routeView over the kernel's main table, as `ip route
// get` sees it: policy routing by source address (per-VIP rules) is not
// followed.
var kernelRoutes = routeView{subnetDev: kernelSubnetDev, defaultDevs: kernelDefaultDevs}

// kernelSubnetDev asks the kernel (ip route get) through which interface
// it reaches the first hosts of p, skipping the node's own addresses
// there (a local route, through lo, says nothing of the clients).
func kernelSubnetDev(p netip.Prefix) (string, error) {
	a := p.Addr()
	for range 4 {
		if a = a.Next(); !a.IsValid() || !p.Contains(a) {
			break
		}
		routes, err := netlink.RouteGet(a.AsSlice())
		if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) || (err == nil && len(routes) == 0) {
			return "", nil
		}
		if err != nil {
			return "", fmt.Errorf("ip route get %s: %w", a, err)
		}
		if routes[0].Type == unix.RTN_LOCAL {
			continue
		}
		return ifaceName(routes[0].LinkIndex)
	}
	return "", nil
}

// kernelDefaultDevs lists the interfaces of the main table's unicast
// default routes of a family, every path of a multipath one.
func kernelDefaultDevs(ipv6 bool) ([]string, error) {
	fam := netlink.FAMILY_V4
	if ipv6 {
		fam = netlink.FAMILY_V6
	}
	routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	var out []string
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		if r.Type != unix.RTN_UNICAST {
			continue // blackhole, unreachable: nothing leaves
		}
		idx := []int{r.LinkIndex}
		for _, nh := range r.MultiPath {
			idx = append(idx, nh.LinkIndex)
		}
		for _, i := range idx {
			if i == 0 {
				continue
			}
			name, err := ifaceName(i)
			if err != nil {
				return out, err
			}
			if !slices.Contains(out, name) {
				out = append(out, name)
			}
		}
	}
	return out, nil
}

func ifaceName(index int) (string, error) {
	ifi, err := net.InterfaceByIndex(index)
	if err != nil {
		return "", fmt.Errorf("interface %d: %w", index, err)
	}
	return ifi.Name, nil
}

// describeReplies says, for fsha check-config, which reply interfaces a
// start would run the egress program on and why, and warns of those
// where it cannot (their connections stay untracked).
func describeReplies(addrs []config.PublicAddress, rv routeView) []string {
	return describeRepliesWith(addrs, rv, dataplane.CheckReplyInterface)
}

func describeRepliesWith(addrs []config.PublicAddress, rv routeView, fits func(string) error) []string {
	reply, err := replyInterfaces(addrs, rv)
	var lines []string
	if err != nil {
		lines = append(lines, fmt.Sprintf("warning: reply interfaces: %v", err))
	}
	for _, r := range reply {
		if err := fits(r.Name); err != nil {
			lines = append(lines, fmt.Sprintf("warning: answers to VIP clients leave through %s (%s) but it cannot take fsha's egress program (%v): their connections are neither tracked nor replicated",
				r.Name, strings.Join(r.Why, ", "), err))
			continue
		}
		lines = append(lines, fmt.Sprintf("reply interface %s: answers to VIP clients leave through it (%s): fsha up tracks them there with its egress program",
			r.Name, strings.Join(r.Why, ", ")))
	}
	return lines
}
