package dataplane

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Tests of the indexes of local and peer flows (index.go, peerindex.go).
// They run on real maps loaded by the harness; events are either the
// programs' own (packets run through them) or applied to the index as the
// event reader would, with the map changed to match.

// waitLocalExact waits until the local index is exact (built, no loss).
func waitLocalExact(t testing.TB, m *Maps) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, _, ok := m.LocalDigests(); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("local index not exact within 10s: %+v", m.IndexStats())
		}
		time.Sleep(time.Millisecond)
	}
}

// waitPeerReady starts the peer index's build if needed and waits for it.
func waitPeerReady(t testing.TB, m *Maps) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := m.PeerDigests(0); ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer index not ready within 10s: %+v", m.IndexStats())
		}
		time.Sleep(time.Millisecond)
	}
}

// bumpEventsLost makes the programs' COUNTER_EVENTS_LOST grow by one, as a
// full ring buffer would.
func bumpEventsLost(t testing.TB, m *Maps) {
	t.Helper()
	idx := uint32(fshaDirectionDIRECTION_EGRESS)*uint32(fshaCounterCOUNTER_MAX) + uint32(fshaCounterCOUNTER_EVENTS_LOST)
	var perCPU []uint64
	if err := m.Counters.Lookup(idx, &perCPU); err != nil {
		t.Fatal(err)
	}
	perCPU[0]++
	if err := m.Counters.Put(idx, perCPU); err != nil {
		t.Fatal(err)
	}
}

func flowKey(vip netip.Addr, client netip.Addr, vport, cport uint16) fshaFlowKey {
	var k fshaFlowKey
	k.Vip, k.Family = addrBytes(vip)
	k.Client, _ = addrBytes(client)
	k.Vport, k.Cport = vport, cport
	return k
}

// walkCounts counts each VIP's flows with a walk: what the index must say.
func walkCounts(t testing.TB, m *Maps) (map[netip.Addr]int, map[netip.Addr]Digest) {
	t.Helper()
	counts := map[netip.Addr]int{}
	digests := map[netip.Addr]Digest{}
	if err := m.ForEachFlow(func(f Flow) bool {
		counts[f.VIP]++
		d := digests[f.VIP]
		d.Add(ConnHash(f.VIP, f.VIPPort, f.Client, f.ClientPort))
		digests[f.VIP] = d
		return true
	}); err != nil {
		t.Fatal(err)
	}
	return counts, digests
}

func TestDigest(t *testing.T) {
	a, b := netip.MustParseAddr("198.18.0.10"), netip.MustParseAddr("198.19.0.1")
	h1, h2, h3 := ConnHash(a, 445, b, 1), ConnHash(a, 445, b, 2), ConnHash(a, 2049, b, 1)
	if h1 == h2 || h1 == h3 || h2 == h3 {
		t.Fatal("hash collisions among neighbouring tuples")
	}
	if h1 != ConnHash(netip.AddrFrom16(a.As16()), 445, netip.AddrFrom16(b.As16()), 1) {
		t.Fatal("an IPv4-mapped address hashes differently")
	}
	var x, y Digest
	x.Add(h1)
	x.Add(h2)
	x.Add(h3)
	y.Add(h3)
	y.Add(h1)
	y.Add(h2)
	if x != y {
		t.Fatal("digest depends on order")
	}
	y.Remove(h2)
	y.Add(h2)
	if x != y {
		t.Fatal("remove then add changed the digest")
	}
	var twice Digest
	twice.Add(h1)
	twice.Add(h1)
	twice.Add(h3)
	var once Digest
	once.Add(h3)
	if twice.Xor != once.Xor || twice == once {
		t.Fatal("a connection counted twice must differ from none (xor cancels, count and sum do not)")
	}
	k := flowKey(a, b, 445, 1)
	if hashKey(&k) != h1 {
		t.Fatal("hashKey and ConnHash differ")
	}
}

