package dataplane

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/fsha/fsha/tools/testenv"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

var (
	tickleSrcMAC = net.HardwareAddr{0x02, 0xf5, 0x71, 0x00, 0x00, 0x01}
	tickleDstMAC = net.HardwareAddr{0x02, 0xf5, 0x71, 0x00, 0x00, 0x02}
)

// decodeTickleFrame decodes an Ethernet frame with gopacket and checks the
// IP and TCP checksums by recomputing them with gopacket's serializer.
func decodeTickleFrame(t *testing.T, frame []byte) (*layers.Ethernet, gopacket.NetworkLayer, *layers.TCP) {
	t.Helper()
	pkt := gopacket.NewPacket(frame, layers.LayerTypeEthernet, gopacket.Default)
	if el := pkt.ErrorLayer(); el != nil {
		t.Fatalf("decode frame: %v", el.Error())
	}
	eth, _ := pkt.Layer(layers.LayerTypeEthernet).(*layers.Ethernet)
	tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
	if eth == nil || tcp == nil || pkt.NetworkLayer() == nil {
		t.Fatalf("frame lacks a layer: %v", pkt)
	}
	return eth, pkt.NetworkLayer(), tcp
}

// wantTCPChecksum recomputes the checksum of tcp over nl's pseudo-header
// with gopacket.
func wantTCPChecksum(t *testing.T, nl gopacket.NetworkLayer, tcp *layers.TCP) uint16 {
	t.Helper()
	sum, err := tcpChecksumOf(nl, tcp)
	if err != nil {
		t.Fatalf("tcp checksum: %v", err)
	}
	return sum
}

func TestTickleFrameIPv4(t *testing.T) {
	for _, tc := range []struct {
		name          string
		conn          Conn
		wantSeq, wAck uint32
	}{
		{"unknown sequence", Conn{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 445,
			Client: netip.MustParseAddr("198.18.1.20"), ClientPort: 50123}, 0, 0},
		{"tracked sequence", Conn{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 2049,
			Client: netip.MustParseAddr("198.19.255.254"), ClientPort: 1023, Seq: 0x10000000, Ack: 0xfffffff0},
			0x10000000 - tickleSeqBehind + 1<<32, 0xfffffff0},
		{"sequence wraps", Conn{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 139,
			Client: netip.MustParseAddr("198.18.0.11"), ClientPort: 65535, Seq: 5, Ack: 7}, 5 - tickleSeqBehind + 1<<32, 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tickleSegment(tc.conn)
			b := make([]byte, frameStride)
			n := s.putFrame(b, tickleSrcMAC, tickleDstMAC)
			if n != ethMinFrame {
				t.Fatalf("frame length %d, want %d (54 padded)", n, ethMinFrame)
			}
			if !bytes.Equal(b[54:60], make([]byte, 6)) {
				t.Errorf("padding % x, want zeros", b[54:60])
			}
			eth, nl, tcp := decodeTickleFrame(t, b[:n])
			ip, ok := nl.(*layers.IPv4)
			if !ok {
				t.Fatalf("network layer %T, want IPv4", nl)
			}
			if !bytes.Equal(eth.SrcMAC, tickleSrcMAC) || !bytes.Equal(eth.DstMAC, tickleDstMAC) || eth.EthernetType != layers.EthernetTypeIPv4 {
				t.Errorf("ethernet %v > %v type %v", eth.SrcMAC, eth.DstMAC, eth.EthernetType)
			}
			if ip.Version != 4 || ip.IHL != 5 || ip.TOS != 0 || ip.Length != 40 || ip.Id != 0 ||
				ip.Flags != layers.IPv4DontFragment || ip.FragOffset != 0 || ip.TTL != 64 ||
				ip.Protocol != layers.IPProtocolTCP || len(ip.Options) != 0 {
				t.Errorf("ipv4 header %+v", ip)
			}
			if got, want := ip.SrcIP.String(), tc.conn.VIP.String(); got != want {
				t.Errorf("ip src %s, want %s", got, want)
			}
			if got, want := ip.DstIP.String(), tc.conn.Client.String(); got != want {
				t.Errorf("ip dst %s, want %s", got, want)
			}
			// A header with its checksum sums to 0xffff.
			if sum := checksumFold(checksumAdd(0, b[14:34])); sum != 0 {
				t.Errorf("ipv4 header checksum %#04x is wrong", ip.Checksum)
			}
			checkTickleTCP(t, nl, tcp, tc.conn, tc.wantSeq, tc.wAck)
		})
	}
}

