package main

// Helpers shared by the failover, replication and drain suites: the lab cluster
// they run in, a crash that cuts the network before it kills anything,
// a blocked SMB client and percentiles over trials.

import (
	"context"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// labFlags configure the lab of the cluster suites; both register them
// (whichever comes first), both read them.
type labFlags struct {
	fsha string
	keep bool
}

var labOpts labFlags

func registerLabFlags(fs *flag.FlagSet) {
	if fs.Lookup("fsha-bin") != nil {
		return
	}
	fs.StringVar(&labOpts.fsha, "fsha-bin", "bin/fsha", "failover, replication, drain: the fsha binary the lab nodes run (a copy of it; make build); built from this tree when missing")
	fs.BoolVar(&labOpts.keep, "lab-keep", false, "failover, replication, drain: keep the lab's run directory (configs, logs) after the suite")
}

// benchLab builds an empty lab whose nodes run a private copy of the fsha
// binary (-fsha-bin, or a build of this tree when that does not exist):
// a `make build` elsewhere during the run cannot swap the binary under a
// node that restarts. The caller closes the lab.
func benchLab(ctx context.Context, log *zap.Logger) (*lab.Lab, error) {
	return benchLabWith(ctx, log, lab.Options{})
}

// benchLabWith is benchLab with lab options (Tuned, say); Fsha, Keep and
// Log are benchLab's.
func benchLabWith(ctx context.Context, log *zap.Logger, opts lab.Options) (_ *lab.Lab, err error) {
	labLog := log.Named("lab")
	if !log.Core().Enabled(zapcore.DebugLevel) {
		// the lab logs every process start and link change at info
		labLog = labLog.WithOptions(zap.IncreaseLevel(zapcore.WarnLevel))
	}
	dir, err := os.MkdirTemp("", "fsha-bench-bin-")
	if err != nil {
		return nil, fmt.Errorf("temp dir for fsha: %w", err)
	}
	defer func() {
		if err != nil {
			os.RemoveAll(dir)
		}
	}()
	bin := filepath.Join(dir, "fsha")
	if st, serr := os.Stat(labOpts.fsha); serr == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		if err := copyFile(labOpts.fsha, bin); err != nil {
			return nil, err
		}
	} else {
		log.Info("no fsha binary, building one", zap.String("fsha_bin", labOpts.fsha), zap.String("into", bin))
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/fsha/fsha/cmd/fsha")
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build fsha: %w: %s", err, out)
		}
	}
	opts.Fsha, opts.Keep, opts.Log = bin, labOpts.keep, labLog
	l, err := lab.New(opts)
	if err != nil {
		return nil, err
	}
	l.Cleanup("remove the fsha copy", func() error { return os.RemoveAll(dir) })
	return l, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy fsha: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return fmt.Errorf("copy fsha: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy fsha: %w", err)
	}
	return out.Close()
}

// smbNegotiate is an SMB2 NEGOTIATE request for dialects 2.0.2 and 2.1,
// behind its 4-byte NetBIOS session header.
func smbNegotiate() []byte {
	const hdr, body = 64, 36
	dialects := []uint16{0x0202, 0x0210}
	b := make([]byte, 4+hdr+body+2*len(dialects))
	binary.BigEndian.PutUint32(b[0:4], uint32(len(b)-4))
	h := b[4:]
	copy(h[0:4], "\xfeSMB")
	binary.LittleEndian.PutUint16(h[4:6], hdr) // StructureSize
	binary.LittleEndian.PutUint16(h[14:16], 1) // CreditRequest; Command 0 = NEGOTIATE
	r := h[hdr:]
	binary.LittleEndian.PutUint16(r[0:2], body)                  // StructureSize
	binary.LittleEndian.PutUint16(r[2:4], uint16(len(dialects))) // DialectCount
	binary.LittleEndian.PutUint16(r[4:6], 1)                     // SecurityMode: signing enabled
	copy(r[12:28], "fsha-bench-guid!")                           // ClientGuid
	for i, d := range dialects {
		binary.LittleEndian.PutUint16(r[body+2*i:], d)
	}
	return b
}

