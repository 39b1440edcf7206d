package dataplane

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// BPF_PROG_RUN tests of per-VIP fencing (LEASE_MODE_VIP): every kind of
// packet that makes a node answer for a VIP, against every state of the
// VIP's lease and every fencing mode.

// sameBucket returns the first n addresses of p that share a's prefilter
// bit (its vip_deadlines bucket); p may be of the other family.
func sameBucket(t testing.TB, a netip.Addr, p netip.Prefix, n int) []netip.Addr {
	t.Helper()
	ab, af := addrBytes(a)
	want := vipFilterBit(ab, af)
	var out []netip.Addr
	for x := p.Masked().Addr(); p.Contains(x) && len(out) < n; x = x.Next() {
		if b, f := addrBytes(x); x != a && vipFilterBit(b, f) == want {
			out = append(out, x)
		}
	}
	if len(out) < n {
		t.Fatalf("%d addresses of %v share the bucket of %v, want %d", len(out), p, a, n)
	}
	return out
}

// icmp6Frame is an Ethernet frame of one ICMPv6 message: typ, then body
// (neighbour discovery or echo).
func icmp6Frame(t testing.TB, src, dst netip.Addr, typ uint8, body gopacket.SerializableLayer) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macServer, DstMAC: macClient, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, eth, ip, icmp, body); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// naFrame is a neighbour advertisement from src for target.
func naFrame(t testing.TB, src, target netip.Addr) []byte {
	return icmp6Frame(t, src, netip.MustParseAddr("ff02::1"), layers.ICMPv6TypeNeighborAdvertisement,
		&layers.ICMPv6NeighborAdvertisement{Flags: 0x20, TargetAddress: target.AsSlice()})
}

// nsFromFrame is a neighbour solicitation from src for target.
func nsFromFrame(t testing.TB, src, target netip.Addr) []byte {
	return icmp6Frame(t, src, netip.MustParseAddr("ff02::1:ff00:20"), layers.ICMPv6TypeNeighborSolicitation,
		&layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()})
}

// echo6Frame is an ICMPv6 echo request from src to dst.
func echo6Frame(t testing.TB, src, dst netip.Addr) []byte {
	return icmp6Frame(t, src, dst, layers.ICMPv6TypeEchoRequest, &layers.ICMPv6Echo{Identifier: 1, SeqNumber: 1})
}

