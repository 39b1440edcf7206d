package dataplane

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// vipLabelSuffix makes an IPv4 VIP recognisable in `ip addr` as fsha's
// ("eth0:fsha"). IPv6 has no labels.
const vipLabelSuffix = ":fsha"

// dumpRetries bounds the retries of a netlink dump that the kernel reports
// as interrupted (an address changed while it was being dumped).
const dumpRetries = 5

// VIPAddrs adds and removes VIPs as interface addresses, in the network
// namespace of the calling thread.
type VIPAddrs struct {
	log *zap.Logger
}

// LocalVIP is a VIP found on a local interface.
type LocalVIP struct {
	Iface string
	// Prefix is the address as it is on the interface: its prefix length
	// may differ from the configured one (a stale address of an older
	// config), and RemoveVIP removes it whatever the length.
	Prefix netip.Prefix
}

// NewVIPAddrs returns a VIPAddrs logging to log.
func NewVIPAddrs(log *zap.Logger) *VIPAddrs {
	return &VIPAddrs{log: log.Named("dataplane").Named("vip")}
}

// AddVIP puts prefix's address on iface, idempotently (netlink
// AddrReplace). An IPv6 VIP gets IFA_F_NODAD, so it is usable at once
// instead of after duplicate address detection; an IPv4 VIP in the subnet
// of the node's own address becomes one of its secondaries.
func (v *VIPAddrs) AddVIP(iface string, prefix netip.Prefix) error {
	prefix, err := checkVIPPrefix(prefix)
	if err != nil {
		return fmt.Errorf("add vip %s to %s: %w", prefix, iface, err)
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("add vip %s to %s: %w", prefix, iface, err)
	}
	addrs, err := linkAddrs(link, familyOf(prefix.Addr()))
	if err != nil {
		return fmt.Errorf("add vip %s to %s: %w", prefix, iface, err)
	}
	// The same address with another prefix length (an older config) would
	// stay beside the new one: the kernel keys IPv4 addresses by address
	// and prefix. Remove it first so the interface holds the VIP once.
	for _, a := range addrs {
		if got, ok := prefixOf(a); ok && got.Addr() == prefix.Addr() && got.Bits() != prefix.Bits() {
			if err := netlink.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("add vip %s to %s: remove %s with old prefix length: %w", prefix, iface, got, err)
			}
			v.log.Info("removed vip with another prefix length", zap.String("iface", iface), zap.Stringer("old", got), zap.Stringer("vip", prefix))
		}
	}
	addr := netlinkAddr(prefix)
	if prefix.Addr().Is4() {
		if label := iface + vipLabelSuffix; len(label) < unix.IFNAMSIZ {
			addr.Label = label
		}
	} else {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add vip %s to %s: %w", prefix, iface, err)
	}
	if prefix.Addr().Is6() {
		waited, err := waitLocal(prefix.Addr(), localRouteWait, routeIsLocal)
		if err != nil {
			return fmt.Errorf("add vip %s to %s: %w", prefix, iface, err)
		}
		v.log.Info("vip added", zap.String("iface", iface), zap.Stringer("vip", prefix), zap.Float64("local_route_wait_ms", float64(waited.Microseconds())/1000))
		return nil
	}
	v.log.Info("vip added", zap.String("iface", iface), zap.Stringer("vip", prefix))
	return nil
}

// localRouteWait bounds how long AddVIP waits for an IPv6 VIP's local
// route.
const localRouteWait = time.Second

