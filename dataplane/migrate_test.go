package dataplane

import (
	"encoding/binary"
	"errors"
	"hash/fnv"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/testenv"
)

// The migration of the pins of another fsha (migrate.go): maps of an
// older layout or capacity are pinned by hand, with entries, then Load
// runs on that pin path as an upgraded daemon does.

// pinTestDir returns a pin path on a bpffs of the test's own.
func pinTestDir(t *testing.T) string {
	t.Helper()
	testenv.RequireBPF(t)
	root := filepath.Join(t.TempDir(), "bpffs")
	if err := EnsureBPFFS(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	dir := filepath.Join(root, "fsha")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return dir
}

// migrationOpts are the options of every Load here.
func migrationOpts(dir string) Options {
	return Options{PinPath: dir, FlowsMax: 1024, PeerFlowsMax: 1024}
}

// currentSpec is the spec Load starts from with opts.
func currentSpec(t *testing.T, opts Options) *ebpf.CollectionSpec {
	t.Helper()
	spec, err := newSpec(opts.FlowsMax)
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// pinOld pins, as name under dir, a map of the current spec's with
// another value type and capacity: an earlier fsha's.
func pinOld(t *testing.T, dir string, cur *ebpf.MapSpec, value btf.Type, maxEntries uint32) *ebpf.Map {
	t.Helper()
	ms := cur.Copy()
	if value != nil {
		ms.Value = value
		ms.ValueSize = sizeOf(value)
	}
	if maxEntries != 0 {
		ms.MaxEntries = maxEntries
	}
	ms.Pinning = ebpf.PinByName
	m, err := ebpf.NewMapWithOptions(ms, ebpf.MapOptions{PinPath: dir})
	if err != nil {
		t.Fatalf("pin old %s: %v", ms.Name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// loadLogged loads the data plane from dir, its log observed.
func loadLogged(t *testing.T, opts Options) (*Dataplane, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.InfoLevel)
	log := zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core()))
	dp, err := Load(log, opts)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { dp.Close() })
	return dp, logs
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}

// intMembers lists the integer members of s.
func intMembers(s *btf.Struct) []btf.Member {
	var out []btf.Member
	for _, m := range s.Members {
		if _, _, ok := intLike(btf.UnderlyingType(m.Type)); ok {
			out = append(out, m)
		}
	}
	return out
}

// flowValues gives every integer member of a flow layout a value of its
// own for entry i (an established flow: state 1, no FIN).
func flowValues(s *btf.Struct, i int) map[string]uint64 {
	out := map[string]uint64{}
	for _, m := range intMembers(s) {
		h := fnv.New64a()
		h.Write([]byte(m.Name))
		h.Write([]byte{byte(i)})
		bits, _, _ := intLike(btf.UnderlyingType(m.Type))
		out[m.Name] = h.Sum64() >> (64 - bits)
	}
	out["state"], out["fin"] = uint64(StateEstablished), 0
	return out
}

func encode(s *btf.Struct, vals map[string]uint64) []byte {
	b := make([]byte, s.Size)
	for name, v := range vals {
		setField(s, b, name, v)
	}
	return b
}

func pinFormatOf(t *testing.T, dir string) uint32 {
	t.Helper()
	v, err := readPinFormat(dir)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// loggedMigration returns the fields of the "migrated pinned map" log
// entry of map name.
func loggedMigration(logs *observer.ObservedLogs, name string) map[string]any {
	for _, e := range logs.All() {
		if f := e.ContextMap(); f["map"] == name && (e.Message == "migrated pinned map" || e.Message == "migrated pinned map: entries dropped") {
			return f
		}
	}
	return nil
}

// TestMigrateFlows pins flows maps of older layouts and capacities with
// entries; Load carries every entry over, member by member (new members
// zero, removed ones dropped), pins the new map in the old one's place,
// and the programs track with it: a packet updates a migrated flow.
func TestMigrateFlows(t *testing.T) {
	testenv.RequireBPF(t)
	cur := currentSpec(t, migrationOpts("")).Maps[fshaMapFlows]
	flow := btf.UnderlyingType(cur.Value).(*btf.Struct)
	for _, tc := range []struct {
		name    string
		old     *btf.Struct
		max     uint32
		new     []string // members the old layout lacks
		removed []string
	}{
		// window_out's two bytes move into the tail padding: the size
		// stays, so only the BTF tells the layouts apart
		{name: "window_out is new, same size", old: relayout(flow, without("window_out")), max: 1024,
			new: []string{"window_out"}},
		{name: "packets_out is new, 64 entries to 1024", old: relayout(flow, without("packets_out")), max: 64,
			new: []string{"packets_out"}},
		{name: "rtt_ns is gone", old: relayout(flow, inserting("last_seen_ns", member("rtt_ns", btfU64))), max: 1024,
			removed: []string{"rtt_ns"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := pinTestDir(t)
			opts := migrationOpts(dir)
			old := pinOld(t, dir, cur, tc.old, tc.max)
			oldID := mapID(t, old)
			want := map[fshaFlowKey]map[string]uint64{}
			for i := range 40 {
				k := conn{vip: vip4, client: client4, vport: 445, cport: uint16(40000 + i)}.key()
				want[k] = flowValues(tc.old, i)
				if err := old.Put(&k, encode(tc.old, want[k])); err != nil {
					t.Fatal(err)
				}
			}

			dp, logs := loadLogged(t, opts)
			if id := mapID(t, dp.Flows); id == oldID {
				t.Fatalf("flows map %d reused, want a new one", id)
			}
			if dp.Flows.MaxEntries() != opts.FlowsMax {
				t.Errorf("flows holds %d entries, want %d", dp.Flows.MaxEntries(), opts.FlowsMax)
			}
			// every entry, member by member
			n := 0
			err := walkRaw(dp.Flows, func(k int, keys, values []byte) error {
				for j := range k {
					var key fshaFlowKey
					if _, err := binary.Decode(keys[j*int(cur.KeySize):], binary.LittleEndian, &key); err != nil {
						return err
					}
					v := values[j*int(cur.ValueSize) : (j+1)*int(cur.ValueSize)]
					w, ok := want[key]
					if !ok {
						t.Errorf("flow %+v was not in the old map", key)
						continue
					}
					n++
					for _, m := range intMembers(flow) {
						wv := w[m.Name] // zero for a new member
						if got := field(flow, v, m.Name); got != wv {
							t.Errorf("flow %d: %s = %#x, want %#x", key.Cport, m.Name, got, wv)
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n != len(want) {
				t.Errorf("%d flows migrated, want %d", n, len(want))
			}
			f := loggedMigration(logs, fshaMapFlows)
			if f == nil || f["entries"] != int64(len(want)) || f["dropped"] != int64(0) {
				t.Errorf("log of the flows' migration: %v", f)
			}
			if got, _ := f["new_value_fields"].([]any); !equalStrings(got, tc.new) {
				t.Errorf("logged new fields %v, want %v", got, tc.new)
			}
			if got, _ := f["dropped_value_fields"].([]any); !equalStrings(got, tc.removed) {
				t.Errorf("logged dropped fields %v, want %v", got, tc.removed)
			}
			if c := loggedMigration(logs, fshaMapFlowCount); c == nil || c["how"] != "rebuilt" {
				t.Errorf("flow_count not rebuilt: %v", c)
			}
			var count uint64
			if err := dp.FlowCount.Lookup(uint32(0), &count); err != nil || count != uint64(len(want)) {
				t.Errorf("flow_count %d, %v; want %d", count, err, len(want))
			}
			// the pin is the new map; no temporary pin is left
			pinned, err := ebpf.LoadPinnedMap(filepath.Join(dir, fshaMapFlows), nil)
			if err != nil {
				t.Fatal(err)
			}
			if mapID(t, pinned) != mapID(t, dp.Flows) {
				t.Errorf("the flows pin is map %d, the programs use %d", mapID(t, pinned), mapID(t, dp.Flows))
			}
			pinned.Close()
			if _, err := os.Stat(filepath.Join(dir, fshaMapFlows+tempPinSuffix)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("temporary pin left: %v", err)
			}
			if v := pinFormatOf(t, dir); v != pinFormat {
				t.Errorf("pin format %d, want %d", v, pinFormat)
			}

			// the programs track with the migrated map
			if err := errors.Join(dp.SetVIPs([]netip.Addr{vip4}), dp.SetPorts(defaultPorts), dp.DisableLease()); err != nil {
				t.Fatal(err)
			}
			c := conn{vip: vip4, client: client4, vport: 445, cport: 40007}
			before, err := dp.lookupFlow(c.key())
			if err != nil {
				t.Fatal(err)
			}
			pkt := c.in(tcpACK|tcpPSH, before.SeqIn, before.AckIn, 100).bytes(t)
			ret, err := dp.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt, Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
			if err != nil || ret != xdpPass {
				t.Fatalf("xdp: %d, %v", ret, err)
			}
			after, err := dp.lookupFlow(c.key())
			if err != nil {
				t.Fatal(err)
			}
			if after.PacketsIn != before.PacketsIn+1 || after.BytesIn != before.BytesIn+100 || after.SeqIn != before.SeqIn+100 {
				t.Errorf("after a packet of 100 bytes: packets_in %d -> %d, bytes_in %d -> %d, seq_in %d -> %d",
					before.PacketsIn, after.PacketsIn, before.BytesIn, after.BytesIn, before.SeqIn, after.SeqIn)
			}
		})
	}
}

func equalStrings(got []any, want []string) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// TestMigrateReusesIdenticalPins: a restart of the same layout reuses
// every pinned map as it is (same map IDs, nothing copied), and removes a
// temporary pin that a migration cut short left behind.
func TestMigrateReusesIdenticalPins(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	dp, _ := loadLogged(t, opts)
	k := c4.key()
	if err := dp.Flows.Put(&k, fshaFlow{PacketsIn: 3, State: uint8(StateEstablished)}); err != nil {
		t.Fatal(err)
	}
	ids := map[string]ebpf.MapID{}
	for _, nm := range dp.byName() {
		ids[nm.name] = mapID(t, nm.m)
	}
	if len(ids) != len(pinMigrations) {
		t.Errorf("%d maps, %d with a migration rule", len(ids), len(pinMigrations))
	}
	dp.Close()
	ms := currentSpec(t, opts).Maps[fshaMapFlows].Copy()
	ms.Pinning = ebpf.PinNone
	stray, err := ebpf.NewMap(ms)
	if err != nil {
		t.Fatal(err)
	}
	defer stray.Close()
	if err := stray.Pin(filepath.Join(dir, fshaMapFlows+tempPinSuffix)); err != nil {
		t.Fatal(err)
	}

	dp, logs := loadLogged(t, opts)
	for _, nm := range dp.byName() {
		if id := mapID(t, nm.m); id != ids[nm.name] {
			t.Errorf("%s: map %d after the restart, was %d", nm.name, id, ids[nm.name])
		}
	}
	if got := logs.FilterMessageSnippet("migrat").All(); len(got) > 0 {
		t.Errorf("logged a migration: %v", got[0].Message)
	}
	if f, err := dp.lookupFlow(k); err != nil || f.PacketsIn != 3 {
		t.Errorf("flow after the restart: %+v, %v", f, err)
	}
	if _, err := os.Stat(filepath.Join(dir, fshaMapFlows+tempPinSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stray temporary pin left: %v", err)
	}
	if v := pinFormatOf(t, dir); v != pinFormat {
		t.Errorf("pin format %d, want %d", v, pinFormat)
	}
}

// TestMigrateShrinksPeerFlows: a smaller capacity keeps the most recently
// seen entries and says how many it dropped.
func TestMigrateShrinksPeerFlows(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	opts.PeerFlowsMax = 16
	old := pinOld(t, dir, flatPeerFlows(t, opts), nil, 64)
	for i := range 40 {
		k := conn{vip: vip4, client: client4, vport: 445, cport: uint16(50000 + i)}.key()
		// seen in an order other than the keys'
		v := fshaPeerFlow{LastSeenNs: uint64((i*7)%40) * 1000, Owner: 2, Gen: 9}
		if err := old.Put(&k, &v); err != nil {
			t.Fatal(err)
		}
	}
	dp, logs := loadLogged(t, opts)
	got := peerEntriesOf(t, &dp.Maps)
	if len(got) != 16 {
		t.Errorf("%d peer flows kept, want 16", len(got))
	}
	for k, v := range got {
		if v.LastSeenNs < 24*1000 || v.Owner != 2 || v.Gen != 9 {
			t.Errorf("kept %d: %+v, want one of the 16 seen last", k.Cport, v)
		}
	}
	f := loggedMigration(logs, fshaMapPeerFlows)
	if f == nil || f["entries"] != int64(16) || f["dropped"] != int64(24) {
		t.Errorf("log of the peer flows' migration: %v", f)
	}
}

// TestMigrateCounters: a release with one counter more moves each egress
// counter to its new index; the new counter starts at zero.
func TestMigrateCounters(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	per := uint32(fshaCounterCOUNTER_MAX)
	old := pinOld(t, dir, currentSpec(t, opts).Maps[fshaMapCounters], nil, uint32(directionMax)*(per-1))
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for i := range uint32(directionMax) * (per - 1) {
		vals := make([]uint64, ncpu)
		vals[0], vals[ncpu-1] = uint64(i+1), 1000
		if err := old.Put(i, vals); err != nil {
			t.Fatal(err)
		}
	}
	dp, _ := loadLogged(t, opts)
	for d := range uint32(directionMax) {
		for c := range per {
			var vals []uint64
			if err := dp.Counters.Lookup(d*per+c, &vals); err != nil {
				t.Fatal(err)
			}
			var sum, want uint64
			for _, v := range vals {
				sum += v
			}
			if c < per-1 {
				want = uint64(d*(per-1)+c+1) + 1000
				if ncpu == 1 {
					want = 1000
				}
			}
			if sum != want {
				t.Errorf("direction %d counter %d: %d, want %d", d, c, sum, want)
			}
		}
	}
}

// TestMigrateDaemonMaps: the VIPs of an older layout are copied and the
// prefilter and deadline buckets rebuilt from them before the programs
// run; the old flow cache's pending counts end up in the flows, which
// kept their layout (the pin is reused) while the cache changed.
func TestMigrateDaemonMaps(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	spec := currentSpec(t, opts)
	info := btf.UnderlyingType(spec.Maps[fshaMapVips].Value).(*btf.Struct)
	oldInfo := relayout(info, without("reserved"))
	vips := pinOld(t, dir, spec.Maps[fshaMapVips], oldInfo, 0)
	vk := vipKey(vip4)
	if err := vips.Put(&vk, encode(oldInfo, map[string]uint64{"flags": uint64(fshaVipFlagsVIP_F_TRACK)})); err != nil {
		t.Fatal(err)
	}
	flows := pinOld(t, dir, spec.Maps[fshaMapFlows], nil, 0)
	flowsID := mapID(t, flows)
	k := c4.key()
	if err := flows.Put(&k, fshaFlow{PacketsIn: 10, BytesIn: 1000, SeqIn: 5000, State: uint8(StateEstablished)}); err != nil {
		t.Fatal(err)
	}
	slot := btf.UnderlyingType(spec.Maps[fshaMapFlowCache].Value).(*btf.Struct)
	oldSlot := relayout(slot, inserting("jiffies", member("cpu", btfU32)))
	cache := pinOld(t, dir, spec.Maps[fshaMapFlowCache], oldSlot, 0)
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	vals := make([][]byte, ncpu)
	for i := range vals {
		vals[i] = make([]byte, oldSlot.Size)
	}
	kb, err := binary.Append(nil, binary.LittleEndian, k)
	if err != nil {
		t.Fatal(err)
	}
	copy(vals[0], kb) // the key is the slot's first member
	for name, v := range map[string]uint64{"jiffies": 1, "cpu": 7, "packets": 5, "bytes": 500, "next_seq": 5500, "ack": 77, "acked": 1, "window": 300} {
		setField(oldSlot, vals[0], name, v)
	}
	if err := cache.Put(uint32(5), vals); err != nil { // an ingress slot
		t.Fatal(err)
	}

	dp, logs := loadLogged(t, opts)
	got, err := dp.VIPs()
	if err != nil || !slices.Equal(got, []netip.Addr{vip4}) {
		t.Errorf("VIPs %v, %v; want %v", got, err, vip4)
	}
	var v fshaVipInfo
	if err := dp.Vips.Lookup(&vk, &v); err != nil || v.Flags != uint32(fshaVipFlagsVIP_F_TRACK) {
		t.Errorf("vip_info %+v, %v", v, err)
	}
	bit := vipFilterBit(vk.Addr, vk.Family)
	var word uint64
	if err := dp.VipFilter.Lookup(bit/64, &word); err != nil || word&(1<<(bit%64)) == 0 {
		t.Errorf("prefilter word %d = %#x, %v: vip4's bit missing", bit/64, word, err)
	}
	d, err := dp.readDeadlines()
	if err != nil {
		t.Fatal(err)
	}
	for b, dl := range d {
		want := uint64(math.MaxUint64)
		if uint32(b) == bit {
			want = 0 // a VIP without a lease
		}
		if dl != want {
			t.Errorf("deadline bucket %d = %d, want %d", b, dl, want)
		}
	}
	for _, name := range []string{fshaMapVips, fshaMapVipFilter, fshaMapVipDeadlines, fshaMapFlowCache} {
		if loggedMigration(logs, name) == nil {
			t.Errorf("%s not migrated", name)
		}
	}
	if mapID(t, dp.Flows) != flowsID {
		t.Errorf("flows of the same layout not reused")
	}
	f, err := dp.lookupFlow(k)
	if err != nil || f.PacketsIn != 15 || f.BytesIn != 1500 || f.SeqIn != 5500 || f.AckIn != 77 || f.WindowIn != 300 {
		t.Errorf("flow after the fold: %+v, %v; want 15 packets, 1500 bytes, seq 5500, ack 77, window 300", f, err)
	}
	if n, err := countNonZeroSlots(dp.FlowCache); err != nil || n != 0 {
		t.Errorf("%d slots in the new flow cache, %v; want none", n, err)
	}
	// SetVIPs of the restarted daemon changes nothing
	if err := dp.SetVIPs([]netip.Addr{vip4}); err != nil {
		t.Fatal(err)
	}
	if d2, err := dp.readDeadlines(); err != nil || !slices.Equal(d, d2) {
		t.Errorf("SetVIPs after the migration moved deadline buckets: %v", err)
	}
}

func countNonZeroSlots(m *ebpf.Map) (int, error) {
	n := 0
	var (
		k  []byte
		vs [][]byte
	)
	it := m.Iterate()
	for it.Next(&k, &vs) {
		if !allZero(vs) {
			n++
		}
	}
	return n, it.Err()
}

// TestPinMigrationsCoverSpec: every pinned map has a migration rule, and
// every derived map's sources are pinned maps.
func TestPinMigrationsCoverSpec(t *testing.T) {
	spec, err := loadFsha()
	if err != nil {
		t.Fatal(err)
	}
	for name, ms := range spec.Maps {
		if _, ok := pinMigrations[name]; ms.Pinning == ebpf.PinByName && !ok {
			t.Errorf("pinned map %s has no migration rule", name)
		}
	}
	for name, how := range pinMigrations {
		if spec.Maps[name] == nil {
			t.Errorf("migration rule for %s, which is not in the spec", name)
		}
		if (how == migrateDerive) != (derivedFrom[name] != nil) {
			t.Errorf("%s: %s, derived from %v", name, how, derivedFrom[name])
		}
		for _, src := range derivedFrom[name] {
			if spec.Maps[src] == nil {
				t.Errorf("%s derives from %s, not in the spec", name, src)
			}
		}
	}
}

// TestMigrateNewerFormat: the pins of a newer fsha (a rollback) are
// converted the same way, members this release does not know dropped,
// with a warning; the format is this release's afterwards.
func TestMigrateNewerFormat(t *testing.T) {
	dir := pinTestDir(t)
	opts := migrationOpts(dir)
	dp, _ := loadLogged(t, opts)
	if err := dp.PinFormat.Put(uint32(0), pinFormat+1); err != nil {
		t.Fatal(err)
	}
	dp.Close()
	spec := currentSpec(t, opts)
	grant := btf.UnderlyingType(spec.Maps[fshaMapVipGrants].Value).(*btf.Struct)
	newer := relayout(grant, inserting("holder", member("term", btfU32)))
	if err := os.Remove(filepath.Join(dir, fshaMapVipGrants)); err != nil {
		t.Fatal(err)
	}
	grants := pinOld(t, dir, spec.Maps[fshaMapVipGrants], newer, 0)
	k := vipKey(vip6)
	if err := grants.Put(&k, encode(newer, map[string]uint64{"epoch": 12, "until_ns": 34, "holder": 3, "term": 9, "flags": 0})); err != nil {
		t.Fatal(err)
	}

	dp, logs := loadLogged(t, opts)
	if got := logs.FilterMessageSnippet("newer fsha").Len(); got != 1 {
		t.Errorf("%d warnings of a newer fsha's pins, want 1", got)
	}
	var g fshaVipGrant
	if err := dp.VipGrants.Lookup(&k, &g); err != nil || g != (fshaVipGrant{Epoch: 12, UntilNs: 34, Holder: 3}) {
		t.Errorf("grant %+v, %v", g, err)
	}
	if f := loggedMigration(logs, fshaMapVipGrants); f == nil || !equalStrings(anySlice(f["dropped_value_fields"]), []string{"term"}) {
		t.Errorf("log of the grants' migration: %v", f)
	}
	if v := pinFormatOf(t, dir); v != pinFormat {
		t.Errorf("pin format %d, want %d", v, pinFormat)
	}
}

func anySlice(v any) []any {
	s, _ := v.([]any)
	return s
}