// echo4Frame is an ICMP echo request from src to dst.
func echo4Frame(t testing.TB, src, dst netip.Addr) []byte {
	t.Helper()
	eth := &layers.Ethernet{SrcMAC: macClient, DstMAC: macServer, EthernetType: layers.EthernetTypeIPv4}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip,
		&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type verdictPair struct{ xdp, tc uint32 }

var (
	bothPass = verdictPair{xdpPass, tcxNext}
	xdpDrops = verdictPair{xdpDrop, tcxNext} // ingress to the VIP
	tcDrops  = verdictPair{xdpPass, tcxDrop} // egress from the VIP
)

// vipPacket is a packet that makes the node answer for vip, and what the
// two programs do with it when vip is fenced.
type vipPacket struct {
	name   string
	pkt    []byte
	fenced verdictPair
	arp    bool // ARP or neighbour discovery: arp_until_ns applies, else ip_until_ns
}

// vipPackets are the packets for vip, of its family.
func vipPackets(t testing.TB, vip netip.Addr) []vipPacket {
	if vip.Is4() {
		c := conn{vip: vip, client: client4, vport: 445, cport: 40100}
		return []vipPacket{
			{"tcp to " + vip.String(), c.in(tcpACK, 1, 2, 10).bytes(t), xdpDrops, false},
			{"tcp from " + vip.String(), c.out(tcpACK, 2, 1, 10).bytes(t), tcDrops, false},
			{"tcp to " + vip.String() + ", untracked port", conn{vip: vip, client: client4, vport: 22, cport: 1}.in(tcpACK, 1, 2, 0).bytes(t), xdpDrops, false},
			// a new connection is the owner's: the owner's deadline applies
			{"SYN to " + vip.String(), c.in(tcpSYN, 1, 0, 0).bytes(t), xdpDrops, true},
			{"SYN-ACK from " + vip.String(), c.out(tcpSYN|tcpACK, 2, 1, 0).bytes(t), tcDrops, true},
			{"icmp to " + vip.String(), echo4Frame(t, client4, vip), xdpDrops, false},
			{"ARP request for " + vip.String(), leaseARPFrame(t, layers.ARPRequest, client4, vip), xdpDrops, true},
			{"ARP reply from " + vip.String(), leaseARPFrame(t, layers.ARPReply, vip, client4), tcDrops, true},
		}
	}
	c := conn{vip: vip, client: client6, vport: 2049, cport: 40101}
	return []vipPacket{
		{"tcp to " + vip.String(), c.in(tcpACK, 1, 2, 10).bytes(t), xdpDrops, false},
		{"tcp from " + vip.String(), c.out(tcpACK, 2, 1, 10).bytes(t), tcDrops, false},
		{"SYN to " + vip.String(), c.in(tcpSYN, 1, 0, 0).bytes(t), xdpDrops, true},
		{"icmpv6 echo to " + vip.String(), echo6Frame(t, client6, vip), xdpDrops, false},
		{"icmpv6 echo from " + vip.String(), echo6Frame(t, vip, client6), tcDrops, false},
		{"NS for " + vip.String(), leaseNSFrame(t, vip), xdpDrops, true},
		{"NA for " + vip.String(), naFrame(t, vip, vip), tcDrops, true},
		{"NS from " + vip.String(), nsFromFrame(t, vip, client6), tcDrops, true},
	}
}

// expect runs p through both programs and checks the verdicts and the
// fenced counter: p is dropped (its fenced verdicts) when fenced.
func expect(t *testing.T, h *harness, what string, p vipPacket, fenced bool) {
	t.Helper()
	want := bothPass
	if fenced {
		want = p.fenced
	}
	before := h.counters(t)
	x, c := verdicts(t, h, p.pkt)
	after := h.counters(t)
	if x != want.xdp || c != want.tc {
		t.Errorf("%s, %s: verdicts xdp %d tc %#x, want %d %#x", what, p.name, x, c, want.xdp, want.tc)
	}
	n := (after.Ingress.Fenced - before.Ingress.Fenced) + (after.Egress.Fenced - before.Egress.Fenced)
	if wantN := uint64(map[bool]int{false: 0, true: 1}[fenced]); n != wantN {
		t.Errorf("%s, %s: fenced counter +%d, want +%d", what, p.name, n, wantN)
	}
}

// leaseState is a state of the VIP's lease under test.
type leaseState struct {
	name      string
	set       func(vip netip.Addr) VIPLease
	ip, arpOK bool // may IP traffic, may ARP and neighbour discovery pass
}

func leaseStates() []leaseState {
	return []leaseState{
		{"held", func(netip.Addr) VIPLease {
			return VIPLease{Epoch: 1, State: VIPLeaseHeld, Holder: 1, Until: MonotonicNow() + uint64(time.Hour)}
		}, true, true},
		{"expired", func(netip.Addr) VIPLease {
			return VIPLease{Epoch: 1, State: VIPLeaseHeld, Holder: 1, Until: MonotonicNow() - uint64(time.Second)}
		}, false, false},
		{"draining", func(netip.Addr) VIPLease { return VIPLease{Epoch: 1, State: VIPLeaseDraining, Holder: 1} }, true, false},
		{"none", func(netip.Addr) VIPLease { return VIPLease{} }, false, false},
	}
}

func TestProgVIPLeases(t *testing.T) {
	h := newHarness(t, 64)
	// mate*[0] is a VIP in the same bucket, mate*[1] an address that is
	// no VIP but shares the bucket (and the prefilter bit) too. An IPv4
	// address shares its bucket with one other of 198.18.0.0/15 only: an
	// IPv6 VIP shares vip4's.
	mate4 := []netip.Addr{sameBucket(t, vip4, netip.MustParsePrefix("2001:2::/48"), 1)[0],
		sameBucket(t, vip4, netip.MustParsePrefix("198.18.0.0/15"), 1)[0]}
	mate6 := sameBucket(t, vip6, netip.MustParsePrefix("2001:2::/48"), 2)
	h.configure(t, []netip.Addr{vip4, vip6, mate4[0], mate6[0]}, defaultPorts)
	held := func() VIPLease {
		return VIPLease{Epoch: 7, State: VIPLeaseHeld, Holder: 2, Until: MonotonicNow() + uint64(time.Hour)}
	}
	setLease := func(vip netip.Addr, l VIPLease) {
		t.Helper()
		if err := h.maps.SetVIPLease(vip, l); err != nil {
			t.Fatal(err)
		}
	}
	for _, a := range []netip.Addr{vip4, vip6, mate4[0], mate6[0]} {
		setLease(a, held())
	}
	// a non-VIP in the subject's bucket, both ways
	nonVIP := func(a netip.Addr) []vipPacket {
		var out []vipPacket
		for _, p := range vipPackets(t, a) {
			if !p.arp {
				out = append(out, p)
			}
		}
		return out
	}

	for _, mode := range []struct {
		name     string
		nodeWide bool
	}{{"per-VIP and node-wide (3)", true}, {"per-VIP only (2)", false}} {
		if err := h.maps.RenewLease(time.Hour); err != nil {
			t.Fatal(err)
		}
		if err := h.maps.SetFencingMode(mode.nodeWide, true); err != nil {
			t.Fatal(err)
		}
		for _, subj := range []struct{ vip, mate, near netip.Addr }{{vip4, mate4[0], mate4[1]}, {vip6, mate6[0], mate6[1]}} {
			for _, st := range leaseStates() {
				setLease(subj.vip, st.set(subj.vip))
				what := fmt.Sprintf("mode %s, %s %s", mode.name, subj.vip, st.name)
				for _, p := range vipPackets(t, subj.vip) {
					expect(t, h, what, p, (p.arp && !st.arpOK) || (!p.arp && !st.ip))
				}
				// the VIP in the same bucket: its own lease decides (exact lookup)
				for _, p := range vipPackets(t, subj.mate) {
					expect(t, h, what+", bucket mate", p, false)
				}
				// an address in the same bucket that is no VIP
				for _, p := range nonVIP(subj.near) {
					expect(t, h, what+", non-VIP in the bucket", p, false)
				}
			}
			setLease(subj.vip, held())
		}
	}

	// The node-wide lease over the per-VIP ones: in mode 3 it fences held
	// VIPs too; in mode 2 it is not read.
	setLease(vip4, VIPLease{State: VIPLeaseNone})
	if err := h.maps.ExpireLease(); err != nil { // mode 3, expired
		t.Fatal(err)
	}
	for _, p := range append(vipPackets(t, vip4), vipPackets(t, mate4[0])...) {
		expect(t, h, "mode 3, node lease expired", p, true)
	}
	for _, p := range nonVIP(mate4[1]) {
		expect(t, h, "mode 3, node lease expired, non-VIP", p, false)
	}
	if err := h.maps.SetFencingMode(false, true); err != nil {
		t.Fatal(err)
	}
	for _, p := range vipPackets(t, vip4) {
		expect(t, h, "mode 2, node lease expired, vip without lease", p, true)
	}
	for _, p := range vipPackets(t, mate4[0]) {
		expect(t, h, "mode 2, node lease expired, held vip", p, false)
	}

	// Legacy, node-wide only (1): per-VIP leases are not read.
	if err := h.maps.SetFencingMode(true, false); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.RenewLease(time.Hour); err != nil {
		t.Fatal(err)
	}
	for _, p := range vipPackets(t, vip4) {
		expect(t, h, "mode 1, lease valid, vip without lease", p, false)
	}
	if err := h.maps.ExpireLease(); err != nil {
		t.Fatal(err)
	}
	if l, err := h.maps.ReadLease(); err != nil || !l.Enabled || l.PerVIP {
		t.Fatalf("ReadLease after ExpireLease in mode 1: %+v %v", l, err)
	}
	for _, a := range []netip.Addr{vip4, mate4[0], vip6} {
		for _, p := range vipPackets(t, a) {
			expect(t, h, "mode 1, lease expired", p, true)
		}
	}
	for _, p := range append(nonVIP(mate4[1]), nonVIP(mate6[1])...) {
		expect(t, h, "mode 1, lease expired, non-VIP", p, false)
	}

	// No fencing (0): nothing is dropped, whatever the leases say.
	if err := h.maps.SetFencingMode(false, false); err != nil {
		t.Fatal(err)
	}
	for _, a := range []netip.Addr{vip4, mate4[0], vip6} {
		for _, p := range vipPackets(t, a) {
			expect(t, h, "mode 0, every lease expired", p, false)
		}
	}
}

// TestProgVIPLeaseFastPath: a segment of a flow the CPU's cache holds is
// dropped as soon as its VIP's lease is lowered below now, in the same
// jiffy as the segments the cache took before.
func TestProgVIPLeaseFastPath(t *testing.T) {
	h := newHarness(t, 64)
	onCPU0(t)
	h.reset(t)
	if err := h.maps.RenewLease(time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetFencingMode(true, true); err != nil {
		t.Fatal(err)
	}
	held := VIPLease{Epoch: 3, State: VIPLeaseHeld, Holder: 0, Until: MonotonicNow() + uint64(time.Hour)}
	for _, c := range []conn{c4, c6} {
		if err := h.maps.SetVIPLease(c.vip, held); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []conn{c4, c6} {
		h.reset(t)
		cs, ss := established(t, h, c)
		for _, d := range []fshaDirection{ingress, egress} {
			t.Run(fmt.Sprintf("%s/%s", c.vip, dirName(d)), func(t *testing.T) {
				onCPU0(t)
				seq, ack := cs, ss
				if d == egress {
					seq, ack = ss, cs
				}
				pkt := c.seg(d, tcpACK|tcpPSH, seq, ack, 0).bytes(t)
				slot := cacheSlot(t, c.key()) + uint32(d)*1024
				for attempt := 0; ; attempt++ {
					if err := h.maps.SetVIPLease(c.vip, held); err != nil {
						t.Fatal(err)
					}
					nextJiffy(t)
					h.run(t, d, pkt) // the flows map; the slot takes the flow
					h.run(t, d, pkt) // the cache
					s := cpu0Slot(t, h, slot)
					if s.Packets != 1 {
						t.Fatalf("slot %+v after two segments in a jiffy, want one pending", s)
					}
					if err := h.maps.SetVIPLease(c.vip, VIPLease{Epoch: 3, State: VIPLeaseHeld, Until: 1}); err != nil {
						t.Fatal(err)
					}
					before := h.counters(t)
					x, tc := verdicts(t, h, pkt)
					ret, want := x, uint32(xdpDrop)
					if d == egress {
						ret, want = tc, tcxDrop
					}
					j := jiffiesNow(t, h)
					if delta := counterDelta(before, h.counters(t)); ret != want || delta[d][fshaCounterCOUNTER_FENCED] != 1 {
						t.Fatalf("cached flow after its lease was lowered: verdict %d, counters %s; want %d and fenced", ret, delta, want)
					}
					if j == s.Jiffies {
						break // the drop came in the jiffy of the cached segment
					}
					if attempt == 20 {
						t.Fatalf("never ran within one jiffy")
					}
				}
				// the lease raised again: the cache takes segments again
				if err := h.maps.SetVIPLease(c.vip, held); err != nil {
					t.Fatal(err)
				}
				h.run(t, d, pkt)
			})
		}
	}
}

// cpu0Slot reads CPU 0's flow cache slot idx.
func cpu0Slot(t *testing.T, h *harness, idx uint32) fshaFlowCacheSlot {
	t.Helper()
	var perCPU []fshaFlowCacheSlot
	if err := h.maps.FlowCache.Lookup(idx, &perCPU); err != nil {
		t.Fatal(err)
	}
	return perCPU[0]
}

// jiffiesNow reads the kernel's jiffies with fsha_clock.
func jiffiesNow(t *testing.T, h *harness) uint64 {
	t.Helper()
	out := make([]byte, 24)
	if _, err := h.objs.FshaClock.Run(&ebpf.RunOptions{Data: make([]byte, 24), DataOut: out}); err != nil {
		t.Fatal(err)
	}
	return binary.NativeEndian.Uint64(out[8:])
}