// TestLocalIndexProperty applies random opens, closes, evictions and lost
// events to the flows map and the index, with builds racing them, and
// checks after each step that CountFlows is either the walk's count or
// ErrIndexNotReady (never a wrong number), that it is exact again once the
// index was rebuilt, and that the digests are those of the walk.
func TestLocalIndexProperty(t *testing.T) {
	h := newHarness(t, 256)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 7))
	m := &h.maps
	x := m.indexes()
	waitLocalExact(t, m)

	vips := []netip.Addr{vip4, vip4b, vip6}
	clients := map[netip.Addr]netip.Addr{vip4: client4, vip4b: client4, vip6: client6}
	keyOf := func() fshaFlowKey {
		vip := vips[rng.IntN(len(vips))]
		return flowKey(vip, clients[vip], 445, uint16(1+rng.IntN(120)))
	}
	val := fshaFlow{State: uint8(fshaFlowStateFLOW_STATE_ESTABLISHED), FirstSeenNs: 1}
	inMap := func(k fshaFlowKey) bool {
		var v fshaFlow
		return m.Flows.Lookup(&k, &v) == nil
	}
	// step applies one random change as the programs would make it; lossy
	// lets it lose events
	step := func(lossy bool) {
		k := keyOf()
		n := 8
		if lossy {
			n = 10
		}
		switch op := rng.IntN(n); {
		case op < 4: // open, with its event
			if !inMap(k) {
				if err := m.Flows.Put(&k, &val); err != nil {
					t.Fatal(err)
				}
				x.local.event(&k, EventOpen)
			}
		case op < 7: // close, with its event
			if inMap(k) {
				if err := m.Flows.Delete(&k); err != nil {
					t.Fatal(err)
				}
				x.local.event(&k, EventClose)
			}
		case op < 8: // LRU eviction: gone, no event
			_ = m.Flows.Delete(&k)
		case op < 9: // open whose event was lost
			if !inMap(k) {
				if err := m.Flows.Put(&k, &val); err != nil {
					t.Fatal(err)
				}
				bumpEventsLost(t, m)
			}
		default: // close whose event was lost
			if inMap(k) {
				_ = m.Flows.Delete(&k)
				bumpEventsLost(t, m)
			}
		}
	}
	check := func(i int) {
		want, _ := walkCounts(t, m)
		for _, vip := range vips {
			got, err := m.CountFlows(vip)
			if errors.Is(err, ErrIndexNotReady) {
				continue
			}
			if err != nil || got != want[vip] {
				t.Fatalf("seed %d step %d: CountFlows(%s) = %d, %v; a walk counts %d", seed, i, vip, got, err, want[vip])
			}
		}
	}
	for i := range 600 {
		step(true)
		if i%50 == 25 {
			// a build with changes racing its walk: exact once done
			x.afterWalk = func() {
				for range 20 {
					step(false)
				}
			}
			before := x.local.epoch.Load()
			x.startLocalBuild(m)
			for x.local.epoch.Load() == before {
				time.Sleep(time.Millisecond)
			}
			x.afterWalk = nil
			want, _ := walkCounts(t, m)
			for _, vip := range vips {
				if got, err := m.CountFlows(vip); err != nil || got != want[vip] {
					t.Fatalf("seed %d step %d, after a build: CountFlows(%s) = %d, %v; want %d", seed, i, vip, got, err, want[vip])
				}
			}
		}
		check(i)
		if i%100 == 99 {
			// after losses the index is rebuilt and exact again
			waitLocalExact(t, m)
			want, wantDigests := walkCounts(t, m)
			for _, vip := range vips {
				if got, err := m.CountFlows(vip); err != nil || got != want[vip] {
					t.Fatalf("seed %d step %d, rebuilt: CountFlows(%s) = %d, %v; want %d", seed, i, vip, got, err, want[vip])
				}
			}
			digests, _, ok := m.LocalDigests()
			if !ok {
				t.Fatalf("seed %d step %d: digests not exact", seed, i)
			}
			if fmt.Sprint(digests) != fmt.Sprint(wantDigests) {
				t.Fatalf("seed %d step %d: digests %v, walk %v", seed, i, digests, wantDigests)
			}
		}
	}
	if s := m.IndexStats(); s.Rebuilds < 6 || s.Evicted == 0 {
		t.Fatalf("stats %+v: want builds after losses and lazily dropped evictions", s)
	}
}

