package dataplane

// Killing connections whose socket is on this node, when a VIP is released
// without draining: the local socket is destroyed through the socket
// diagnostics netlink interface (SOCK_DESTROY, like `ss -K`), so the
// kernel aborts it (tcp_abort): the server process gets ECONNABORTED and
// the client a RST with the exact sequence number, and reconnects at once.
//
// Kernels built without CONFIG_INET_DIAG_DESTROY refuse SOCK_DESTROY with
// EOPNOTSUPP. Then, like ctdb_killtcp, we reset both ends by hand with the
// tracked sequence numbers: a RST from the VIP to the client and a RST
// from the client to the local socket, looped back through a raw socket.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrNoSequence is the reason a connection could not be reset by hand: its
// sequence numbers are unknown.
var ErrNoSequence = errors.New("sequence numbers unknown")

// KillStats is what one KillConns call did.
type KillStats struct {
	Conns     int // connections asked for
	Destroyed int // local sockets destroyed; the kernel sent each client a RST
	NotFound  int // connections without a local socket (already gone)
	// Reset counts the connections reset by hand because the kernel does
	// not support SOCK_DESTROY: a RST to each end.
	Reset    int
	Errors   int // connections neither destroyed nor reset, invalid ones included
	Duration time.Duration
}

// KillConns ends conns, whose server sockets are local, at once: it
// destroys each socket with SOCK_DESTROY (the kernel sends the client a
// RST), or, where the kernel does not support that, sends precise RSTs to
// both ends. It works in the network namespace of the calling thread and
// needs CAP_NET_ADMIN (CAP_NET_RAW for the fallback).
func KillConns(log *zap.Logger, conns []Conn) (KillStats, error) {
	return killConns(log, conns, destroySockets)
}

// destroyFunc destroys the local sockets of conns and returns one error per
// connection (nil: destroyed).
type destroyFunc func(conns []Conn) ([]error, error)

func killConns(log *zap.Logger, conns []Conn, destroy destroyFunc) (KillStats, error) {
	log = log.Named("dataplane").Named("kill")
	start := time.Now()
	st := KillStats{Conns: len(conns)}
	var errs []error
	fail := func(err error) {
		if len(errs) < 3 { // the first few say enough
			errs = append(errs, err)
		}
		st.Errors++
	}

	valid := make([]Conn, 0, len(conns))
	for _, c := range conns {
		c, err := c.normalize()
		if err != nil {
			fail(err)
			continue
		}
		valid = append(valid, c)
	}
	results, err := destroy(valid)
	if err != nil {
		// The netlink socket itself failed: nothing was destroyed.
		st.Errors += len(valid)
		st.Duration = time.Since(start)
		return st, fmt.Errorf("kill %d connections: %w", len(conns), errors.Join(append(errs, err)...))
	}
	var unsupported []Conn
	for i, err := range results {
		switch {
		case err == nil:
			st.Destroyed++
		case errors.Is(err, unix.ENOENT):
			st.NotFound++
		case errors.Is(err, unix.EOPNOTSUPP):
			unsupported = append(unsupported, valid[i])
		default:
			fail(fmt.Errorf("destroy socket of %s: %w", valid[i], err))
		}
	}
	if len(unsupported) > 0 {
		log.Info("kernel cannot destroy sockets (no CONFIG_INET_DIAG_DESTROY), resetting by hand",
			zap.Int("conns", len(unsupported)))
		reset, failed := resetConns(unsupported)
		st.Reset += reset
		for _, f := range failed {
			fail(fmt.Errorf("reset %s: %w", f.conn, f.err))
		}
	}
	st.Duration = time.Since(start)
	log.Info("killed connections", zap.Int("conns", st.Conns), zap.Int("destroyed", st.Destroyed),
		zap.Int("not_found", st.NotFound), zap.Int("reset", st.Reset), zap.Int("errors", st.Errors),
		zap.Duration("duration", st.Duration))
	if st.Errors > 0 {
		return st, fmt.Errorf("kill: %d of %d connections failed: %w", st.Errors, st.Conns, errors.Join(errs...))
	}
	return st, nil
}

// Socket diagnostics (linux/inet_diag.h, linux/sock_diag.h).
const (
	inetDiagReqV2Len = 56         // struct inet_diag_req_v2
	inetDiagMsgLen   = 72         // struct inet_diag_msg
	inetDiagNoCookie = ^uint32(0) // INET_DIAG_NOCOOKIE
	nlmsgHeaderLen   = 16         // struct nlmsghdr
	// destroyBatch is how many requests go in one datagram; the kernel's
	// answers to them (one skb each) fit in destroyRecvBuffer.
	destroyBatch      = 128
	destroyRecvBuffer = 1 << 20
	// destroyTimeout bounds the wait for the kernel's answers.
	destroyTimeout = 2 * time.Second
)

// TCP states (include/net/tcp_states.h).
const (
	tcpStateTimeWait = 6
	tcpStateClose    = 7
	tcpStateListen   = 10
)

