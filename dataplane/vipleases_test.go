package dataplane

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/testenv"
)

// The Go side of per-VIP leases: what SetVIPLease, SetVIPs and the grants
// write, in which order, and what a restarted daemon reads back.

// bucketOf is an address's vip_deadlines bucket.
func bucketOf(a netip.Addr) uint32 {
	b, f := addrBytes(a)
	return vipFilterBit(b, f)
}

func (h *harness) bucket(t *testing.T, a netip.Addr) uint64 {
	t.Helper()
	var d uint64
	if err := h.maps.VipDeadlines.Lookup(bucketOf(a), &d); err != nil {
		t.Fatal(err)
	}
	return d
}

func (h *harness) rawLease(t *testing.T, a netip.Addr) (fshaVipLease, bool) {
	t.Helper()
	var e fshaVipLease
	err := h.maps.VipLeases.Lookup(vipKey(a), &e)
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatal(err)
	}
	return e, err == nil
}

func TestVIPLeaseAPI(t *testing.T) {
	h := newHarness(t, 64)
	jiffy, err := jiffyLength()
	if err != nil {
		t.Fatal(err)
	}
	mate := sameBucket(t, vip6, netip.MustParsePrefix("2001:2::/48"), 1)[0]
	h.configure(t, []netip.Addr{vip4, vip6, mate}, defaultPorts)
	// a VIP without a lease holds its bucket at 0; a bucket without VIPs
	// is U64_MAX
	if d := h.bucket(t, vip6); d != 0 {
		t.Errorf("bucket of VIPs without leases %d, want 0", d)
	}
	if d := h.bucket(t, other4); d != math.MaxUint64 {
		t.Errorf("bucket without VIPs %d, want U64_MAX", d)
	}

	now := MonotonicNow()
	t1, t2 := now+uint64(time.Hour), now+uint64(2*time.Hour)
	set := func(a netip.Addr, l VIPLease) {
		t.Helper()
		if err := h.maps.SetVIPLease(a, l); err != nil {
			t.Fatalf("SetVIPLease(%s, %+v): %v", a, l, err)
		}
	}
	set(vip6, VIPLease{Epoch: 5, State: VIPLeaseHeld, Holder: 3, Until: t2})
	if e, _ := h.rawLease(t, vip6); e != (fshaVipLease{Epoch: 5, IpUntilNs: t2 - jiffy, ArpUntilNs: t2 - jiffy, State: 1, Holder: 3}) {
		t.Errorf("held lease entry %+v, want the deadline one jiffy (%d ns) early", e, jiffy)
	}
	if d := h.bucket(t, vip6); d != 0 {
		t.Errorf("bucket %d with a VIP (mate) without a lease, want 0", d)
	}
	set(mate, VIPLease{Epoch: 1, State: VIPLeaseHeld, Holder: 3, Until: t1})
	if d := h.bucket(t, vip6); d != t1-jiffy {
		t.Errorf("bucket %d, want the earlier deadline %d", d, t1-jiffy)
	}
	set(mate, VIPLease{Epoch: 2, State: VIPLeaseHeld, Holder: 3, Until: t2 + 10}) // raised
	if d := h.bucket(t, vip6); d != t2-jiffy {
		t.Errorf("bucket %d after a raise, want %d", d, t2-jiffy)
	}
	set(vip6, VIPLease{Epoch: 6, State: VIPLeaseDraining, Holder: 3})
	if e, _ := h.rawLease(t, vip6); e.IpUntilNs != math.MaxUint64 || e.ArpUntilNs != 0 || e.State != 2 {
		t.Errorf("draining entry %+v", e)
	}
	if d := h.bucket(t, vip6); d != t2+10-jiffy {
		t.Errorf("bucket %d with a draining VIP, want the held mate's %d", d, t2+10-jiffy)
	}
	set(mate, VIPLease{}) // none: no entry, the bucket down to 0
	if _, ok := h.rawLease(t, mate); ok {
		t.Error("None left an entry")
	}
	if d := h.bucket(t, vip6); d != 0 {
		t.Errorf("bucket %d after None, want 0", d)
	}

	// jiffy subtraction at the edges
	for _, tc := range []struct{ until, want uint64 }{
		{0, 0}, {jiffy - 1, 0}, {jiffy, 0}, {jiffy + 1, 1}, {math.MaxUint64, math.MaxUint64},
	} {
		set(vip4, VIPLease{State: VIPLeaseHeld, Until: tc.until})
		if e, _ := h.rawLease(t, vip4); e.IpUntilNs != tc.want || e.ArpUntilNs != tc.want {
			t.Errorf("Until %d: entry %+v, want deadlines %d", tc.until, e, tc.want)
		}
		if d := h.bucket(t, vip4); d != tc.want {
			t.Errorf("Until %d: bucket %d, want %d", tc.until, d, tc.want)
		}
	}

	// what VIPLeases reads back: Until as given
	set(vip4, VIPLease{Epoch: 9, State: VIPLeaseHeld, Holder: 4, Until: t1})
	got, err := h.maps.VIPLeases()
	if err != nil {
		t.Fatal(err)
	}
	want := map[netip.Addr]VIPLease{
		vip4: {Epoch: 9, State: VIPLeaseHeld, Holder: 4, Until: t1},
		vip6: {Epoch: 6, State: VIPLeaseDraining, Holder: 3},
	}
	if len(got) != len(want) || got[vip4] != want[vip4] || got[vip6] != want[vip6] {
		t.Errorf("VIPLeases() = %+v, want %+v", got, want)
	}

	// a lease for an address that is no VIP leaves the buckets alone
	set(other4, VIPLease{State: VIPLeaseHeld, Until: 1})
	if d := h.bucket(t, other4); d != math.MaxUint64 {
		t.Errorf("bucket of a non-VIP with a lease %d, want U64_MAX", d)
	}
	set(other4, VIPLease{})

	// SetVIPs keeps the buckets: a removed VIP's goes back up, an added
	// VIP without a lease holds its own at 0
	h.configure(t, []netip.Addr{vip4, vip6}, defaultPorts)
	if d := h.bucket(t, vip6); d != math.MaxUint64 {
		t.Errorf("bucket of vip6 (draining) without the mate %d, want U64_MAX", d)
	}
	h.configure(t, []netip.Addr{vip4, vip6, mate}, defaultPorts)
	if d := h.bucket(t, vip6); d != 0 {
		t.Errorf("bucket with the mate back, without a lease, %d, want 0", d)
	}
	if d := h.bucket(t, vip4); d != t1-jiffy {
		t.Errorf("bucket of vip4 %d, want %d", d, t1-jiffy)
	}

	for _, bad := range []VIPLease{{State: 3}, {State: VIPLeaseHeld, Holder: -1}, {State: VIPLeaseHeld, Holder: math.MaxUint32 + 1}} {
		if err := h.maps.SetVIPLease(vip4, bad); err == nil {
			t.Errorf("SetVIPLease(%+v) accepted", bad)
		}
	}
	if err := h.maps.SetVIPLease(netip.Addr{}, VIPLease{}); err == nil {
		t.Error("SetVIPLease of an invalid address accepted")
	}
}