// TestEventReaderKeepsIndex: flows the programs create and close, and
// those the LRU evicts or PruneFlows removes, as CountFlows and KillVIP's
// connections see them.
func TestEventReaderKeepsIndex(t *testing.T) {
	h := newHarness(t, 8)
	m := &h.maps
	waitLocalExact(t, m)
	var conns []conn
	for i := range 5 {
		c := conn{vip: vip4, client: client4, vport: 445, cport: uint16(41000 + i)}
		h.run(t, egress, c.out(tcpACK, 1, 1, 0).bytes(t))
		conns = append(conns, c)
	}
	h.run(t, egress, c6.out(tcpACK, 1, 1, 0).bytes(t))
	h.drainEvents(t)
	count := func(vip netip.Addr, want int) {
		t.Helper()
		if got, err := m.CountFlows(vip); err != nil || got != want {
			t.Fatalf("CountFlows(%s) = %d, %v; want %d", vip, got, err, want)
		}
	}
	count(vip4, 5)
	count(vip6, 1)
	count(vip4b, 0)

	h.run(t, ingress, conns[0].in(tcpRST, 1, 0, 0).bytes(t))
	h.drainEvents(t)
	count(vip4, 4)
	cs, err := m.vipConns(vip4)
	if err != nil || len(cs) != 4 {
		t.Fatalf("kill would reset %d (%v), want 4", len(cs), err)
	}

	// 4 more flows into an 8-entry LRU: some are evicted without a close
	for i := range 4 {
		c := conn{vip: vip4b, client: client4, vport: 445, cport: uint16(42000 + i)}
		h.run(t, egress, c.out(tcpACK, 1, 1, 0).bytes(t))
	}
	h.drainEvents(t)
	want, _ := walkCounts(t, m)
	for _, vip := range []netip.Addr{vip4, vip4b, vip6} {
		count(vip, want[vip])
	}
	// an eviction the LRU made without a close event
	gone := conns[1].key()
	if err := m.Flows.Delete(&gone); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	want, _ = walkCounts(t, m)
	before := m.IndexStats()
	count(vip4, want[vip4])
	if after := m.IndexStats(); after.Evicted != before.Evicted+1 || after.LocalFlows != before.LocalFlows-1 {
		t.Fatalf("evicted flow not dropped from the index: %+v -> %+v", before, after)
	}

	// PruneFlows removes flows without a socket; the index forgets them
	time.Sleep(30 * time.Millisecond)
	if n, err := m.PruneFlows(); err != nil || n == 0 {
		t.Fatalf("pruned %d (%v)", n, err)
	}
	if s := m.IndexStats(); s.LocalFlows != 0 {
		t.Fatalf("index holds %d pruned flows", s.LocalFlows)
	}
	count(vip4, 0)
}

// TestIndexedQueriesDoNotWalk: with 100k flows on one VIP (local and
// replicated) and 10 on another, every per-VIP query about the small one
// reads only its 10 entries: no walk, a few key operations each.
func TestIndexedQueriesDoNotWalk(t *testing.T) {
	const big, small = 100_000, 10
	h := newHarness(t, 1<<17)
	m := &h.maps
	client := func(i int) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 19, byte(i >> 16), byte(i >> 8)}), uint16(1024+i&0xff))
	}
	if err := m.FillFlows(netip.AddrPortFrom(vip4, 445), big, client); err != nil {
		t.Fatal(err)
	}
	if err := m.FillFlows(netip.AddrPortFrom(vip4b, 445), small, client); err != nil {
		t.Fatal(err)
	}
	// peer flows written behind the index's back (an earlier run's): the
	// index's build finds them
	var keys []fshaFlowKey
	var vals []fshaPeerFlow
	for i := range big + small {
		vip, owner := vip4, uint16(1)
		if i >= big {
			vip, owner = vip4b, 2
		}
		c := client(i)
		keys = append(keys, flowKey(vip, c.Addr(), 445, c.Port()))
		vals = append(vals, fshaPeerFlow{Owner: owner, Gen: 5})
	}
	putPeerBehind(t, m, keys, vals)
	x := m.indexes()
	x.startLocalBuild(m) // FillFlows sent no events
	waitLocalExact(t, m)
	waitPeerReady(t, m)
	if s := m.IndexStats(); s.LocalFlows != big+small || s.PeerFlows != big+small {
		t.Fatalf("indexed %+v", s)
	}

	type query struct {
		name string
		run  func() (int, error)
		want int
	}
	for _, q := range []query{
		{"CountFlows", func() (int, error) { return m.CountFlows(vip4b) }, small},
		{"KillVIP's connections", func() (int, error) { c, err := m.vipConns(vip4b); return len(c), err }, small},
		{"TickleVIP's connections", func() (int, error) { f, err := m.PeerFlowsOf(vip4b, []int{2}); return len(f), err }, small},
		{"TickleVIP's connections, any owner", func() (int, error) { f, err := m.PeerFlowsOf(vip4b, nil); return len(f), err }, small},
		{"another owner's", func() (int, error) { f, err := m.PeerFlowsOf(vip4b, []int{1}); return len(f), err }, 0},
		{"TickleVIP's set", func() (int, error) { s, err := m.tickleSetOf(vip4b, []int{2}); return s.len(), err }, small},
		{"Steer on", func() (int, error) { return small, m.steerPeerFlows(vip4b, 2, true) }, small},
		{"digests", func() (int, error) { d, _ := m.PeerDigests(2); return int(d[vip4b].Count), nil }, small},
		{"SweepPeerFlows, all current", func() (int, error) { n, err := m.SweepPeerFlows(2, vip4b, 5); return small - n, err }, small},
		{"SweepPeerFlows", func() (int, error) { return m.SweepPeerFlows(2, vip4b, 6) }, small},
	} {
		before := m.IndexStats()
		got, err := q.run()
		after := m.IndexStats()
		if err != nil || got != q.want {
			t.Errorf("%s: %d, %v; want %d", q.name, got, err, q.want)
		}
		if after.Walks != before.Walks || after.KeyOps-before.KeyOps > 2*small {
			t.Errorf("%s: %d walks, %d key operations for %d of %d connections",
				q.name, after.Walks-before.Walks, after.KeyOps-before.KeyOps, small, big+small)
		}
	}
	var steered int
	if err := m.ForEachPeerFlow(func(f PeerFlow) bool {
		if f.Steer {
			steered++
		}
		return true
	}); err != nil {
		t.Fatal(err)
	}
	if steered != 0 {
		t.Errorf("%d steered flows left after the sweep of their VIP", steered)
	}
	if n, err := m.DropPeerFlows(1, vip4b); n != 0 || err != nil {
		t.Errorf("dropped %d (%v) of owner 1 on a VIP it has none of", n, err)
	}
}