func TestTickleFrameIPv6(t *testing.T) {
	c := Conn{VIP: netip.MustParseAddr("2001:2::10"), VIPPort: 445, Client: netip.MustParseAddr("2001:2:0:ffff::abcd"),
		ClientPort: 40001, Seq: 0x80000001, Ack: 0x1234}
	s := tickleSegment(c)
	b := make([]byte, frameStride)
	n := s.putFrame(b, tickleSrcMAC, tickleDstMAC)
	if n != 74 {
		t.Fatalf("frame length %d, want 74", n)
	}
	eth, nl, tcp := decodeTickleFrame(t, b[:n])
	ip, ok := nl.(*layers.IPv6)
	if !ok {
		t.Fatalf("network layer %T, want IPv6", nl)
	}
	if eth.EthernetType != layers.EthernetTypeIPv6 || !bytes.Equal(eth.DstMAC, tickleDstMAC) {
		t.Errorf("ethernet type %v dst %v", eth.EthernetType, eth.DstMAC)
	}
	if ip.Version != 6 || ip.TrafficClass != 0 || ip.FlowLabel != 0 || ip.Length != 20 ||
		ip.NextHeader != layers.IPProtocolTCP || ip.HopLimit != 64 {
		t.Errorf("ipv6 header %+v", ip)
	}
	if ip.SrcIP.String() != c.VIP.String() || ip.DstIP.String() != c.Client.String() {
		t.Errorf("ipv6 %s > %s", ip.SrcIP, ip.DstIP)
	}
	checkTickleTCP(t, nl, tcp, c, 0x80000001-tickleSeqBehind, 0x1234)
}

func checkTickleTCP(t *testing.T, nl gopacket.NetworkLayer, tcp *layers.TCP, c Conn, seq, ack uint32) {
	t.Helper()
	if uint16(tcp.SrcPort) != c.VIPPort || uint16(tcp.DstPort) != c.ClientPort {
		t.Errorf("tcp ports %d > %d, want %d > %d", tcp.SrcPort, tcp.DstPort, c.VIPPort, c.ClientPort)
	}
	if tcp.Seq != seq || tcp.Ack != ack {
		t.Errorf("tcp seq %#x ack %#x, want %#x %#x", tcp.Seq, tcp.Ack, seq, ack)
	}
	if tcp.DataOffset != 5 || len(tcp.Options) != 0 || len(tcp.Payload) != 0 {
		t.Errorf("tcp data offset %d, %d options, %d payload bytes", tcp.DataOffset, len(tcp.Options), len(tcp.Payload))
	}
	if !tcp.ACK || tcp.SYN || tcp.FIN || tcp.RST || tcp.PSH || tcp.URG || tcp.ECE || tcp.CWR || tcp.NS {
		t.Errorf("tcp flags: want ACK only: %+v", tcp)
	}
	if tcp.Window != tickleWindow || tcp.Urgent != 0 {
		t.Errorf("tcp window %d urgent %d", tcp.Window, tcp.Urgent)
	}
	if want := wantTCPChecksum(t, nl, tcp); tcp.Checksum != want {
		t.Errorf("tcp checksum %#04x, want %#04x", tcp.Checksum, want)
	}
}

// TestTickleSeqOutsideWindow checks the property tickles rely on: with a
// tracked sequence number, the tickle's lies before the client's window
// however far (up to 512 MiB either way) the tracked number is off.
func TestTickleSeqOutsideWindow(t *testing.T) {
	const maxWindow = 1 << 30 // RFC 7323's largest
	for _, seq := range []uint32{1, 0x7fffffff, 0x80000000, 0xffffffff, 0x12345678} {
		for _, off := range []int64{0, 1, -1, 1 << 20, -(1 << 20), 1 << 29, -(1 << 29)} {
			rcvNxt := uint32(int64(seq) + off) // the client's real rcv_nxt
			s := tickleSegment(Conn{VIP: netip.MustParseAddr("198.18.0.1"), Client: netip.MustParseAddr("198.18.0.2"), Seq: seq, Ack: 1})
			// Acceptable (RFC 793): rcv_nxt <= seq < rcv_nxt + window.
			if d := s.seq - rcvNxt; d < maxWindow {
				t.Errorf("seq %#x off %d: tickle seq %#x is %d into the window", seq, off, s.seq, d)
			}
		}
	}
}

