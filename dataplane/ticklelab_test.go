package dataplane

// The tickle lab: two network namespaces joined by a veth pair, real TCP
// connections from the client side to a VIP on the server side, a capture
// at the client, and the helpers the tickler tests share.

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/fsha/fsha/tools/testenv"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// tickleLab is two network namespaces, fsha-<tag>-s (the node that took
// over the VIPs) and fsha-<tag>-c (their client), joined by a veth. The
// test thread stays locked; in runs code inside one namespace.
type tickleLab struct {
	tag        string
	orig       netns.NsHandle
	nsS, nsC   netns.NsHandle
	hS, hC     *netlink.Handle
	ifS, ifC   string
	idxS, idxC int
	vip4, vip6 netip.Addr
	cli4, cli6 netip.Addr
}

func newTickleLab(t *testing.T) *tickleLab {
	t.Helper()
	testenv.RequireRoot(t)
	lockVIPTestThread(t)
	l := &tickleLab{
		tag:  vipTestTag(t),
		vip4: netip.MustParseAddr("198.18.9.10"), vip6: netip.MustParseAddr("2001:2:0:9::10"),
		cli4: netip.MustParseAddr("198.18.9.2"), cli6: netip.MustParseAddr("2001:2:0:9::2"),
	}
	var err error
	if l.orig, err = netns.Get(); err != nil {
		t.Fatalf("get netns: %v", err)
	}
	t.Cleanup(func() { l.orig.Close() })
	l.nsS = newVIPTestNetns(t, l.tag, "s")
	l.nsC = newVIPTestNetns(t, l.tag, "c")
	for _, h := range []struct {
		ns netns.NsHandle
		h  **netlink.Handle
	}{{l.nsS, &l.hS}, {l.nsC, &l.hC}} {
		if *h.h, err = netlink.NewHandleAt(h.ns); err != nil {
			t.Fatalf("netlink handle: %v", err)
		}
		t.Cleanup((*h.h).Close)
	}
	l.ifS, l.ifC = "fsha"+l.tag+"s", "fsha"+l.tag+"c"
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: l.ifS}, PeerName: l.ifC, PeerNamespace: netlink.NsFd(l.nsC)}
	if err := l.hS.LinkAdd(veth); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	for _, side := range []struct {
		h     *netlink.Handle
		name  string
		idx   *int
		addrs []string
	}{
		{l.hS, l.ifS, &l.idxS, []string{"198.18.9.1/24", "198.18.9.10/24", "2001:2:0:9::1/64", "2001:2:0:9::10/64"}},
		{l.hC, l.ifC, &l.idxC, []string{"198.18.9.2/24", "2001:2:0:9::2/64"}},
	} {
		link, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatalf("find %s: %v", side.name, err)
		}
		*side.idx = link.Attrs().Index
		for _, s := range side.addrs {
			a, err := netlink.ParseAddr(s)
			if err != nil {
				t.Fatal(err)
			}
			a.Flags = unix.IFA_F_NODAD
			if err := side.h.AddrAdd(link, a); err != nil {
				t.Fatalf("add %s to %s: %v", s, side.name, err)
			}
		}
		if err := side.h.LinkSetUp(link); err != nil {
			t.Fatalf("set %s up: %v", side.name, err)
		}
	}
	// Loopback up, as on any node: packets to local addresses need it.
	for _, h := range []*netlink.Handle{l.hS, l.hC} {
		lo, err := h.LinkByName("lo")
		if err != nil {
			t.Fatalf("find lo: %v", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			t.Fatalf("set lo up: %v", err)
		}
	}
	// With both ends up (carrier), IPv6 gets its multicast routes, which
	// neighbour discovery needs.
	for _, side := range []struct {
		h   *netlink.Handle
		idx int
	}{{l.hS, l.idxS}, {l.hC, l.idxC}} {
		link, err := side.h.LinkByIndex(side.idx)
		if err != nil {
			t.Fatal(err)
		}
		waitMcastRoute(t, side.h, link)
	}
	return l
}

// in runs fn with the test thread in ns.
func (l *tickleLab) in(t *testing.T, ns netns.NsHandle, fn func()) {
	t.Helper()
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter netns: %v", err)
	}
	defer func() {
		if err := netns.Set(l.orig); err != nil {
			t.Fatalf("leave netns: %v", err)
		}
	}()
	fn()
}

// labConn is a real TCP connection from the client namespace to VIP:445
// in the server namespace.
type labConn struct {
	client, server *net.TCPConn
	conn           Conn
	// readErr gets the error of the client's blocked Read.
	readErr chan error
}

