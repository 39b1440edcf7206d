package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

var testAnnounceMAC = net.HardwareAddr{0x02, 0xfa, 0x5a, 0x00, 0x00, 0x01}

// udpAnnouncer is an Announcer whose frames go over UDP on 127.0.0.1 to
// rx instead of out of an interface, so the sending part runs without
// privileges. dsts records the hardware address each frame was sent to.
type udpAnnouncer struct {
	*Announcer
	rx   net.PacketConn
	tx   [2]net.PacketConn
	mu   sync.Mutex
	dsts []net.HardwareAddr
}

func newUDPAnnouncer(t *testing.T) *udpAnnouncer {
	t.Helper()
	rx, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { rx.Close() })
	var tx [2]net.PacketConn // arp, ndp: an Announcer closes both
	for i := range tx {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		tx[i] = c
	}
	u := &udpAnnouncer{rx: rx, tx: tx}
	to := func(dst net.HardwareAddr) net.Addr {
		u.mu.Lock()
		u.dsts = append(u.dsts, dst)
		u.mu.Unlock()
		return rx.LocalAddr()
	}
	ifi := &net.Interface{Index: 7, Name: "fake0", HardwareAddr: testAnnounceMAC}
	u.Announcer = newAnnouncer(zaptest.NewLogger(t), ifi, frameLink{tx[0], to}, frameLink{tx[1], to})
	t.Cleanup(func() { u.Close() })
	return u
}

type rxFrame struct {
	data []byte
	at   time.Time
}

// readFrames reads n frames, failing after timeout.
func (u *udpAnnouncer) readFrames(t *testing.T, n int, timeout time.Duration) []rxFrame {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var out []rxFrame
	for len(out) < n {
		if err := u.rx.SetReadDeadline(deadline); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 2048)
		k, _, err := u.rx.ReadFrom(buf)
		if err != nil {
			t.Fatalf("read frame %d of %d: %v", len(out)+1, n, err)
		}
		out = append(out, rxFrame{data: buf[:k], at: time.Now()})
	}
	return out
}

// expectSilence fails if a frame arrives within d.
func (u *udpAnnouncer) expectSilence(t *testing.T, d time.Duration) {
	t.Helper()
	if err := u.rx.SetReadDeadline(time.Now().Add(d)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2048)
	if _, _, err := u.rx.ReadFrom(buf); err == nil {
		t.Fatalf("unexpected frame after the announcement ended")
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read: %v", err)
	}
}

// checkARPFrame decodes frame by hand (offsets of RFC 826 over Ethernet),
// independently of the builder, and checks every field.
func checkARPFrame(t *testing.T, frame []byte, op uint16, ip netip.Addr, tha net.HardwareAddr) {
	t.Helper()
	if len(frame) != 60 {
		t.Errorf("frame length %d, want 60 (padded minimum)", len(frame))
	}
	if len(frame) < 42 {
		t.Fatalf("frame too short: %d", len(frame))
	}
	ip4 := ip.As4()
	for _, f := range []struct {
		name      string
		got, want []byte
	}{
		{"eth dst", frame[0:6], ethBroadcast},
		{"eth src", frame[6:12], testAnnounceMAC},
		{"ethertype", frame[12:14], []byte{0x08, 0x06}},
		{"htype", frame[14:16], []byte{0, 1}},
		{"ptype", frame[16:18], []byte{0x08, 0x00}},
		{"hlen, plen", frame[18:20], []byte{6, 4}},
		{"op", frame[20:22], binary.BigEndian.AppendUint16(nil, op)},
		{"sha", frame[22:28], testAnnounceMAC},
		{"spa", frame[28:32], ip4[:]},
		{"tha", frame[32:38], tha},
		{"tpa", frame[38:42], ip4[:]},
		{"padding", frame[42:], make([]byte, len(frame)-42)},
	} {
		if !bytes.Equal(f.got, f.want) {
			t.Errorf("arp op %d %s = % x, want % x", op, f.name, f.got, f.want)
		}
	}
}

