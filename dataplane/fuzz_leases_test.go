package dataplane

import (
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket/layers"
)

// The fuzz targets run with per-VIP fencing on (fuzz_test.go): the VIPs,
// their leases, what the model makes of them, and the seeds that exercise
// them.

// The fuzz targets' VIPs and their leases: with per-VIP fencing on, vip4
// and vip6 are held, fence4's lease has expired, fence6 has none, drain4
// and drain6 are draining (IP passes, ARP and neighbour discovery do not),
// and mate4, held, shares fence4's bucket (its packets take the exact
// lookup). fenceNear6 shares fence6's bucket but is no VIP.
var (
	fence4     = netip.MustParseAddr("198.18.0.12")
	drain4     = netip.MustParseAddr("198.18.0.13")
	fence6     = netip.MustParseAddr("2001:2::12")
	drain6     = netip.MustParseAddr("2001:2::13")
	mate4      = firstInBucket(fence4, netip.MustParsePrefix("198.18.0.0/15"))
	fenceNear6 = firstInBucket(fence6, netip.MustParsePrefix("2001:2::/48"))

	fuzzVIPs = []netip.Addr{vip4, vip6, fence4, drain4, fence6, drain6, mate4}

	fenceConn4 = conn{vip: fence4, client: client4, vport: 445, cport: 50010}
	drainConn4 = conn{vip: drain4, client: client4, vport: 445, cport: 50011}
	fenceConn6 = conn{vip: fence6, client: client6, vport: 2049, cport: 50012}
	drainConn6 = conn{vip: drain6, client: client6, vport: 2049, cport: 50013}
)

// firstInBucket is the first address of p, other than a, in a's bucket.
func firstInBucket(a netip.Addr, p netip.Prefix) netip.Addr {
	ab, af := addrBytes(a)
	for x := p.Masked().Addr(); p.Contains(x); x = x.Next() {
		if b, f := addrBytes(x); x != a && vipFilterBit(b, f) == vipFilterBit(ab, af) {
			return x
		}
	}
	panic("no address of " + p.String() + " in the bucket of " + a.String())
}

// fuzzLeases are the leases of fuzzVIPs (fence6 has none).
func fuzzLeases() map[netip.Addr]VIPLease {
	held := VIPLease{Epoch: 1, State: VIPLeaseHeld, Holder: 1, Until: math.MaxUint64}
	return map[netip.Addr]VIPLease{
		vip4: held, vip6: held, mate4: held,
		fence4: {Epoch: 1, State: VIPLeaseHeld, Holder: 1, Until: 1},
		drain4: {Epoch: 1, State: VIPLeaseDraining, Holder: 1},
		drain6: {Epoch: 1, State: VIPLeaseDraining, Holder: 1},
	}
}

// fencedIP and fencedARP say whether the programs drop the IP traffic,
// and the ARP and neighbour discovery, of a under fuzzLeases.
func fencedIP(a netip.Addr) bool { return a == fence4 || a == fence6 }

func fencedARP(a netip.Addr) bool {
	return fencedIP(a) || a == drain4 || a == drain6
}

// setLeases sets per-VIP fencing with fuzzLeases on h, whose VIPs are
// fuzzVIPs.
func setLeases(t testing.TB, h *harness) {
	t.Helper()
	h.vips = fuzzVIPs
	h.configure(t, fuzzVIPs, defaultPorts)
	h.dirty = false
	for a, l := range fuzzLeases() {
		if err := h.maps.SetVIPLease(a, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.maps.RenewLease(365 * 24 * time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetFencingMode(true, true); err != nil {
		t.Fatal(err)
	}
}

// leaseSeedFrames are the seeds of fenced, draining and held VIPs; seg
// builds a segment of a connection as fuzzSeedFrames does.
func leaseSeedFrames(t testing.TB, d fshaDirection, seg func(c conn, flags uint8, payload int, mod func(f *frame)) []byte) map[string][]byte {
	m := map[string][]byte{}
	m["ipv4-fenced-vip"] = seg(fenceConn4, tcpACK|tcpPSH, 100, nil)
	m["ipv4-fenced-vip-fragment"] = seg(fenceConn4, tcpACK, 10, func(f *frame) { f.moreFrags = true })
	m["ipv4-draining-vip"] = seg(drainConn4, tcpACK|tcpPSH, 100, nil)
	m["ipv4-fenced-bucket-mate"] = seg(conn{vip: mate4, client: client4, vport: 445, cport: 2}, tcpACK, 10, nil)
	m["ipv6-fenced-vip"] = seg(fenceConn6, tcpACK|tcpPSH, 100, withExt(hbh))
	m["ipv6-draining-vip"] = seg(drainConn6, tcpACK|tcpPSH, 100, nil)
	m["ipv6-fenced-bucket-non-vip"] = seg(conn{vip: fenceNear6, client: client6, vport: 2049, cport: 3}, tcpACK, 10, nil)
	// ARP, neighbour discovery and ICMP for a VIP: asked for it on
	// ingress, spoken for it on egress
	arpFor := func(vip netip.Addr, vlans ...uint16) []byte {
		b := leaseARPFrame(t, layers.ARPRequest, client4, vip)
		if d == egress {
			b = leaseARPFrame(t, layers.ARPReply, vip, client4)
		}
		if len(vlans) > 0 {
			tag := []byte{0x81, 0x00, byte(vlans[0] >> 8), byte(vlans[0])}
			b = append(append(append([]byte(nil), b[:12]...), tag...), b[12:]...)
		}
		return b
	}
	ndFor := func(vip netip.Addr) []byte {
		if d == ingress {
			return leaseNSFrame(t, vip)
		}
		return naFrame(t, vip, vip)
	}
	echoFor := func(vip netip.Addr) []byte {
		if vip.Is4() {
			if d == ingress {
				return echo4Frame(t, client4, vip)
			}
			return echo4Frame(t, vip, client4)
		}
		if d == ingress {
			return echo6Frame(t, client6, vip)
		}
		return echo6Frame(t, vip, client6)
	}
	m["arp-vip"] = arpFor(vip4)
	m["arp-fenced-vip"] = arpFor(fence4)
	m["arp-draining-vip"] = arpFor(drain4)
	m["arp-fenced-vip-vlan"] = arpFor(fence4, 9)
	m["arp-fenced-vip-short"] = arpFor(fence4)[:14+20]
	if d == egress {
		// asked with a fenced VIP as the sender: a probe (ARP_PROBED)
		m["arp-request-from-fenced-vip"] = leaseARPFrame(t, layers.ARPRequest, fence4, client4)
		m["arp-request-from-draining-vip"] = leaseARPFrame(t, layers.ARPRequest, drain4, client4)
		m["arp-gratuitous-fenced-vip"] = leaseARPFrame(t, layers.ARPRequest, fence4, fence4)
	}
	m["nd-vip"] = ndFor(vip6)
	m["nd-fenced-vip"] = ndFor(fence6)
	m["nd-draining-vip"] = ndFor(drain6)
	m["nd-fenced-vip-short"] = ndFor(fence6)[:14+40+20]
	m["ns-draining-vip"] = leaseNSFrame(t, drain6) // ingress: for it
	if d == egress {
		m["ns-draining-vip"] = nsFromFrame(t, drain6, client6) // egress: from it
	}
	m["icmp-fenced-vip"] = echoFor(fence4)
	m["icmpv6-fenced-vip"] = echoFor(fence6)
	m["icmpv6-draining-vip"] = echoFor(drain6)
	return m
}
