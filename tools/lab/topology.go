package lab

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Topology is how the lab's hosts share their one broadcast domain
// (Options.Topology). Every host's interface is eth0 whatever the
// topology, with the same addresses, so every test runs on each.
type Topology string

const (
	// Bridge: a veth pair per host into a Linux bridge in the switch
	// namespace. The default, and what container networks are.
	Bridge Topology = "bridge"
	// Macvlan: each host's eth0 is a macvlan in bridge mode of one veth
	// in the switch namespace, as container and VM networks use
	// macvlan (Docker's macvlan driver, a VM's macvtap). macvlan has no
	// native XDP: fsha attaches in generic mode. The switch has no port
	// per host, so the switch's faults (Partition, Unplug, Loss, ...)
	// are not available; LinkDown and PowerDown work.
	Macvlan Topology = "macvlan"
	// VXLAN: each host's eth0 is a VXLAN device (VNI vxlanVNI, UDP 4789)
	// over an underlay veth ("ul0", UnderlaySubnet) into the bridge, its
	// flood list naming every other host, as Kubernetes overlays (flannel's
	// vxlan backend) build it. No native XDP either. The switch's faults
	// act on the underlay (Unplug cuts a host's VTEP), nftables rules on
	// the overlay's addresses do not match.
	VXLAN Topology = "vxlan"
)

// ParseTopology reads a topology name; "" is Bridge.
func ParseTopology(s string) (Topology, error) {
	switch t := Topology(s); t {
	case "", Bridge:
		return Bridge, nil
	case Macvlan, VXLAN:
		return t, nil
	}
	return "", fmt.Errorf("lab topology %q: want bridge, macvlan or vxlan", s)
}

// TopologyEnv picks the topology of every lab of a run whose Options
// leave it empty (FSHA_LAB_TOPOLOGY=macvlan|vxlan).
const TopologyEnv = "FSHA_LAB_TOPOLOGY"

// UnderlaySubnet carries a VXLAN lab's encapsulated frames: host i's
// underlay address has the same last byte as its eth0 address.
var UnderlaySubnet = netip.MustParsePrefix("198.18.1.0/24")

const (
	macvlanParent = "mvl0"
	underlayIface = "ul0"
	vxlanVNI      = 42
	vxlanPort     = 4789
	// vxlanMTU leaves room for the 50 bytes of VXLAN, UDP, IPv4 and inner
	// Ethernet headers in the underlay's 1500.
	vxlanMTU = 1450
)

// Topology is the lab's topology.
func (l *Lab) Topology() Topology { return l.opts.Topology }

// setUpSwitch builds the switch namespace's shared device: the bridge
// (Bridge, VXLAN's underlay) or the macvlans' parent (Macvlan).
func (l *Lab) setUpSwitch() error {
	var dev netlink.Link = &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridgeName}}
	if l.opts.Topology == Macvlan {
		// a veth pair with both ends up: a parent with a carrier and no
		// traffic of its own (this kernel has no dummy device)
		dev = &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: macvlanParent}, PeerName: macvlanParent + "p"}
	}
	if err := l.Switch.nl.LinkAdd(dev); err != nil {
		return fmt.Errorf("add %s: %w", dev.Attrs().Name, err)
	}
	names := []string{dev.Attrs().Name}
	if l.opts.Topology == Macvlan {
		names = append(names, macvlanParent+"p")
	}
	for _, name := range names {
		lk, err := l.Switch.nl.LinkByName(name)
		if err != nil {
			return fmt.Errorf("find %s: %w", name, err)
		}
		if err := l.Switch.nl.LinkSetUp(lk); err != nil {
			return fmt.Errorf("%s up: %w", name, err)
		}
	}
	return nil
}

