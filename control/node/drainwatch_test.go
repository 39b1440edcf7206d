package node

import (
	"testing"
	"time"
)

// TestDrainWatch: the drain's probing waits for another holder and a
// second more, probes once a second, calls the path verified at the first
// packet after the first probe and broken after drainProbeRounds probes
// without one; a holder lost meanwhile restarts the wait.
func TestDrainWatch(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	type look struct {
		at        time.Duration
		elsewhere bool
		in        uint64 // packets in, if the look is due
		due       bool
		sends     bool
		verdict   drainVerdict
	}
	for _, c := range []struct {
		name  string
		looks []look
	}{
		{"verified by a packet after the first probe", []look{
			{0, true, 0, false, false, 0},
			{500 * time.Millisecond, true, 0, false, false, 0},
			{time.Second, true, 10, true, true, drainProbe},
			{1500 * time.Millisecond, true, 0, false, false, 0},
			{2 * time.Second, true, 11, true, true, drainVerified},
			{3 * time.Second, true, 11, false, false, 0},
		}},
		{"broken after three probes", []look{
			{0, true, 0, false, false, 0},
			{time.Second, true, 5, true, true, drainProbe},
			{2 * time.Second, true, 5, true, true, drainProbe},
			{3 * time.Second, true, 5, true, true, drainProbe},
			{4 * time.Second, true, 5, true, false, drainBroken},
			{5 * time.Second, true, 5, false, false, 0},
		}},
		{"no holder elsewhere: no probe, and the wait starts over", []look{
			{0, false, 0, false, false, 0},
			{time.Second, true, 0, false, false, 0},
			{1500 * time.Millisecond, false, 0, false, false, 0},
			{2 * time.Second, true, 0, false, false, 0},
			{3 * time.Second, true, 7, true, true, drainProbe},
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var wd drainWatch
			for i, l := range c.looks {
				due := wd.due(at(l.at), l.elsewhere)
				if due != l.due {
					t.Fatalf("look %d at +%v: due %v, want %v", i, l.at, due, l.due)
				}
				if !due {
					continue
				}
				if s := wd.sends(); s != l.sends {
					t.Fatalf("look %d at +%v: sends %v, want %v", i, l.at, s, l.sends)
				}
				if v := wd.observe(at(l.at), l.in); v != l.verdict {
					t.Fatalf("look %d at +%v: verdict %d, want %d", i, l.at, v, l.verdict)
				}
			}
		})
	}
}
