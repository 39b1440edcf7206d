package lab

import (
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"golang.org/x/net/bpf"
)

// Frames for the Watch's decoder, built with gopacket (an encoder
// independent of the decoder under test).

var (
	watchMAC  = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x11}
	watchPeer = net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
)

func serialize(t *testing.T, ls ...gopacket.SerializableLayer) []byte {
	t.Helper()
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, ls...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func tcp6Frame(t *testing.T, src, dst netip.Addr, sport, dport uint16, rst bool) []byte {
	eth := &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolTCP, HopLimit: 64, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	tcp := &layers.TCP{SrcPort: layers.TCPPort(sport), DstPort: layers.TCPPort(dport), ACK: true, RST: rst, Window: 1}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	return serialize(t, eth, ip, tcp)
}

func ndpFrame(t *testing.T, src, target netip.Addr, typ uint8) []byte {
	eth := &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeIPv6}
	ip := &layers.IPv6{Version: 6, NextHeader: layers.IPProtocolICMPv6, HopLimit: 255, SrcIP: src.AsSlice(), DstIP: net.ParseIP("ff02::1")}
	icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(typ, 0)}
	if err := icmp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	var body gopacket.SerializableLayer
	if typ == layers.ICMPv6TypeNeighborAdvertisement {
		body = &layers.ICMPv6NeighborAdvertisement{TargetAddress: target.AsSlice(), Flags: 0x20}
	} else {
		body = &layers.ICMPv6NeighborSolicitation{TargetAddress: target.AsSlice()}
	}
	return serialize(t, eth, ip, icmp, body)
}

func TestWatchDecodesIPv6(t *testing.T) {
	vip := netip.MustParseAddr("2001:2::201")
	other := netip.MustParseAddr("2001:2::202")
	client := netip.MustParseAddr("2001:2::101")
	w := &Watch{addr: vip}

	f, ok := w.parse(tcp6Frame(t, vip, client, 445, 40000, true))
	if !ok || f.ARP || f.SrcPort != 445 || f.DstPort != 40000 || f.Flags&FlagRST == 0 || f.Src.String() != watchMAC.String() {
		t.Errorf("RST from the VIP: %+v %v, want TCP 445->40000 with RST from %s", f, ok, watchMAC)
	}
	if f, ok := w.parse(tcp6Frame(t, other, client, 445, 40000, false)); ok {
		t.Errorf("TCP from another address kept: %+v", f)
	}
	f, ok = w.parse(ndpFrame(t, vip, vip, layers.ICMPv6TypeNeighborAdvertisement))
	if !ok || !f.ARP || f.ARPOp != 2 {
		t.Errorf("NA of the VIP: %+v %v, want an advertisement (ARP, op 2)", f, ok)
	}
	if f, ok := w.parse(ndpFrame(t, other, other, layers.ICMPv6TypeNeighborAdvertisement)); ok {
		t.Errorf("NA of another address kept: %+v", f)
	}
	if f, ok := w.parse(ndpFrame(t, client, vip, layers.ICMPv6TypeNeighborSolicitation)); ok {
		t.Errorf("a solicitation is not an answer: kept %+v", f)
	}
	if !w.toAddr(tcp6Frame(t, client, vip, 40000, 445, false)) || w.toAddr(tcp6Frame(t, client, other, 40000, 445, false)) {
		t.Error("toAddr: want TCP to the VIP counted, to another address not")
	}
	if !w.toAddr(ndpFrame(t, client, vip, layers.ICMPv6TypeNeighborSolicitation)) || w.toAddr(ndpFrame(t, client, other, layers.ICMPv6TypeNeighborSolicitation)) {
		t.Error("toAddr: want a solicitation for the VIP counted, for another address not")
	}
	for _, b := range [][]byte{nil, make([]byte, 13), tcp6Frame(t, vip, client, 445, 40000, true)[:14+39]} {
		if f, ok := w.parse(b); ok || w.toAddr(b) {
			t.Errorf("truncated frame of %d bytes kept: %+v", len(b), f)
		}
	}
}