// dial connects from the client namespace to vip:445, exchanges a
// request and a reply, and starts a goroutine blocked in the client's
// Read.
func (l *tickleLab) dial(t *testing.T, vip netip.Addr) *labConn {
	t.Helper()
	var ln net.Listener
	var err error
	l.in(t, l.nsS, func() {
		ln, err = net.Listen("tcp", netip.AddrPortFrom(vip, 445).String())
	})
	if err != nil {
		t.Fatalf("listen on %s: %v", vip, err)
	}
	t.Cleanup(func() { ln.Close() })
	var c net.Conn
	l.in(t, l.nsC, func() {
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.Dial("tcp", netip.AddrPortFrom(vip, 445).String())
	})
	if err != nil {
		t.Fatalf("dial %s: %v", vip, err)
	}
	t.Cleanup(func() { c.Close() })
	s, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	lc := &labConn{client: c.(*net.TCPConn), server: s.(*net.TCPConn), readErr: make(chan error, 1)}
	// A request and a reply, as an SMB client's negotiate.
	buf := make([]byte, 64)
	if _, err := lc.client.Write([]byte("request")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(lc.server, buf[:7]); err != nil {
		t.Fatal(err)
	}
	if _, err := lc.server.Write([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(lc.client, buf[:5]); err != nil {
		t.Fatal(err)
	}
	local := lc.client.LocalAddr().(*net.TCPAddr).AddrPort()
	lc.conn = Conn{VIP: vip, VIPPort: 445, Client: local.Addr().Unmap(), ClientPort: local.Port()}
	go func() {
		_, err := lc.client.Read(buf)
		lc.readErr <- err
	}()
	return lc
}

// expectBlocked fails if the client's Read has returned.
func (lc *labConn) expectBlocked(t *testing.T) {
	t.Helper()
	select {
	case err := <-lc.readErr:
		t.Fatalf("client read returned early: %v", err)
	default:
	}
}

// expectReset waits (bounded) for the client's Read to fail with
// ECONNRESET, and returns how long it took.
func (lc *labConn) expectReset(t *testing.T, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	select {
	case err := <-lc.readErr:
		if !errors.Is(err, unix.ECONNRESET) {
			t.Fatalf("client read: %v, want ECONNRESET", err)
		}
		return time.Since(start)
	case <-time.After(within):
		t.Fatalf("client read still blocked %v later: the client was not reset", within)
	}
	return 0
}

// vanish closes the server's socket without anything reaching the client,
// as when its node dies: a TCX egress program on the server's veth drops
// everything meanwhile, and SO_LINGER 0 makes close send a RST (dropped)
// and free the socket at once, so nothing is retransmitted later.
func (l *tickleLab) vanish(t *testing.T, lc *labConn) {
	t.Helper()
	testenv.RequireBPF(t)
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "fsha_drop", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2 /* TCX_DROP */), asm.Return()}})
	if err != nil {
		t.Fatalf("load drop program: %v", err)
	}
	defer prog.Close()
	lk := l.attachServerEgress(t, prog)
	if err := lc.server.SetLinger(0); err != nil {
		t.Fatal(err)
	}
	if err := lc.server.Close(); err != nil {
		t.Fatal(err)
	}
	if err := lk.Close(); err != nil {
		t.Fatalf("detach drop program: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	lc.expectBlocked(t)
}

// tickler returns a Tickler on the lab's server side, closed when the
// test ends.
func (l *tickleLab) tickler(t *testing.T, opts ...TickleOption) *Tickler {
	t.Helper()
	var tk *Tickler
	var err error
	l.in(t, l.nsS, func() { tk, err = NewTickler(zaptest.NewLogger(t), l.ifS, opts...) })
	if err != nil {
		t.Fatalf("NewTickler: %v", err)
	}
	t.Cleanup(func() { tk.Close() })
	return tk
}

// labCapture records, on an AF_PACKET socket in the client namespace,
// every TCP segment to or from port 445 on the client's veth.
type labCapture struct {
	conn *packet.Conn
	mu   sync.Mutex
	segs []capturedSegment
	done chan struct{}
}

type capturedSegment struct {
	src, dst     netip.AddrPort
	seq, ack     uint32
	payload      int
	syn, fin     bool
	ackFlag, rst bool
	checksumOK   bool
}

func (l *tickleLab) capture(t *testing.T) *labCapture {
	t.Helper()
	var conn *packet.Conn
	var err error
	l.in(t, l.nsC, func() {
		conn, err = packet.Listen(&net.Interface{Index: l.idxC, Name: l.ifC}, packet.Raw, unix.ETH_P_ALL, nil)
	})
	if err != nil {
		t.Fatalf("packet socket: %v", err)
	}
	// Room for every burst: the capture must not drop any.
	rc, err := conn.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 16<<20)
	}); err != nil || serr != nil {
		t.Fatalf("receive buffer: %v %v", err, serr)
	}
	c := &labCapture{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		buf := make([]byte, 2048)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			pkt := gopacket.NewPacket(buf[:n], layers.LayerTypeEthernet, gopacket.Default)
			tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
			if tcp == nil || (tcp.SrcPort != 445 && tcp.DstPort != 445) {
				continue
			}
			nl := pkt.NetworkLayer()
			src, dst := nl.NetworkFlow().Endpoints()
			seg := capturedSegment{
				src: netip.AddrPortFrom(netip.MustParseAddr(src.String()), uint16(tcp.SrcPort)),
				dst: netip.AddrPortFrom(netip.MustParseAddr(dst.String()), uint16(tcp.DstPort)),
				seq: tcp.Seq, ack: tcp.Ack, payload: len(tcp.Payload),
				syn: tcp.SYN, fin: tcp.FIN, ackFlag: tcp.ACK, rst: tcp.RST,
			}
			// Segments the client sends carry partial checksums (veth
			// offload): only received ones are checked.
			if seg.src.Addr() == l.vip4 || seg.src.Addr() == l.vip6 {
				want, err := tcpChecksumOf(nl, tcp)
				seg.checksumOK = err == nil && want == tcp.Checksum
			}
			c.mu.Lock()
			c.segs = append(c.segs, seg)
			c.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		conn.Close()
		<-c.done
	})
	return c
}

