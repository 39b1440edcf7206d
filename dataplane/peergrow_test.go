package dataplane

import (
	"errors"
	"math/rand/v2"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/fsha/fsha/tools/testenv"
)

// peerEntriesOf reads the map in peer_flows' slot, as the programs find it.
func peerEntriesOf(t testing.TB, m *Maps) map[fshaFlowKey]fshaPeerFlow {
	t.Helper()
	in, err := peerSlot(m.PeerFlows)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return map[fshaFlowKey]fshaPeerFlow{}
	}
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	got, err := readAll[fshaFlowKey, fshaPeerFlow](in)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// flatPeerFlows is peer_flows as an fsha before pin format 4 pinned it: the
// hash itself.
func flatPeerFlows(t *testing.T, opts Options) *ebpf.MapSpec {
	t.Helper()
	ms := currentSpec(t, opts).Maps[fshaMapPeerFlows].InnerMap.Copy()
	ms.Name = fshaMapPeerFlows
	return ms
}

// waitPeerGrown waits until no growth of the peer map runs.
func waitPeerGrown(t testing.TB, m *Maps) {
	t.Helper()
	p := &m.indexes().peer
	deadline := time.Now().Add(20 * time.Second)
	for {
		p.mu.Lock()
		growing := p.growing
		p.mu.Unlock()
		if !growing {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peer map still growing after 20s: %+v", m.IndexStats())
		}
		time.Sleep(time.Millisecond)
	}
}

func peerFlowN(i int, owner int, steer bool) PeerFlow {
	return PeerFlow{VIP: vip4, VIPPort: 445, Client: netip.AddrFrom4([4]byte{198, 19, byte(i >> 16), byte(i >> 8)}),
		ClientPort: uint16(1024 + i&0xff), Owner: owner, Steer: steer, Gen: uint32(i), LastSeen: time.Unix(0, int64(i+1))}
}