func TestIPSegmentForRawSocket(t *testing.T) {
	for _, s := range []tcpSegment{
		{src: netip.MustParseAddr("198.18.1.2"), dst: netip.MustParseAddr("198.18.0.10"), sport: 50000, dport: 445,
			seq: 0xdeadbeef, flags: tcpFlagRST},
		{src: netip.MustParseAddr("2001:2::1:2"), dst: netip.MustParseAddr("2001:2::10"), sport: 50000, dport: 445,
			seq: 1, ack: 2, flags: tcpFlagRST | tcpFlagACK, window: 7},
	} {
		b := make([]byte, s.ipLen())
		s.put(b)
		first := layers.LayerTypeIPv4
		if s.src.Is6() {
			first = layers.LayerTypeIPv6
		}
		pkt := gopacket.NewPacket(b, first, gopacket.Default)
		if el := pkt.ErrorLayer(); el != nil {
			t.Fatalf("decode %s: %v", s.src, el.Error())
		}
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil {
			t.Fatalf("no tcp layer in %v", pkt)
		}
		if tcp.RST != (s.flags&tcpFlagRST != 0) || tcp.ACK != (s.flags&tcpFlagACK != 0) || tcp.Seq != s.seq || tcp.Ack != s.ack ||
			tcp.Window != s.window || uint16(tcp.SrcPort) != s.sport || uint16(tcp.DstPort) != s.dport {
			t.Errorf("%s: tcp %+v, want %+v", s.src, tcp, s)
		}
		if want := wantTCPChecksum(t, pkt.NetworkLayer(), tcp); tcp.Checksum != want {
			t.Errorf("%s: tcp checksum %#04x, want %#04x", s.src, tcp.Checksum, want)
		}
		src, dst := pkt.NetworkLayer().NetworkFlow().Endpoints()
		if src.String() != s.src.String() || dst.String() != s.dst.String() {
			t.Errorf("addresses %s > %s, want %s > %s", src, dst, s.src, s.dst)
		}
	}
}

func TestConnNormalize(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.0.1")
	v6 := netip.MustParseAddr("2001:2::1")
	mapped := netip.AddrFrom16(v4.As16())
	for _, tc := range []struct {
		name string
		c    Conn
		ok   bool
	}{
		{"ipv4", Conn{VIP: v4, VIPPort: 445, Client: v4.Next(), ClientPort: 1}, true},
		{"ipv6", Conn{VIP: v6, VIPPort: 445, Client: v6.Next(), ClientPort: 1}, true},
		{"mapped", Conn{VIP: mapped, VIPPort: 445, Client: v4.Next(), ClientPort: 1}, true},
		{"mixed", Conn{VIP: v4, VIPPort: 445, Client: v6, ClientPort: 1}, false},
		{"no client", Conn{VIP: v4, VIPPort: 445, ClientPort: 1}, false},
		{"port 0", Conn{VIP: v4, VIPPort: 445, Client: v4.Next()}, false},
		{"zone", Conn{VIP: v6.WithZone("eth0"), VIPPort: 445, Client: v6, ClientPort: 1}, false},
	} {
		c, err := tc.c.normalize()
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok %v", tc.name, err, tc.ok)
		}
		if err == nil && (!c.VIP.Is4() && c.VIP.Is4In6()) {
			t.Errorf("%s: VIP %s still mapped", tc.name, c.VIP)
		}
	}
}

func TestConnOf(t *testing.T) {
	f := Flow{VIP: netip.MustParseAddr("198.18.0.1"), VIPPort: 445, Client: netip.MustParseAddr("198.18.0.2"), ClientPort: 5,
		SeqIn: 100, AckIn: 200, SeqOut: 300, AckOut: 90}
	want := Conn{VIP: f.VIP, VIPPort: 445, Client: f.Client, ClientPort: 5, Seq: 300, Ack: 100}
	if got := ConnOf(f); got != want {
		t.Errorf("ConnOf = %+v, want %+v", got, want)
	}
}

