package main

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// segment describes one TCP segment to build.
type segment struct {
	src, dst       netip.AddrPort
	srcMAC, dstMAC net.HardwareAddr
	syn, ack       bool
	payload        int
	// ipID is the IPv4 identification field (see the veth sender).
	ipID uint16
}

var (
	macA = net.HardwareAddr{0x02, 0xf5, 0x4a, 0x00, 0x00, 0x01}
	macB = net.HardwareAddr{0x02, 0xf5, 0x4a, 0x00, 0x00, 0x02}
)

// build serializes s as Ethernet + IPv4/IPv6 + TCP with valid lengths and
// checksums.
func (s segment) build() ([]byte, error) {
	if s.src.Addr().Is4() != s.dst.Addr().Is4() {
		return nil, fmt.Errorf("segment %s -> %s mixes address families", s.src, s.dst)
	}
	srcMAC, dstMAC := s.srcMAC, s.dstMAC
	if srcMAC == nil {
		srcMAC, dstMAC = macA, macB
	}
	eth := &layers.Ethernet{SrcMAC: srcMAC, DstMAC: dstMAC}
	tcp := &layers.TCP{
		SrcPort: layers.TCPPort(s.src.Port()),
		DstPort: layers.TCPPort(s.dst.Port()),
		Seq:     1_000_000,
		Ack:     2_000_000,
		SYN:     s.syn,
		ACK:     s.ack,
		Window:  502,
	}
	var ip gopacket.SerializableLayer
	if s.src.Addr().Is4() {
		eth.EthernetType = layers.EthernetTypeIPv4
		ip4 := &layers.IPv4{
			Version: 4, IHL: 5, TTL: 64, Id: s.ipID, Flags: layers.IPv4DontFragment,
			Protocol: layers.IPProtocolTCP,
			SrcIP:    s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(),
		}
		if err := tcp.SetNetworkLayerForChecksum(ip4); err != nil {
			return nil, err
		}
		ip = ip4
	} else {
		eth.EthernetType = layers.EthernetTypeIPv6
		ip6 := &layers.IPv6{
			Version: 6, HopLimit: 64, NextHeader: layers.IPProtocolTCP,
			SrcIP: s.src.Addr().AsSlice(), DstIP: s.dst.Addr().AsSlice(),
		}
		if err := tcp.SetNetworkLayerForChecksum(ip6); err != nil {
			return nil, err
		}
		ip = ip6
	}
	payload := make([]byte, s.payload)
	for i := range payload {
		payload[i] = byte(i)
	}
	buf := gopacket.NewSerializeBuffer()
	opts := gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}
	if err := gopacket.SerializeLayers(buf, opts, eth, ip, tcp, gopacket.Payload(payload)); err != nil {
		return nil, fmt.Errorf("serialize %s -> %s: %w", s.src, s.dst, err)
	}
	return buf.Bytes(), nil
}
