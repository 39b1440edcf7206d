package dataplane

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

const (
	xdpDrop = 1 // XDP_DROP
	tcxDrop = 2 // TCX_DROP
)

func leaseARPFrame(t testing.TB, op uint16, sender, target netip.Addr) []byte {
	t.Helper()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: layers.EthernetBroadcast, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6,
		ProtAddressSize: 4, Operation: op, SourceHwAddress: mac, SourceProtAddress: sender.AsSlice(),
		DstHwAddress: make([]byte, 6), DstProtAddress: target.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{}, eth, arp); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func leaseNSFrame(t testing.TB, target netip.Addr) []byte {
	t.Helper()
	mac := net.HardwareAddr{2, 0, 0, 0, 0, 1}
	eth := &layers.Ethernet{SrcMAC: mac, DstMAC: net.HardwareAddr{0x33, 0x33, 0xff, 0, 0, 1}, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255,
		SrcIP: client6.AsSlice(), DstIP: net.ParseIP("ff02::1:ff00:1")}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeNeighborSolicitation, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	ns := &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{ComputeChecksums: true, FixLengths: true}, eth, ip, icmp, ns); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// verdicts runs pkt through XDP and TC and returns both verdicts.
func verdicts(t *testing.T, h *harness, pkt []byte) (uint32, uint32) {
	t.Helper()
	x, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt, Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		t.Fatal(err)
	}
	return x, c
}

// TestLeaseFencing: while the lease is valid (or fencing is off) every
// packet passes; once it has run out, what would make the node answer for
// a VIP is dropped and counted as fenced, and nothing else is touched.
func TestLeaseFencing(t *testing.T) {
	h := newHarness(t, 64)
	other := netip.MustParseAddr("198.18.0.99")
	vipIn := c4.in(tcpACK, 1, 2, 10).bytes(t)
	vipOut := c4.out(tcpACK, 2, 1, 10).bytes(t)
	otherIn := conn{vip: other, client: client4, vport: 445, cport: 1}.in(tcpACK, 1, 2, 0).bytes(t)
	arpForVIP := leaseARPFrame(t, layers.ARPRequest, client4, vip4)
	arpFromVIP := leaseARPFrame(t, layers.ARPReply, vip4, client4)
	arpForOther := leaseARPFrame(t, layers.ARPRequest, client4, other)
	nsForVIP := leaseNSFrame(t, vip6)
	icmpToVIP := func() []byte {
		eth := &layers.Ethernet{SrcMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}, DstMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolICMPv4, SrcIP: client4.AsSlice(), DstIP: vip4.AsSlice()}
		buf := gopacket.NewSerializeBuffer()
		if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, eth, ip,
			&layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}); err != nil {
			t.Fatal(err)
		}
		return buf.Bytes()
	}()

	type want struct{ xdp, tc uint32 }
	pass := want{xdpPass, tcxNext}
	cases := []struct {
		name      string
		pkt       []byte
		fenced    want
		xdpFenced bool // which program counts the drop
	}{
		{"tcp to VIP (ingress) / from VIP (egress)", vipIn, want{xdpDrop, tcxNext}, true},
		{"tcp from VIP", vipOut, want{xdpPass, tcxDrop}, false},
		{"icmp to VIP", icmpToVIP, want{xdpDrop, tcxNext}, true},
		{"ARP request for VIP", arpForVIP, want{xdpDrop, tcxNext}, true},
		{"ARP reply from VIP", arpFromVIP, want{xdpPass, tcxDrop}, false},
		{"neighbour solicitation for VIP", nsForVIP, want{xdpDrop, tcxNext}, true},
		{"tcp to another address", otherIn, pass, false},
		{"ARP for another address", arpForOther, pass, false},
	}

	for _, mode := range []struct {
		name  string
		set   func() error
		fence bool
	}{
		{"fencing off", h.maps.DisableLease, false},
		{"lease valid", func() error { return h.maps.RenewLease(time.Minute) }, false},
		{"lease expired", h.maps.ExpireLease, true},
	} {
		if err := mode.set(); err != nil {
			t.Fatal(err)
		}
		for _, tc := range cases {
			before := h.counters(t)
			x, c := verdicts(t, h, tc.pkt)
			w := pass
			if mode.fence {
				w = tc.fenced
			}
			if x != w.xdp || c != w.tc {
				t.Errorf("%s, %s: verdicts xdp %d tc %d, want %d %d", mode.name, tc.name, x, c, w.xdp, w.tc)
			}
			after := h.counters(t)
			fenced := (after.Ingress.Fenced - before.Ingress.Fenced) + (after.Egress.Fenced - before.Egress.Fenced)
			if wantFenced := uint64(0); mode.fence && (w != pass) {
				wantFenced = 1
				if fenced != wantFenced {
					t.Errorf("%s, %s: fenced counter +%d, want +1", mode.name, tc.name, fenced)
				}
			} else if fenced != 0 {
				t.Errorf("%s, %s: fenced counter +%d, want 0", mode.name, tc.name, fenced)
			}
		}
	}

	l, err := h.maps.ReadLease()
	if err != nil || !l.Enabled || l.Remaining > 0 {
		t.Fatalf("ReadLease after ExpireLease: %+v %v", l, err)
	}
	if err := h.maps.RenewLease(time.Minute); err != nil {
		t.Fatal(err)
	}
	if l, _ := h.maps.ReadLease(); l.Remaining < 59*time.Second {
		t.Fatalf("renewed lease has %v left", l.Remaining)
	}
	if err := h.maps.DisableLease(); err != nil {
		t.Fatal(err)
	}
}

// TestFlowWithoutHandshake: a connection that existed before fsha started
// (no SYN-ACK seen) is tracked from its next server segment on, with what
// was sent before unknown, not guessed.
func TestFlowWithoutHandshake(t *testing.T) {
	h := newHarness(t, 64)
	h.run(t, egress, c4.out(tcpACK, 5000, 9000, 20).bytes(t))
	f, ok := h.flow(t, c4)
	if !ok || f.BytesIn != 0 || f.BytesOut != 20 || f.SeqIn != 9000 {
		t.Fatalf("flow %+v (found %v)", f, ok)
	}
}

// TestBlindRSTIsIgnored: a client RST far from the expected sequence
// number (blind, spoofed) does not make the flow go; one in the window does.
func TestBlindRSTIsIgnored(t *testing.T) {
	h := newHarness(t, 64)
	h.run(t, egress, c4.out(tcpACK, 5000, 9000, 0).bytes(t)) // seq_in 9000
	h.run(t, ingress, c4.in(tcpRST, 9000+0x40000000, 0, 0).bytes(t))
	if _, ok := h.flow(t, c4); !ok {
		t.Fatal("a blind RST closed the flow")
	}
	h.run(t, ingress, c4.in(tcpRST, 9000, 0, 0).bytes(t))
	if _, ok := h.flow(t, c4); ok {
		t.Fatal("an in-window RST did not close the flow")
	}
}