// TestPeerIndexProperty applies random writes through the Maps API (with
// owners taking tuples from each other), with a build racing them, and
// checks every (VIP, owner) query and digest against a walk.
func TestPeerIndexProperty(t *testing.T) {
	h := newHarness(t, 64)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 9))
	m := &h.maps
	x := m.indexes()
	vips := []netip.Addr{vip4, vip4b, vip6}
	randFlow := func() PeerFlow {
		vip := vips[rng.IntN(len(vips))]
		client := client4
		if vip.Is6() {
			client = client6
		}
		return PeerFlow{VIP: vip, VIPPort: 445, Client: client, ClientPort: uint16(1 + rng.IntN(100)),
			Owner: rng.IntN(3), Gen: uint32(rng.IntN(3)), LastSeen: time.Unix(0, 1)}
	}
	var stepMu sync.Mutex // steps of the test and of the racing build
	step := func() {
		stepMu.Lock()
		defer stepMu.Unlock()
		switch op := rng.IntN(10); {
		case op < 5:
			var fs []PeerFlow
			for range 1 + rng.IntN(8) {
				fs = append(fs, randFlow())
			}
			if err := m.UpsertPeerFlows(fs); err != nil {
				t.Fatal(err)
			}
		case op < 7:
			if err := m.DeletePeerFlows([]PeerFlow{randFlow()}); err != nil {
				t.Fatal(err)
			}
		case op < 8:
			f := randFlow()
			if _, err := m.SweepPeerFlows(f.Owner, f.VIP, f.Gen); err != nil {
				t.Fatal(err)
			}
		case op < 9:
			f := randFlow()
			if err := m.steerPeerFlows(f.VIP, f.Owner, rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
		default:
			f := randFlow()
			vip := f.VIP
			if rng.IntN(3) == 0 {
				vip = netip.Addr{}
			}
			if _, err := m.DropPeerFlows(f.Owner, vip); err != nil {
				t.Fatal(err)
			}
		}
	}
	// writes racing the first build
	x.afterWalk = func() {
		for range 50 {
			step()
		}
	}
	for range 50 {
		step()
	}
	waitPeerReady(t, m)
	x.afterWalk = nil
	for i := range 1500 {
		step()
		if i%30 != 0 {
			continue
		}
		var all []PeerFlow
		if err := m.ForEachPeerFlow(func(f PeerFlow) bool { all = append(all, f); return true }); err != nil {
			t.Fatal(err)
		}
		for _, vip := range vips {
			for owner := range 3 {
				var want []string
				var wantDigest Digest
				for _, f := range all {
					if f.VIP == vip && f.Owner == owner {
						want = append(want, fmt.Sprint(f.ClientPort))
						wantDigest.Add(ConnHash(f.VIP, f.VIPPort, f.Client, f.ClientPort))
					}
				}
				fs, err := m.PeerFlowsOf(vip, []int{owner})
				if err != nil {
					t.Fatal(err)
				}
				var got []string
				for _, f := range fs {
					got = append(got, fmt.Sprint(f.ClientPort))
				}
				slices.Sort(want)
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: %s owner %d: index %v, map %v", seed, i, vip, owner, got, want)
				}
				set, err := m.tickleSetOf(vip, []int{owner})
				if err != nil {
					t.Fatal(err)
				}
				got = got[:0]
				for j := range set.len() {
					if c := set.conn(j); c.VIP == vip && c.VIPPort == 445 {
						got = append(got, fmt.Sprint(c.ClientPort))
					}
				}
				slices.Sort(got)
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: %s owner %d: tickle set %v, map %v", seed, i, vip, owner, got, want)
				}
				d, ok := m.PeerDigests(owner)
				if !ok || d[vip] != wantDigest {
					t.Fatalf("seed %d step %d: %s owner %d: digest %+v, map %+v", seed, i, vip, owner, d[vip], wantDigest)
				}
			}
		}
		if s := m.IndexStats(); s.PeerFlows != len(all) {
			t.Fatalf("seed %d step %d: index holds %d peer flows, map %d", seed, i, s.PeerFlows, len(all))
		}
	}
	if _, err := m.DeletePeerFlowsWhere(func(PeerFlow) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if s := m.IndexStats(); s.PeerFlows != 0 {
		t.Fatalf("index holds %d peer flows of an empty map", s.PeerFlows)
	}
}

