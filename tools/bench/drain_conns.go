package main

// The drain suite's clients: plain TCP connections from a lab client to
// nfs-ganesha through a VIP, each asking ONC RPC NULL calls (NFSv4) one at
// a time. A connection that fails once is marked failed and left alone:
// a healthy one is the same TCP connection from its dial to its close.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
)

// rpcTimeout bounds one NULL call: far above any round trip, short of the
// old holder's drain checks.
const rpcTimeout = 5 * time.Second

// rpcConn is one TCP connection to VIP:2049 that asks RPC NULL calls.
type rpcConn struct {
	conn  *net.TCPConn
	local netip.AddrPort
	xid   uint32
	buf   []byte
	// err is the first failure; the connection is not used after it.
	err error
}

// dialRPC opens n connections from c to addr, in c's namespace on one
// thread, and has each answer one NULL call (so the owner's data plane
// tracks it and replicates it to the other nodes).
func dialRPC(ctx context.Context, c *lab.Client, addr netip.AddrPort, n int) ([]*rpcConn, error) {
	conns := make([]*rpcConn, 0, n)
	err := c.Do(func() error {
		// no TCP keepalive: only the NULL calls cross the network
		d := net.Dialer{Timeout: 3 * time.Second, KeepAlive: -1}
		for i := range n {
			if err := ctx.Err(); err != nil {
				return err
			}
			conn, err := d.DialContext(ctx, "tcp", addr.String())
			if err != nil {
				return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
			}
			rc := &rpcConn{conn: conn.(*net.TCPConn), local: conn.LocalAddr().(*net.TCPAddr).AddrPort(), xid: 1, buf: make([]byte, 512)}
			conns = append(conns, rc)
			if _, err := rc.null(); err != nil {
				return fmt.Errorf("connection %d of %d (%s): first rpc null: %w", i+1, n, rc.local, err)
			}
		}
		return nil
	})
	if err != nil {
		closeRPC(conns)
		return nil, fmt.Errorf("connect to %s from %s: %w", addr, c.Role, err)
	}
	return conns, nil
}

// closeRPC closes every connection (FIN, the way a client goes away).
func closeRPC(conns []*rpcConn) {
	for _, rc := range conns {
		rc.conn.Close()
	}
}

// null sends one RPC NULL call of NFS version 4 and reads its answer,
// which must be an accepted success with the same xid; it returns the
// round-trip time. A failure marks the connection failed.
func (rc *rpcConn) null() (time.Duration, error) {
	if rc.err != nil {
		return 0, rc.err
	}
	d, err := rc.roundTrip()
	if err != nil {
		rc.err = err
	}
	return d, err
}

func (rc *rpcConn) roundTrip() (time.Duration, error) {
	const (
		nfsProgram = 100003
		nfsVersion = 4
		lastFrag   = 0x80000000
		callWords  = 10
	)
	xid := rc.xid
	rc.xid++
	call := rc.buf[:0]
	call = binary.BigEndian.AppendUint32(call, lastFrag|4*callWords)
	for _, v := range [callWords]uint32{xid, 0 /* CALL */, 2 /* RPC version */, nfsProgram, nfsVersion, 0 /* NULL */, 0, 0 /* AUTH_NONE cred */, 0, 0 /* verf */} {
		call = binary.BigEndian.AppendUint32(call, v)
	}
	start := time.Now()
	if err := rc.conn.SetDeadline(start.Add(rpcTimeout)); err != nil {
		return 0, err
	}
	if _, err := rc.conn.Write(call); err != nil {
		return 0, err
	}
	mark := rc.buf[:4]
	if _, err := io.ReadFull(rc.conn, mark); err != nil {
		return 0, err
	}
	n := binary.BigEndian.Uint32(mark)
	size := int(n &^ lastFrag)
	if n&lastFrag == 0 || size < 24 || size > len(rc.buf) {
		return 0, fmt.Errorf("rpc: bad record mark % x", mark)
	}
	r := rc.buf[:size]
	if _, err := io.ReadFull(rc.conn, r); err != nil {
		return 0, err
	}
	rtt := time.Since(start)
	word := func(i int) uint32 { return binary.BigEndian.Uint32(r[4*i:]) }
	if word(0) != xid || word(1) != 1 || word(2) != 0 {
		return 0, fmt.Errorf("rpc: reply xid %d type %d stat %d, want xid %d accepted", word(0), word(1), word(2), xid)
	}
	verfLen := int(word(4))
	if verfLen > 400 || size < 24+verfLen {
		return 0, fmt.Errorf("rpc: bad verifier length %d", verfLen)
	}
	if st := binary.BigEndian.Uint32(r[20+verfLen:]); st != 0 {
		return 0, fmt.Errorf("rpc: accept status %d", st)
	}
	return rtt, nil
}

// sweepRPC asks every healthy connection one NULL call, in order, and
// returns the round-trip times (seconds) and when the last one answered.
func sweepRPC(ctx context.Context, conns []*rpcConn) ([]float64, time.Time, error) {
	rtts := make([]float64, 0, len(conns))
	var last time.Time
	for _, rc := range conns {
		if err := ctx.Err(); err != nil {
			return rtts, last, err
		}
		if rc.err != nil {
			continue
		}
		d, err := rc.null()
		if err != nil {
			continue
		}
		rtts = append(rtts, d.Seconds())
		last = time.Now()
	}
	return rtts, last, nil
}

// connFailures counts the failed connections and, of them, those the
// network reset.
func connFailures(conns []*rpcConn) (failed, reset int, first error) {
	for _, rc := range conns {
		if rc.err == nil {
			continue
		}
		failed++
		if errors.Is(rc.err, syscall.ECONNRESET) || errors.Is(rc.err, syscall.EPIPE) {
			reset++
		}
		if first == nil {
			first = fmt.Errorf("%s: %w", rc.local, rc.err)
		}
	}
	return failed, reset, first
}

// raiseNoFile makes room for n more descriptors in this process: the
// soft RLIMIT_NOFILE goes up to the hard limit when it is short.
func raiseNoFile(n int) (unix.Rlimit, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return lim, fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	open := 0
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		open = len(ents)
	}
	// room for the lab's own files, sockets and pipes besides
	need := uint64(open + n + 256)
	if lim.Cur >= need {
		return lim, nil
	}
	if lim.Max < need {
		return lim, fmt.Errorf("RLIMIT_NOFILE hard limit %d, need %d for %d connections", lim.Max, need, n)
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return lim, fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Cur, err)
	}
	return lim, nil
}