// testNextHops returns next hops with routes (like the kernel returns
// them, in any order) and neighbours.
func testNextHops(ifindex int, routes []netlink.Route, neigh map[string]net.HardwareAddr) *nextHops {
	h := &nextHops{ifindex: ifindex, neigh: map[[16]byte]net.HardwareAddr{}}
	for _, r := range routes {
		fam := netlink.FAMILY_V4
		if r.Dst != nil && r.Dst.IP.To4() == nil || r.Gw != nil && r.Gw.To4() == nil {
			fam = netlink.FAMILY_V6
		}
		if hr, ok := hopRouteOf(fam, r, ifindex); ok {
			h.routes = append(h.routes, hr)
		}
	}
	h.sortRoutes()
	for ip, mac := range neigh {
		h.neigh[netip.MustParseAddr(ip).As16()] = mac
	}
	return h
}

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func TestNextHops(t *testing.T) {
	const ifindex = 7
	gwMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
	gw6MAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xf6}
	cliMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x21}
	routes := []netlink.Route{
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Gw: net.ParseIP("198.18.0.254")},                                 // default
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("198.18.0.0/24")},                                  // on link
		{LinkIndex: ifindex + 1, Type: unix.RTN_UNICAST, Dst: mustCIDR("198.18.5.0/24")},                              // other interface
		{LinkIndex: ifindex, Type: unix.RTN_BLACKHOLE, Dst: mustCIDR("198.18.6.0/24")},                                // blackhole
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("198.18.0.128/26"), Gw: net.ParseIP("198.18.0.2")}, // more specific
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("2001:2::/64")},
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("::/0"), Gw: net.ParseIP("2001:2::fe")},
	}
	neigh := map[string]net.HardwareAddr{"198.18.0.254": gwMAC, "198.18.0.21": cliMAC, "2001:2::fe": gw6MAC,
		"2001:2::21": cliMAC, "198.18.5.9": cliMAC}
	for _, cached := range []bool{false, true} {
		h := testNextHops(ifindex, routes, neigh)
		if cached {
			h.cache = map[[16]byte]netip.Addr{}
		}
		for _, tc := range []struct {
			client string
			want   net.HardwareAddr
		}{
			{"198.18.0.21", cliMAC}, // on link, resolved
			{"198.18.0.22", nil},    // on link, not resolved
			{"198.18.1.1", gwMAC},   // default route
			{"198.19.200.1", gwMAC}, // default route
			{"198.18.0.130", nil},   // via 198.18.0.2, not resolved
			{"198.18.5.9", nil},     // another interface: the kernel routes it
			{"198.18.6.1", nil},     // blackhole
			{"2001:2::21", cliMAC},  // on link
			{"2001:2:1::1", gw6MAC}, // default
			{"198.18.0.21", cliMAC}, // again (cache)
			{"198.18.0.254", gwMAC}, // the gateway itself, on link
			{"2001:2::22", nil},     // on link, not resolved
			{"198.18.1.1", gwMAC},   // again
		} {
			if got := h.lookup(netip.MustParseAddr(tc.client)); !bytes.Equal(got, tc.want) {
				t.Errorf("cached %v: lookup(%s) = %v, want %v", cached, tc.client, got, tc.want)
			}
		}
	}
	// Without a default route, off-link clients are the kernel's.
	h := testNextHops(ifindex, routes[1:2], neigh)
	if got := h.lookup(netip.MustParseAddr("198.18.1.1")); got != nil {
		t.Errorf("lookup without a matching route = %v, want nil", got)
	}
}