// checkNAFrame decodes an unsolicited neighbour advertisement by hand
// (RFC 8200 header, RFC 4861 4.4 message) and checks every field and the
// checksum.
func checkNAFrame(t *testing.T, frame []byte, ip netip.Addr) {
	t.Helper()
	const want = 14 + 40 + 24 + 8
	if len(frame) != want {
		t.Fatalf("frame length %d, want %d", len(frame), want)
	}
	ip16 := ip.As16()
	allNodes := netip.MustParseAddr("ff02::1").As16()
	icmp := frame[54:]
	for _, f := range []struct {
		name      string
		got, want []byte
	}{
		{"eth dst", frame[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}},
		{"eth src", frame[6:12], testAnnounceMAC},
		{"ethertype", frame[12:14], []byte{0x86, 0xdd}},
		{"version, class, flow", frame[14:18], []byte{0x60, 0, 0, 0}},
		{"payload length", frame[18:20], []byte{0, 32}},
		{"next header", frame[20:21], []byte{58}},
		{"hop limit", frame[21:22], []byte{255}},
		{"src", frame[22:38], ip16[:]},
		{"dst", frame[38:54], allNodes[:]},
		{"type, code", icmp[0:2], []byte{136, 0}},
		{"flags R S O", icmp[4:5], []byte{0x20}},
		{"reserved", icmp[5:8], []byte{0, 0, 0}},
		{"target", icmp[8:24], ip16[:]},
		{"option type, length", icmp[24:26], []byte{2, 1}},
		{"target link-layer address", icmp[26:32], testAnnounceMAC},
	} {
		if !bytes.Equal(f.got, f.want) {
			t.Errorf("neighbour advertisement %s = % x, want % x", f.name, f.got, f.want)
		}
	}
	// The ICMPv6 checksum over the pseudo-header and the message sums to
	// 0xffff when it is right.
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	add(frame[22:54])        // source and destination
	add([]byte{0, 0, 0, 32}) // upper-layer length
	add([]byte{0, 0, 0, 58}) // next header
	add(icmp)                // message with its checksum
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	if sum != 0xffff {
		t.Errorf("icmpv6 checksum % x is wrong (sum %#x)", icmp[2:4], sum)
	}
}

