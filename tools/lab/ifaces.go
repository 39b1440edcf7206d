package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
)

// More interfaces on a host: a node whose VIPs live on dedicated public
// interfaces (public_addresses' "eth1,eth2"), beside eth0 that carries its
// own address and the cluster's traffic. Each extra interface is a veth
// into the same bridge, without an address; its switch port is named
// <role>-<iface> (Host.SetIfaceLink cuts it).

// AddIface adds interface name to the host, joined to the bridge, up, and
// returns its switch port. Bridge topology only.
func (h *Host) AddIface(name string) (string, error) { return h.AddIfaceOn(name, bridgeName) }

// AddIfaceOn is AddIface joined to the switch's bridge br instead, which
// it creates if needed: a network of its own (SecondBridge).
func (h *Host) AddIfaceOn(name, br string) (string, error) {
	l := h.lab
	if l.opts.Topology != Bridge {
		return "", fmt.Errorf("add %s to %s: extra interfaces need the bridge topology", name, h.Role)
	}
	port := h.Role + "-" + name
	if len(port) >= 16 {
		return "", fmt.Errorf("add %s to %s: port name %q too long", name, h.Role, port)
	}
	brLink, err := l.bridge(br)
	if err != nil {
		return "", err
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: port, MasterIndex: brLink.Attrs().Index},
		PeerName:      name,
		PeerNamespace: netlink.NsFd(int(h.ns)),
	}
	if err := l.Switch.nl.LinkAdd(veth); err != nil {
		return "", fmt.Errorf("add veth %s: %w", port, err)
	}
	l.push("delete veth "+port, func() error {
		if lk, err := l.Switch.nl.LinkByName(port); err == nil {
			return l.Switch.nl.LinkDel(lk)
		}
		return nil
	})
	if err := l.setPort(port, true); err != nil {
		return "", err
	}
	lk, err := h.nl.LinkByName(name)
	if err != nil {
		return "", fmt.Errorf("find %s in %s: %w", name, h.Role, err)
	}
	if err := h.nl.LinkSetUp(lk); err != nil {
		return "", fmt.Errorf("%s up in %s: %w", name, h.Role, err)
	}
	h.logger().Info("interface added", zap.String("iface", name), zap.String("port", port), zap.String("bridge", br))
	return port, nil
}

// SecondBridge is the switch's second bridge: a network apart from br0,
// that only interfaces added with AddIfaceOn join (ClusterOptions.
// SecondNet).
const SecondBridge = "br1"

// bridge finds the switch's bridge name, creating it (up) if it is not
// there yet.
func (l *Lab) bridge(name string) (netlink.Link, error) {
	if lk, err := l.Switch.nl.LinkByName(name); err == nil {
		return lk, nil
	}
	if err := l.Switch.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
		return nil, fmt.Errorf("add bridge %s: %w", name, err)
	}
	lk, err := l.Switch.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", name, err)
	}
	if err := l.Switch.nl.LinkSetUp(lk); err != nil {
		return nil, fmt.Errorf("bridge %s up: %w", name, err)
	}
	return lk, nil
}

// AddAddrOn adds (or replaces) p on the host's interface iface; an IPv6
// address usable at once (no duplicate address detection).
func (h *Host) AddAddrOn(iface string, p netip.Prefix) error {
	lk, err := h.nl.LinkByName(iface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", iface, h.NS, err)
	}
	a := &netlink.Addr{IPNet: prefixNet(p)}
	if p.Addr().Is6() {
		a.Flags = 0x02 // IFA_F_NODAD: usable at once
	}
	if err := h.nl.AddrReplace(lk, a); err != nil {
		return fmt.Errorf("add %s to %s in %s: %w", p, iface, h.NS, err)
	}
	return nil
}

// IfaceMAC is the hardware address of the host's interface name.
func (h *Host) IfaceMAC(name string) (net.HardwareAddr, error) {
	lk, err := h.nl.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, h.NS, err)
	}
	return lk.Attrs().HardwareAddr, nil
}

