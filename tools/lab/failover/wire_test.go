package failover

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// Raw protocol clients: one TCP connection each, created in the client's
// namespace, talking to the real smbd (SMB2 NEGOTIATE, then ECHO) or the
// real nfs-ganesha (ONC RPC NULL calls of NFSv4) through a VIP. They see
// every reset and every reconnection: a connection they report healthy
// is the same TCP connection from start to end.

// rawConn is one such connection.
type rawConn struct {
	conn  net.Conn
	local netip.AddrPort
	proto string // "smb" or "nfs"
	msgID uint64 // next SMB2 message id / RPC xid
}

// dialSMB connects to vip:445 from the client and negotiates SMB 2.0.2:
// smbd answers (so the node's data plane tracks the connection) and then
// waits for the next request, keeping the connection open.
func dialSMB(ctx context.Context, c *lab.Client, vip netip.Addr) (*rawConn, error) {
	rc, err := dialRaw(ctx, c, netip.AddrPortFrom(vip, lab.SMBPort), "smb")
	if err != nil {
		return nil, err
	}
	if err := rc.roundTrip(smb2Negotiate, negotiateBody()); err != nil {
		rc.conn.Close()
		return nil, fmt.Errorf("smb2 negotiate with %s: %w", vip, err)
	}
	return rc, nil
}

// dialNFS connects to vip:2049 from the client and checks that nfs-ganesha
// answers a NULL call.
func dialNFS(ctx context.Context, c *lab.Client, vip netip.Addr) (*rawConn, error) {
	rc, err := dialRaw(ctx, c, netip.AddrPortFrom(vip, lab.NFSPort), "nfs")
	if err != nil {
		return nil, err
	}
	if err := rc.ping(); err != nil {
		rc.conn.Close()
		return nil, fmt.Errorf("nfs null call to %s: %w", vip, err)
	}
	return rc, nil
}

func dialRaw(ctx context.Context, c *lab.Client, to netip.AddrPort, proto string) (*rawConn, error) {
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := c.Dial(dctx, "tcp", to.String())
	if err != nil {
		return nil, err
	}
	rc := &rawConn{conn: conn, local: conn.LocalAddr().(*net.TCPAddr).AddrPort(), proto: proto, msgID: 1}
	if proto == "smb" {
		rc.msgID = 0
	}
	return rc, nil
}

// Key is the connection as `fsha flows` prints it: client -> vip.
func (rc *rawConn) Key() string {
	return rc.local.String() + "->" + rc.conn.RemoteAddr().String()
}

// ping is one request and its answer: SMB2 ECHO or RPC NULL.
func (rc *rawConn) ping() error {
	if rc.proto == "smb" {
		return rc.roundTrip(smb2Echo, []byte{4, 0, 0, 0})
	}
	return rc.rpcNull()
}

const (
	smb2Negotiate = 0x00
	smb2Echo      = 0x0d
	smb2Dialect   = 0x0202
)

func negotiateBody() []byte {
	b := make([]byte, 36, 38)
	binary.LittleEndian.PutUint16(b[0:], 36) // StructureSize
	binary.LittleEndian.PutUint16(b[2:], 1)  // DialectCount
	binary.LittleEndian.PutUint16(b[4:], 1)  // SecurityMode: signing enabled
	copy(b[12:28], "fsha-failover-t!")       // ClientGuid
	return binary.LittleEndian.AppendUint16(b, smb2Dialect)
}

// roundTrip sends one SMB2 request and reads its answer, which must carry
// the same message id and STATUS_SUCCESS.
func (rc *rawConn) roundTrip(cmd uint16, body []byte) error {
	id := rc.msgID
	rc.msgID++
	hdr := make([]byte, 64)
	copy(hdr, "\xfeSMB")
	binary.LittleEndian.PutUint16(hdr[4:], 64)      // StructureSize
	binary.LittleEndian.PutUint16(hdr[12:], cmd)    // Command
	binary.LittleEndian.PutUint16(hdr[14:], 1)      // CreditRequest
	binary.LittleEndian.PutUint64(hdr[24:], id)     // MessageId
	binary.LittleEndian.PutUint32(hdr[32:], 0xfeff) // ProcessId
	msg := append(hdr, body...)
	nbt := binary.BigEndian.AppendUint32(nil, uint32(len(msg))) // NetBIOS session message, type 0
	if _, err := rc.conn.Write(append(nbt, msg...)); err != nil {
		return err
	}
	for {
		var l [4]byte
		if _, err := io.ReadFull(rc.conn, l[:]); err != nil {
			return err
		}
		n := binary.BigEndian.Uint32(l[:]) & 0xffffff
		if l[0] != 0 || n < 64 || n > 1<<20 {
			return fmt.Errorf("smb2: bad NetBIOS header % x", l)
		}
		resp := make([]byte, n)
		if _, err := io.ReadFull(rc.conn, resp); err != nil {
			return err
		}
		if string(resp[0:4]) != "\xfeSMB" {
			return fmt.Errorf("smb2: not an SMB2 answer: % x", resp[:4])
		}
		status := binary.LittleEndian.Uint32(resp[8:])
		const statusPending = 0x00000103
		if status == statusPending {
			continue // interim answer; the final one follows
		}
		if got := binary.LittleEndian.Uint16(resp[12:]); got != cmd {
			return fmt.Errorf("smb2: answer to command %#x, sent %#x", got, cmd)
		}
		if got := binary.LittleEndian.Uint64(resp[24:]); got != id {
			return fmt.Errorf("smb2: answer to message %d, sent %d", got, id)
		}
		if status != 0 {
			return fmt.Errorf("smb2: command %#x: status %#08x", cmd, status)
		}
		return nil
	}
}

