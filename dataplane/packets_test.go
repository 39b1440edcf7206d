package dataplane

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Packet builders for the BPF_PROG_RUN tests and the fuzz seeds. Frames are
// serialised with gopacket; the only hand-written bytes are the IPv6
// extension headers gopacket cannot serialise (routing, AH, fragment).

// TCP flag bits, as in byte 13 of the TCP header.
const (
	tcpFIN uint8 = 0x01
	tcpSYN uint8 = 0x02
	tcpRST uint8 = 0x04
	tcpPSH uint8 = 0x08
	tcpACK uint8 = 0x10
)

var (
	macClient = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x01}
	macServer = net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0x00, 0x02}
)

// frame describes one Ethernet frame carrying an IP packet. The zero
// values of the optional fields give an untagged frame with plain headers.
type frame struct {
	src, dst     netip.Addr
	sport, dport uint16
	flags        uint8 // TCP flags
	seq, ack     uint32
	window       uint16
	payload      int               // payload bytes after the TCP (or UDP, ICMP) header
	proto        layers.IPProtocol // upper layer; 0 means TCP
	vlans        []uint16          // VLAN IDs, outermost first; the outer of two is 802.1ad
	ipOptions    int               // bytes of IPv4 options, a multiple of 4
	ext          []layers.IPProtocol
	tcpOptions   bool   // MSS, SACK permitted, timestamps, window scale (20 bytes)
	moreFrags    bool   // IPv4 MF flag
	fragOffset   uint16 // IPv4 fragment offset in 8-byte units
	padTo        int    // zero-pad the frame to this length, as a NIC pads short frames
}

// cut is a place to truncate a frame: where one header ends or the middle
// of one.
type cut struct {
	name string
	off  int
}

// conn is one TCP connection to a VIP, for building its segments.
type conn struct {
	vip, client  netip.Addr
	vport, cport uint16
	vlans        []uint16
}

// in is a segment from the client to the VIP (XDP ingress).
func (c conn) in(flags uint8, seq, ack uint32, payload int) frame {
	return frame{src: c.client, dst: c.vip, sport: c.cport, dport: c.vport, flags: flags,
		seq: seq, ack: ack, window: 501, payload: payload, vlans: c.vlans}
}

// out is a segment from the VIP to the client (TC egress).
func (c conn) out(flags uint8, seq, ack uint32, payload int) frame {
	return frame{src: c.vip, dst: c.client, sport: c.vport, dport: c.cport, flags: flags,
		seq: seq, ack: ack, window: 509, payload: payload, vlans: c.vlans}
}

// seg is a segment in the direction a program sees: in for ingress, out
// for egress.
func (c conn) seg(d fshaDirection, flags uint8, seq, ack uint32, payload int) frame {
	if d == fshaDirectionDIRECTION_INGRESS {
		return c.in(flags, seq, ack, payload)
	}
	return c.out(flags, seq, ack, payload)
}

// key is the flow key the programs use for this connection.
func (c conn) key() fshaFlowKey {
	var k fshaFlowKey
	var fam uint8
	k.Vip, fam = addrBytes(c.vip)
	k.Client, _ = addrBytes(c.client)
	k.Vport, k.Cport, k.Family = c.vport, c.cport, fam
	return k
}

// extHeader is a raw IPv6 extension header. gopacket serialises neither
// routing nor AH headers, and the tests want exact control of the lengths.
type extHeader struct {
	proto, next layers.IPProtocol
}

// extLen is the length of the extension headers the builder writes.
func extLen(p layers.IPProtocol) int {
	switch p {
	case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination:
		return 16
	case layers.IPProtocolIPv6Routing, layers.IPProtocolAH:
		return 24
	case layers.IPProtocolIPv6Fragment:
		return 8
	}
	panic("no builder for extension header " + p.String())
}

func (e extHeader) LayerType() gopacket.LayerType { return e.proto.LayerType() }