// TestTicklePlan checks which connections go by packet socket and which
// by raw socket, and that the frames are the tickles of the right ones.
func TestTicklePlan(t *testing.T) {
	const ifindex = 3
	gwMAC := net.HardwareAddr{0x02, 0, 0, 0, 0, 0xfe}
	h := testNextHops(ifindex, []netlink.Route{
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("198.18.0.0/24")},
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Gw: net.ParseIP("198.18.0.1")},
	}, map[string]net.HardwareAddr{"198.18.0.1": gwMAC})
	vip := netip.MustParseAddr("198.18.0.10")
	conns := []Conn{
		{VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.19.0.1"), ClientPort: 1000},                               // via gateway
		{VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.18.0.99"), ClientPort: 1001},                              // on link, unresolved
		{VIP: netip.MustParseAddr("2001:2::10"), VIPPort: 445, Client: netip.MustParseAddr("2001:2::99"), ClientPort: 1002}, // no v6 route
		{VIP: vip, VIPPort: 2049, Client: netip.MustParseAddr("198.19.0.2"), ClientPort: 1003, Seq: 77},                     // via gateway
	}
	tk := &Tickler{mac: tickleSrcMAC}
	p := tk.plan(conns, h)
	if p.pkt.n != 2 || p.raw4.n != 1 || p.raw6.n != 1 {
		t.Fatalf("plan: %d packet, %d raw4, %d raw6; want 2, 1, 1", p.pkt.n, p.raw4.n, p.raw6.n)
	}
	for i, ci := range []int{0, 3} {
		eth, _, tcp := decodeTickleFrame(t, p.pkt.frame(i))
		if !bytes.Equal(eth.DstMAC, gwMAC) || uint16(tcp.DstPort) != conns[ci].ClientPort {
			t.Errorf("packet frame %d: to %v port %d, want %v port %d", i, eth.DstMAC, tcp.DstPort, gwMAC, conns[ci].ClientPort)
		}
	}
	if p.raw4.dsts[0] != conns[1].Client || p.raw6.dsts[0] != conns[2].Client {
		t.Errorf("raw destinations %v %v", p.raw4.dsts, p.raw6.dsts)
	}
	// Without next hops (no Ethernet), everything is raw.
	p = (&Tickler{}).plan(conns, nil)
	if p.pkt.n != 0 || p.raw4.n != 3 || p.raw6.n != 1 {
		t.Errorf("plan without hops: %d packet, %d raw4, %d raw6; want 0, 3, 1", p.pkt.n, p.raw4.n, p.raw6.n)
	}
}

func BenchmarkTicklePlan(b *testing.B) {
	const ifindex = 3
	h := testNextHops(ifindex, []netlink.Route{
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Dst: mustCIDR("198.18.0.0/24")},
		{LinkIndex: ifindex, Type: unix.RTN_UNICAST, Gw: net.ParseIP("198.18.0.1")},
	}, map[string]net.HardwareAddr{"198.18.0.1": tickleDstMAC})
	conns := make([]Conn, 100_000)
	a := netip.MustParseAddr("198.19.0.0")
	for i := range conns {
		conns[i] = Conn{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 445, Client: a, ClientPort: 40000}
		a = a.Next()
	}
	tk := &Tickler{mac: tickleSrcMAC}
	b.ReportAllocs()
	for b.Loop() {
		if p := tk.plan(conns, h); p.pkt.n != len(conns) {
			b.Fatalf("%d frames", p.pkt.n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(conns)), "ns/conn")
}

func TestTickleResetsClient(t *testing.T) {
	l := newTickleLab(t)
	tk := l.tickler(t)
	if tk.Method() != TicklePacket {
		t.Errorf("method %v, want %v", tk.Method(), TicklePacket)
	}
	for _, tc := range []struct {
		name     string
		vip      netip.Addr
		noNeigh  bool // the server has no neighbour entry for the client
		wantRaw  int
		withSeqs bool
	}{
		{name: "ipv4", vip: l.vip4},
		{name: "ipv6", vip: l.vip6},
		{name: "ipv4 no neighbour entry", vip: l.vip4, noNeigh: true, wantRaw: 1},
		{name: "ipv6 no neighbour entry", vip: l.vip6, noNeigh: true, wantRaw: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lc := l.dial(t, tc.vip)
			l.vanish(t, lc)
			// Control: a tickle for another connection resets nothing.
			other := lc.conn
			other.ClientPort++
			if _, err := tk.Tickle(context.Background(), []Conn{other}, 0, 0); err != nil {
				t.Fatalf("Tickle: %v", err)
			}
			time.Sleep(50 * time.Millisecond)
			lc.expectBlocked(t)
			if tc.noNeigh {
				ip := lc.conn.Client
				err := l.hS.NeighDel(&netlink.Neigh{LinkIndex: l.idxS, Family: familyOf(ip), IP: ip.AsSlice()})
				if err != nil {
					t.Fatalf("delete neighbour %s: %v", ip, err)
				}
			}
			st, err := tk.Tickle(context.Background(), []Conn{lc.conn}, 0, 0)
			if err != nil {
				t.Fatalf("Tickle: %v", err)
			}
			if st.Sent != 1 || st.Errors != 0 || st.Rounds != 1 || st.Raw != tc.wantRaw || st.Packet != 1-tc.wantRaw {
				t.Errorf("stats %+v, want 1 sent, %d raw", st, tc.wantRaw)
			}
			took := lc.expectReset(t, time.Second)
			t.Logf("client reset %v after the tickle", took)
		})
	}
	if c := tk.Counters(); c.Calls != 8 || c.Conns != 8 || c.Sent != 8 || c.Errors != 0 {
		t.Errorf("counters %+v, want 8 calls, 8 sent", c)
	}
}