// waitLocal waits until local(addr) says the kernel delivers addr to this
// host, polling every 100 µs up to bound, and says how long it took.
//
// Why: an IPv6 address is not usable when AddrReplace returns, even with
// IFA_F_NODAD. The kernel inserts its local route from the addrconf work
// queue (one queue for every namespace, under the RTNL lock), so on a
// busy host it may take milliseconds. A takeover that tickles meanwhile
// sees the clients' answers dropped as addressed to another host
// (Ip6InAddrErrors) instead of reset, and those clients wait for the next
// tickle round, the TCP stack's challenge-ACK limit (500 ms) later:
// measured in the lab, 810-855 ms to a reset instead of 240 ms. IPv4
// inserts its local route before the request returns.
func waitLocal(addr netip.Addr, bound time.Duration, local func(netip.Addr) (bool, error)) (time.Duration, error) {
	start := time.Now()
	for {
		ok, err := local(addr)
		waited := time.Since(start)
		if err != nil {
			return waited, fmt.Errorf("route lookup of %s: %w", addr, err)
		}
		if ok {
			return waited, nil
		}
		if waited > bound {
			return waited, fmt.Errorf("the kernel has no local route for %s %v after adding it", addr, bound)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// routeIsLocal asks the kernel's routing (ip route get) whether addr is
// delivered to this host.
func routeIsLocal(addr netip.Addr) (bool, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil {
		return false, err
	}
	return len(routes) > 0 && routes[0].Type == unix.RTN_LOCAL, nil
}

// RemoveVIP removes prefix's address from iface, whatever its prefix
// length there. An address (or interface) that is already gone is no
// error. Removing an IPv4 primary address would make the kernel remove its
// secondaries (the node's own address, other VIPs) too: RemoveVIP turns on
// promote_secondaries for the interface first, and puts back any other
// address that disappeared all the same.
func (v *VIPAddrs) RemoveVIP(iface string, prefix netip.Prefix) error {
	prefix, err := checkVIPPrefix(prefix)
	if err != nil {
		return fmt.Errorf("remove vip %s from %s: %w", prefix, iface, err)
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("remove vip %s from %s: %w", prefix, iface, err)
	}
	family := familyOf(prefix.Addr())
	addrs, err := linkAddrs(link, family)
	if err != nil {
		return fmt.Errorf("remove vip %s from %s: %w", prefix, iface, err)
	}
	i := slices.IndexFunc(addrs, func(a netlink.Addr) bool {
		got, ok := prefixOf(a)
		return ok && got.Addr() == prefix.Addr()
	})
	if i < 0 {
		return nil
	}
	target := addrs[i]
	others := slices.Delete(slices.Clone(addrs), i, i+1)

	if family == netlink.FAMILY_V4 && target.Flags&unix.IFA_F_SECONDARY == 0 && hasSecondaryOf(target, others) {
		changed, err := enablePromoteSecondaries(iface)
		if err != nil {
			// Go on: the addresses lost are put back below.
			v.log.Warn("cannot enable promote_secondaries; secondaries will be re-added", zap.String("iface", iface), zap.Error(err))
		} else if changed {
			v.log.Info("enabled promote_secondaries so removing a primary vip keeps the other addresses", zap.String("iface", iface))
		}
	}

	if err := netlink.AddrDel(link, &target); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("remove vip %s from %s: %w", prefix, iface, err)
	}
	if family == netlink.FAMILY_V4 {
		if err := v.restoreLost(link, iface, family, others); err != nil {
			return fmt.Errorf("remove vip %s from %s: %w", prefix, iface, err)
		}
	}
	v.log.Info("vip removed", zap.String("iface", iface), zap.Stringer("vip", prefix))
	return nil
}

// restoreLost re-adds any of want that is no longer on link.
func (v *VIPAddrs) restoreLost(link netlink.Link, iface string, family int, want []netlink.Addr) error {
	if len(want) == 0 {
		return nil
	}
	now, err := linkAddrs(link, family)
	if err != nil {
		return fmt.Errorf("check remaining addresses: %w", err)
	}
	var errs []error
	for _, w := range want {
		if slices.ContainsFunc(now, func(a netlink.Addr) bool { return sameAddr(a, w) }) {
			continue
		}
		re := w
		re.Flags &^= unix.IFA_F_SECONDARY
		if err := netlink.AddrAdd(link, &re); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("re-add %s lost with the vip: %w", w.IPNet, err))
			continue
		}
		v.log.Warn("re-added an address the kernel removed with the vip", zap.String("iface", iface), zap.Stringer("addr", w.IPNet))
	}
	return errors.Join(errs...)
}

// HasVIP reports whether addr is on iface.
func (v *VIPAddrs) HasVIP(iface string, addr netip.Addr) (bool, error) {
	addr = addr.Unmap()
	if !addr.IsValid() {
		return false, fmt.Errorf("check vip %s on %s: invalid address", addr, iface)
	}
	link, err := netlink.LinkByName(iface)
	if err != nil {
		return false, fmt.Errorf("check vip %s on %s: %w", addr, iface, err)
	}
	addrs, err := linkAddrs(link, familyOf(addr))
	if err != nil {
		return false, fmt.Errorf("check vip %s on %s: %w", addr, iface, err)
	}
	return slices.ContainsFunc(addrs, func(a netlink.Addr) bool {
		got, ok := prefixOf(a)
		return ok && got.Addr() == addr
	}), nil
}