// rpcNull sends an ONC RPC NULL call of NFS version 4 and checks the
// answer is an accepted success with the same xid.
func (rc *rawConn) rpcNull() error {
	xid := uint32(rc.msgID)
	rc.msgID++
	const (
		nfsProgram = 100003
		nfsVersion = 4
		lastFrag   = 0x80000000
	)
	var call []byte
	for _, v := range []uint32{xid, 0 /* CALL */, 2 /* RPC version */, nfsProgram, nfsVersion, 0 /* NULL */, 0, 0 /* AUTH_NONE cred */, 0, 0 /* verf */} {
		call = binary.BigEndian.AppendUint32(call, v)
	}
	rm := binary.BigEndian.AppendUint32(nil, lastFrag|uint32(len(call)))
	if _, err := rc.conn.Write(append(rm, call...)); err != nil {
		return err
	}
	var l [4]byte
	if _, err := io.ReadFull(rc.conn, l[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(l[:])
	if n&lastFrag == 0 || n&^lastFrag < 24 || n&^lastFrag > 1<<16 {
		return fmt.Errorf("rpc: bad record mark % x", l)
	}
	r := make([]byte, n&^lastFrag)
	if _, err := io.ReadFull(rc.conn, r); err != nil {
		return err
	}
	word := func(i int) uint32 { return binary.BigEndian.Uint32(r[4*i:]) }
	if word(0) != xid || word(1) != 1 || word(2) != 0 {
		return fmt.Errorf("rpc: reply xid %d type %d stat %d, want xid %d accepted", word(0), word(1), word(2), xid)
	}
	verfLen := int(word(4))
	if verfLen > 400 || len(r) < 24+verfLen {
		return fmt.Errorf("rpc: bad verifier length %d", verfLen)
	}
	if st := binary.BigEndian.Uint32(r[20+verfLen:]); st != 0 {
		return fmt.Errorf("rpc: accept status %d", st)
	}
	return nil
}

// session pings over a rawConn every interval (0: back to back) until
// stopped or until the first error, which ends it: a healthy session is one TCP connection
// that answered every ping.
type session struct {
	rc       *rawConn
	interval time.Duration
	stop     chan struct{}
	done     chan struct{}

	mu      sync.Mutex
	ok      int
	err     error
	errAt   time.Time
	errWait time.Duration // how long the failed ping waited
	maxRTT  time.Duration
	maxGap  time.Duration // longest time between two answers
	// longGaps are the gaps between two answers longer than
	// maxSteerStall, when they were
	longGaps []gap
	lastOK   time.Time
	started  time.Time
}

// pingTimeout bounds one ping: far above any planned-move stall, far
// below a TCP retransmission timeout giving up.
const pingTimeout = 3 * time.Second

func startSession(rc *rawConn, interval time.Duration) *session {
	s := &session{rc: rc, interval: interval, stop: make(chan struct{}), done: make(chan struct{}), started: time.Now()}
	s.lastOK = s.started
	go s.run()
	return s
}

// maxSession bounds a session's run whatever the test does.
const maxSession = 2 * time.Minute

func (s *session) run() {
	defer close(s.done)
	closed := make(chan time.Time)
	close(closed)
	var next <-chan time.Time = closed // interval 0: back to back
	if s.interval > 0 {
		tick := time.NewTicker(s.interval)
		defer tick.Stop()
		next = tick.C
	}
	end := time.After(maxSession)
	for {
		select {
		case <-s.stop:
			return
		case <-end:
			s.fail(errors.New("session ran past its bound"), 0)
			return
		case <-next:
		}
		start := time.Now()
		_ = s.rc.conn.SetDeadline(start.Add(pingTimeout))
		err := s.rc.ping()
		now := time.Now()
		if err != nil {
			s.fail(err, now.Sub(start))
			return
		}
		s.mu.Lock()
		s.ok++
		s.maxRTT = max(s.maxRTT, now.Sub(start))
		s.maxGap = max(s.maxGap, now.Sub(s.lastOK))
		if now.Sub(s.lastOK) > recordedGap {
			s.longGaps = append(s.longGaps, gap{from: s.lastOK, to: now})
		}
		s.lastOK = now
		s.mu.Unlock()
	}
}

func (s *session) fail(err error, waited time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err, s.errAt, s.errWait = err, time.Now(), waited
}

// Err is the error that ended the session, nil while it is healthy.
func (s *session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// gap is a time with no answer.
type gap struct{ from, to time.Time }

func (g gap) length() time.Duration { return g.to.Sub(g.from) }

// recordedGap: the session records its gaps longer than this (a
// control session's stall counts from there: controlGapsOver).
const recordedGap = 200 * time.Millisecond

// LongGaps are the gaps between two answers longer than maxSteerStall.
func (s *session) LongGaps() []gap { return s.GapsOver(maxSteerStall) }

// GapsOver are the gaps between two answers longer than d (at least
// recordedGap).
func (s *session) GapsOver(d time.Duration) []gap {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []gap
	for _, g := range s.longGaps {
		if g.length() > d {
			out = append(out, g)
		}
	}
	return out
}

// OK counts the answered pings.
func (s *session) OK() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ok
}

// Close stops pinging and closes the connection the orderly way (FIN), so
// that the node serving it sees it end.
func (s *session) Close() {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	_ = s.rc.conn.Close()
}

func (s *session) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := "no error"
	if s.err != nil {
		e = fmt.Sprintf("ERROR at +%v after waiting %v for an answer: %v", s.errAt.Sub(s.started).Round(time.Millisecond),
			s.errWait.Round(time.Millisecond), s.err)
	}
	return fmt.Sprintf("%s session %s: %d answers in %v, longest round trip %v, longest gap %v, %s",
		s.rc.proto, s.rc.Key(), s.ok, time.Since(s.started).Round(time.Millisecond),
		s.maxRTT.Round(time.Millisecond), s.maxGap.Round(time.Millisecond), e)
}

// dialRaw opens a raw SMB and a raw NFS connection through vip from the
// client.
func (e *env) dialRaw(vip netip.Addr) (smb, nfs *rawConn) {
	e.t.Helper()
	smb, err := dialSMB(e.ctx, e.client, vip)
	if err != nil {
		e.t.Fatal(err)
	}
	nfs, err = dialNFS(e.ctx, e.client, vip)
	if err != nil {
		e.t.Fatal(err)
	}
	return smb, nfs
}

// checkSessions logs each of sessions (closed) and fails on any that
// broke, saying it broke what ("in the drain"); with a capture w, also on
// a gap it cannot put on the lab (checkGaps).
func (e *env) checkSessions(sessions []*session, what string, w *lab.Watch) {
	e.t.Helper()
	for _, s := range sessions {
		e.t.Logf("%s", s)
		if err := s.Err(); err != nil {
			e.t.Errorf("%s session %s broke %s: %v", s.rc.proto, s.rc.Key(), what, err)
		}
		if w != nil {
			e.checkGaps(s.rc.proto+" session "+s.rc.Key(), s, w)
		}
	}
}

// checkUndisturbed closes sessions[i] (each watched by watches[i], which
// sessions on one VIP may share) and
// checks that since start none of the connections keys names was reset
// (the capture) and no session broke or stalled past a steering
// transition, during what.
func (e *env) checkUndisturbed(what string, start time.Time, sessions []*session, watches []*lab.Watch, keys []string) {
	e.t.Helper()
	seen := map[*lab.Watch]bool{}
	for _, w := range watches {
		if seen[w] {
			continue // sessions on one VIP share its watch
		}
		seen[w] = true
		for _, r := range e.resetsTo(w, start, keys...) {
			e.t.Errorf("a connection was reset during %s: %s", what, r)
		}
	}
	for _, s := range sessions {
		s.Close()
	}
	for i, s := range sessions {
		e.checkSessions([]*session{s}, "during "+what, watches[i])
	}
}

// rawSessions opens a raw SMB and a raw NFS connection through vip from
// the client and starts a session on each, pinging every pingEvery.
func (e *env) rawSessions(vip netip.Addr) []*session {
	e.t.Helper()
	smb, nfs := e.dialRaw(vip)
	return []*session{startSession(smb, pingEvery), startSession(nfs, pingEvery)}
}
