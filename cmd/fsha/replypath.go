package main

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/fsha/fsha/control/config"
)

// replyPathWarnings says which VIPs' answers would leave through an
// interface that is not one of theirs: fsha tracks a connection from the
// server's first answer, with its TC egress program on the public
// interfaces only, so such connections are neither tracked nor
// replicated (a node whose own address is in the VIPs' subnet answers
// through that interface). routeDev says through which interface the
// kernel reaches an address now ("" and no error: no route). Only the
// VIP's own subnet is checked: clients behind a router go wherever the
// default route says, which this cannot judge before the VIP is up.
func replyPathWarnings(addrs []config.PublicAddress, routeDev func(netip.Addr) (string, error)) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		p := a.Prefix.Masked()
		if p.Bits() == p.Addr().BitLen() {
			continue // a host route: no subnet of clients
		}
		dev, err := routeDev(p.Addr().Next())
		if err != nil || dev == "" || slices.Contains(a.Interfaces, dev) {
			continue
		}
		w := fmt.Sprintf("%s: the node reaches %s through %s, not through the VIP's interfaces (%s): answers to clients there leave untracked, and their connections are neither tracked nor replicated; give the VIPs a subnet only their interfaces reach",
			a.Prefix, p, dev, strings.Join(a.Interfaces, ","))
		if !seen[w] {
			seen[w] = true
			out = append(out, w)
		}
	}
	return out
}

// kernelRouteDev asks the kernel's routing (ip route get) for the
// interface that reaches addr; "" when there is no route.
func kernelRouteDev(addr netip.Addr) (string, error) {
	routes, err := netlink.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return "", nil // unreachable: nothing to judge
	}
	ifi, err := net.InterfaceByIndex(routes[0].LinkIndex)
	if err != nil {
		return "", err
	}
	return ifi.Name, nil
}
