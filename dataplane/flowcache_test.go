package dataplane

import (
	"encoding/binary"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The flow cache (bpf/fsha.h): the segments of a flow after its first one
// in a jiffy go to a per-CPU slot rather than to the flows map; readers add
// what the slots hold, the flow's first segment in a later jiffy folds it
// in, and a close folds it into the close event.

// onCPU0 pins the test's thread to CPU 0, so that every BPF_PROG_RUN of the
// test uses the same CPU's slots.
func onCPU0(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	var saved unix.CPUSet
	if err := unix.SchedGetaffinity(0, &saved); err != nil {
		t.Fatal(err)
	}
	moveToCPU(t, 0)
	t.Cleanup(func() {
		_ = unix.SchedSetaffinity(0, &saved)
		runtime.UnlockOSThread()
	})
}

// moveToCPU moves the (locked) thread to CPU cpu.
func moveToCPU(t *testing.T, cpu int) {
	t.Helper()
	var one unix.CPUSet
	one.Set(cpu)
	if err := unix.SchedSetaffinity(0, &one); err != nil {
		t.Fatalf("move to cpu %d: %v", cpu, err)
	}
}

// nextJiffy waits until the kernel's tick: what follows runs at the start
// of a jiffy (at least a millisecond long), in the same jiffy if quick.
func nextJiffy(t *testing.T) {
	t.Helper()
	var start, now unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &start); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for now = start; now == start; {
		if time.Now().After(deadline) {
			t.Fatal("CLOCK_MONOTONIC_COARSE did not move in a second")
		}
		_ = unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &now)
	}
}

// mapFlow is what the flows map itself says, without the cache.
func (h *harness) mapFlow(t *testing.T, c conn) fshaFlow {
	t.Helper()
	var v fshaFlow
	if err := h.maps.Flows.Lookup(c.key(), &v); err != nil {
		t.Fatalf("look up flow %+v: %v", c, err)
	}
	return v
}