// addVeth joins h to the bridge with a veth pair: the switch's end is
// named after the role (the port the switch's faults act on), h's end
// peer. It returns the switch's end, up.
func (l *Lab) addVeth(h *Host, peer string) (netlink.Link, error) {
	role := h.Role
	br, err := l.Switch.nl.LinkByName(bridgeName)
	if err != nil {
		return nil, fmt.Errorf("find bridge: %w", err)
	}
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: role, MasterIndex: br.Attrs().Index},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(int(h.ns)),
	}
	if err := l.Switch.nl.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", role, err)
	}
	// Deleting the namespace deletes its end and with it the pair; this
	// step only matters when the namespace outlives the lab (a socket the
	// caller did not close holds it).
	l.push("delete veth "+role, func() error {
		lk, err := l.Switch.nl.LinkByName(role)
		if err != nil {
			return nil
		}
		return l.Switch.nl.LinkDel(lk)
	})
	sw, err := l.Switch.nl.LinkByName(role)
	if err != nil {
		return nil, fmt.Errorf("find veth %s: %w", role, err)
	}
	if err := l.Switch.nl.LinkSetUp(sw); err != nil {
		return nil, fmt.Errorf("veth %s up: %w", role, err)
	}
	return sw, nil
}

// addMacvlan gives h an eth0 that is a bridge-mode macvlan of the switch's
// parent: the macvlan driver itself forwards between siblings.
func (l *Lab) addMacvlan(h *Host) error {
	parent, err := l.Switch.nl.LinkByName(macvlanParent)
	if err != nil {
		return fmt.Errorf("find %s: %w", macvlanParent, err)
	}
	mv := &netlink.Macvlan{
		LinkAttrs: netlink.LinkAttrs{Name: HostIface, ParentIndex: parent.Attrs().Index, Namespace: netlink.NsFd(int(h.ns))},
		Mode:      netlink.MACVLAN_MODE_BRIDGE,
	}
	if err := l.Switch.nl.LinkAdd(mv); err != nil {
		return fmt.Errorf("add macvlan for %s: %w", h.Role, err)
	}
	return nil
}

// addVXLAN turns h's veth end (already in the bridge, named ul0 in h) into
// the underlay: it gets its underlay address, and eth0 becomes a VXLAN
// device over it. Every VTEP's flood list names every other one, in both
// directions (static, as flannel programs it; no multicast).
func (l *Lab) addVXLAN(h *Host, addr netip.Prefix) error {
	ul, err := h.nl.LinkByName(underlayIface)
	if err != nil {
		return fmt.Errorf("find %s: %w", underlayIface, err)
	}
	local := underlayAddr(addr)
	if err := h.nl.AddrAdd(ul, &netlink.Addr{IPNet: prefixNet(local)}); err != nil {
		return fmt.Errorf("add underlay address %s: %w", local, err)
	}
	if err := h.nl.LinkSetUp(ul); err != nil {
		return fmt.Errorf("%s up: %w", underlayIface, err)
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: HostIface, MTU: vxlanMTU},
		VxlanId:      vxlanVNI,
		VtepDevIndex: ul.Attrs().Index,
		SrcAddr:      local.Addr().AsSlice(),
		Port:         vxlanPort,
		Learning:     true,
	}
	if err := h.nl.LinkAdd(vx); err != nil {
		return fmt.Errorf("add vxlan in %s: %w", h.Role, err)
	}

	l.vxMu.Lock()
	defer l.vxMu.Unlock()
	for _, o := range l.vteps {
		if err := floodTo(h, o.local); err != nil {
			return err
		}
		if err := floodTo(o.host, local); err != nil {
			return err
		}
	}
	l.vteps = append(l.vteps, vtep{host: h, local: local})
	return nil
}

type vtep struct {
	host  *Host
	local netip.Prefix
}

// floodTo adds dst to h's VXLAN flood list (the all-zero FDB entry:
// broadcast, multicast and unknown unicast go to every VTEP listed).
func floodTo(h *Host, dst netip.Prefix) error {
	vx, err := h.nl.LinkByName(HostIface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", HostIface, h.Role, err)
	}
	n := &netlink.Neigh{
		LinkIndex:    vx.Attrs().Index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           dst.Addr().AsSlice(),
		HardwareAddr: net.HardwareAddr{0, 0, 0, 0, 0, 0},
	}
	if err := h.nl.NeighAppend(n); err != nil {
		return fmt.Errorf("vxlan flood entry %s in %s: %w", dst.Addr(), h.Role, err)
	}
	return nil
}

// underlayAddr is the underlay address of the host whose eth0 address is
// addr: the same last byte in UnderlaySubnet.
func underlayAddr(addr netip.Prefix) netip.Prefix {
	a, u := addr.Addr().As4(), UnderlaySubnet.Addr().As4()
	u[3] = a[3]
	return netip.PrefixFrom(netip.AddrFrom4(u), UnderlaySubnet.Bits())
}