func TestWatchDecodesIPv4(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.201")
	w := &Watch{addr: vip}
	eth := &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeARP}
	arp := &layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
		Operation: layers.ARPReply, SourceHwAddress: watchMAC, SourceProtAddress: vip.AsSlice(),
		DstHwAddress: watchPeer, DstProtAddress: netip.MustParseAddr("198.18.0.101").AsSlice()}
	f, ok := w.parse(serialize(t, eth, arp))
	if !ok || !f.ARP || f.ARPOp != 2 {
		t.Errorf("ARP reply for the VIP: %+v %v", f, ok)
	}
	// an IPv6 watch ignores ARP, whatever its bytes
	w6 := &Watch{addr: netip.MustParseAddr("2001:2::201")}
	if _, ok := w6.parse(serialize(t, eth, arp)); ok {
		t.Error("IPv6 watch kept an ARP packet")
	}
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: vip.AsSlice(), DstIP: net.IPv4(198, 18, 0, 101)}
	tcp := &layers.TCP{SrcPort: 2049, DstPort: 40001, RST: true}
	if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
		t.Fatal(err)
	}
	eth4 := &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeIPv4}
	f, ok = w.parse(serialize(t, eth4, ip, tcp))
	if !ok || f.ARP || f.SrcPort != 2049 || f.DstPort != 40001 || f.Flags&FlagRST == 0 {
		t.Errorf("RST from the VIP: %+v %v", f, ok)
	}
}

// The Watch's socket filter keeps what the Watch reads and nothing else:
// run in the x/net/bpf VM on the same frames.
func TestWatchFilter(t *testing.T) {
	vip4, other4 := netip.MustParseAddr("198.18.0.201"), netip.MustParseAddr("198.18.0.202")
	vip6, other6 := netip.MustParseAddr("2001:2::201"), netip.MustParseAddr("2001:2::202")
	client4, client6 := netip.MustParseAddr("198.18.0.101"), netip.MustParseAddr("2001:2::101")
	tcp4 := func(src, dst netip.Addr) []byte {
		eth := &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeIPv4}
		ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolTCP, SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
		tcp := &layers.TCP{SrcPort: 445, DstPort: 40000, ACK: true}
		if err := tcp.SetNetworkLayerForChecksum(ip); err != nil {
			t.Fatal(err)
		}
		return serialize(t, eth, ip, tcp)
	}
	arp := serialize(t, &layers.Ethernet{SrcMAC: watchMAC, DstMAC: watchPeer, EthernetType: layers.EthernetTypeARP},
		&layers.ARP{AddrType: layers.LinkTypeEthernet, Protocol: layers.EthernetTypeIPv4, HwAddressSize: 6, ProtAddressSize: 4,
			Operation: layers.ARPRequest, SourceHwAddress: watchMAC, SourceProtAddress: client4.AsSlice(),
			DstHwAddress: make([]byte, 6), DstProtAddress: vip4.AsSlice()})
	for _, c := range []struct {
		name  string
		watch netip.Addr
		frame []byte
		keep  bool
	}{
		{"IPv4 TCP from the VIP", vip4, tcp4(vip4, client4), true},
		{"IPv4 TCP to the VIP", vip4, tcp4(client4, vip4), true},
		{"IPv4 TCP of another VIP", vip4, tcp4(other4, client4), false},
		{"ARP", vip4, arp, true},
		{"IPv6 to an IPv4 watch", vip4, tcp6Frame(t, client6, vip6, 40000, 445, false), false},
		{"IPv6 TCP from the VIP", vip6, tcp6Frame(t, vip6, client6, 445, 40000, true), true},
		{"IPv6 TCP to the VIP", vip6, tcp6Frame(t, client6, vip6, 40000, 445, false), true},
		{"IPv6 TCP of another VIP", vip6, tcp6Frame(t, other6, client6, 445, 40000, false), false},
		{"IPv6 TCP between others", vip6, tcp6Frame(t, client6, other6, 40000, 445, false), false},
		{"NDP", vip6, ndpFrame(t, vip6, vip6, layers.ICMPv6TypeNeighborAdvertisement), true},
		{"IPv4 to an IPv6 watch", vip6, tcp4(vip4, client4), false},
		{"ARP to an IPv6 watch", vip6, arp, false},
	} {
		raw, err := watchFilter(c.watch)
		if err != nil {
			t.Fatal(err)
		}
		ins, ok := bpf.Disassemble(raw)
		if !ok {
			t.Fatalf("%s: the filter does not disassemble", c.name)
		}
		vm, err := bpf.NewVM(ins)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		n, err := vm.Run(c.frame)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if kept := n > 0; kept != c.keep {
			t.Errorf("%s (watch %s): kept %v, want %v", c.name, c.watch, kept, c.keep)
		}
	}
}