func TestProgFlowCache(t *testing.T) {
	h := newHarness(t, 64)
	c4vlan := c4
	c4vlan.vlans = []uint16{7} // not the fast path: parse_packet, then the cache
	const n = 5                // segments each way in one jiffy
	for _, tc := range []struct {
		name string
		c    conn
	}{{"ipv4", c4}, {"ipv6", c6}, {"ipv4 in a vlan", c4vlan}} {
		t.Run(tc.name, func(t *testing.T) {
			onCPU0(t) // a subtest is a goroutine of its own
			c := tc.c
			var cs, ss uint32
			var before Counters
			// What follows holds when the 2n segments run in one jiffy: a
			// busy machine may preempt the test between two of them. That
			// is the premise failing, not the cache: start over.
			for attempt := 1; ; attempt++ {
				h.reset(t)
				cs, ss = established(t, h, c)
				before = h.counters(t)
				nextJiffy(t)
				began := jiffiesNow(t, h)
				for i := range uint32(n) {
					h.run(t, ingress, c.in(tcpACK|tcpPSH, cs+i*100, ss+i*10, 100).bytes(t))
					h.run(t, egress, c.out(tcpACK|tcpPSH, ss+i*10, cs+(i+1)*100, 10).bytes(t))
				}
				if jiffiesNow(t, h) == began {
					break
				}
				if attempt == 10 {
					t.Fatalf("%d segments never ran within one jiffy in %d tries: the machine is too busy for this test", 2*n, attempt)
				}
				t.Logf("the segments spanned two jiffies (try %d, a busy machine): again", attempt)
			}
			d := counterDelta(before, h.counters(t))
			if d[ingress][fshaCounterCOUNTER_TRACKED] != n || d[egress][fshaCounterCOUNTER_TRACKED] != n {
				t.Errorf("counters moved by %s, want %d tracked each way", d, n)
			}
			// The map has the first segment of each direction, the
			// cache the rest.
			m := h.mapFlow(t, c)
			if m.PacketsIn != 1 || m.BytesIn != 100+100 || m.PacketsOut != 1+1 || m.BytesOut != 10 {
				t.Errorf("flows map after one jiffy of segments: %+v, want the first of each direction", m)
			}
			// out segments from the server, the first n with 10 bytes each
			want := func(f Flow, out uint64, what string) {
				t.Helper()
				if f.PacketsIn != n || f.BytesIn != 100+n*100 || f.SeqIn != cs+n*100 || f.AckIn != ss+(n-1)*10 || f.WindowIn != 501 ||
					f.PacketsOut != 1+out || f.BytesOut != n*10 || f.SeqOut != ss+n*10 || f.AckOut != cs+n*100 || f.WindowOut != 509 {
					t.Errorf("%s: %+v, want %d segments in and %d out counted", what, f, n, out)
				}
			}
			f, ok := h.flow(t, c)
			if !ok {
				t.Fatal("flow gone")
			}
			want(f, n, "flow as read (map + cache)")

			// The next jiffy's first segment folds the slot in.
			nextJiffy(t)
			h.run(t, egress, c.out(tcpACK, ss+n*10, cs+n*100, 0).bytes(t))
			m = h.mapFlow(t, c)
			if m.PacketsOut != 1+n+1 || m.BytesOut != n*10 || m.SeqOut != ss+n*10 || m.PacketsIn != 1 {
				t.Errorf("flows map after the next jiffy's egress segment: %+v, want all %d egress segments", m, n+1)
			}
			f, _ = h.flow(t, c)
			want(f, n+1, "flow as read after the fold")

			// A close puts what this CPU's slots hold into the event.
			h.drainEvents(t)
			nextJiffy(t)
			h.run(t, ingress, c.in(tcpACK, cs+n*100, ss+n*10, 0).bytes(t)) // fills the slot
			h.run(t, ingress, c.in(tcpACK, cs+n*100, ss+n*10, 0).bytes(t)) // cached
			h.run(t, egress, c.out(tcpACK|tcpFIN, ss+n*10, cs+n*100, 0).bytes(t))
			h.run(t, ingress, c.in(tcpACK|tcpFIN, cs+n*100, ss+n*10+1, 0).bytes(t))
			evs := h.drainEvents(t)
			if len(evs) != 1 || evs[0].Type != EventClose || evs[0].Reason != CloseFIN {
				t.Fatalf("events %+v, want one FIN close", evs)
			}
			if e := evs[0].Flow; e.PacketsIn != n+3 || e.PacketsOut != 1+n+2 || e.BytesIn != 100+n*100 || e.BytesOut != n*10 {
				t.Errorf("close event flow %+v, want %d segments in and %d out", e, n+3, 1+n+2)
			}
			if _, ok := h.flow(t, c); ok {
				t.Errorf("flow still listed after the close")
			}
			// The slot forgot the flow: the closed connection's last ACK
			// in the same jiffy is not counted as tracked.
			before = h.counters(t)
			h.run(t, egress, c.out(tcpACK, ss+n*10+1, cs+n*100+1, 0).bytes(t))
			if d := counterDelta(before, h.counters(t)); d[egress][fshaCounterCOUNTER_TRACKED] != 0 {
				t.Errorf("last ACK after the close counted as tracked: %s", d)
			}
			h.checkTotals(t)
		})
	}
}

