package dataplane

// Building what an announcement round sends: gratuitous ARP and
// unsolicited neighbour advertisement frames. The ARP packet comes from
// mdlayher/arp, the ICMPv6 message and its checksum from mdlayher/ndp, the
// Ethernet frame from mdlayher/ethernet; only the fixed IPv6 header, which
// none of them builds, is written here.

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/sys/unix"
)

var (
	ethBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	// ethAllNodes is the Ethernet group of ff02::1 (RFC 2464: 33:33 and the
	// address's last 32 bits).
	ethAllNodes = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}
	ethZero     = net.HardwareAddr{0, 0, 0, 0, 0, 0}
)

// garpFrames builds the two gratuitous ARP frames of a round, both to the
// Ethernet broadcast, both with sender and target protocol address = ip:
//
//   - a request with target hardware address 00:00:00:00:00:00, the ARP
//     announcement of RFC 5227. Linux takes a request with sender IP ==
//     target IP as gratuitous and overrides its cache entry even within
//     locktime (net.ipv4.neigh.*.locktime, 1s);
//   - a reply with target hardware address = our own MAC, for the hosts
//     and switches that only learn from replies. Linux counts a reply as
//     gratuitous only when its target hardware address equals the sender's
//     (arp_is_garp), so the reply does not carry the broadcast address there.
func garpFrames(mac net.HardwareAddr, ip netip.Addr) (request, reply []byte, err error) {
	request, err = arpFrame(mac, arp.OperationRequest, ip, ethZero)
	if err != nil {
		return nil, nil, err
	}
	reply, err = arpFrame(mac, arp.OperationReply, ip, mac)
	if err != nil {
		return nil, nil, err
	}
	return request, reply, nil
}

func arpFrame(mac net.HardwareAddr, op arp.Operation, ip netip.Addr, targetMAC net.HardwareAddr) ([]byte, error) {
	if !ip.Is4() {
		return nil, fmt.Errorf("arp for non-ipv4 address %s", ip)
	}
	p, err := arp.NewPacket(op, mac, ip, targetMAC, ip)
	if err != nil {
		return nil, fmt.Errorf("build arp packet: %w", err)
	}
	payload, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("build arp packet: %w", err)
	}
	return ethFrame(mac, ethBroadcast, ethernet.EtherTypeARP, payload)
}

// unsolicitedNAFrame builds an unsolicited neighbour advertisement (RFC
// 4861 7.2.6) for ip to all nodes (ff02::1): override set, solicited and
// router clear, with the target link-layer address option. As the
// kernel's own ndisc_send_na does, its source is the advertised address
// itself, which is on the interface. Hop limit 255, or receivers drop it.
func unsolicitedNAFrame(mac net.HardwareAddr, ip netip.Addr) ([]byte, error) {
	if !ip.Is6() || ip.Is4In6() {
		return nil, fmt.Errorf("neighbour advertisement for non-ipv6 address %s", ip)
	}
	dst := netip.IPv6LinkLocalAllNodes()
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: ip,
		Options:       []ndp.Option{&ndp.LinkLayerAddress{Direction: ndp.Target, Addr: mac}},
	}
	// A packet socket sends the frame as it is: the ICMPv6 checksum, over
	// the IPv6 pseudo-header (RFC 8200 8.1), is ours to fill in, and
	// MarshalMessageChecksum does (MarshalMessage leaves it zero for a
	// socket that computes it).
	msg, err := ndp.MarshalMessageChecksum(na, ip, dst)
	if err != nil {
		return nil, fmt.Errorf("build neighbour advertisement: %w", err)
	}
	pkt := make([]byte, ip6HeaderLen+len(msg))
	src6, dst6 := ip.As16(), dst.As16()
	binary.BigEndian.PutUint32(pkt[0:], 6<<28) // version 6, class 0, flow 0
	binary.BigEndian.PutUint16(pkt[4:], uint16(len(msg)))
	pkt[6] = unix.IPPROTO_ICMPV6
	pkt[7] = 255 // hop limit
	copy(pkt[8:24], src6[:])
	copy(pkt[24:40], dst6[:])
	copy(pkt[ip6HeaderLen:], msg)
	return ethFrame(mac, ethAllNodes, ethernet.EtherTypeIPv6, pkt)
}

// ethFrame wraps payload in an Ethernet frame from src to dst, padded to
// the 60-byte minimum.
func ethFrame(src, dst net.HardwareAddr, typ ethernet.EtherType, payload []byte) ([]byte, error) {
	f := &ethernet.Frame{Destination: dst, Source: src, EtherType: typ, Payload: payload}
	b, err := f.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("build ethernet frame: %w", err)
	}
	return b, nil
}
