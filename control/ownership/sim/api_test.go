package sim

import (
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// check counts the answering data-plane entries first and looks at every
// VIP of every node only when an address has two: two nodes answering
// must still be caught, and named.
func TestCheckSeesTwoAnswering(t *testing.T) {
	w := converged(t, 1, 3, 3, ownership.DefaultTiming(), false)
	vip := w.vips[0].Addr
	h := w.holderOf(vip)
	n := w.nodes[(h+1)%3]
	n.dp[vip] = &dpEntry{held: true, epoch: 99, until: n.local2(w.now).Add(time.Second)}
	w.check()
	if len(w.violated) != 1 || !strings.Contains(w.violated[0], vip.String()+" answered by 2 nodes") {
		t.Fatalf("violations %q, want %s answered by 2 nodes", w.violated, vip)
	}
	n.dp[vip].held = false
	w.violated = nil
	w.check()
	if len(w.violated) != 0 {
		t.Fatalf("one node answering: violations %q", w.violated)
	}
}

// The exported World: a cluster settles, counts each node's messages
// (every node heartbeats every other once per renewal and every voter
// answers each claim), and a power cut of a holder has its VIP answered
// by another node within the lease.
func TestWorld(t *testing.T) {
	timing := ownership.DefaultTiming()
	w, err := NewWorld(5, 3, 6, timing)
	if err != nil {
		t.Fatal(err)
	}
	w.Start(100 * time.Millisecond)
	all := func() bool {
		for _, v := range w.VIPs() {
			if w.Holder(v) < 0 {
				return false
			}
		}
		return true
	}
	if _, ok := w.Until(5*time.Second, 10*time.Millisecond, all); !ok {
		t.Fatal("not every VIP answered within 5 s")
	}
	if err := w.Settled(200 * time.Millisecond); err != nil {
		t.Fatal(err)
	}
	before := w.Traffic()
	w.Run(time.Second)
	for i, tr := range w.Traffic() {
		d := tr.Sub(before[i])
		if hb := d.Sent.Heartbeats.Msgs; hb < 38 || hb > 42 {
			t.Errorf("n%d sent %d heartbeats in a second, want 2 peers x 20", i, hb)
		}
		if d.Received.Heartbeats.Msgs < 38 || d.Sent.Replies.Msgs < 38 || d.Sent.Total().Bytes <= 0 ||
			d.Sent.Total().Bytes != d.Sent.Heartbeats.Bytes+d.Sent.Replies.Bytes+d.Sent.Releases.Bytes {
			t.Errorf("n%d: %+v", i, d)
		}
	}
	vip := w.VIPs()[0]
	old := w.Holder(vip)
	w.PowerCut(old)
	took, ok := w.Until(2*time.Second, 100*time.Microsecond, func() bool { h := w.Holder(vip); return h >= 0 && h != old })
	if !ok || took > timing.Lease+10*time.Millisecond {
		t.Fatalf("after a power cut of n%d, %s answered again after %v (%v), want within the lease + 10 ms", old, vip, took, ok)
	}
	if v := w.Violations(); len(v) > 0 {
		t.Fatal(v)
	}
}