// TestPeerMapGrows: the peer map grows from 256 to 4,096 entries while one
// goroutine upserts and deletes (each write then found, or not, through
// the slot) and two others keep looking up a steady set through the XDP
// program (BPF_PROG_RUN: steered, every run) and through the slot: nothing
// is lost, every entry is found throughout, and the map and the index
// end up with exactly what was written.
func TestPeerMapGrows(t *testing.T) {
	h := newHarness(t, 64)
	m := &h.maps
	m.indexes().setPeerLimits(256, 4096)
	// many batches a copy, and writes between them
	peerGrowBatch, peerGrowPause = 16, func() { time.Sleep(50 * time.Microsecond) }
	t.Cleanup(func() { peerGrowBatch, peerGrowPause = peerChunk, nil; m.SetSteering(0) })
	owner := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	if err := m.SetNodeMAC(2, owner); err != nil {
		t.Fatal(err)
	}
	if err := m.SetSteering(1); err != nil {
		t.Fatal(err)
	}
	waitPeerReady(t, m)
	const steady = 64
	var steadyFlows []PeerFlow
	var pkts [][]byte
	for i := range steady {
		f := peerFlowN(i, 2, true)
		steadyFlows = append(steadyFlows, f)
		pkts = append(pkts, conn{vip: f.VIP, client: f.Client, vport: f.VIPPort, cport: f.ClientPort}.in(tcpACK, 1, 2, 10).bytes(t))
	}
	if err := m.UpsertPeerFlows(steadyFlows); err != nil {
		t.Fatal(err)
	}

	var stop atomic.Bool
	var wg sync.WaitGroup
	var progRuns, slotRuns atomic.Int64
	wg.Add(2)
	go func() { // the programs' view
		defer wg.Done()
		out := make([]byte, 512)
		for i := 0; !stop.Load(); i++ {
			pkt := pkts[i%steady]
			ret, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt, DataOut: out,
				Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
			if err != nil || ret != xdpTX {
				t.Errorf("run %d: steady flow %d: verdict %d (%v), want XDP_TX", i, i%steady, ret, err)
				return
			}
			progRuns.Add(1)
		}
	}()
	go func() { // through the slot, as another reader of the pins
		defer wg.Done()
		var v fshaPeerFlow
		for i := 0; !stop.Load(); i++ {
			in, err := peerSlot(m.PeerFlows)
			if err != nil {
				t.Errorf("slot: %v", err)
				return
			}
			for j := range steadyFlows {
				k := peerKey(&steadyFlows[j])
				if err := in.Lookup(&k, &v); err != nil || v.Owner != 2 {
					t.Errorf("lookup %d: steady flow %d: %+v, %v", i, j, v, err)
					in.Close()
					return
				}
			}
			in.Close()
			slotRuns.Add(1)
		}
	}()

	// the churn: upserts in batches, a third deleted again, each write
	// checked through the slot right after it returned
	want := map[fshaFlowKey]PeerFlow{}
	for i := range steadyFlows {
		want[peerKey(&steadyFlows[i])] = steadyFlows[i]
	}
	rng := rand.New(rand.NewPCG(1, 2))
	check := func(f *PeerFlow, present bool) {
		t.Helper()
		in, err := peerSlot(m.PeerFlows)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		var v fshaPeerFlow
		k := peerKey(f)
		err = in.Lookup(&k, &v)
		if present && (err != nil || v.Gen != f.Gen) {
			t.Fatalf("flow %v after its upsert: %+v, %v", f.ClientPort, v, err)
		}
		if !present && !errors.Is(err, ebpf.ErrKeyNotExist) {
			t.Fatalf("flow %v after its delete: %+v, %v", f.ClientPort, v, err)
		}
	}
	next := steady
	for len(want) < 3200 && !t.Failed() {
		batch := make([]PeerFlow, 1+rng.IntN(40))
		for i := range batch {
			batch[i] = peerFlowN(next, 3, false)
			next++
		}
		if err := m.UpsertPeerFlows(batch); err != nil {
			t.Fatalf("upsert at %d flows: %v (%+v)", len(want), err, m.IndexStats())
		}
		for i := range batch {
			want[peerKey(&batch[i])] = batch[i]
			check(&batch[i], true)
		}
		for i := range batch {
			if rng.IntN(3) == 0 {
				if err := m.DeletePeerFlows(batch[i : i+1]); err != nil {
					t.Fatal(err)
				}
				delete(want, peerKey(&batch[i]))
				check(&batch[i], false)
			}
		}
		if rng.IntN(4) == 0 { // a flag rewrite of an existing entry, as a drain's
			if err := m.steerPeerFlows(vip4, 3, rng.IntN(2) == 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitPeerGrown(t, m)
	time.Sleep(20 * time.Millisecond) // the readers after the last swap
	stop.Store(true)
	wg.Wait()
	if progRuns.Load() == 0 || slotRuns.Load() == 0 {
		t.Errorf("readers ran %d programs, %d slot walks", progRuns.Load(), slotRuns.Load())
	}
	p := &m.indexes().peer
	p.mu.Lock()
	mirrored := p.mirrored
	p.mu.Unlock()
	if mirrored == 0 {
		t.Errorf("no write came during a copy")
	}

	s := m.IndexStats()
	if s.PeerCapacity != 4096 || s.PeerGrowths != 4 || s.PeerGrowError != "" || s.PeerFlows != len(want) {
		t.Errorf("after %d flows: %+v, want capacity 4096 after 4 growths", len(want), s)
	}
	got := peerEntriesOf(t, m)
	if len(got) != len(want) {
		t.Errorf("map holds %d flows, want %d", len(got), len(want))
	}
	for k, f := range want {
		v, ok := got[k]
		if !ok || int(v.Owner) != f.Owner || v.Gen != f.Gen {
			t.Errorf("flow %v: %+v (found %v), want owner %d gen %d", f.Client, v, ok, f.Owner, f.Gen)
			break
		}
	}
	for _, owner := range []int{2, 3} {
		fs, err := m.PeerFlowsOf(vip4, []int{owner})
		n := 0
		for _, f := range want {
			if f.Owner == owner {
				n++
			}
		}
		if err != nil || len(fs) != n {
			t.Errorf("index: %d flows of owner %d (%v), want %d", len(fs), owner, err, n)
		}
	}
	t.Logf("%d flows, %+v; %d writes during copies, %d program runs, %d slot walks", len(want), s, mirrored, progRuns.Load(), slotRuns.Load())
}

// TestPeerMapFullAtMax: at --peer-flows-max the map grows no more: an
// upsert past it stores what fits, indexes it, and says so.
func TestPeerMapFullAtMax(t *testing.T) {
	m := bareMaps(t)
	m.indexes().setPeerLimits(64, 256)
	waitPeerReady(t, m)
	var flows []PeerFlow
	for i := range 300 {
		flows = append(flows, peerFlowN(i, 1, false))
	}
	err := m.UpsertPeerFlows(flows)
	if !errors.Is(err, ErrPeerMapFull) || !strings.Contains(err.Error(), "256 entries, --peer-flows-max") {
		t.Fatalf("want ErrPeerMapFull at 256 entries, got %v", err)
	}
	waitPeerGrown(t, m)
	s := m.IndexStats()
	got := peerEntriesOf(t, m)
	if s.PeerCapacity != 256 || s.PeerFlows != 256 || len(got) != 256 {
		t.Fatalf("map %d, %+v; want 256 stored and indexed", len(got), s)
	}
	for i := range 256 {
		k := peerKey(&flows[i])
		if v, ok := got[k]; !ok || v.Gen != uint32(i) {
			t.Fatalf("flow %d lost: %+v", i, v)
		}
	}
	// deletes make room again
	if err := m.DeletePeerFlows(flows[:100]); err != nil {
		t.Fatal(err)
	}
	if err := m.UpsertPeerFlows(flows[256:]); err != nil {
		t.Fatalf("after deletes: %v", err)
	}
	if n := len(peerEntriesOf(t, m)); n != 200 {
		t.Errorf("%d flows, want 200", n)
	}
}

// TestMigratePeerFlowsToArray: the flat peer flows map of an fsha before
// pin format 4 is carried into a map sized for its entries, in the slot
// of the new array; the next start reuses it as it is, and it grows.
func TestMigratePeerFlowsToArray(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	opts.PeerFlowsMax = DefaultPeerFlowsMax
	flat := flatPeerFlows(t, opts)
	old := pinOld(t, dir, flat, nil, 1<<20) // 16 MB of buckets, as 4M held 64 MB
	var flows []PeerFlow
	for i := range 1000 {
		flows = append(flows, peerFlowN(i, 1+i%3, i%2 == 0))
	}
	for i := range flows {
		k, v := peerKey(&flows[i]), peerValue(&flows[i])
		if err := old.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
	old.Close()
	dp, logs := loadLogged(t, opts)
	f := loggedMigration(logs, fshaMapPeerFlows)
	if f == nil || f["entries"] != int64(1000) || f["dropped"] != int64(0) || f["how"] != migratePeerFlows.String() {
		t.Errorf("log of the peer flows' migration: %v", f)
	}
	if v := pinFormatOf(t, dir); v != pinFormat || pinFormat != 4 {
		t.Errorf("pin format %d, want %d (4)", v, pinFormat)
	}
	checkAll := func(m *Maps) {
		t.Helper()
		got := peerEntriesOf(t, m)
		if len(got) != len(flows) {
			t.Errorf("%d peer flows, want %d", len(got), len(flows))
		}
		for i := range flows {
			k, want := peerKey(&flows[i]), peerValue(&flows[i])
			if got[k] != want {
				t.Errorf("flow %d: %+v, want %+v", i, got[k], want)
				return
			}
		}
	}
	checkAll(&dp.Maps)
	waitPeerReady(t, &dp.Maps)
	if s := dp.IndexStats(); s.PeerCapacity != PeerFlowsFirst || s.PeerFlows != 1000 {
		t.Errorf("after the migration: %+v", s)
	}
	if info, err := dp.PeerFlows.Info(); err != nil || info.Type != ebpf.ArrayOfMaps {
		t.Errorf("pinned peer_flows: %+v, %v", info, err)
	}
	dp.Close()

	// a restart keeps them, with no migration
	dp, logs = loadLogged(t, opts)
	if got := logs.FilterMessageSnippet("migrat").All(); len(got) > 0 {
		t.Errorf("logged a migration: %v", got[0].Message)
	}
	checkAll(&dp.Maps)
	waitPeerReady(t, &dp.Maps)
	// and it grows past the first capacity
	var more []PeerFlow
	for i := range 60000 {
		more = append(more, peerFlowN(1000+i, 4, false))
	}
	if err := dp.UpsertPeerFlows(more); err != nil {
		t.Fatal(err)
	}
	waitPeerGrown(t, &dp.Maps)
	if s := dp.IndexStats(); s.PeerCapacity != 2*PeerFlowsFirst || s.PeerFlows != 61000 || s.PeerGrowths != 1 {
		t.Errorf("after growing: %+v", s)
	}
	if n := len(peerEntriesOf(t, &dp.Maps)); n != 61000 {
		t.Errorf("%d peer flows after growing, want 61000", n)
	}
	dp.Close()
	// and a restart keeps the grown map
	dp, _ = loadLogged(t, opts)
	if n := len(peerEntriesOf(t, &dp.Maps)); n != 61000 {
		t.Errorf("%d peer flows after a restart, want 61000", n)
	}
}

// putPeerBehind puts a map holding keys and vals in peer_flows' slot, as
// an earlier run of the daemon left it: written behind the index's back.
func putPeerBehind(t testing.TB, m *Maps, keys []fshaFlowKey, vals []fshaPeerFlow) {
	t.Helper()
	in, err := newPeerInner(peerCapacityFor(len(keys), PeerFlowsFirst, DefaultPeerFlowsMax))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := in.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	if err := m.PeerFlows.Put(uint32(0), in); err != nil {
		t.Fatal(err)
	}
	p := &m.indexes().peer
	p.mu.Lock()
	if p.inner != nil {
		p.inner.Close()
	}
	p.inner = in
	p.mu.Unlock()
}

// bareMaps loads fsha's objects unpinned, the peer flows slot left empty
// (the first write fills it, with the limits the test sets before).
func bareMaps(t testing.TB) *Maps {
	t.Helper()
	testenv.RequireBPF(t)
	spec, err := loadFsha()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	var objs fshaObjects
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { objs.Close() })
	m := mapsOf(&objs.fshaMaps)
	return &m
}
