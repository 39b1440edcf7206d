package lab

import (
	"net/netip"
	"testing"
)

// TestAddressPlan: every VIP a cluster may have, every node and client
// address and the GlusterFS witness are distinct hosts of Subnet, none its
// network or broadcast address.
func TestAddressPlan(t *testing.T) {
	seen := map[netip.Addr]string{}
	add := func(what string, p netip.Prefix) {
		t.Helper()
		a := p.Addr()
		if !Subnet.Contains(a) || a == Subnet.Addr() || a.As4()[3] == 255 || p.Bits() != Subnet.Bits() {
			t.Errorf("%s %v: not a host of %v", what, p, Subnet)
		}
		if other, ok := seen[a]; ok {
			t.Errorf("%s and %s are both %v", what, other, a)
		}
		seen[a] = what
	}
	for i := 1; i <= MaxClusterNodes; i++ {
		add("node", NodeAddr(i))
	}
	for i := 1; i <= 50; i++ {
		add("client", ClientAddr(i))
	}
	for i := 1; i <= MaxClusterVIPs; i++ {
		add("VIP", VIP(i))
	}
	add("witness", WitnessAddr)
}
