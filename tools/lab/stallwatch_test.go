package lab

import (
	"testing"
	"time"
)

func TestStallWindowWatch(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	type nap struct {
		start, late int // ms
	}
	for _, c := range []struct {
		name string
		naps []nap
		want []stall // start, end in ms since at(0) via at()
	}{
		{"one long nap", []nap{{0, 200}},
			[]stall{{start: at(0), end: at(205), late: 200 * time.Millisecond, naps: 1}}},
		{"jitter only", []nap{{0, 5}, {10, 9}, {20, 10}, {30, 3}}, nil},
		// seen at a lab's start: 57, 59 and 127 ms late within 358 ms;
		// the last two within the window
		{"a map being made in chunks", []nap{{0, 57}, {62, 59}, {226, 127}},
			[]stall{{start: at(62), end: at(358), late: 186 * time.Millisecond, naps: 2}}},
		{"short stalls far apart", []nap{{0, 100}, {400, 100}, {800, 100}}, nil},
		// counted once: the next stall needs naps of its own
		{"reported once", []nap{{0, 80}, {90, 80}, {180, 20}, {210, 20}},
			[]stall{{start: at(0), end: at(175), late: 160 * time.Millisecond, naps: 2}}},
		{"a long nap clears the window", []nap{{0, 100}, {110, 160}, {280, 100}},
			[]stall{{start: at(110), end: at(275), late: 160 * time.Millisecond, naps: 1}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w stallWindowWatch
			var got []stall
			for _, n := range c.naps {
				if st, ok := w.add(at(n.start), time.Duration(n.late)*time.Millisecond); ok {
					got = append(got, st)
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("stalls %+v, want %+v", got, c.want)
			}
			for i := range got {
				if !got[i].start.Equal(c.want[i].start) || !got[i].end.Equal(c.want[i].end) || got[i].late != c.want[i].late || got[i].naps != c.want[i].naps {
					t.Errorf("stall %d: %+v, want %+v", i, got[i], c.want[i])
				}
			}
			for _, st := range got {
				t.Log(st.what())
			}
		})
	}
}