// tcpChecksumOf recomputes tcp's checksum over nl's pseudo-header.
func tcpChecksumOf(nl gopacket.NetworkLayer, tcp *layers.TCP) (uint16, error) {
	c := *tcp
	if err := c.SetNetworkLayerForChecksum(nl); err != nil {
		return 0, err
	}
	buf := gopacket.NewSerializeBuffer()
	if err := c.SerializeTo(buf, gopacket.SerializeOptions{ComputeChecksums: true}); err != nil {
		return 0, err
	}
	return uint16(buf.Bytes()[16])<<8 | uint16(buf.Bytes()[17]), nil
}

// segments returns what was captured so far.
func (c *labCapture) segments() []capturedSegment {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.segs)
}

// isTickle reports whether seg is a tickle from one of l's VIPs.
func (l *tickleLab) isTickle(seg capturedSegment) bool {
	return (seg.src.Addr() == l.vip4 || seg.src.Addr() == l.vip6) && seg.src.Port() == 445 &&
		seg.ackFlag && !seg.rst && !seg.syn && !seg.fin && seg.payload == 0
}

// waitTickles waits (bounded) until want tickles arrived, then a little
// more for any extra one, and checks them all.
func (l *tickleLab) waitTickles(t *testing.T, c *labCapture, want int) {
	t.Helper()
	count := func() (n int, bad []capturedSegment) {
		for _, s := range c.segments() {
			if l.isTickle(s) {
				n++
				if !s.checksumOK {
					bad = append(bad, s)
				}
			}
		}
		return n, bad
	}
	deadline := time.Now().Add(3 * time.Second)
	for n, _ := count(); n < want && time.Now().Before(deadline); n, _ = count() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	n, bad := count()
	if n != want {
		st, _ := c.conn.Stats()
		t.Errorf("client received %d tickles, want %d (capture socket stats %+v)", n, want, st)
	}
	for _, s := range bad {
		t.Errorf("tickle with a bad checksum: %+v", s)
	}
}

// tcpCounters reads the client namespace's Tcp counters.
func (l *tickleLab) tcpCounters(t *testing.T) map[string]int64 {
	t.Helper()
	var b []byte
	var err error
	l.in(t, l.nsC, func() { b, err = os.ReadFile("/proc/thread-self/net/snmp") })
	if err != nil {
		t.Fatalf("read snmp: %v", err)
	}
	var names []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "Tcp:" {
			continue
		}
		if names == nil {
			names = f[1:]
			continue
		}
		m := map[string]int64{}
		for i, v := range f[1:] {
			m[names[i]], _ = strconv.ParseInt(v, 10, 64)
		}
		return m
	}
	t.Fatalf("no Tcp counters in snmp")
	return nil
}

// attachServerEgress attaches prog (TCX) to the server side's egress.
func (l *tickleLab) attachServerEgress(t *testing.T, prog *ebpf.Program) link.Link {
	t.Helper()
	var lk link.Link
	var err error
	l.in(t, l.nsS, func() {
		lk, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: l.idxS, Attach: ebpf.AttachTCXEgress})
	})
	if err != nil {
		t.Fatalf("attach %s to the server's egress: %v", prog, err)
	}
	return lk
}
