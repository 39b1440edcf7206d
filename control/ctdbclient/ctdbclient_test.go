package ctdbclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// The unknown-leader broadcast byte for byte, as ctdb_client_send_message
// lays it out on a little-endian host: ctdb_req_header (length 48, magic
// "CTDB", version 1, generation 0, CTDB_REQ_MESSAGE, to
// CTDB_BROADCAST_CONNECTED, from 0, reqid 7), srvid CTDB_SRVID_LEADER,
// datalen 4, CTDB_UNKNOWN_PNN.
func TestUnknownLeaderBroadcastLayout(t *testing.T) {
	if order.Uint16([]byte{1, 0}) != 1 {
		t.Skip("the golden bytes are a little-endian host's")
	}
	want := "30000000" + "42445443" + "01000000" + "00000000" + "05000000" + "040000f0" + "00000000" + "07000000" +
		"00000000000001f1" + "04000000" + "ffffffff"
	got := hex.EncodeToString(EncodeMessage(BroadcastConnected, SrvidLeader, 7, EncodeLeader(UnknownPNN)))
	if got != want {
		t.Fatalf("unknown-leader broadcast:\n got %s\nwant %s", got, want)
	}
}

// A control is padded to 8 bytes and says so in its length, like
// ctdb_allocate_pkt's; its fields are where ctdb_req_control_old has them.
func TestControlLayout(t *testing.T) {
	b := encodeControl(3, controlRegisterSrvid, SrvidLeader, nil)
	if len(b) != 64 { // 32 + 28, padded
		t.Fatalf("register_srvid is %d bytes, want 64", len(b))
	}
	h, err := DecodeHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	if h.Operation != opReqControl || h.DestNode != CurrentNode || h.ReqID != 3 || h.Length != 64 {
		t.Fatalf("header %+v", h)
	}
	p := b[headerLen:]
	if order.Uint32(p) != 23 || order.Uint64(p[8:]) != 0xF101000000000000 || order.Uint32(p[24:]) != 0 {
		t.Fatalf("control body %x", p)
	}
}

