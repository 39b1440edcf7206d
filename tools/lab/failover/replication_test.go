package failover

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/tools/lab"
)

// TestReplicationGarbage connects to a node's replication port from a
// peer node's own address (the only address the stream is accepted from)
// and sends what a broken or hostile peer would: garbage, a wrong
// version, a hello claiming another node, an oversized frame, a frame
// sealed with the wrong key, a clear-text hello to a keyed cluster, and,
// sealed with the right key, malformed messages and a message carrying
// another node's flows. Every stream and message is refused and counted
// (`fsha status --json` counters, daemon log); the node keeps its quorum,
// its view of the cluster and the flows its peers replicated to it, and
// replication from the real peer goes on.
func TestReplicationGarbage(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	victim, from, other := e.c.Node(1), e.c.Node(3), e.c.Node(2)
	secret, err := os.ReadFile(e.c.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	key := membership.KeyFromSecret(secret)

	// connections the victim knows from each peer, kept open throughout
	var sessions []*session
	var before []string
	var otherVIP netip.Addr // a VIP other holds: where a forged flow of other's would go
	for _, p := range []*lab.ClusterNode{from, other} {
		held, err := p.HeldVIPs()
		if err != nil || len(held) == 0 {
			t.Fatalf("%s holds %v (%v)", p.Role, held, err)
		}
		otherVIP = held[0].Addr()
		rc, err := dialNFS(e.ctx, e.client, held[0].Addr())
		if err != nil {
			t.Fatal(err)
		}
		s := startSession(rc, pingEvery)
		defer s.Close()
		sessions = append(sessions, s)
		e.waitFlows(victim, p, false, rc.Key())
		before = append(before, rc.Key())
	}
	st0 := e.statusOf(victim)
	log0 := fshaLog(victim)

	to := netip.AddrPortFrom(victim.IP(), replication.DefaultPort)
	pnnFrom, pnnOther := uint16(from.PNN), uint16(other.PNN)
	badStreams := []struct {
		name string
		send func(c net.Conn) error
		// want is in the victim's "replication stream rejected" line
		want string
	}{
		{"garbage", func(c net.Conn) error {
			b := make([]byte, 64)
			_, _ = rand.Read(b)
			_, err := c.Write(b)
			return err
		}, "not an fsha replication stream"},
		{"wrong version", func(c net.Conn) error {
			h := hello(pnnFrom, true)
			h[4] = 99
			_, err := c.Write(h)
			return err
		}, "version 99"},
		{"hello claiming another node", func(c net.Conn) error {
			_, err := c.Write(hello(pnnOther, true))
			return err
		}, fmt.Sprintf("claims to be node %d from %s", pnnOther, from.IP())},
		{"clear-text hello to a keyed cluster", func(c net.Conn) error {
			_, err := c.Write(hello(pnnFrom, false))
			return err
		}, "disagrees on encryption"},
		{"oversized frame", func(c net.Conn) error {
			if _, _, err := handshake(c, pnnFrom, nil); err != nil {
				return err
			}
			_, err := c.Write([]byte{0xff, 0xff, 0xff, 0xf0, 1, 2, 3, 4})
			return err
		}, fmt.Sprintf("%d bytes, max", uint32(0xfffffff0))},
		{"frame sealed with a wrong key", func(c net.Conn) error {
			wrong := sha256.Sum256([]byte("not the cluster's secret"))
			_, fr, err := handshake(c, pnnFrom, wrong[:])
			if err != nil {
				return err
			}
			msg, err := replication.AppendMessage(nil, &replication.Message{Kind: replication.KindDelta, Owner: pnnFrom})
			if err != nil {
				return err
			}
			return fr.write(c, msg)
		}, "does not authenticate"},
	}
	for _, tc := range badStreams {
		if err := e.attack(from, to, tc.send); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}

	// with the right key: each bad message is refused, the stream goes on
	ghost := netip.MustParseAddr("198.18.0.250")
	badMessages := []struct {
		name string
		msg  func() []byte
		want string
	}{
		{"random bytes", func() []byte {
			b := make([]byte, 100)
			_, _ = rand.Read(b)
			b[0] = 77
			return b
		}, "version 77"},
		{"record count beyond the maximum", func() []byte {
			b := mustMessage(t, &replication.Message{Kind: replication.KindDelta, Owner: pnnFrom})
			binary.BigEndian.PutUint32(b[12:], replication.MaxRecords+1)
			return b
		}, fmt.Sprintf("%d records, max", replication.MaxRecords+1)},
		{"length not matching the count", func() []byte {
			b := mustMessage(t, &replication.Message{Kind: replication.KindDelta, Owner: pnnFrom})
			binary.BigEndian.PutUint32(b[12:], 3)
			return b
		}, "bytes for 3 records"},
		// an open, which would create a flow if it were let through (a
		// close of an unknown flow changes nothing, so proves nothing)
		{"another node's flows", func() []byte {
			return mustMessage(t, &replication.Message{Kind: replication.KindDelta, Owner: pnnOther, Records: []replication.Record{{
				Op: replication.OpOpen, VIP: otherVIP, VIPPort: lab.NFSPort, Client: ghost, ClientPort: 1000,
				LastSeen: time.Now().UnixNano(),
			}}})
		}, fmt.Sprintf("node %d sent flows of node %d", pnnFrom, pnnOther)},
	}
	var ghosts []flowEntry
	err = e.attack(from, to, func(c net.Conn) error {
		_, fr, err := handshake(c, pnnFrom, key)
		if err != nil {
			return err
		}
		for _, m := range badMessages {
			if err := fr.write(c, m.msg()); err != nil {
				return fmt.Errorf("%s: %w", m.name, err)
			}
		}
		// read the flows while this stream is the newest of from's: once
		// the real from replaces it, its snapshot sweeps what got in
		time.Sleep(50 * time.Millisecond)
		fs, _, err := flowsAll(e.ctx, victim)
		if err != nil {
			return err
		}
		for _, f := range fs {
			if f.Client == ghost {
				ghosts = append(ghosts, f)
			}
		}
		// the stream is still open: the victim never closed it
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); !isTimeout(err) {
			return fmt.Errorf("the victim ended the stream after bad messages: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("authenticated stream of bad messages: %v", err)
	}
	for _, f := range ghosts {
		t.Errorf("a refused message reached %s's flows: %+v", victim.Role, f)
	}

	// refused and counted
	var st admin.Status
	e.eventually("the victim counts every refusal", func(ctx context.Context) error {
		st = e.statusOf(victim)
		gotS := st.Counters["replication_bad_streams"] - st0.Counters["replication_bad_streams"]
		gotM := st.Counters["replication_bad_messages"] - st0.Counters["replication_bad_messages"]
		if gotS != uint64(len(badStreams)) || gotM != uint64(len(badMessages)) {
			return fmt.Errorf("replication_bad_streams +%d, replication_bad_messages +%d; want +%d, +%d",
				gotS, gotM, len(badStreams), len(badMessages))
		}
		return nil
	})
	t.Logf("%s counted %d bad streams and %d bad messages (replication_bad_streams %d, replication_bad_messages %d)",
		victim.Role, len(badStreams), len(badMessages), st.Counters["replication_bad_streams"], st.Counters["replication_bad_messages"])
	logged := strings.TrimPrefix(fshaLog(victim), log0)
	t.Logf("%s's log:\n%s", victim.Role, rejections(logged))
	for _, tc := range badStreams {
		if !hasLogLine(logged, "replication stream rejected", tc.want) {
			t.Errorf("%s: no \"replication stream rejected\" line with %q in %s's log:\n%s", tc.name, tc.want, victim.Role, rejections(logged))
		}
	}
	for _, m := range badMessages {
		if !hasLogLine(logged, "replication message rejected", m.want) {
			t.Errorf("%s: no \"replication message rejected\" line with %q in %s's log:\n%s", m.name, m.want, victim.Role, rejections(logged))
		}
	}

	// the victim works on: quorum, every node OK, the peers' flows intact
	if err := e.c.Converged(e.ctx, e.c.Nodes...); err != nil {
		t.Errorf("after the attack: %v", err)
	}
	fs, out, err := flowsAll(e.ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range []*lab.ClusterNode{from, other} {
		if f, ok := findFlow(fs, before[i]); !ok || f.Owner != p.IP().String() {
			t.Errorf("after the attack %s lost %s's flow %s:\n%s", victim.Role, p.Role, before[i], out)
		}
	}
	// replication from the impersonated node goes on
	held, err := from.HeldVIPs()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := dialNFS(e.ctx, e.client, held[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer rc.conn.Close()
	e.waitFlows(victim, from, false, rc.Key())
	for _, s := range sessions {
		if err := s.Err(); err != nil {
			t.Errorf("%s", s)
		}
	}
}

func (e *env) statusOf(n *lab.ClusterNode) admin.Status {
	e.t.Helper()
	st, err := n.Status(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if st.Counters == nil {
		e.t.Fatalf("fsha status --json of %s has no counters: %+v", n.Role, st)
	}
	return st
}

// attack opens a TCP connection from the node's own address to the
// victim's replication port, runs send, then waits (bounded) until the
// victim closes the connection or a second passes, and closes it.
func (e *env) attack(from *lab.ClusterNode, to netip.AddrPort, send func(net.Conn) error) error {
	var c net.Conn
	err := from.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: &net.TCPAddr{IP: from.IP().AsSlice()}}
		var err error
		c, err = d.DialContext(e.ctx, "tcp", to.String())
		return err
	})
	if err != nil {
		return fmt.Errorf("connect from %s to %s: %w", from.IP(), to, err)
	}
	defer c.Close()
	if err := send(c); err != nil {
		return err
	}
	// a refused stream is closed by the victim: wait for that, so that
	// its log line and counter are written before the next case
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, c)
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// The replication handshake and framing, as control/replication/stream.go
// specifies them on the wire (written again here: the test speaks the
// protocol as a stranger would).
//
//	hello: "FSHR" | version u8 | flags u8 (1: sealed) | pnn u16 | salt [16]
//	frame: length u32 | payload (sealed: AES-256-GCM, key = HMAC-SHA256(
//	       cluster key, "fsha replication v1" | client salt | server salt),
//	       nonce = 4 zero bytes | counter u64, the length as extra data)
func hello(pnn uint16, sealed bool) []byte {
	b := []byte{'F', 'S', 'H', 'R', 1, 0}
	if sealed {
		b[5] = 1
	}
	b = binary.BigEndian.AppendUint16(b, pnn)
	salt := make([]byte, 16)
	_, _ = rand.Read(salt)
	return append(b, salt...)
}

// handshake sends a sealed hello as pnn, reads the victim's, and returns
// the framer for key (nil: any key, frames are not sealed by the caller).
func handshake(c net.Conn, pnn uint16, key []byte) ([]byte, *sealer, error) {
	mine := hello(pnn, true)
	if _, err := c.Write(mine); err != nil {
		return nil, nil, err
	}
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	theirs := make([]byte, 24)
	if _, err := io.ReadFull(c, theirs); err != nil {
		return nil, nil, fmt.Errorf("read the victim's hello: %w", err)
	}
	if string(theirs[:4]) != "FSHR" || theirs[5] != 1 {
		return nil, nil, fmt.Errorf("victim's hello % x", theirs)
	}
	if key == nil {
		return theirs, nil, nil
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte("fsha replication v1"))
	mac.Write(mine[8:])
	mac.Write(theirs[8:])
	block, err := aes.NewCipher(mac.Sum(nil))
	if err != nil {
		return nil, nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, nil, err
	}
	return theirs, &sealer{aead: aead}, nil
}

type sealer struct {
	aead  cipher.AEAD
	count uint64
}

func (s *sealer) write(w io.Writer, payload []byte) error {
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], s.count)
	s.count++
	l := binary.BigEndian.AppendUint32(nil, uint32(len(payload)+s.aead.Overhead()))
	frame := s.aead.Seal(append([]byte(nil), l...), nonce[:], payload, l)
	_, err := w.Write(frame)
	return err
}

func mustMessage(t *testing.T, m *replication.Message) []byte {
	t.Helper()
	b, err := replication.AppendMessage(nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hasLogLine tells whether a line of log has both msg and detail.
func hasLogLine(log, msg, detail string) bool {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, msg) && strings.Contains(l, detail) {
			return true
		}
	}
	return false
}

// rejections are the log's lines about refused replication.
func rejections(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "rejected") {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return "(none)"
	}
	return strings.Join(out, "\n") + "\n(" + strconv.Itoa(len(out)) + " lines)"
}