// TestTickleRepeats tickles connections the client does not have (it
// answers each tickle with a RST) and counts every round at the client.
func TestTickleRepeats(t *testing.T) {
	l := newTickleLab(t)
	tk := l.tickler(t)
	// The server resolves the client once, as the real connections did.
	l.in(t, l.nsS, func() {
		for _, a := range []netip.Addr{l.cli4, l.cli6} {
			d := net.Dialer{Timeout: 3 * time.Second}
			if c, err := d.Dial("tcp", netip.AddrPortFrom(a, 9).String()); err == nil {
				c.Close()
			}
		}
	})
	const n, repeats = 150, 2
	var conns []Conn
	for i := range n {
		conns = append(conns,
			Conn{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: uint16(20000 + i)},
			Conn{VIP: l.vip6, VIPPort: 445, Client: l.cli6, ClientPort: uint16(20000 + i), Seq: uint32(i) << 20, Ack: 1})
	}
	conns = append(conns, Conn{VIP: l.vip4, VIPPort: 445, ClientPort: 1}) // invalid
	capt := l.capture(t)
	before := l.tcpCounters(t)
	const spacing = 40 * time.Millisecond
	st, err := tk.Tickle(context.Background(), conns, repeats, spacing)
	if err == nil || !strings.Contains(err.Error(), "missing address") {
		t.Errorf("Tickle error %v, want one about the invalid connection", err)
	}
	want := TickleStats{Conns: 2*n + 1, Invalid: 1, Packet: 2 * n, Rounds: 1 + repeats, Sent: 2 * n * (1 + repeats)}
	if st.Conns != want.Conns || st.Invalid != want.Invalid || st.Packet != want.Packet || st.Raw != 0 ||
		st.Rounds != want.Rounds || st.Sent != want.Sent || st.Errors != 0 {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if st.Duration < repeats*spacing || st.FirstRound <= 0 || st.FirstRound > st.Duration {
		t.Errorf("first round %v, duration %v: want rounds %v apart", st.FirstRound, st.Duration, spacing)
	}
	l.waitTickles(t, capt, 2*n*(1+repeats))
	after := l.tcpCounters(t)
	if d := after["InCsumErrors"] - before["InCsumErrors"]; d != 0 {
		t.Errorf("client counted %d TCP checksum errors", d)
	}
	// No socket: the client answers every tickle with a RST.
	if d := after["OutRsts"] - before["OutRsts"]; d != int64(2*n*(1+repeats)) {
		t.Errorf("client sent %d RSTs, want %d", d, 2*n*(1+repeats))
	}
}

// TestTickleSendsAsItBuilds: the first round's frames leave while the
// rest are still being built, so that a takeover's first tickles do not
// wait for the whole plan (100,000 connections: 15-25 ms of the 30-55 ms
// from the decision in the takeover bench suite). When the round's last
// connection is asked for, tickles must already have reached the client.
func TestTickleSendsAsItBuilds(t *testing.T) {
	l := newTickleLab(t)
	tk := l.tickler(t)
	l.in(t, l.nsS, func() {
		d := net.Dialer{Timeout: 3 * time.Second}
		if c, err := d.Dial("tcp", netip.AddrPortFrom(l.cli4, 9).String()); err == nil {
			c.Close()
		}
	})
	// large enough for the senders of sendParallel where there are CPUs
	// for them
	const n = 3 * TickleWorkerFrames
	capt := l.capture(t)
	seen := func() (k int) {
		for _, s := range capt.segments() {
			if l.isTickle(s) {
				k++
			}
		}
		return k
	}
	early := -1
	conn := func(i int) Conn {
		if i == n-1 {
			deadline := time.Now().Add(2 * time.Second)
			for early = seen(); early == 0 && time.Now().Before(deadline); early = seen() {
				time.Sleep(5 * time.Millisecond)
			}
		}
		return Conn{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: uint16(20000 + i)}
	}
	st, err := tk.tickle(context.Background(), n, conn, 0, 0)
	if err != nil || st.Packet != n || st.Sent != n || st.Errors != 0 {
		t.Fatalf("tickle: %+v, %v", st, err)
	}
	if early <= 0 {
		t.Errorf("no tickle had reached the client when the last of %d connections was asked for", n)
	}
	t.Logf("%d of %d tickles at the client when the last connection was asked for", early, n)
	l.waitTickles(t, capt, n)
}

func TestTickleContextEndsRepeats(t *testing.T) {
	l := newTickleLab(t)
	tk := l.tickler(t, WithTickleMethod(TickleRaw))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	conns := []Conn{{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: 30000}}
	st, err := tk.Tickle(ctx, conns, 10, 40*time.Millisecond)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Tickle error %v, want deadline exceeded", err)
	}
	if st.Rounds < 2 || st.Rounds > 4 || st.Sent != st.Rounds || st.Raw != 1 {
		t.Errorf("stats %+v: want 2 to 4 rounds by raw socket before the deadline", st)
	}
	if err := tk.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := tk.Tickle(context.Background(), conns, 0, 0); !errors.Is(err, ErrTicklerClosed) {
		t.Errorf("Tickle after Close: %v, want ErrTicklerClosed", err)
	}
}