// AddrsOn lists the IPv4 and IPv6 addresses on the host's interface name
// (link-local ones excluded); none if it does not exist.
func (h *Host) AddrsOn(name string) ([]netip.Prefix, error) {
	lk, err := h.nl.LinkByName(name)
	var missing netlink.LinkNotFoundError
	if errors.As(err, &missing) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", name, h.NS, err)
	}
	list, err := h.nl.AddrList(lk, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s in %s: %w", name, h.NS, err)
	}
	var out []netip.Prefix
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.IsLinkLocalUnicast() {
			continue
		}
		bits, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), bits))
	}
	return out, nil
}

// SetIfaceLink takes the switch port of the host's extra interface name
// down (the host sees its carrier go) or up again; a port down is a
// fault of the host (failovers.go).
func (h *Host) SetIfaceLink(name string, up bool) error {
	port := h.Role + "-" + name
	if up {
		defer h.lab.endFault("port/" + port)
	} else {
		h.lab.beginFault("port/"+port, "switch port "+port+" down", h.Role)
	}
	return h.lab.setPort(port, up)
}

// vipIfaces are the interfaces a cluster's VIPs may be on, but for the
// second network's VIP (secondNetIface).
func (c *Cluster) vipIfaces() []string {
	if len(c.opts.VIPIfaces) > 0 {
		return c.opts.VIPIfaces
	}
	return []string{HostIface}
}

// secondNetIface is the interface of every node and client on the
// SecondBridge network (ClusterOptions.SecondNet).
const secondNetIface = "eth1"

// allVIPIfaces are the interfaces any of the cluster's VIPs may be on.
func (c *Cluster) allVIPIfaces() []string {
	out := slices.Clone(c.vipIfaces())
	if c.opts.SecondNet && !slices.Contains(out, secondNetIface) {
		out = append(out, secondNetIface)
	}
	return out
}

// HeldOn lists the cluster's VIPs on each of the node's public
// interfaces, by interface.
func (n *ClusterNode) HeldOn() (map[string][]netip.Prefix, error) {
	out := map[string][]netip.Prefix{}
	for _, iface := range n.cluster.allVIPIfaces() {
		addrs, err := n.AddrsOn(iface)
		if err != nil {
			return nil, err
		}
		for _, a := range addrs {
			if slices.Contains(n.cluster.VIPs, a) {
				out[iface] = append(out[iface], a)
			}
		}
	}
	return out, nil
}

// setUpIfaces gives a node the cluster's extra interfaces and, as a node
// with several interfaces on one subnet needs, ARP answers only from the
// interface that has the address (arp_ignore 1, arp_announce 2 for all).
func (n *ClusterNode) setUpIfaces(ctx context.Context) error {
	opts := n.cluster.opts
	if len(opts.ExtraIfaces) == 0 && len(opts.VIPIfaces) == 0 && !opts.SecondNet {
		return nil
	}
	for _, name := range opts.ExtraIfaces {
		if _, err := n.AddIface(name); err != nil {
			return err
		}
	}
	if opts.SecondNet {
		if _, err := n.AddIfaceOn(secondNetIface, SecondBridge); err != nil {
			return err
		}
		if !opts.SecondNetBare {
			if err := n.AddAddrOn(secondNetIface, publicAddr(10+n.PNN+1)); err != nil {
				return err
			}
			if n.lab.IPv6() {
				if err := n.AddAddrOn(secondNetIface, publicAddr6(10+n.PNN+1)); err != nil {
					return err
				}
			}
		}
	}
	for _, kv := range []string{"net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2"} {
		if out, err := n.Run(ctx, "sysctl", "-q", "-w", kv); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w: %s", kv, n.Role, err, out)
		}
	}
	return nil
}

// setExtraLinks sets the node's interfaces besides eth0 (the cluster's
// extra and VIP interfaces that exist) down or up from inside the node,
// as a power cut and a boot do.
func (n *ClusterNode) setExtraLinks(up bool) error {
	names := slices.Clone(n.cluster.opts.ExtraIfaces)
	for _, name := range n.cluster.vipIfaces() {
		if name != HostIface && !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	var errs []error
	for _, name := range names {
		lk, err := n.nl.LinkByName(name)
		var missing netlink.LinkNotFoundError
		if errors.As(err, &missing) {
			continue
		}
		if err == nil {
			if up {
				err = n.nl.LinkSetUp(lk)
			} else {
				err = n.nl.LinkSetDown(lk)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("set %s up=%v in %s: %w", name, up, n.Role, err))
		}
	}
	return errors.Join(errs...)
}
