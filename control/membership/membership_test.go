package membership

import (
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

type fakeDelegate struct {
	mu   sync.Mutex
	meta Meta
	msgs [][]byte
}

func (f *fakeDelegate) LocalMeta() Meta {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.meta
}

func (f *fakeDelegate) NotifyMsg(msg []byte) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, append([]byte(nil), msg...))
}
func (f *fakeDelegate) LocalState() []byte      { return nil }
func (f *fakeDelegate) MergeRemoteState([]byte) {}

// testPort is shared by the nodes of one test: they differ by loopback address.
var (
	portMu   sync.Mutex
	nextPort = 24380
)

func freePort() int {
	portMu.Lock()
	defer portMu.Unlock()
	nextPort++
	return nextPort
}

type testNode struct {
	*Membership
	d *fakeDelegate
}

func startNodes(t *testing.T, port int, keys ...[]byte) []testNode {
	t.Helper()
	var nodes []testNode
	for i, key := range keys {
		d := &fakeDelegate{meta: Meta{Flags: FlagHealthy, Held: NewBitmap(4), Draining: NewBitmap(4)}}
		addr := netip.AddrFrom4([4]byte{127, 0, 0, byte(11 + i)})
		m, err := New(zaptest.NewLogger(t), Config{Addr: addr, Port: port, Key: key, Timing: FastTiming()}, d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Shutdown() })
		nodes = append(nodes, testNode{m, d})
	}
	return nodes
}

func waitFor(t *testing.T, what string, bound time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", bound, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func aliveCount(m *Membership) int {
	n := 0
	for _, mem := range m.Members() {
		if mem.State == Alive || mem.State == Suspect {
			n++
		}
	}
	return n
}

func TestJoinMetaAndDeath(t *testing.T) {
	key := KeyFromSecret([]byte("cluster secret\n"))
	nodes := startNodes(t, freePort(), key, key, key)
	if _, err := nodes[1].Join([]netip.Addr{netip.MustParseAddr("127.0.0.11")}); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[2].Join([]netip.Addr{netip.MustParseAddr("127.0.0.11")}); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		waitFor(t, "3 members", 5*time.Second, func() bool { return aliveCount(n.Membership) == 3 })
	}

	// a metadata change reaches the others
	nodes[2].d.mu.Lock()
	nodes[2].d.meta.Held.Set(3, true)
	nodes[2].d.meta.Flags |= FlagQuorum
	nodes[2].d.mu.Unlock()
	if err := nodes[2].UpdateMeta(time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "node 0 sees node 2 hold VIP 3", 5*time.Second, func() bool {
		for _, m := range nodes[0].Members() {
			if m.Addr == netip.MustParseAddr("127.0.0.13") && m.Meta.Held.Has(3) && m.Meta.Flags&FlagQuorum != 0 {
				return true
			}
		}
		return false
	})

	// a broadcast reaches every other node
	nodes[0].Broadcast([]byte("hello"))
	for _, n := range nodes[1:] {
		waitFor(t, "broadcast delivered", 5*time.Second, func() bool {
			n.d.mu.Lock()
			defer n.d.mu.Unlock()
			return len(n.d.msgs) > 0 && string(n.d.msgs[0]) == "hello"
		})
	}

	// a crash (no leave message) is detected
	start := time.Now()
	nodes[2].Shutdown()
	waitFor(t, "node 2 declared dead", 5*time.Second, func() bool {
		return aliveCount(nodes[0].Membership) == 2 && aliveCount(nodes[1].Membership) == 2
	})
	t.Logf("crash detected after %v", time.Since(start))
}

func TestWrongOrMissingKeyCannotJoin(t *testing.T) {
	good := KeyFromSecret([]byte("right"))
	bad := KeyFromSecret([]byte("wrong"))
	nodes := startNodes(t, freePort(), good, bad, nil)
	seed := []netip.Addr{netip.MustParseAddr("127.0.0.11")}
	for i, n := range nodes[1:] {
		if got, err := n.Join(seed); err == nil && got > 0 {
			t.Errorf("node %d joined a cluster with another key", i+1)
		}
	}
	time.Sleep(500 * time.Millisecond)
	if c := aliveCount(nodes[0].Membership); c != 1 {
		t.Fatalf("keyed node sees %d members, want only itself", c)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := Meta{Flags: FlagHealthy | FlagQuorum, ConfigHash: 0xdeadbeefcafe, Held: NewBitmap(13), Draining: NewBitmap(13),
		MAC: [6]byte{2, 0, 0, 0, 0, 9}}
	m.Held.Set(0, true)
	m.Held.Set(12, true)
	m.Draining.Set(5, true)
	b, err := m.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got Meta
	if err := got.UnmarshalBinary(b); err != nil {
		t.Fatal(err)
	}
	if got.Flags != m.Flags || got.ConfigHash != m.ConfigHash || got.MAC != m.MAC || got.Held.Count() != 2 || !got.Held.Has(12) ||
		!got.Draining.Has(5) || got.Draining.Count() != 1 || got.Held.Len() != 13 {
		t.Fatalf("round trip: %+v", got)
	}
	if _, err := (Meta{Held: NewBitmap(MaxVIPs + 1)}).MarshalBinary(); err == nil {
		t.Fatal("oversized metadata encoded")
	}
}

func TestMetaRejectsBadInput(t *testing.T) {
	good, _ := Meta{Held: NewBitmap(9), Draining: NewBitmap(9)}.MarshalBinary()
	for name, b := range map[string][]byte{
		"empty":     nil,
		"short":     good[:5],
		"version":   append([]byte{9}, good[1:]...),
		"truncated": good[:len(good)-1],
		"trailing":  append(append([]byte(nil), good...), 0),
		"too many":  {1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff},
	} {
		var m Meta
		if err := m.UnmarshalBinary(b); !errors.Is(err, ErrBadMeta) {
			t.Errorf("%s: got %v, want ErrBadMeta", name, err)
		}
	}
}

func FuzzMeta(f *testing.F) {
	good, _ := Meta{Flags: FlagHealthy, Held: NewBitmap(9), Draining: NewBitmap(9)}.MarshalBinary()
	f.Add(good)
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Meta
		if err := m.UnmarshalBinary(b); err != nil {
			return
		}
		again, err := m.MarshalBinary()
		if err != nil {
			t.Fatalf("decoded meta does not encode: %v", err)
		}
		var m2 Meta
		if err := m2.UnmarshalBinary(again); err != nil || m2.Flags != m.Flags || m2.Held.Count() != m.Held.Count() {
			t.Fatalf("re-decode differs: %v", err)
		}
	})
}