// TestTickleBypassesEgressHook checks that tickles sent with the qdisc
// bypass never reach the tc egress hook, where fsha's egress program
// would take them for a local socket's segments, and that without the
// bypass they do.
func TestTickleBypassesEgressHook(t *testing.T) {
	testenv.RequireBPF(t)
	l := newTickleLab(t)
	counter, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatalf("create counter: %v", err)
	}
	defer counter.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "fsha_count", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.LoadMapPtr(asm.R1, counter.FD()),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "out"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("out"), // TCX_NEXT
			asm.Return(),
		}})
	if err != nil {
		t.Fatalf("load counting program: %v", err)
	}
	defer prog.Close()
	defer l.attachServerEgress(t, prog).Close()
	if err := l.hS.NeighAdd(&netlink.Neigh{LinkIndex: l.idxS, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
		IP: l.cli4.AsSlice(), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02}}); err != nil {
		t.Fatalf("add neighbour: %v", err)
	}
	const n = 100
	var conns []Conn
	for i := range n {
		conns = append(conns, Conn{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: uint16(20000 + i)})
	}
	for _, tc := range []struct {
		method                  TickleMethod
		seenAtLeast, seenAtMost uint64
	}{{TicklePacket, 0, n / 10}, {TicklePacketQdisc, n, 2 * n}} {
		var tk *Tickler
		l.in(t, l.nsS, func() { tk, err = NewTickler(zaptest.NewLogger(t), l.ifS, WithTickleMethod(tc.method)) })
		if err != nil {
			t.Fatalf("NewTickler: %v", err)
		}
		var before, after uint64
		if err := counter.Lookup(uint32(0), &before); err != nil {
			t.Fatal(err)
		}
		st, err := tk.Tickle(context.Background(), conns, 0, 0)
		tk.Close()
		if err != nil || st.Packet != n || st.Sent != n {
			t.Fatalf("%v: Tickle %+v, %v", tc.method, st, err)
		}
		if err := counter.Lookup(uint32(0), &after); err != nil {
			t.Fatal(err)
		}
		if seen := after - before; seen < tc.seenAtLeast || seen > tc.seenAtMost {
			t.Errorf("%v: egress hook saw %d packets for %d tickles, want %d to %d", tc.method, seen, n, tc.seenAtLeast, tc.seenAtMost)
		}
	}
}