func TestFencingMode(t *testing.T) {
	h := newHarness(t, 64)
	for _, tc := range []struct {
		nodeWide, perVIP bool
		enabled          uint32
	}{{false, false, 0}, {true, false, 1}, {false, true, 2}, {true, true, 3}} {
		if err := h.maps.SetFencingMode(tc.nodeWide, tc.perVIP); err != nil {
			t.Fatal(err)
		}
		l, err := h.maps.ReadLease()
		if err != nil || l.Enabled != tc.nodeWide || l.PerVIP != tc.perVIP {
			t.Errorf("SetFencingMode(%v, %v): ReadLease %+v %v", tc.nodeWide, tc.perVIP, l, err)
		}
		var v fshaNodeLease
		if err := h.maps.Lease.Lookup(uint32(0), &v); err != nil || v.Enabled != tc.enabled {
			t.Errorf("SetFencingMode(%v, %v): enabled %d, want %d", tc.nodeWide, tc.perVIP, v.Enabled, tc.enabled)
		}
	}
	// the node-wide lease's calls keep the per-VIP bit and the mode keeps
	// the deadline
	if err := h.maps.RenewLease(time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetFencingMode(false, true); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetFencingMode(true, true); err != nil {
		t.Fatal(err)
	}
	if l, _ := h.maps.ReadLease(); !l.Enabled || !l.PerVIP || l.Remaining < 59*time.Second {
		t.Errorf("after renew, mode 2, mode 3: %+v", l)
	}
	if err := h.maps.ExpireLease(); err != nil {
		t.Fatal(err)
	}
	if l, _ := h.maps.ReadLease(); !l.Enabled || !l.PerVIP || l.Remaining > 0 {
		t.Errorf("after expire in mode 3: %+v", l)
	}
	if err := h.maps.DisableLease(); err != nil {
		t.Fatal(err)
	}
	if l, _ := h.maps.ReadLease(); l.Enabled || l.PerVIP {
		t.Errorf("after disable: %+v", l)
	}
}

func TestVIPGrants(t *testing.T) {
	h := newHarness(t, 64)
	g4 := VIPGrant{Epoch: 3, Until: 12345, Holder: 2}
	g6 := VIPGrant{Epoch: 4, Until: math.MaxUint64, Holder: 0}
	for a, g := range map[netip.Addr]VIPGrant{vip4: g4, vip6: g6} {
		if err := h.maps.SetVIPGrant(a, g); err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.maps.VIPGrants()
	if err != nil || len(got) != 2 || got[vip4] != g4 || got[vip6] != g6 {
		t.Fatalf("VIPGrants() = %+v, %v", got, err)
	}
	if err := h.maps.DeleteVIPGrant(vip4); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.DeleteVIPGrant(vip4); err != nil {
		t.Errorf("deleting a grant twice: %v", err)
	}
	if got, _ := h.maps.VIPGrants(); len(got) != 1 || got[vip6] != g6 {
		t.Errorf("VIPGrants() after a delete = %+v", got)
	}
	if err := h.maps.SetVIPGrant(vip4, VIPGrant{Holder: -1}); err == nil {
		t.Error("a negative holder accepted")
	}
}

// TestVIPLeaseWriteOrder checks SetVIPLease's order against every change
// of one VIP's deadline in a bucket of several: after each write, the
// bucket is at or below every deadline of the bucket.
func TestVIPLeaseWriteOrder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	values := []uint64{0, 1, 100, 200, 300, math.MaxUint64}
	for i := range 20000 {
		n := 1 + r.IntN(4)
		exact := make([]uint64, n)
		bucket := uint64(math.MaxUint64)
		for j := range exact {
			exact[j] = values[r.IntN(len(values))]
			bucket = min(bucket, exact[j])
		}
		// the bucket may be lower than it must (a fresh map, a crash)
		if r.IntN(4) == 0 {
			bucket = values[r.IntN(len(values))]
			bucket = min(bucket, slicesMin(exact))
		}
		x, next := r.IntN(n), values[r.IntN(len(values))]
		want := next
		for j, e := range exact {
			if j != x {
				want = min(want, e)
			}
		}
		for _, w := range leaseWriteOrder(bucket, want) {
			if w == writeBucket {
				bucket = want
			} else {
				exact[x] = next
			}
			if bucket > slicesMin(exact) {
				t.Fatalf("case %d: bucket %d above a deadline of %v after writing %d", i, bucket, exact, w)
			}
		}
		if bucket != want || exact[x] != next {
			t.Fatalf("case %d: ended with bucket %d, deadlines %v; want %d and %d", i, bucket, exact, want, next)
		}
	}
}

func slicesMin(s []uint64) uint64 {
	m := uint64(math.MaxUint64)
	for _, v := range s {
		m = min(m, v)
	}
	return m
}

// TestDeadlinePlan checks SetVIPs' plan on random changes of VIPs that
// crowd into few buckets: before the change every bucket is at or below
// the deadline of each VIP before and after, after it every bucket is what
// the VIPs after want, and no write in between goes the wrong way.
func TestDeadlinePlan(t *testing.T) {
	var pool []fshaVipKey
	for _, base := range []netip.Addr{vip4, vip6} {
		pool = append(pool, vipKey(base))
		for _, a := range sameBucket(t, base, netip.MustParsePrefix("2001:2::/48"), 3) {
			pool = append(pool, vipKey(a))
		}
	}
	pool = append(pool, vipKey(other4), vipKey(other6))
	r := rand.New(rand.NewPCG(3, 4))
	values := []uint64{0, 1, 100, 200, math.MaxUint64}
	cur := make([]uint64, VIPFilterWords*64)
	for i := range 300 {
		leases := map[fshaVipKey]fshaVipLease{}
		before, after := map[fshaVipKey]bool{}, map[fshaVipKey]bool{}
		for _, k := range pool {
			if r.IntN(3) > 0 {
				leases[k] = fshaVipLease{IpUntilNs: values[r.IntN(len(values))]}
			}
			if r.IntN(2) == 0 {
				before[k] = true
			}
			if r.IntN(2) == 0 {
				after[k] = true
			}
		}
		// the buckets as they are: right for the VIPs before, or lower;
		// the others anything
		other := uint64(math.MaxUint64)
		if i%10 == 0 {
			other = 0 // a fresh map
		}
		for b := range cur {
			cur[b] = other
		}
		for _, k := range pool {
			cur[vipFilterBit(k.Addr, k.Family)] = values[r.IntN(len(values))]
		}
		for b, d := range (leaseView{vips: before, leases: leases}).deadlines() {
			cur[b] = min(cur[b], d)
		}
		lower, raise := deadlinePlan(leases, before, after, cur)
		state := append([]uint64(nil), cur...)
		for b, d := range lower {
			if d >= state[b] {
				t.Fatalf("case %d: lowers bucket %d from %d to %d", i, b, state[b], d)
			}
			state[b] = d
		}
		for k := range mergeSets(before, after) {
			if b := vipFilterBit(k.Addr, k.Family); state[b] > leases[k].IpUntilNs {
				t.Fatalf("case %d: bucket %d at %d above %s's deadline %d before the change", i, b, state[b], vipKeyAddr(k), leases[k].IpUntilNs)
			}
		}
		for b, d := range raise {
			if d < state[b] {
				t.Fatalf("case %d: raises bucket %d from %d to %d", i, b, state[b], d)
			}
			state[b] = d
		}
		final := (leaseView{vips: after, leases: leases}).deadlines()
		for b, d := range state {
			if _, ok := final[uint32(b)]; !ok && d != math.MaxUint64 {
				t.Fatalf("case %d: bucket %d without VIPs ends at %d, want U64_MAX", i, b, d)
			}
		}
		for b, d := range final {
			if state[b] != d {
				t.Fatalf("case %d: bucket %d ends at %d, want %d", i, b, state[b], d)
			}
		}
	}
}

func mergeSets(a, b map[fshaVipKey]bool) map[fshaVipKey]bool {
	out := map[fshaVipKey]bool{}
	for k := range a {
		out[k] = true
	}
	for k := range b {
		out[k] = true
	}
	return out
}

// TestVIPLeasesRestart loads the data plane pinned, sets leases, grants and
// the fencing mode, and loads it again as a restarted daemon does: it
// reads back the same state, the CLI's read-only maps and dump show it,
// and unload removes the new pins with the others.
func TestVIPLeasesRestart(t *testing.T) {
	testenv.RequireBPF(t)
	// Unload looks for legacy tc filters on every link: in a network
	// namespace of its own, this test's thread sees none of the host's.
	dir := ownNetnsAndPins(t)
	log := zaptest.NewLogger(t)
	opts := Options{PinPath: dir, FlowsMax: 1024, PeerFlowsMax: 1024}
	jiffy, _ := jiffyLength()
	until := MonotonicNow() + uint64(time.Hour)
	leases := map[netip.Addr]VIPLease{
		vip4: {Epoch: 11, State: VIPLeaseHeld, Holder: 1, Until: until},
		vip6: {Epoch: 12, State: VIPLeaseDraining, Holder: 1},
	}
	grant := VIPGrant{Epoch: 13, Until: until, Holder: 2}

	dp, err := Load(log, opts)
	if err != nil {
		t.Fatal(err)
	}
	err = errors.Join(dp.SetVIPs([]netip.Addr{vip4, vip6, vip4b}), dp.SetFencingMode(false, true),
		dp.SetVIPGrant(vip4b, grant))
	for a, l := range leases {
		err = errors.Join(err, dp.SetVIPLease(a, l))
	}
	if err != nil {
		t.Fatal(err)
	}
	before, err := dp.readDeadlines()
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	dp, err = Load(log, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	check := func(m *Maps, what string) {
		t.Helper()
		got, err := m.VIPLeases()
		if err != nil || len(got) != 2 || got[vip4] != leases[vip4] || got[vip6] != leases[vip6] {
			t.Errorf("%s: VIPLeases() = %+v, %v; want %+v", what, got, err, leases)
		}
		grants, err := m.VIPGrants()
		if err != nil || len(grants) != 1 || grants[vip4b] != grant {
			t.Errorf("%s: VIPGrants() = %+v, %v", what, grants, err)
		}
		if l, err := m.ReadLease(); err != nil || l.Enabled || !l.PerVIP {
			t.Errorf("%s: ReadLease() = %+v, %v; want per-VIP only", what, l, err)
		}
		d, err := m.readDeadlines()
		if err != nil {
			t.Fatal(err)
		}
		for b := range d {
			if d[b] != before[b] {
				t.Errorf("%s: bucket %d is %d, was %d", what, b, d[b], before[b])
			}
		}
		if d[bucketOf(vip4)] != until-jiffy || d[bucketOf(vip4b)] != 0 || d[bucketOf(vip6)] != math.MaxUint64 {
			t.Errorf("%s: buckets of vip4 %d, vip4b %d, vip6 %d", what, d[bucketOf(vip4)], d[bucketOf(vip4b)], d[bucketOf(vip6)])
		}
	}
	check(&dp.Maps, "after a restart")
	// the restarted daemon sets its VIPs again: nothing moves
	if err := dp.SetVIPs([]netip.Addr{vip4, vip6, vip4b}); err != nil {
		t.Fatal(err)
	}
	check(&dp.Maps, "after a restart and SetVIPs")

	pm, err := OpenPinned(dir)
	if err != nil {
		t.Fatal(err)
	}
	check(&pm.Maps, "read-only pins")
	dumps, err := pm.Dump("")
	if err != nil {
		t.Fatal(err)
	}
	entries := map[string]int{}
	for _, d := range dumps {
		entries[d.Name] = len(d.Entries)
	}
	if entries[fshaMapVipLeases] != 2 || entries[fshaMapVipGrants] != 1 || entries[fshaMapVipDeadlines] != 2 {
		t.Errorf("dump entries %v, want 2 leases, 1 grant, 2 buckets (vip6's is U64_MAX)", entries)
	}
	pm.Close()
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	if err := Unload(log, dir); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(dir)
	for _, e := range left {
		if !e.IsDir() {
			t.Errorf("pin %s left after unload", e.Name())
		}
	}
}

// ownNetnsAndPins moves the test's thread into a network namespace of its
// own (the thread stays locked, so it ends with the test) and mounts a
// bpffs of the test's own, unmounted at its end; it returns a pin
// directory in it (the bpffs root holds the kernel's maps.debug and
// progs.debug).
func ownNetnsAndPins(t *testing.T) string {
	t.Helper()
	runtime.LockOSThread()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		t.Fatalf("unshare network namespace: %v", err)
	}
	root := filepath.Join(t.TempDir(), "bpffs")
	if err := EnsureBPFFS(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(root, unix.MNT_DETACH) })
	return filepath.Join(root, "fsha")
}
