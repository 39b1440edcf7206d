package dataplane

import (
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

func TestPutDiagRequest(t *testing.T) {
	for _, c := range []Conn{
		{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 445, Client: netip.MustParseAddr("198.18.3.4"), ClientPort: 0xabcd},
		{VIP: netip.MustParseAddr("2001:2::10"), VIPPort: 2049, Client: netip.MustParseAddr("2001:2::3:4"), ClientPort: 1023},
	} {
		b := make([]byte, nlmsgHeaderLen+inetDiagReqV2Len)
		for i := range b {
			b[i] = 0xee // every byte must be written
		}
		putDiagRequest(b, unix.SOCK_DESTROY, c, 42, [2]uint32{0x1234, 0x5678})
		ne := binary.NativeEndian
		if l := ne.Uint32(b); l != 72 {
			t.Errorf("%s: nlmsg_len %d, want 72", c, l)
		}
		if typ, flags := ne.Uint16(b[4:]), ne.Uint16(b[6:]); typ != unix.SOCK_DESTROY || flags != unix.NLM_F_REQUEST|unix.NLM_F_ACK {
			t.Errorf("%s: type %d flags %#x", c, typ, flags)
		}
		if seq, pid := ne.Uint32(b[8:]), ne.Uint32(b[12:]); seq != 42 || pid != 0 {
			t.Errorf("%s: seq %d pid %d", c, seq, pid)
		}
		r := b[16:]
		fam := byte(unix.AF_INET)
		if c.VIP.Is6() {
			fam = unix.AF_INET6
		}
		if r[0] != fam || r[1] != unix.IPPROTO_TCP || r[2] != 0 || r[3] != 0 || ne.Uint32(r[4:]) != ^uint32(0) {
			t.Errorf("%s: family %d protocol %d ext %d pad %d states %#x", c, r[0], r[1], r[2], r[3], ne.Uint32(r[4:]))
		}
		if sp, dp := binary.BigEndian.Uint16(r[8:]), binary.BigEndian.Uint16(r[10:]); sp != c.VIPPort || dp != c.ClientPort {
			t.Errorf("%s: ports %d %d", c, sp, dp)
		}
		var src, dst [16]byte
		if c.VIP.Is4() {
			a, b := c.VIP.As4(), c.Client.As4()
			copy(src[:], a[:])
			copy(dst[:], b[:])
		} else {
			src, dst = c.VIP.As16(), c.Client.As16()
		}
		if [16]byte(r[12:28]) != src || [16]byte(r[28:44]) != dst {
			t.Errorf("%s: addresses % x / % x", c, r[12:28], r[28:44])
		}
		if ne.Uint32(r[44:]) != 0 || ne.Uint32(r[48:]) != 0x1234 || ne.Uint32(r[52:]) != 0x5678 {
			t.Errorf("%s: interface %d cookie %#x %#x", c, ne.Uint32(r[44:]), ne.Uint32(r[48:]), ne.Uint32(r[52:]))
		}
	}
}

// TestKillConnsOutcomes checks how the kernel's answers are counted, with
// a fake SOCK_DESTROY.
func TestKillConnsOutcomes(t *testing.T) {
	vip := netip.MustParseAddr("198.18.0.10")
	conns := []Conn{
		{VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.18.0.1"), ClientPort: 1},
		{VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.18.0.2"), ClientPort: 2},
		{VIP: vip, VIPPort: 445, Client: netip.MustParseAddr("198.18.0.3"), ClientPort: 3},
		{VIP: vip, VIPPort: 445, ClientPort: 4}, // invalid
	}
	var asked []Conn
	destroy := func(cs []Conn) ([]error, error) {
		asked = cs
		return []error{nil, unix.ENOENT, unix.EPERM}, nil
	}
	st, err := killConns(zaptest.NewLogger(t), conns, destroy)
	if len(asked) != 3 {
		t.Errorf("destroy asked for %d connections, want the 3 valid ones", len(asked))
	}
	if st.Conns != 4 || st.Destroyed != 1 || st.NotFound != 1 || st.Reset != 0 || st.Errors != 2 {
		t.Errorf("stats %+v, want 1 destroyed, 1 not found, 2 errors", st)
	}
	if !errors.Is(err, unix.EPERM) {
		t.Errorf("error %v, want EPERM in it", err)
	}

	st, err = killConns(zaptest.NewLogger(t), conns[:2], func(cs []Conn) ([]error, error) { return nil, unix.EPROTONOSUPPORT })
	if st.Errors != 2 || !errors.Is(err, unix.EPROTONOSUPPORT) {
		t.Errorf("netlink failure: stats %+v, error %v", st, err)
	}
}

// serverRead starts a goroutine blocked in a Read of the server's socket
// and returns the channel of its error.
func serverRead(lc *labConn) chan error {
	errc := make(chan error, 1)
	go func() {
		_, err := lc.server.Read(make([]byte, 64))
		errc <- err
	}()
	return errc
}

func expectErrno(t *testing.T, what string, errc chan error, want unix.Errno) {
	t.Helper()
	select {
	case err := <-errc:
		if !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", what, err, want)
		}
	case <-time.After(time.Second):
		t.Errorf("%s: still blocked after 1s, want %v", what, want)
	}
}

func TestKillConnsDestroysSockets(t *testing.T) {
	l := newTickleLab(t)
	lcs := []*labConn{l.dial(t, l.vip4), l.dial(t, l.vip6)}
	conns := []Conn{lcs[0].conn, lcs[1].conn}
	// More than one batch of requests, most for sockets that do not exist.
	for i := range destroyBatch + 50 {
		conns = append(conns, Conn{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: uint16(20000 + i)})
	}
	var srvErrs []chan error
	for _, lc := range lcs {
		lc.expectBlocked(t)
		srvErrs = append(srvErrs, serverRead(lc))
	}
	var st KillStats
	var err error
	l.in(t, l.nsS, func() { st, err = KillConns(zaptest.NewLogger(t), conns) })
	if err != nil {
		t.Fatalf("KillConns: %v", err)
	}
	if st.Conns != len(conns) || st.Destroyed != 2 || st.NotFound != len(conns)-2 || st.Reset != 0 || st.Errors != 0 {
		t.Errorf("stats %+v, want 2 destroyed, %d not found", st, len(conns)-2)
	}
	for i, lc := range lcs {
		took := lc.expectReset(t, time.Second)
		t.Logf("%s: client reset %v after KillConns returned", lc.conn, took)
		expectErrno(t, "server read", srvErrs[i], unix.ECONNABORTED)
	}
	// The sockets are gone.
	l.in(t, l.nsS, func() { st, err = KillConns(zaptest.NewLogger(t), conns[:2]) })
	if err != nil || st.NotFound != 2 {
		t.Errorf("second KillConns: %+v, %v; want 2 not found", st, err)
	}
	// The lookups of connections that did not exist found the listeners
	// of port 445, which must live on.
	for _, vip := range []netip.Addr{l.vip4, l.vip6} {
		l.in(t, l.nsC, func() {
			d := net.Dialer{Timeout: 3 * time.Second}
			c, err := d.Dial("tcp", netip.AddrPortFrom(vip, 445).String())
			if err != nil {
				t.Errorf("dial %s:445 after KillConns: %v: the listener was destroyed", vip, err)
				return
			}
			c.Close()
		})
	}
}

// TestKillConnsResetsByHand runs the fallback for kernels without
// SOCK_DESTROY: precise RSTs to both ends from the tracked sequence
// numbers.
func TestKillConnsResetsByHand(t *testing.T) {
	l := newTickleLab(t)
	capt := l.capture(t)
	lcs := []*labConn{l.dial(t, l.vip4), l.dial(t, l.vip6)}
	var conns []Conn
	var srvErrs []chan error
	for _, lc := range lcs {
		c := lc.conn
		c.Seq, c.Ack = capt.waitSeqs(t, c, len("reply"), len("request"))
		conns = append(conns, c)
		srvErrs = append(srvErrs, serverRead(lc))
	}
	unknown := Conn{VIP: l.vip4, VIPPort: 445, Client: l.cli4, ClientPort: 30000}
	unsupported := func(cs []Conn) ([]error, error) {
		errs := make([]error, len(cs))
		for i := range errs {
			errs[i] = unix.EOPNOTSUPP
		}
		return errs, nil
	}
	var st KillStats
	var err error
	l.in(t, l.nsS, func() { st, err = killConns(zaptest.NewLogger(t), append(conns, unknown), unsupported) })
	if !errors.Is(err, ErrNoSequence) {
		t.Errorf("killConns error %v, want ErrNoSequence for the connection without numbers", err)
	}
	if st.Conns != 3 || st.Reset != 2 || st.Errors != 1 || st.Destroyed != 0 {
		t.Errorf("stats %+v, want 2 reset, 1 error", st)
	}
	for i, lc := range lcs {
		lc.expectReset(t, time.Second)
		expectErrno(t, "server read", srvErrs[i], unix.ECONNRESET)
	}
}

// waitSeqs returns the next sequence numbers of c's VIP side and client
// after the handshake and out and in payload bytes, from the captured
// SYN and SYN-ACK, once the capture has seen the client acknowledge all
// the VIP side sent (bounded wait).
func (capt *labCapture) waitSeqs(t *testing.T, c Conn, out, in int) (seq, ack uint32) {
	t.Helper()
	vip := netip.AddrPortFrom(c.VIP, c.VIPPort)
	cli := netip.AddrPortFrom(c.Client, c.ClientPort)
	deadline := time.Now().Add(2 * time.Second)
	for {
		var synSeen, synAckSeen, acked bool
		segs := capt.segments()
		for _, s := range segs {
			switch {
			case s.src == cli && s.dst == vip && s.syn:
				ack, synSeen = s.seq+1+uint32(in), true
			case s.src == vip && s.dst == cli && s.syn:
				seq, synAckSeen = s.seq+1+uint32(out), true
			}
		}
		for _, s := range segs {
			if synAckSeen && s.src == cli && s.dst == vip && s.ackFlag && s.ack == seq {
				acked = true
			}
		}
		if synSeen && synAckSeen && acked {
			return seq, ack
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: capture saw syn %v, syn-ack %v, client's ack of the reply %v", c, synSeen, synAckSeen, acked)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