func (e extHeader) SerializeTo(b gopacket.SerializeBuffer, _ gopacket.SerializeOptions) error {
	h, err := b.PrependBytes(extLen(e.proto))
	if err != nil {
		return err
	}
	clear(h)
	h[0] = byte(e.next)
	switch e.proto {
	case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Destination:
		h[1] = 1                       // (1+1)*8 = 16 bytes
		h[2], h[3] = 1, byte(len(h)-4) // one PadN option fills the rest
	case layers.IPProtocolIPv6Routing:
		h[1] = 2          // (2+1)*8 = 24 bytes
		h[2], h[3] = 4, 0 // segment routing header, no segment left
		// one segment, 2001:2::1, in bytes 8..24
		h[8], h[9], h[11], h[23] = 0x20, 0x01, 0x02, 1
	case layers.IPProtocolAH:
		h[1] = byte(len(h)/4 - 2) // 24 bytes: 12 fixed + 96-bit ICV
		h[7], h[11] = 0x42, 1     // SPI, sequence number
	case layers.IPProtocolIPv6Fragment:
		h[3] = 1 // offset 0, more fragments
		h[7] = 0x17
	}
	return nil
}

// build serialises f and lists the places to truncate it, in order.
func (f frame) build(t testing.TB) ([]byte, []cut) {
	t.Helper()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	proto := f.proto
	if proto == 0 {
		proto = layers.IPProtocolTCP
	}
	var (
		l3     []gopacket.SerializableLayer
		netw   gopacket.NetworkLayer
		cuts   []cut
		l3Len  int
		l3Name string
	)
	if f.src.Is4() {
		ip := &layers.IPv4{Version: 4, TTL: 64, Id: 7, Protocol: proto,
			SrcIP: f.src.AsSlice(), DstIP: f.dst.AsSlice(), FragOffset: f.fragOffset}
		if f.moreFrags {
			ip.Flags = layers.IPv4MoreFragments
		}
		for i := 0; i < f.ipOptions/4; i++ {
			// router alert: type 148, length 4, value 0
			ip.Options = append(ip.Options, layers.IPv4Option{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}})
		}
		l3, netw, l3Len, l3Name = append(l3, ip), ip, 20, "ipv4"
	} else {
		ip := &layers.IPv6{Version: 6, HopLimit: 64, NextHeader: proto,
			SrcIP: f.src.AsSlice(), DstIP: f.dst.AsSlice()}
		l3, netw, l3Len, l3Name = append(l3, ip), ip, 40, "ipv6"
		if len(f.ext) > 0 {
			ip.NextHeader = f.ext[0]
		}
		for i, p := range f.ext {
			next := proto
			if i+1 < len(f.ext) {
				next = f.ext[i+1]
			}
			l3 = append(l3, extHeader{proto: p, next: next})
		}
	}

	off := 14
	cuts = append(cuts, cut{"ethernet", off})
	for range f.vlans {
		cuts = append(cuts, cut{"mid vlan", off + 2}, cut{"vlan", off + 4})
		off += 4
	}
	cuts = append(cuts, cut{"mid " + l3Name, off + l3Len/2}, cut{l3Name, off + l3Len})
	off += l3Len
	if f.ipOptions > 0 {
		cuts = append(cuts, cut{"mid ipv4 options", off + f.ipOptions/2}, cut{"ipv4 options", off + f.ipOptions})
		off += f.ipOptions
	}
	for _, p := range f.ext {
		n := extLen(p)
		cuts = append(cuts, cut{"first byte of " + p.String(), off + 1}, cut{"mid " + p.String(), off + n/2}, cut{p.String(), off + n})
		off += n
	}

	switch proto {
	case layers.IPProtocolTCP:
		tcp := &layers.TCP{SrcPort: layers.TCPPort(f.sport), DstPort: layers.TCPPort(f.dport),
			Seq: f.seq, Ack: f.ack, Window: f.window,
			FIN: f.flags&tcpFIN != 0, SYN: f.flags&tcpSYN != 0, RST: f.flags&tcpRST != 0,
			PSH: f.flags&tcpPSH != 0, ACK: f.flags&tcpACK != 0}
		if f.tcpOptions {
			tcp.Options = []layers.TCPOption{
				{OptionType: layers.TCPOptionKindMSS, OptionLength: 4, OptionData: []byte{0x05, 0xb4}},
				{OptionType: layers.TCPOptionKindSACKPermitted, OptionLength: 2},
				{OptionType: layers.TCPOptionKindTimestamps, OptionLength: 10, OptionData: []byte{0, 0, 0, 1, 0, 0, 0, 2}},
				{OptionType: layers.TCPOptionKindNop},
				{OptionType: layers.TCPOptionKindWindowScale, OptionLength: 3, OptionData: []byte{7}},
			}
		}
		if err := tcp.SetNetworkLayerForChecksum(netw); err != nil {
			t.Fatalf("tcp checksum layer: %v", err)
		}
		l3 = append(l3, tcp)
		cuts = append(cuts, cut{"mid tcp", off + 10}, cut{"tcp", off + 20})
		if f.tcpOptions {
			cuts = append(cuts, cut{"mid tcp options", off + 30}, cut{"tcp options", off + 40})
		}
	case layers.IPProtocolUDP:
		udp := &layers.UDP{SrcPort: layers.UDPPort(f.sport), DstPort: layers.UDPPort(f.dport)}
		if err := udp.SetNetworkLayerForChecksum(netw); err != nil {
			t.Fatalf("udp checksum layer: %v", err)
		}
		l3 = append(l3, udp)
	case layers.IPProtocolICMPv4:
		l3 = append(l3, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(layers.ICMPv4TypeEchoRequest, 0), Id: 1, Seq: 1})
	case layers.IPProtocolICMPv6:
		icmp := &layers.ICMPv6{TypeCode: layers.CreateICMPv6TypeCode(layers.ICMPv6TypeEchoRequest, 0)}
		if err := icmp.SetNetworkLayerForChecksum(netw); err != nil {
			t.Fatalf("icmpv6 checksum layer: %v", err)
		}
		l3 = append(l3, icmp)
	default:
		t.Fatalf("no builder for %v", proto)
	}
	if f.payload > 0 {
		l3 = append(l3, gopacket.Payload(bytes.Repeat([]byte{0xa5}, f.payload)))
	}

	ip := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(ip, opts, l3...); err != nil {
		t.Fatalf("serialise %+v: %v", f, err)
	}

	// Ethernet and VLAN tags. gopacket pads every frame to 60 bytes; a
	// segment on TC egress is not padded yet, so the padding is cut off
	// again unless padTo asks for it.
	l2 := []gopacket.SerializableLayer{&layers.Ethernet{SrcMAC: macClient, DstMAC: macServer}}
	etherType := layers.EthernetTypeIPv4
	if f.src.Is6() {
		etherType = layers.EthernetTypeIPv6
	}
	types := make([]layers.EthernetType, 0, len(f.vlans)+1)
	for i := range f.vlans {
		if i == 0 && len(f.vlans) > 1 {
			types = append(types, layers.EthernetTypeQinQ)
		} else {
			types = append(types, layers.EthernetTypeDot1Q)
		}
	}
	types = append(types, etherType)
	l2[0].(*layers.Ethernet).EthernetType = types[0]
	for i, id := range f.vlans {
		l2 = append(l2, &layers.Dot1Q{VLANIdentifier: id, Type: types[i+1]})
	}
	l2 = append(l2, gopacket.Payload(ip.Bytes()))
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, opts, l2...); err != nil {
		t.Fatalf("serialise ethernet: %v", err)
	}
	b := buf.Bytes()[:14+4*len(f.vlans)+len(ip.Bytes())]
	if len(b) < f.padTo {
		b = append(b, make([]byte, f.padTo-len(b))...)
	}
	return bytes.Clone(b), cuts
}

// bytes is build without the cuts.
func (f frame) bytes(t testing.TB) []byte {
	t.Helper()
	b, _ := f.build(t)
	return b
}

// l3Offset is where the IP header starts in a frame f builds.
func (f frame) l3Offset() int { return 14 + 4*len(f.vlans) }