// putDiagRequest writes an exact-match sock_diag request of type typ
// (SOCK_DIAG_BY_FAMILY or SOCK_DESTROY) for c's local socket (local = VIP
// side), with netlink sequence number seq and socket cookie (or
// inetDiagNoCookie), into b.
func putDiagRequest(b []byte, typ uint16, c Conn, seq uint32, cookie [2]uint32) {
	clear(b[:nlmsgHeaderLen+inetDiagReqV2Len])
	ne := binary.NativeEndian
	ne.PutUint32(b[0:], nlmsgHeaderLen+inetDiagReqV2Len)
	ne.PutUint16(b[4:], typ)
	flags := uint16(unix.NLM_F_REQUEST)
	if typ == unix.SOCK_DESTROY {
		flags |= unix.NLM_F_ACK
	}
	ne.PutUint16(b[6:], flags)
	ne.PutUint32(b[8:], seq)
	r := b[nlmsgHeaderLen:]
	if c.VIP.Is4() {
		r[0] = unix.AF_INET
	} else {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	binary.BigEndian.PutUint16(r[8:], c.VIPPort)
	binary.BigEndian.PutUint16(r[10:], c.ClientPort)
	if c.VIP.Is4() {
		src, dst := c.VIP.As4(), c.Client.As4()
		copy(r[12:], src[:])
		copy(r[28:], dst[:])
	} else {
		src, dst := c.VIP.As16(), c.Client.As16()
		copy(r[12:], src[:])
		copy(r[28:], dst[:])
	}
	// r[44:48] interface 0: any
	ne.PutUint32(r[48:], cookie[0])
	ne.PutUint32(r[52:], cookie[1])
}

// sockDiag is a NETLINK_SOCK_DIAG socket.
type sockDiag struct {
	fd   int
	req  []byte
	rbuf []byte
}

func openSockDiag() (_ *sockDiag, err error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
		}
	}()
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		return nil, fmt.Errorf("sock_diag socket: cap ack: %w", err)
	}
	tv := unix.NsecToTimeval(destroyTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, fmt.Errorf("sock_diag socket: receive timeout: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, destroyRecvBuffer); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, destroyRecvBuffer); err != nil {
			return nil, fmt.Errorf("sock_diag socket: receive buffer: %w", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("bind sock_diag socket: %w", err)
	}
	return &sockDiag{fd: fd, req: make([]byte, destroyBatch*(nlmsgHeaderLen+inetDiagReqV2Len)), rbuf: make([]byte, 64<<10)}, nil
}

func (s *sockDiag) Close() error { return unix.Close(s.fd) }

// exchange sends n requests, written by put(b, i, seq), in batches and
// hands every answer to got(i, type, payload). Each request gets exactly
// one answer: a sock_diag message or an NLMSG_ERROR (an ack when 0).
func (s *sockDiag) exchange(n int, put func(b []byte, i int, seq uint32), got func(i int, typ uint16, payload []byte)) error {
	const reqLen = nlmsgHeaderLen + inetDiagReqV2Len
	kernel := &unix.SockaddrNetlink{Family: unix.AF_NETLINK}
	for base := 0; base < n; base += destroyBatch {
		k := min(destroyBatch, n-base)
		for j := range k {
			// Sequence numbers start at 1: 0 is what a stray
			// notification carries.
			put(s.req[j*reqLen:], base+j, uint32(j+1))
		}
		if err := unix.Sendto(s.fd, s.req[:k*reqLen], 0, kernel); err != nil {
			return fmt.Errorf("send sock_diag requests: %w", err)
		}
		answered := make([]bool, k)
		for pending := k; pending > 0; {
			what := fmt.Sprintf("receive sock_diag answers (%d of %d missing)", pending, k)
			err := s.receive(what, func(typ uint16, seq uint32, p []byte) error {
				if i := int(seq); i >= 1 && i <= k && !answered[i-1] {
					answered[i-1] = true
					pending--
					got(base+i-1, typ, p)
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
	}
	return nil
}

// receive reads one datagram of netlink messages and hands each message's
// type, sequence number and payload to each; what names the exchange in
// errors.
func (s *sockDiag) receive(what string, each func(typ uint16, seq uint32, payload []byte) error) error {
	ne := binary.NativeEndian
	for {
		m, _, err := unix.Recvfrom(s.fd, s.rbuf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				err = os.ErrDeadlineExceeded
			}
			return fmt.Errorf("%s: %w", what, err)
		}
		for b := s.rbuf[:m]; len(b) >= nlmsgHeaderLen; {
			l := int(ne.Uint32(b))
			if l < nlmsgHeaderLen || l > len(b) {
				return fmt.Errorf("%s: bad message length %d", what, l)
			}
			if err := each(ne.Uint16(b[4:]), ne.Uint32(b[8:]), b[nlmsgHeaderLen:l]); err != nil {
				return err
			}
			b = b[min(nlmsgAlign(l), len(b)):]
		}
		return nil
	}
}

// nlError returns the error of an NLMSG_ERROR payload (nil for an ack).
func nlError(payload []byte) error {
	if len(payload) < 4 {
		return fmt.Errorf("short netlink error message")
	}
	if e := int32(binary.NativeEndian.Uint32(payload)); e != 0 {
		return unix.Errno(-e)
	}
	return nil
}

// destroySockets destroys the local socket of every connection and returns
// one result per connection: nil (destroyed), ENOENT (no such socket),
// EOPNOTSUPP (the kernel cannot destroy sockets) or another error.
//
// An exact lookup that finds no connection falls back to the listener of
// the port, and older kernels would destroy that, so each socket is looked
// up first (SOCK_DIAG_BY_FAMILY): listeners and connections already over
// (TIME_WAIT, CLOSE) count as not found, the others are destroyed by their
// cookie, which also spares a newer connection reusing the addresses.
func destroySockets(conns []Conn) ([]error, error) {
	results := make([]error, len(conns))
	if len(conns) == 0 {
		return results, nil
	}
	s, err := openSockDiag()
	if err != nil {
		return nil, err
	}
	defer s.Close()

	noCookie := [2]uint32{inetDiagNoCookie, inetDiagNoCookie}
	cookies := make([][2]uint32, len(conns))
	err = s.exchange(len(conns), func(b []byte, i int, seq uint32) {
		putDiagRequest(b, unix.SOCK_DIAG_BY_FAMILY, conns[i], seq, noCookie)
	}, func(i int, typ uint16, p []byte) {
		switch {
		case typ == unix.NLMSG_ERROR:
			if results[i] = nlError(p); results[i] == nil {
				results[i] = fmt.Errorf("sock_diag lookup: unexpected ack")
			}
		case typ != unix.SOCK_DIAG_BY_FAMILY || len(p) < inetDiagMsgLen:
			results[i] = fmt.Errorf("sock_diag lookup: unexpected answer type %d, %d bytes", typ, len(p))
		default:
			state, dport := p[1], binary.BigEndian.Uint16(p[6:])
			if state == tcpStateListen || state == tcpStateTimeWait || state == tcpStateClose || dport != conns[i].ClientPort {
				results[i] = unix.ENOENT
				return
			}
			cookies[i] = [2]uint32{binary.NativeEndian.Uint32(p[44:]), binary.NativeEndian.Uint32(p[48:])}
		}
	})
	if err != nil {
		return nil, err
	}
	var found []int
	for i, r := range results {
		if r == nil {
			found = append(found, i)
		}
	}
	err = s.exchange(len(found), func(b []byte, j int, seq uint32) {
		i := found[j]
		putDiagRequest(b, unix.SOCK_DESTROY, conns[i], seq, cookies[i])
	}, func(j int, typ uint16, p []byte) {
		i := found[j]
		if typ != unix.NLMSG_ERROR {
			results[i] = fmt.Errorf("sock_diag destroy: unexpected answer type %d", typ)
			return
		}
		results[i] = nlError(p)
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

func nlmsgAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// connError is a connection that could not be reset, and why.
type connError struct {
	conn Conn
	err  error
}

// resetConns sends, for every connection, a RST to its local socket (from
// the client, with the sequence number the socket expects next) and one to
// the client (from the VIP, with the one the client expects), through raw
// sockets. It returns how many were reset and the ones that were not.
func resetConns(conns []Conn) (reset int, failed []connError) {
	var c4, c6 []Conn
	for _, c := range conns {
		switch {
		case c.Seq == 0 && c.Ack == 0:
			failed = append(failed, connError{c, ErrNoSequence})
		case c.VIP.Is4():
			c4 = append(c4, c)
		default:
			c6 = append(c6, c)
		}
	}
	for _, g := range []struct {
		family int
		conns  []Conn
	}{{unix.AF_INET, c4}, {unix.AF_INET6, c6}} {
		if len(g.conns) == 0 {
			continue
		}
		l := newFrameList(2 * len(g.conns))
		l.dsts = make([]netip.Addr, 2*len(g.conns))
		for _, c := range g.conns {
			toLocal := tcpSegment{src: c.Client, dst: c.VIP, sport: c.ClientPort, dport: c.VIPPort, seq: c.Ack, flags: tcpFlagRST}
			toClient := tcpSegment{src: c.VIP, dst: c.Client, sport: c.VIPPort, dport: c.ClientPort, seq: c.Seq, flags: tcpFlagRST}
			for _, s := range []*tcpSegment{&toLocal, &toClient} {
				n := s.ipLen()
				s.put(l.next()[:n])
				l.dsts[l.n] = s.dst
				l.commit(n)
			}
		}
		fd, err := openTickleRawSocket(g.family)
		if err == nil {
			_, _, err = sendFrames(context.Background(), fd, &l, true)
			unix.Close(fd)
		}
		if err != nil {
			// Which pairs made it is not known: count them all failed.
			for _, c := range g.conns {
				failed = append(failed, connError{c, err})
			}
			continue
		}
		reset += len(g.conns)
	}
	return reset, failed
}