// SendReliableTo reaches a node by its address, joined or not, with a
// message larger than a datagram; a node with another key never sees it
// (forwarded admin requests rely on this: only members can send them).
func TestSendReliableTo(t *testing.T) {
	good := KeyFromSecret([]byte("right"))
	nodes := startNodes(t, freePort(), good, good, KeyFromSecret([]byte("wrong")))
	big := make([]byte, 100<<10)
	big[0], big[len(big)-1] = 32, 7
	if err := nodes[0].SendReliableTo(netip.MustParseAddr("127.0.0.12"), big); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "message delivered", 5*time.Second, func() bool {
		nodes[1].d.mu.Lock()
		defer nodes[1].d.mu.Unlock()
		return len(nodes[1].d.msgs) == 1 && len(nodes[1].d.msgs[0]) == len(big) && nodes[1].d.msgs[0][len(big)-1] == 7
	})
	_ = nodes[0].SendReliableTo(netip.MustParseAddr("127.0.0.13"), big) // refused by the other side
	time.Sleep(300 * time.Millisecond)
	nodes[2].d.mu.Lock()
	defer nodes[2].d.mu.Unlock()
	if len(nodes[2].d.msgs) != 0 {
		t.Errorf("a node with another key received %d messages", len(nodes[2].d.msgs))
	}
}

// Traffic counts what the gossip port carries: a datagram sent with
// SendTo is one packet of the message plus memberlist's envelope at each
// end (the nodes are not members of each other: no probes, no CRC), and a
// reliable send one stream.
func TestTraffic(t *testing.T) {
	key := KeyFromSecret([]byte("cluster secret"))
	nodes := startNodes(t, freePort(), key, key)
	before0, before1 := nodes[0].Traffic(), nodes[1].Traffic()
	msg := make([]byte, 100)
	if err := nodes[0].SendTo(netip.MustParseAddr("127.0.0.12"), msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "datagram delivered", 5*time.Second, func() bool {
		nodes[1].d.mu.Lock()
		defer nodes[1].d.mu.Unlock()
		return len(nodes[1].d.msgs) == 1
	})
	// user message type 1, then AES-GCM: version 1, nonce 12, tag 16
	const envelope = 1 + 1 + 12 + 16
	sent, got := nodes[0].Traffic(), nodes[1].Traffic()
	if d := sent.PacketsSent - before0.PacketsSent; d != 1 || sent.PacketBytesSent-before0.PacketBytesSent != 100+envelope {
		t.Errorf("sender counted %d packets, %d bytes; want 1, %d", d, sent.PacketBytesSent-before0.PacketBytesSent, 100+envelope)
	}
	if d := got.PacketsReceived - before1.PacketsReceived; d != 1 || got.PacketBytesReceived-before1.PacketBytesReceived != 100+envelope {
		t.Errorf("receiver counted %d packets, %d bytes; want 1, %d", d, got.PacketBytesReceived-before1.PacketBytesReceived, 100+envelope)
	}
	big := make([]byte, 10<<10)
	if err := nodes[0].SendReliableTo(netip.MustParseAddr("127.0.0.12"), big); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "stream delivered", 5*time.Second, func() bool {
		nodes[1].d.mu.Lock()
		defer nodes[1].d.mu.Unlock()
		return len(nodes[1].d.msgs) == 2
	})
	sent, got = nodes[0].Traffic(), nodes[1].Traffic()
	if sent.StreamsOpened != 1 || sent.StreamBytesSent < uint64(len(big)) {
		t.Errorf("sender: %d streams opened, %d bytes sent; want 1, at least %d", sent.StreamsOpened, sent.StreamBytesSent, len(big))
	}
	if got.StreamsAccepted != 1 || got.StreamBytesReceived != sent.StreamBytesSent {
		t.Errorf("receiver: %d streams accepted, %d bytes received; want 1, %d", got.StreamsAccepted, got.StreamBytesReceived, sent.StreamBytesSent)
	}
}