func TestDecodeNodemap(t *testing.T) {
	in := []Node{
		{PNN: 0, Addr: netip.MustParseAddr("198.18.0.11")},
		{PNN: 1, Flags: NodeDeleted},
		{PNN: 2, Flags: NodeDisconnected, Addr: netip.MustParseAddr("2001:db8::3")},
	}
	got, err := DecodeNodemap(encodeNodemap(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(in) {
		t.Fatalf("got %v", got)
	}
	for i := range in {
		if got[i] != in[i] {
			t.Errorf("node %d: got %+v, want %+v", i, got[i], in[i])
		}
	}
	if _, err := DecodeNodemap(encodeNodemap(in)[:40]); !errors.Is(err, ErrProtocol) {
		t.Errorf("short node map: %v", err)
	}
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(end) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestLeaderWatchAndElection: the watch follows the leader broadcasts;
// the unknown-leader broadcast goes out only for the leader's address,
// with a cluster lock; a ctdbd restart is survived.
func TestLeaderWatchAndElection(t *testing.T) {
	f := newFakeCTDBD(t)
	a0, a1, a2 := netip.MustParseAddr("198.18.0.11"), netip.MustParseAddr("198.18.0.12"), netip.MustParseAddr("198.18.0.13")
	f.nodes = []Node{{PNN: 0, Addr: a0}, {PNN: 1, Addr: a1}, {PNN: 2, Addr: a2, Flags: NodeDisconnected}}
	w := NewLeaderWatch(zaptest.NewLogger(t), f.path)
	w.Retry = 10 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()

	elect := func(dead netip.Addr) Election {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		e, err := w.ElectIfLeader(ctx, dead)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	waitFor(t, "the watch to register", func() bool { return f.registered() == 1 })
	if e := elect(a2); e.Sent || e.LeaderKnown || !strings.Contains(e.Why, "no leader broadcast heard") {
		t.Fatalf("no broadcast heard yet: %+v", e)
	}
	f.broadcast(2)
	waitFor(t, "leader 2", func() bool { p, _, ok := w.Leader(); return ok && p == 2 })

	if e := elect(a1); e.Sent || e.DeadPNN != 1 || !strings.Contains(e.Why, "not CTDB's leader") {
		t.Fatalf("node 1 died, leader 2: %+v", e)
	}
	if n := len(f.messages()); n != 0 {
		t.Fatalf("%d messages sent for a node that did not lead", n)
	}
	e := elect(a2)
	if !e.Sent || e.DeadPNN != 2 || e.DeadFlags != NodeDisconnected || e.Lock != f.lock {
		t.Fatalf("the leader died: %+v", e)
	}
	waitFor(t, "the broadcast", func() bool { return len(f.messages()) == 1 })
	m := f.messages()[0]
	if m.dest != BroadcastConnected || m.srvid != SrvidLeader || !bytes.Equal(m.data, binary.NativeEndian.AppendUint32(nil, 0xFFFFFFFF)) {
		t.Fatalf("sent %+v", m)
	}

	// an election is on: nobody known
	f.broadcast(UnknownPNN)
	waitFor(t, "leader unknown", func() bool { _, _, ok := w.Leader(); return !ok })
	if e := elect(a2); e.Sent || !strings.Contains(e.Why, "an election is already on") {
		t.Fatalf("leader unknown: %+v", e)
	}

	// without a cluster lock nothing goes out
	f.broadcast(0)
	waitFor(t, "leader 0", func() bool { p, _, ok := w.Leader(); return ok && p == 0 })
	f.mu.Lock()
	f.lock = ""
	f.mu.Unlock()
	if e := elect(a0); e.Sent || !strings.Contains(e.Why, "without a cluster lock") {
		t.Fatalf("no cluster lock: %+v", e)
	}
	if n := len(f.messages()); n != 1 {
		t.Fatalf("%d messages, want the one before", n)
	}

	// an address CTDB does not list
	if _, err := w.ElectIfLeader(context.Background(), netip.MustParseAddr("198.18.0.99")); err == nil || !strings.Contains(err.Error(), "does not list 198.18.0.99") {
		t.Fatalf("unknown address: %v", err)
	}

	// ctdbd restarts: the leader is forgotten, the watch registers again
	f.dropClients()
	waitFor(t, "the watch to register again", func() bool { return f.registered() == 1 })
	if _, _, ok := w.Leader(); ok {
		t.Fatal("a leader known across a ctdbd restart")
	}
	f.broadcast(1)
	waitFor(t, "leader 1", func() bool { p, _, ok := w.Leader(); return ok && p == 1 })
}

// A ctdbd that does not answer costs the caller its timeout, no more; a
// failed control says what ctdbd said.
func TestElectionBounded(t *testing.T) {
	f := newFakeCTDBD(t)
	f.nodes = []Node{{PNN: 0, Addr: netip.MustParseAddr("198.18.0.11")}}
	w := NewLeaderWatch(zaptest.NewLogger(t), f.path)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	waitFor(t, "the watch to register", func() bool { return f.registered() == 1 })
	f.broadcast(0)
	waitFor(t, "leader 0", func() bool { _, _, ok := w.Leader(); return ok })

	f.mu.Lock()
	f.mute = true
	f.mu.Unlock()
	start := time.Now()
	tctx, tcancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	_, err := w.ElectIfLeader(tctx, netip.MustParseAddr("198.18.0.11"))
	tcancel()
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "get_nodemap") {
		t.Fatalf("mute ctdbd: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a 200ms bound took %v", d)
	}

	f.mu.Lock()
	f.mute, f.status, f.errmsg = false, -1, "Not yet"
	f.mu.Unlock()
	_, err = w.ElectIfLeader(context.Background(), netip.MustParseAddr("198.18.0.11"))
	if err == nil || !strings.Contains(err.Error(), `status -1: "Not yet"`) {
		t.Fatalf("failed control: %v", err)
	}
}

// No ctdbd: Run waits for one and ElectIfLeader knows no leader.
func TestLeaderWatchWithoutCTDBD(t *testing.T) {
	w := NewLeaderWatch(zaptest.NewLogger(t), t.TempDir()+"/ctdbd.socket")
	w.Retry = 10 * time.Millisecond
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	w.Run(ctx)
	e, err := w.ElectIfLeader(context.Background(), netip.MustParseAddr("198.18.0.11"))
	if err != nil || e.Sent || e.LeaderKnown || !strings.Contains(e.Why, "not connected") {
		t.Fatalf("no ctdbd: %+v, %v", e, err)
	}
}

// FuzzDecode: whatever ctdbd sends, decoding returns a value or an error
// wrapping ErrProtocol, and never reads past the packet.
func FuzzDecode(f *testing.F) {
	f.Add(EncodeMessage(CurrentNode, SrvidLeader, 0, EncodeLeader(2)))
	f.Add(encodeReply(1, 0, encodeNodemap([]Node{{PNN: 0, Addr: netip.MustParseAddr("198.18.0.11")}}), ""))
	f.Add(encodeReply(1, -1, nil, "error"))
	f.Add(encodeNodemap([]Node{{PNN: 0, Addr: netip.MustParseAddr("2001:db8::1")}, {PNN: 1, Flags: NodeDeleted}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		check := func(what string, err error) {
			if err != nil && !errors.Is(err, ErrProtocol) {
				t.Fatalf("%s: error %v does not wrap ErrProtocol", what, err)
			}
		}
		_, err := DecodeHeader(b)
		check("header", err)
		m, err := DecodeMessage(b)
		check("message", err)
		if err == nil {
			_, err = DecodeLeader(m.Data)
			check("leader", err)
			if got := EncodeMessage(CurrentNode, m.SrvID, 0, m.Data); !bytes.Equal(got[headerLen:headerLen+12+len(m.Data)], b[headerLen:headerLen+12+len(m.Data)]) {
				t.Fatalf("message %x re-encodes as %x", b, got)
			}
		}
		r, err := decodeReply(b)
		check("reply", err)
		if err == nil {
			_, err = DecodeNodemap(r.data)
			check("node map in a reply", err)
		}
		_, err = DecodeNodemap(b)
		check("node map", err)
	})
}