// smbClient is a TCP connection from a lab client to an SMB server that
// has negotiated and now waits, as an idle SMB session waits for its
// server: the server has answered, so fsha tracks the connection. The
// socket has no TCP keepalive: nothing but the network ends the wait.
type smbClient struct {
	net.Conn
	Local netip.AddrPort
	// Sent is when the NEGOTIATE request was written: the server's stack
	// acknowledges it at once (quick ACK at a connection's start), and
	// that first non-SYN segment from the VIP is what makes fsha track
	// the connection.
	Sent time.Time
}

func dialSMB(ctx context.Context, c *lab.Client, addr netip.AddrPort) (*smbClient, error) {
	var conn net.Conn
	err := c.Do(func() error {
		d := net.Dialer{Timeout: 2 * time.Second, KeepAlive: -1}
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	s := &smbClient{Conn: conn, Local: conn.LocalAddr().(*net.TCPAddr).AddrPort()}
	if err := s.negotiate(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("smb negotiate with %s: %w", addr, err)
	}
	return s, nil
}

func (s *smbClient) negotiate() error {
	s.SetDeadline(time.Now().Add(3 * time.Second))
	defer s.SetDeadline(time.Time{})
	req := smbNegotiate()
	s.Sent = time.Now()
	if _, err := s.Write(req); err != nil {
		return err
	}
	var nb [4]byte
	if _, err := io.ReadFull(s, nb[:]); err != nil {
		return err
	}
	n := binary.BigEndian.Uint32(nb[:]) & 0xffffff
	if n < 64 || n > 1<<16 {
		return fmt.Errorf("answer of %d bytes", n)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(s, msg); err != nil {
		return err
	}
	if string(msg[0:4]) != "\xfeSMB" {
		return fmt.Errorf("answer is not SMB2: % x", msg[:4])
	}
	if st := binary.LittleEndian.Uint32(msg[8:12]); st != 0 {
		return fmt.Errorf("negotiate status %#x", st)
	}
	return nil
}

// Outcomes of a blocked client's read.
const (
	outcomeReset   = "reset"
	outcomeEOF     = "eof"
	outcomeTimeout = "timeout"
)

// awaitReset blocks in Read until the connection ends or deadline passes;
// it returns when and how the read ended.
func (s *smbClient) awaitReset(deadline time.Time) (time.Time, string) {
	s.SetReadDeadline(deadline)
	var buf [512]byte
	for {
		n, err := s.Read(buf[:])
		at := time.Now()
		switch {
		case n > 0 && err == nil:
			continue // the server spoke: not what we wait for
		case errors.Is(err, os.ErrDeadlineExceeded):
			return at, outcomeTimeout
		case errors.Is(err, io.EOF):
			return at, outcomeEOF
		case isReset(err):
			return at, outcomeReset
		default:
			return at, fmt.Sprintf("error: %v", err)
		}
	}
}

// closeAbort closes with a RST: nothing lingers on any node.
func (s *smbClient) closeAbort() {
	if tc, ok := s.Conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	s.Close()
}

// hasPeerFlow tells whether the node's replicated connections (the pinned
// peer flows map) hold client -> vip.
func hasPeerFlow(n *lab.ClusterNode, vip, client netip.AddrPort) (bool, error) {
	pm, err := dataplane.OpenPinned(n.PinPath)
	if err != nil {
		return false, err
	}
	defer pm.Close()
	found := false
	err = pm.ForEachPeerFlow(func(f dataplane.PeerFlow) bool {
		found = f.VIP == vip.Addr() && f.VIPPort == vip.Port() && f.Client == client.Addr() && f.ClientPort == client.Port()
		return !found
	})
	return found, err
}

// percentile is the nearest-rank p-th percentile of xs (p in 0..100);
// +Inf entries (trials that timed out) sort last.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank, 1), len(s))-1]
}

// fmtDur prints seconds as milliseconds or seconds, "> bound" for +Inf.
func fmtDur(sec float64, bound time.Duration) string {
	switch {
	case math.IsInf(sec, 1):
		return fmt.Sprintf("> %g s", bound.Seconds())
	case math.IsNaN(sec):
		return "-"
	case sec < 10:
		return fmt.Sprintf("%.0f ms", sec*1000)
	}
	return fmt.Sprintf("%.1f s", sec)
}