// TestProgFlowCacheFenced checks that a cached flow obeys the lease: once
// it runs out, the next segment is dropped even within the jiffy.
func TestProgFlowCacheFenced(t *testing.T) {
	h := newHarness(t, 64)
	onCPU0(t)
	h.reset(t)
	if err := h.maps.RenewLease(time.Hour); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = h.maps.DisableLease() })
	cs, ss := established(t, h, c4)
	nextJiffy(t)
	pkt := c4.in(tcpACK|tcpPSH, cs, ss, 100).bytes(t)
	h.run(t, ingress, pkt) // fills the slot
	h.run(t, ingress, pkt) // cached
	if err := h.maps.ExpireLease(); err != nil {
		t.Fatal(err)
	}
	before := h.counters(t)
	ret, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt, Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
	if err != nil {
		t.Fatal(err)
	}
	h.runs[ingress]++
	if d := counterDelta(before, h.counters(t)); ret != xdpDrop || d[ingress][fshaCounterCOUNTER_FENCED] != 1 {
		t.Errorf("cached flow with an expired lease: verdict %d, counters %s; want XDP_DROP and fenced", ret, d)
	}
}

// TestProgFlowCacheCollision runs two flows that share a slot, interleaved
// within and across jiffies: every segment is counted once.
func TestProgFlowCacheCollision(t *testing.T) {
	h := newHarness(t, 64)
	onCPU0(t)
	h.reset(t)
	a := c4
	b := collidingConn(t, a)
	csA, ssA := established(t, h, a)
	csB, ssB := establishedAlso(t, h, b)
	const rounds, per = 3, 4
	for r := range uint32(rounds) {
		nextJiffy(t)
		for i := range uint32(per) {
			k := r*per + i
			h.run(t, ingress, a.in(tcpACK|tcpPSH, csA+k*10, ssA, 10).bytes(t))
			h.run(t, ingress, b.in(tcpACK|tcpPSH, csB+k*20, ssB, 20).bytes(t))
		}
	}
	fa, _ := h.flow(t, a)
	fb, _ := h.flow(t, b)
	if fa.PacketsIn != rounds*per || fa.BytesIn != 100+rounds*per*10 || fa.SeqIn != csA+rounds*per*10 {
		t.Errorf("flow a %+v, want %d segments of 10 bytes", fa, rounds*per)
	}
	if fb.PacketsIn != rounds*per || fb.BytesIn != 100+rounds*per*20 || fb.SeqIn != csB+rounds*per*20 {
		t.Errorf("flow b %+v, want %d segments of 20 bytes", fb, rounds*per)
	}
	h.checkTotals(t)
}

// cacheSlot is bpf/fsha.c's cache_slot_of for the ingress half, in Go.
func cacheSlot(t *testing.T, k fshaFlowKey) uint32 {
	b, err := binary.Append(nil, binary.NativeEndian, k)
	if err != nil || len(b) != 40 {
		t.Fatalf("encode key: %v (%d bytes)", err, len(b))
	}
	var h uint64
	for i := 0; i < len(b); i += 8 {
		h ^= binary.NativeEndian.Uint64(b[i:])
	}
	return (uint32(h^(h>>32)) * 0x9e3779b1) >> (32 - 10)
}

// establishedAlso opens c as established does, next to other flows.
func establishedAlso(t *testing.T, h *harness, c conn) (cseq, sseq uint32) {
	t.Helper()
	ci, si := uint32(0x20000000), uint32(0x30000000)
	h.run(t, ingress, c.in(tcpSYN, ci, 0, 0).bytes(t))
	h.run(t, egress, c.out(tcpSYN|tcpACK, si, ci+1, 0).bytes(t))
	h.run(t, ingress, c.in(tcpACK|tcpPSH, ci+1, si+1, 100).bytes(t))
	h.run(t, egress, c.out(tcpACK, si+1, ci+101, 0).bytes(t))
	if f, ok := h.flow(t, c); !ok || f.BytesIn != 100 {
		t.Fatalf("flow %+v (present %v) after the handshake", f, ok)
	}
	return ci + 101, si + 1
}

// collidingConn returns a connection to the same VIP and client as c whose
// flow takes the same cache slot.
func collidingConn(t *testing.T, c conn) conn {
	t.Helper()
	want := cacheSlot(t, c.key())
	for p := uint32(1024); p < 65536; p++ {
		o := c
		o.cport = uint16(p)
		if o.cport != c.cport && cacheSlot(t, o.key()) == want {
			return o
		}
	}
	t.Fatal("no client port collides")
	return conn{}
}