// TestForgetTickleSet: after a takeover's tickles, the tickled
// connections go from the peer map and its index, except one that
// another owner replicated meanwhile (its socket is there), and those
// replicated after the tickle's snapshot.
func TestForgetTickleSet(t *testing.T) {
	h := newHarness(t, 64)
	m := &h.maps
	flow := func(port uint16, owner int) PeerFlow {
		return PeerFlow{VIP: vip4, VIPPort: 445, Client: client4, ClientPort: port, Owner: owner, Gen: 1, LastSeen: time.Unix(0, 1)}
	}
	var tickled []PeerFlow
	for port := range uint16(10) {
		tickled = append(tickled, flow(1000+port, 1))
	}
	if err := m.UpsertPeerFlows(append(slices.Clone(tickled), flow(2000, 2))); err != nil {
		t.Fatal(err)
	}
	waitPeerReady(t, m)
	set, err := m.tickleSetOf(vip4, []int{1})
	if err != nil || set.len() != len(tickled) || set.flows != nil {
		t.Fatalf("tickle set of %d (%d walked), %v; want %d from the index", set.len(), len(set.flows), err, len(tickled))
	}
	// meanwhile: one tuple now owner 2's, and a new one of owner 1
	if err := m.UpsertPeerFlows([]PeerFlow{flow(1003, 2), flow(3000, 1)}); err != nil {
		t.Fatal(err)
	}
	if err := m.forgetTickleSet(set); err != nil {
		t.Fatal(err)
	}
	var left []string
	if err := m.ForEachPeerFlow(func(f PeerFlow) bool {
		left = append(left, fmt.Sprintf("%d/%d", f.ClientPort, f.Owner))
		return true
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(left)
	if want := []string{"1003/2", "2000/2", "3000/1"}; !slices.Equal(left, want) {
		t.Errorf("peer map after the forget: %v, want %v", left, want)
	}
	if s := m.IndexStats(); s.PeerFlows != len(left) {
		t.Errorf("index holds %d peer flows, map %d", s.PeerFlows, len(left))
	}
}

// TestLocalIndexEventBeforeBuild: an open event read before the index's
// first build (a restart with connections in flight) is applied, not a
// panic on a nil map.
func TestLocalIndexEventBeforeBuild(t *testing.T) {
	var x localIndex
	k := fshaFlowKey{Family: 2, Vport: 445, Cport: 40000}
	k.Vip[0], k.Vip[1], k.Vip[2], k.Vip[3] = 198, 18, 0, 201
	x.event(&k, EventOpen)
	if x.n != 1 {
		t.Fatalf("%d flows indexed, want 1", x.n)
	}
	x.event(&k, EventClose)
	if x.n != 0 {
		t.Fatalf("%d flows indexed after the close, want 0", x.n)
	}
}
