package dataplane

// Resolving a client's next hop and its MAC address from the main
// routing table and the neighbour table, for the packet socket.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nextHops resolves clients to the MAC address of their next hop on the
// Tickler's interface, from the main routing table and the neighbour
// table as they were when loaded.
type nextHops struct {
	ifindex int
	routes  []hopRoute // longest prefix first
	neigh   map[[16]byte]net.HardwareAddr
	// cache maps clients to next hops (invalid: not via ifindex) when
	// there are too many routes to scan for every client.
	cache map[[16]byte]netip.Addr
	// last is the last next hop looked up, and its MAC address: most
	// clients of a VIP share one (a router, or one client host with
	// several connections).
	last    netip.Addr
	lastMAC net.HardwareAddr
}

// hopCacheRoutes is the number of routes from which lookups are cached.
const hopCacheRoutes = 32

type hopRoute struct {
	dst netip.Prefix
	gw  netip.Addr // invalid: on link
	// ok is false for a route that does not send out of the interface
	// through one known gateway: another interface, multipath, blackhole.
	ok bool
}

func (t *Tickler) loadNextHops() (*nextHops, error) {
	h := &nextHops{ifindex: t.ifindex}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return t.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if hr, ok := hopRouteOf(fam, r, t.ifindex); ok {
				h.routes = append(h.routes, hr)
			}
		}
	}
	h.sortRoutes()
	if err := h.reloadNeighbours(t); err != nil {
		return nil, err
	}
	return h, nil
}

// sortRoutes puts the longest prefixes first; among equal prefixes the
// kernel's order (lowest metric first) stands.
func (h *nextHops) sortRoutes() {
	slices.SortStableFunc(h.routes, func(a, b hopRoute) int { return b.dst.Bits() - a.dst.Bits() })
	if len(h.routes) >= hopCacheRoutes {
		h.cache = map[[16]byte]netip.Addr{}
	}
}

// hopRouteOf converts a route; ok is false for routes that never match.
func hopRouteOf(fam int, r netlink.Route, ifindex int) (hopRoute, bool) {
	var dst netip.Prefix
	if r.Dst == nil {
		if fam == netlink.FAMILY_V4 {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		} else {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	} else {
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			return hopRoute{}, false
		}
		bits, _ := r.Dst.Mask.Size()
		if fam == netlink.FAMILY_V4 {
			a = a.Unmap()
		}
		dst = netip.PrefixFrom(a, bits)
	}
	if !dst.IsValid() {
		return hopRoute{}, false
	}
	hr := hopRoute{dst: dst.Masked()}
	if r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 || r.Via != nil || r.LinkIndex != ifindex {
		return hr, true // matches, but the kernel must route it
	}
	if r.Gw != nil {
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok {
			return hr, true
		}
		if fam == netlink.FAMILY_V4 {
			gw = gw.Unmap()
		}
		hr.gw = gw
	}
	hr.ok = true
	return hr, true
}

func (h *nextHops) reloadNeighbours(t *Tickler) error {
	h.neigh = map[[16]byte]net.HardwareAddr{}
	h.last, h.lastMAC = netip.Addr{}, nil
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return t.nl.NeighList(h.ifindex, fam) })
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range ns {
			const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
			if n.State&usable == 0 || len(n.HardwareAddr) != 6 || isZeroMAC(n.HardwareAddr) {
				continue
			}
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				h.neigh[a.Unmap().As16()] = n.HardwareAddr
			}
		}
	}
	return nil
}

// retryDump runs a netlink dump again (a few times) when the table
// changed under it, as it may right after a takeover added addresses.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for range 3 {
		xs, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return xs, err
		}
	}
	return dump()
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// nextHop returns client's next hop, invalid when it is not through the
// interface.
func (h *nextHops) nextHop(client netip.Addr) netip.Addr {
	var key [16]byte
	if h.cache != nil {
		key = client.As16()
		if hop, ok := h.cache[key]; ok {
			return hop
		}
	}
	var hop netip.Addr
	for i := range h.routes {
		r := &h.routes[i]
		if r.dst.Contains(client) {
			if r.ok {
				hop = client
				if r.gw.IsValid() {
					hop = r.gw
				}
			}
			break
		}
	}
	if h.cache != nil {
		h.cache[key] = hop
	}
	return hop
}

// lookup returns the MAC address of client's next hop, nil when it is not
// on the interface or not resolved.
func (h *nextHops) lookup(client netip.Addr) net.HardwareAddr {
	hop := h.nextHop(client)
	if !hop.IsValid() {
		return nil
	}
	if hop != h.last {
		h.last, h.lastMAC = hop, h.neigh[hop.As16()]
	}
	return h.lastMAC
}
