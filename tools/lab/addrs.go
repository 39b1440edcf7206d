package lab

import (
	"fmt"
	"net/netip"
)

// Subnet is the lab's one broadcast domain. Node i (from 1) is .10+i,
// client i is .100+i and VIP i is .200+i (past 50: .150+(i-50)).
var Subnet = netip.MustParsePrefix("198.18.0.0/24")

// NodeAddr is the address of the i-th node (from 1), prefix included.
func NodeAddr(i int) netip.Prefix { return hostAddr(10 + i) }

// ClientAddr is the address of the i-th client (from 1), prefix included.
func ClientAddr(i int) netip.Prefix { return hostAddr(100 + i) }

// VIP is the i-th public address (from 1, to MaxClusterVIPs), prefix
// included: .200+i for the first 50, then .150+(i-50) (.151 to .199), so
// that a 16-node cluster gets its 64 VIPs on the one subnet.
func VIP(i int) netip.Prefix {
	if i > 50 {
		return hostAddr(100 + i)
	}
	return hostAddr(200 + i)
}

// MaxClusterVIPs is the most IPv4 VIPs a lab cluster has on Subnet
// (with PublicNet or SecondNet, and of IPv6 VIPs: 50).
const MaxClusterVIPs = 99

// PublicSubnet is a cluster's public network when it has its own
// (ClusterOptions.PublicNet): VIP i is .200+i there, client i also has
// .100+i, and the nodes have no address in it, as when the VIPs live on
// dedicated interfaces apart from the nodes' own network.
var PublicSubnet = netip.MustParsePrefix("198.18.2.0/24")

// PublicVIP is the i-th public address (from 1) in PublicSubnet.
func PublicVIP(i int) netip.Prefix { return publicAddr(200 + i) }

// PublicClientAddr is client i's address (from 1) in PublicSubnet.
func PublicClientAddr(i int) netip.Prefix { return publicAddr(100 + i) }

func publicAddr(last int) netip.Prefix {
	a := PublicSubnet.Addr().As4()
	a[3] = byte(last)
	return netip.PrefixFrom(netip.AddrFrom4(a), PublicSubnet.Bits())
}

// Subnet6 is the dual-stack lab's IPv6 prefix: each host's IPv6 address
// ends in the same digits as its IPv4 one (node 1: 198.18.0.11 and
// 2001:2::11), and so do the IPv6 VIPs (VIP6).
var Subnet6 = netip.MustParsePrefix("2001:2::/64")

// VIP6 is the i-th IPv6 public address (from 1), prefix included.
func VIP6(i int) netip.Prefix { return hostAddr6(200 + i) }

func hostAddr6(last int) netip.Prefix {
	return netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("2001:2::%d", last)), Subnet6.Bits())
}

// PublicSubnet6 is PublicSubnet's IPv6 twin (ClusterOptions.SecondNet on
// a dual-stack lab): the same last digits.
var PublicSubnet6 = netip.MustParsePrefix("2001:2:0:2::/64")

// PublicVIP6 is the i-th IPv6 public address (from 1) in PublicSubnet6.
func PublicVIP6(i int) netip.Prefix { return publicAddr6(200 + i) }

// PublicClientAddr6 is client i's IPv6 address (from 1) in PublicSubnet6.
func PublicClientAddr6(i int) netip.Prefix { return publicAddr6(100 + i) }

func publicAddr6(last int) netip.Prefix {
	return netip.PrefixFrom(netip.MustParseAddr(fmt.Sprintf("2001:2:0:2::%d", last)), PublicSubnet6.Bits())
}

// IPv6 tells whether the lab is dual-stack (Options.IPv6).
func (l *Lab) IPv6() bool { return l.opts.IPv6 }

func hostAddr(last int) netip.Prefix {
	a := Subnet.Addr().As4()
	a[3] = byte(last)
	return netip.PrefixFrom(netip.AddrFrom4(a), Subnet.Bits())
}