// TestDumpFlowCache checks `fsha maps`' view of the cache: only the slots
// in use, one raw value per CPU; the counters stay numbers.
func TestDumpFlowCache(t *testing.T) {
	h := newHarness(t, 64)
	onCPU0(t)
	h.reset(t)
	cs, ss := established(t, h, c4)
	nextJiffy(t)
	h.run(t, ingress, c4.in(tcpACK|tcpPSH, cs, ss, 100).bytes(t))
	h.run(t, ingress, c4.in(tcpACK|tcpPSH, cs+100, ss, 100).bytes(t))
	d, err := h.maps.Dump(fshaMapFlowCache)
	if err != nil {
		t.Fatal(err)
	}
	// the egress slot of the flow's creation and the ingress slot
	if len(d) != 1 || len(d[0].Entries) != 2 {
		t.Fatalf("flow cache dump %+v, want the two slots of one flow", d)
	}
	ncpu, _ := ebpf.PossibleCPU()
	for _, e := range d[0].Entries {
		if len(e.PerCPUValues) != ncpu || len(e.PerCPUValues[0]) != int(d[0].ValueSize) || e.PerCPU != nil {
			t.Errorf("entry %+v: want %d raw values of %d bytes", e, ncpu, d[0].ValueSize)
		}
	}
	c, err := h.maps.Dump(fshaMapCounters)
	if err != nil || len(c) != 1 || len(c[0].Entries) != int(c[0].MaxEntries) || len(c[0].Entries[0].PerCPU) != ncpu {
		t.Errorf("counters dump %+v (%v)", c, err)
	}
}

// TestProgFlowCacheReusedTuple closes a flow on one CPU while another CPU's
// slot still holds it, and opens a new connection with the same tuple in
// the same jiffy on that other CPU: the stale slot must not take the new
// connection's segments, which must create its flow.
func TestProgFlowCacheReusedTuple(t *testing.T) {
	if runtime.NumCPU() < 2 {
		t.Skip("needs two CPUs")
	}
	h := newHarness(t, 64)
	onCPU0(t)
	h.reset(t)
	c := c4
	cs, ss := established(t, h, c)
	h.drainEvents(t)
	moveToCPU(t, 1)
	nextJiffy(t)
	h.run(t, egress, c.out(tcpACK|tcpPSH, ss, cs, 10).bytes(t)) // CPU 1's slot takes the flow
	h.run(t, egress, c.out(tcpACK|tcpPSH, ss+10, cs, 10).bytes(t))
	moveToCPU(t, 0)
	h.run(t, egress, c.out(tcpRST, ss+20, 0, 0).bytes(t)) // closed on CPU 0
	moveToCPU(t, 1)
	// the new connection, same tuple, same jiffy, on CPU 1
	ci, si := uint32(0x50000000), uint32(0x60000000)
	h.run(t, ingress, c.in(tcpSYN, ci, 0, 0).bytes(t))
	h.run(t, egress, c.out(tcpSYN|tcpACK, si, ci+1, 0).bytes(t))
	h.run(t, ingress, c.in(tcpACK|tcpPSH, ci+1, si+1, 50).bytes(t))
	h.run(t, egress, c.out(tcpACK, si+1, ci+51, 0).bytes(t))
	evs := h.drainEvents(t)
	if len(evs) != 2 || evs[0].Type != EventClose || evs[1].Type != EventOpen {
		t.Fatalf("events %+v, want the old flow's close and the new one's open", evs)
	}
	f, ok := h.flow(t, c)
	if !ok || f.BytesIn != 50 || f.PacketsOut != 1 || f.SeqOut != si+1 || f.BytesOut != 0 {
		t.Errorf("new flow %+v (present %v), want 50 bytes in and the server's ACK", f, ok)
	}
	h.checkTotals(t)
}
