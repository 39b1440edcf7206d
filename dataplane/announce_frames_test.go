package dataplane

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
)

// TestAnnounceFramesMatchFixture builds the frames of
// testdata/announce_frames.txt, captured from the hand-built gopacket
// builders the library ones replaced, and wants the same bytes.
func TestAnnounceFramesMatchFixture(t *testing.T) {
	f, err := os.Open("testdata/announce_frames.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	kinds := map[string]int{}
	sc := bufio.NewScanner(f)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		fields := strings.Fields(text)
		if len(fields) != 4 {
			t.Fatalf("line %d: %d fields, want 4", line, len(fields))
		}
		kind := fields[0]
		mac, err := net.ParseMAC(fields[1])
		if err != nil {
			t.Fatalf("line %d: %v", line, err)
		}
		ip := netip.MustParseAddr(fields[2])
		want, err := hex.DecodeString(fields[3])
		if err != nil {
			t.Fatalf("line %d: %v", line, err)
		}
		var got []byte
		switch kind {
		case "arp-request", "arp-reply":
			req, reply, err := garpFrames(mac, ip)
			if err != nil {
				t.Fatalf("line %d: garpFrames(%s, %s): %v", line, mac, ip, err)
			}
			got = req
			if kind == "arp-reply" {
				got = reply
			}
		case "na":
			if got, err = unsolicitedNAFrame(mac, ip); err != nil {
				t.Fatalf("line %d: unsolicitedNAFrame(%s, %s): %v", line, mac, ip, err)
			}
		default:
			t.Fatalf("line %d: unknown kind %q", line, kind)
		}
		kinds[kind]++
		if !bytes.Equal(got, want) {
			t.Errorf("line %d: %s %s %s:\n got  %x\n want %x", line, kind, mac, ip, got, want)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"arp-request", "arp-reply", "na"} {
		if kinds[k] < 4 {
			t.Errorf("fixture has %d %s frames, want at least 4", kinds[k], k)
		}
	}
}

// TestAnnounceFramesParseWithLibraries sends announcements over the UDP
// link and decodes what arrives with the parsers of mdlayher/ethernet,
// mdlayher/arp, x/net/ipv6 and mdlayher/ndp: the receivers' view, next to
// the decoding by offsets of checkARPFrame and checkNAFrame.
func TestAnnounceFramesParseWithLibraries(t *testing.T) {
	u := newUDPAnnouncer(t)
	for _, s := range []string{"198.18.0.20", "198.19.255.254", "2001:2::20", "2001:2:0:7::1", "fe80::2"} {
		vip := netip.MustParseAddr(s)
		an, err := u.Announce(context.Background(), vip, 1, time.Millisecond)
		if err != nil {
			t.Fatalf("Announce(%s): %v", vip, err)
		}
		if rounds, err := an.Wait(); rounds != 1 || err != nil {
			t.Fatalf("Announce(%s): %d rounds, %v", vip, rounds, err)
		}
		if vip.Is4() {
			frames := u.readFrames(t, 2, 2*time.Second)
			checkARPFrame(t, frames[0].data, 1, vip, ethZero)
			checkARPFrame(t, frames[1].data, 2, vip, testAnnounceMAC)
			checkARPWithLibrary(t, frames[0].data, arp.OperationRequest, vip, ethZero)
			checkARPWithLibrary(t, frames[1].data, arp.OperationReply, vip, testAnnounceMAC)
			continue
		}
		frames := u.readFrames(t, 1, 2*time.Second)
		checkNAFrame(t, frames[0].data, vip)
		checkNAWithLibrary(t, frames[0].data, vip)
	}
	u.expectSilence(t, 50*time.Millisecond)
}

func parseEthernet(t *testing.T, frame []byte, dst net.HardwareAddr, typ ethernet.EtherType) *ethernet.Frame {
	t.Helper()
	var f ethernet.Frame
	if err := f.UnmarshalBinary(frame); err != nil {
		t.Fatalf("ethernet.Frame.UnmarshalBinary: %v", err)
	}
	if !bytes.Equal(f.Destination, dst) || !bytes.Equal(f.Source, testAnnounceMAC) || f.EtherType != typ ||
		f.VLAN != nil || f.ServiceVLAN != nil {
		t.Errorf("ethernet %s -> %s type %s vlan %v/%v, want %s -> %s type %s untagged",
			f.Source, f.Destination, f.EtherType, f.VLAN, f.ServiceVLAN, testAnnounceMAC, dst, typ)
	}
	return &f
}

func checkARPWithLibrary(t *testing.T, frame []byte, op arp.Operation, ip netip.Addr, tha net.HardwareAddr) {
	t.Helper()
	f := parseEthernet(t, frame, ethBroadcast, ethernet.EtherTypeARP)
	var p arp.Packet
	if err := p.UnmarshalBinary(f.Payload); err != nil {
		t.Fatalf("arp.Packet.UnmarshalBinary: %v", err)
	}
	want := arp.Packet{
		HardwareType:       1,
		ProtocolType:       uint16(ethernet.EtherTypeIPv4),
		HardwareAddrLength: 6,
		IPLength:           4,
		Operation:          op,
		SenderHardwareAddr: testAnnounceMAC,
		SenderIP:           ip,
		TargetHardwareAddr: tha,
		TargetIP:           ip,
	}
	if p.HardwareType != want.HardwareType || p.ProtocolType != want.ProtocolType ||
		p.HardwareAddrLength != want.HardwareAddrLength || p.IPLength != want.IPLength ||
		p.Operation != want.Operation || !bytes.Equal(p.SenderHardwareAddr, want.SenderHardwareAddr) ||
		p.SenderIP != want.SenderIP || !bytes.Equal(p.TargetHardwareAddr, want.TargetHardwareAddr) ||
		p.TargetIP != want.TargetIP {
		t.Errorf("arp packet %+v, want %+v", p, want)
	}
	if pad := f.Payload[28:]; len(pad) != 18 || !bytes.Equal(pad, make([]byte, 18)) {
		t.Errorf("arp padding % x, want 18 zero bytes", pad)
	}
}

func checkNAWithLibrary(t *testing.T, frame []byte, ip netip.Addr) {
	t.Helper()
	f := parseEthernet(t, frame, ethAllNodes, ethernet.EtherTypeIPv6)
	h, err := ipv6.ParseHeader(f.Payload)
	if err != nil {
		t.Fatalf("ipv6.ParseHeader: %v", err)
	}
	src, _ := netip.AddrFromSlice(h.Src)
	dst, _ := netip.AddrFromSlice(h.Dst)
	allNodes := netip.IPv6LinkLocalAllNodes()
	msg := f.Payload[ip6HeaderLen:]
	if h.Version != 6 || h.TrafficClass != 0 || h.FlowLabel != 0 || h.PayloadLen != len(msg) ||
		h.NextHeader != 58 || h.HopLimit != 255 || src != ip || dst != allNodes {
		t.Errorf("ipv6 header %+v, want %s -> %s, icmpv6, hop limit 255, payload %d", h, ip, allNodes, len(msg))
	}
	m, err := ndp.ParseMessage(msg)
	if err != nil {
		t.Fatalf("ndp.ParseMessage: %v", err)
	}
	na, ok := m.(*ndp.NeighborAdvertisement)
	if !ok {
		t.Fatalf("ndp message %T, want *ndp.NeighborAdvertisement", m)
	}
	if na.Router || na.Solicited || !na.Override || na.TargetAddress != ip {
		t.Errorf("neighbour advertisement R %t S %t O %t target %s, want O only, target %s",
			na.Router, na.Solicited, na.Override, na.TargetAddress, ip)
	}
	if len(na.Options) != 1 {
		t.Fatalf("neighbour advertisement options %v, want the target link-layer address only", na.Options)
	}
	lla, ok := na.Options[0].(*ndp.LinkLayerAddress)
	if !ok || lla.Direction != ndp.Target || !bytes.Equal(lla.Addr, testAnnounceMAC) {
		t.Errorf("neighbour advertisement option %+v, want target link-layer address %s", na.Options[0], testAnnounceMAC)
	}
	// ParseMessage does not look at the checksum: marshal what it parsed
	// with the checksum over the pseudo-header of the received header.
	again, err := ndp.MarshalMessageChecksum(na, src, dst)
	if err != nil {
		t.Fatalf("ndp.MarshalMessageChecksum: %v", err)
	}
	if !bytes.Equal(again, msg) {
		t.Errorf("icmpv6 message\n got  %x\n want %x (as ndp marshals it, with checksum)", msg, again)
	}
}