func TestAnnounceIPv4SendsGARPRequestAndReply(t *testing.T) {
	u := newUDPAnnouncer(t)
	vip := netip.MustParseAddr("198.18.0.10")
	before := time.Now()
	an, err := u.Announce(context.Background(), vip, 1, time.Millisecond)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	after := time.Now()
	if an.First.Before(before) || an.First.After(after) {
		t.Errorf("First = %v, not within the Announce call [%v, %v]", an.First, before, after)
	}
	frames := u.readFrames(t, 2, 2*time.Second)
	checkARPFrame(t, frames[0].data, 1, vip, net.HardwareAddr{0, 0, 0, 0, 0, 0})
	checkARPFrame(t, frames[1].data, 2, vip, testAnnounceMAC)
	if rounds, err := an.Wait(); rounds != 1 || err != nil {
		t.Errorf("Wait = %d, %v; want 1 round, no error", rounds, err)
	}
	u.expectSilence(t, 50*time.Millisecond)
	u.mu.Lock()
	for i, d := range u.dsts {
		if !bytes.Equal(d, ethBroadcast) {
			t.Errorf("frame %d sent to %s, want broadcast", i, d)
		}
	}
	u.mu.Unlock()
	if got, want := u.Stats(), (AnnounceStats{Rounds: 1, Frames: 2}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestAnnounceIPv6SendsUnsolicitedNA(t *testing.T) {
	u := newUDPAnnouncer(t)
	vip := netip.MustParseAddr("2001:2::10")
	an, err := u.Announce(context.Background(), vip, 1, time.Millisecond)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	frames := u.readFrames(t, 1, 2*time.Second)
	checkNAFrame(t, frames[0].data, vip)
	if rounds, err := an.Wait(); rounds != 1 || err != nil {
		t.Errorf("Wait = %d, %v; want 1 round, no error", rounds, err)
	}
	u.expectSilence(t, 50*time.Millisecond)
	u.mu.Lock()
	if len(u.dsts) != 1 || !bytes.Equal(u.dsts[0], []byte{0x33, 0x33, 0, 0, 0, 1}) {
		t.Errorf("sent to %v, want 33:33:00:00:00:01 once", u.dsts)
	}
	u.mu.Unlock()
}

func TestAnnounceRepeatsAtInterval(t *testing.T) {
	u := newUDPAnnouncer(t)
	vip := netip.MustParseAddr("198.18.0.11")
	const count, interval = 3, 40 * time.Millisecond
	an, err := u.Announce(context.Background(), vip, count, interval)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	frames := u.readFrames(t, 2*count, 2*time.Second)
	for r := range count {
		checkARPFrame(t, frames[2*r].data, 1, vip, net.HardwareAddr{0, 0, 0, 0, 0, 0})
		checkARPFrame(t, frames[2*r+1].data, 2, vip, testAnnounceMAC)
		// round r leaves r intervals after the first (some slack for the
		// receiving side of a loaded machine)
		if since := frames[2*r].at.Sub(an.First); since < time.Duration(r)*interval-5*time.Millisecond {
			t.Errorf("round %d arrived %v after the first, before %d intervals", r+1, since, r)
		}
	}
	if rounds, err := an.Wait(); rounds != count || err != nil {
		t.Errorf("Wait = %d, %v; want %d rounds", rounds, err, count)
	}
	u.expectSilence(t, 2*interval)
	if got, want := u.Stats(), (AnnounceStats{Rounds: count, Frames: 2 * count}); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
}

func TestAnnounceDefaults(t *testing.T) {
	u := newUDPAnnouncer(t)
	an, err := u.Announce(context.Background(), netip.MustParseAddr("198.18.0.12"), 0, 0)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	rounds, err := an.Wait()
	if rounds != DefaultAnnounceCount || err != nil {
		t.Errorf("Wait = %d, %v; want %d rounds", rounds, err, DefaultAnnounceCount)
	}
	span := time.Duration(DefaultAnnounceCount-1) * DefaultAnnounceInterval
	if took := time.Since(an.First); took < span-5*time.Millisecond || took > span+500*time.Millisecond {
		t.Errorf("default announcement took %v, want about %v", took, span)
	}
	u.readFrames(t, 2*DefaultAnnounceCount, time.Second)
}

func TestAnnounceStopCancelsRepeats(t *testing.T) {
	u := newUDPAnnouncer(t)
	vip := netip.MustParseAddr("198.18.0.13")
	an, err := u.Announce(context.Background(), vip, 20, 30*time.Millisecond)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	u.readFrames(t, 2, time.Second)
	u.Stop(vip) // release
	select {
	case <-an.Done():
	default:
		t.Fatal("Stop returned before the announcement ended")
	}
	rounds, err := an.Wait()
	if err != nil || rounds < 1 || rounds > 3 {
		t.Errorf("Wait after Stop = %d, %v; want the first round or two", rounds, err)
	}
	// drain what left before Stop, then nothing more
	if rounds > 1 {
		u.readFrames(t, 2*(rounds-1), time.Second)
	}
	u.expectSilence(t, 100*time.Millisecond)
}

func TestAnnounceContextCancel(t *testing.T) {
	u := newUDPAnnouncer(t)
	ctx, cancel := context.WithCancel(context.Background())
	an, err := u.Announce(ctx, netip.MustParseAddr("2001:2::11"), 50, 20*time.Millisecond)
	if err != nil {
		t.Fatalf("Announce: %v", err)
	}
	cancel()
	select {
	case <-an.Done():
	case <-time.After(time.Second):
		t.Fatal("announcement went on after its context was cancelled")
	}
	if rounds, _ := an.Wait(); rounds >= 50 {
		t.Errorf("rounds = %d after cancel", rounds)
	}
	if _, err := u.Announce(ctx, netip.MustParseAddr("2001:2::11"), 1, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Announce with a done context: %v, want context.Canceled", err)
	}
}

func TestAnnounceAgainRestartsRounds(t *testing.T) {
	u := newUDPAnnouncer(t)
	vip := netip.MustParseAddr("198.18.0.14")
	first, err := u.Announce(context.Background(), vip, 50, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	second, err := u.Announce(context.Background(), vip, 1, 0)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-first.Done():
	default:
		t.Fatal("announcing the vip again left the old announcement running")
	}
	if rounds, _ := second.Wait(); rounds != 1 {
		t.Errorf("second announcement rounds = %d, want 1", rounds)
	}
}

func TestAnnouncerClose(t *testing.T) {
	u := newUDPAnnouncer(t)
	an, err := u.Announce(context.Background(), netip.MustParseAddr("198.18.0.15"), 50, 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := u.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-an.Done():
	default:
		t.Fatal("Close returned with an announcement running")
	}
	if _, err := u.Announce(context.Background(), netip.MustParseAddr("198.18.0.15"), 1, 0); !errors.Is(err, ErrAnnouncerClosed) {
		t.Errorf("Announce after Close: %v, want ErrAnnouncerClosed", err)
	}
	if err := u.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestAnnounceSendFailure(t *testing.T) {
	u := newUDPAnnouncer(t)
	u.tx[0].Close() // every ARP send fails
	_, err := u.Announce(context.Background(), netip.MustParseAddr("198.18.0.16"), 3, time.Millisecond)
	if err == nil {
		t.Fatal("Announce succeeded with no frame sent")
	}
	if !strings.Contains(err.Error(), "198.18.0.16") || !strings.Contains(err.Error(), "fake0") {
		t.Errorf("error %q does not name the address and the interface", err)
	}
	if got := u.Stats(); got.Errors != 2 || got.Frames != 0 || got.Rounds != 0 {
		t.Errorf("Stats = %+v, want 2 errors and nothing sent", got)
	}
}

func TestAnnounceRejectsNonUnicast(t *testing.T) {
	u := newUDPAnnouncer(t)
	for _, a := range []netip.Addr{{}, netip.MustParseAddr("0.0.0.0"), netip.MustParseAddr("224.0.0.1"),
		netip.MustParseAddr("ff02::1"), netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::")} {
		if _, err := u.Announce(context.Background(), a, 1, 0); err == nil {
			t.Errorf("Announce(%s) succeeded", a)
		}
	}
	if got := u.Stats(); got != (AnnounceStats{}) {
		t.Errorf("Stats = %+v after refused announcements", got)
	}
}

func TestNewAnnouncerNeedsEthernet(t *testing.T) {
	// Looks interfaces up only: no privileges needed.
	if _, err := NewAnnouncer(zaptest.NewLogger(t), "lo"); !errors.Is(err, ErrNotEthernet) {
		t.Errorf("NewAnnouncer(lo): %v, want ErrNotEthernet", err)
	}
	if _, err := NewAnnouncer(zaptest.NewLogger(t), "fsha-nolink0"); err == nil || !strings.Contains(err.Error(), "fsha-nolink0") {
		t.Errorf("NewAnnouncer on a missing interface: %v", err)
	}
}

// TestAnnounceUpdatesPeerNeighbours announces from one namespace over a
// veth and checks that the kernel on the other side moves the VIPs, which
// it had cached at an old owner's MAC, to ours: the failover case.
func TestAnnounceUpdatesPeerNeighbours(t *testing.T) {
	testenv.RequireRoot(t)
	lockVIPTestThread(t)
	tag := vipTestTag(t)
	nsA := newVIPTestNetns(t, tag, "a")
	nsB := newVIPTestNetns(t, tag, "b")
	if err := netns.Set(nsA); err != nil {
		t.Fatalf("enter netns a: %v", err)
	}
	hB, err := netlink.NewHandleAt(nsB)
	if err != nil {
		t.Fatalf("netlink handle in b: %v", err)
	}
	t.Cleanup(hB.Close)

	nameA, nameB := "fsha-"+tag+"-a", "fsha-"+tag+"-b"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: nameA}, PeerName: nameB, PeerNamespace: netlink.NsFd(nsB)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	linkA, err := netlink.LinkByName(nameA)
	if err != nil {
		t.Fatal(err)
	}
	linkB, err := hB.LinkByName(nameB)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"198.18.7.1/24", "2001:2:0:7::1/64"} {
		addTestAddr(t, linkA, s)
	}
	for _, s := range []string{"198.18.7.2/24", "2001:2:0:7::2/64"} {
		a, _ := netlink.ParseAddr(s)
		a.Flags = unix.IFA_F_NODAD
		if err := hB.AddrAdd(linkB, a); err != nil {
			t.Fatalf("add %s in b: %v", s, err)
		}
	}
	if err := netlink.LinkSetUp(linkA); err != nil {
		t.Fatal(err)
	}
	if err := hB.LinkSetUp(linkB); err != nil {
		t.Fatal(err)
	}

	// Right after a link comes up the kernel has not yet added the
	// multicast route (ff00::/8, table local) that IPv6 input needs to
	// accept a packet to ff02::1: b would count our advertisements as
	// Ip6InNoRoutes. Wait until it is there.
	waitMcastRoute(t, hB, linkB)

	vips := []netip.Prefix{
		netip.MustParsePrefix("198.18.7.10/24"),
		netip.MustParsePrefix("2001:2:0:7::10/64"),
		netip.MustParsePrefix("198.18.7.11/24"), // announced by a lone reply
	}
	v := NewVIPAddrs(zaptest.NewLogger(t))
	oldMAC := net.HardwareAddr{0x02, 0x00, 0x00, 0x00, 0xfa, 0x01}
	for _, p := range vips {
		if err := v.AddVIP(nameA, p); err != nil {
			t.Fatalf("AddVIP: %v", err)
		}
		err := hB.NeighAdd(&netlink.Neigh{LinkIndex: linkB.Attrs().Index, Family: familyOf(p.Addr()),
			State: netlink.NUD_STALE, IP: p.Addr().AsSlice(), HardwareAddr: oldMAC})
		if err != nil {
			t.Fatalf("seed neighbour %s in b: %v", p.Addr(), err)
		}
	}
	macA := linkA.Attrs().HardwareAddr
	neighMAC := func(ip netip.Addr) net.HardwareAddr {
		ns, err := hB.NeighList(linkB.Attrs().Index, familyOf(ip))
		if err != nil {
			t.Fatalf("neighbours of b: %v", err)
		}
		for _, n := range ns {
			if got, ok := netip.AddrFromSlice(n.IP); ok && got.Unmap() == ip {
				return n.HardwareAddr
			}
		}
		return nil
	}
	waitNeighMAC := func(ip netip.Addr, want net.HardwareAddr) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			got := neighMAC(ip)
			if bytes.Equal(got, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("b's neighbour entry for %s is at %v, want %v", ip, got, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, p := range vips {
		if got := neighMAC(p.Addr()); !bytes.Equal(got, oldMAC) {
			t.Fatalf("before announcing, b has %s at %v, want the old owner's %v", p.Addr(), got, oldMAC)
		}
	}

	ann, err := NewAnnouncer(zaptest.NewLogger(t), nameA)
	if err != nil {
		t.Fatalf("NewAnnouncer: %v", err)
	}
	t.Cleanup(func() { ann.Close() })
	for _, p := range vips[:2] {
		an, err := ann.Announce(context.Background(), p.Addr(), 2, 50*time.Millisecond)
		if err != nil {
			t.Fatalf("Announce(%s): %v", p.Addr(), err)
		}
		if rounds, err := an.Wait(); rounds != 2 || err != nil {
			t.Fatalf("Announce(%s) rounds %d, %v", p.Addr(), rounds, err)
		}
	}
	for _, p := range vips[:2] {
		waitNeighMAC(p.Addr(), macA)
	}

	// The reply alone, within locktime of the seeded entry: Linux accepts
	// it only as a gratuitous ARP, which needs target MAC = sender MAC.
	_, reply, err := garpFrames(macA, vips[2].Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := ann.arp.send(reply, ethBroadcast); err != nil {
		t.Fatalf("send reply: %v", err)
	}
	waitNeighMAC(vips[2].Addr(), macA)
	if got := ann.Stats(); got.Frames != 2*2+2 || got.Errors != 0 {
		t.Errorf("Stats = %+v, want 6 frames, no errors", got)
	}
}

// waitMcastRoute waits until link has its IPv6 multicast route.
func waitMcastRoute(t *testing.T, h *netlink.Handle, link netlink.Link) {
	t.Helper()
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, LinkIndex: link.Attrs().Index}
	deadline := time.Now().Add(3 * time.Second)
	for {
		routes, err := h.RouteListFiltered(netlink.FAMILY_V6, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_OIF)
		if err != nil {
			t.Fatalf("list routes: %v", err)
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.String() == "ff00::/8" {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no ipv6 multicast route on %s after 3s", link.Attrs().Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ForgetInterface closes the interface's announcer (its socket belongs to
// a former incarnation of the interface) and forgets it; other interfaces
// keep theirs.
func TestActionsForgetInterface(t *testing.T) {
	a := NewActions(zaptest.NewLogger(t), nil)
	old, other := newUDPAnnouncer(t), newUDPAnnouncer(t)
	a.announcers["eth1"], a.announcers["eth0"] = old.Announcer, other.Announcer
	if err := a.ForgetInterface("eth1"); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Announce(context.Background(), netip.MustParseAddr("198.18.0.201"), 1, time.Millisecond); !errors.Is(err, ErrAnnouncerClosed) {
		t.Errorf("the forgotten announcer still announces: %v", err)
	}
	if a.announcers["eth1"] != nil || a.announcers["eth0"] != other.Announcer {
		t.Errorf("announcers after forgetting eth1: %v", a.announcers)
	}
	if err := a.ForgetInterface("eth9"); err != nil {
		t.Errorf("forgetting an interface never used: %v", err)
	}
}