// LocalVIPs lists which of candidates (the configured VIPs) are on the
// interfaces named in ifaces now, or on any interface when ifaces is empty.
// At start-up the node releases them, as CTDB releases every public
// address, since it holds none until the cluster gives it some. Interfaces
// that do not exist are skipped. The result is sorted by interface and
// address.
func (v *VIPAddrs) LocalVIPs(ifaces []string, candidates []netip.Prefix) ([]LocalVIP, error) {
	if len(candidates) == 0 {
		return nil, nil
	}
	want := make(map[netip.Addr]bool, len(candidates))
	for _, c := range candidates {
		want[c.Addr().Unmap()] = true
	}
	names := make(map[int]string)
	if len(ifaces) == 0 {
		links, err := netlink.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list local vips: list links: %w", err)
		}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	for _, name := range ifaces {
		l, err := netlink.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				v.log.Debug("interface of public addresses not found", zap.String("iface", name))
				continue
			}
			return nil, fmt.Errorf("list local vips on %s: %w", name, err)
		}
		names[l.Attrs().Index] = l.Attrs().Name
	}
	addrs, err := linkAddrs(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list local vips: %w", err)
	}
	var out []LocalVIP
	for _, a := range addrs {
		name, ok := names[a.LinkIndex]
		if !ok {
			continue
		}
		p, ok := prefixOf(a)
		if !ok || !want[p.Addr()] {
			continue
		}
		out = append(out, LocalVIP{Iface: name, Prefix: p})
	}
	slices.SortFunc(out, func(a, b LocalVIP) int {
		if c := strings.Compare(a.Iface, b.Iface); c != 0 {
			return c
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())
	})
	return out, nil
}

// checkVIPPrefix refuses what can never be a VIP and returns the prefix
// with an IPv4-mapped address unmapped.
func checkVIPPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return p, errors.New("invalid prefix")
	}
	a := p.Addr()
	if a.Is4In6() {
		if p.Bits() < 96 {
			return p, errors.New("ipv4-mapped address with a prefix shorter than 96 bits")
		}
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		a = p.Addr()
	}
	switch {
	case a.IsUnspecified():
		return p, errors.New("unspecified address")
	case a.IsMulticast():
		return p, errors.New("multicast address")
	case a.IsLoopback():
		return p, errors.New("loopback address")
	}
	return p, nil
}

func familyOf(a netip.Addr) int {
	if a.Unmap().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

func netlinkAddr(p netip.Prefix) *netlink.Addr {
	a := p.Addr()
	return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(p.Bits(), a.BitLen())}}
}

// prefixOf is a's address with its prefix length.
func prefixOf(a netlink.Addr) (netip.Prefix, bool) {
	if a.IPNet == nil {
		return netip.Prefix{}, false
	}
	ip, ok := netip.AddrFromSlice(a.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := a.Mask.Size()
	return netip.PrefixFrom(ip.Unmap(), ones), true
}

func sameAddr(a, b netlink.Addr) bool {
	pa, oka := prefixOf(a)
	pb, okb := prefixOf(b)
	return oka && okb && pa == pb
}

// hasSecondaryOf reports whether any of others is a secondary address in
// primary's subnet: the ones the kernel removes with the primary.
func hasSecondaryOf(primary netlink.Addr, others []netlink.Addr) bool {
	pp, ok := prefixOf(primary)
	if !ok {
		return false
	}
	subnet := pp.Masked()
	for _, o := range others {
		po, ok := prefixOf(o)
		if ok && o.Flags&unix.IFA_F_SECONDARY != 0 && po.Bits() == pp.Bits() && subnet.Contains(po.Addr()) {
			return true
		}
	}
	return false
}

// linkAddrs lists the addresses of link (all links when nil), retrying a
// dump the kernel interrupted because the addresses changed meanwhile.
func linkAddrs(link netlink.Link, family int) ([]netlink.Addr, error) {
	var err error
	for range dumpRetries {
		var addrs []netlink.Addr
		addrs, err = netlink.AddrList(link, family)
		if err == nil {
			return addrs, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	return nil, fmt.Errorf("list addresses: %w", err)
}

// enablePromoteSecondaries sets net.ipv4.conf.IFACE.promote_secondaries,
// so that removing a primary address promotes a secondary instead of
// removing them all. It reports whether it changed the setting.
func enablePromoteSecondaries(iface string) (bool, error) {
	if iface == "" || strings.ContainsAny(iface, "/") || iface == "." || iface == ".." {
		return false, fmt.Errorf("bad interface name %q", iface)
	}
	p := filepath.Join("/proc/sys/net/ipv4/conf", iface, "promote_secondaries")
	b, err := os.ReadFile(p)
	if err != nil {
		return false, fmt.Errorf("read promote_secondaries: %w", err)
	}
	if strings.TrimSpace(string(b)) == "1" {
		return false, nil
	}
	if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
		return false, fmt.Errorf("set promote_secondaries: %w", err)
	}
	return true, nil
}
