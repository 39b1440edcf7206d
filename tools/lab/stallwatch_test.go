package lab

import (
	"slices"
	"testing"
	"time"
)

func TestStallWindowWatch(t *testing.T) {
	at := func(ms int) time.Time { return time.Unix(1000, 0).Add(time.Duration(ms) * time.Millisecond) }
	type nap struct {
		cpu, start, late int // ms
	}
	type want struct {
		start, end, late, naps int // ms
		cpus                   []int
	}
	for _, c := range []struct {
		name string
		naps []nap
		want []want
	}{
		{"one long nap", []nap{{0, 0, 200}}, []want{{0, 205, 200, 1, []int{0}}}},
		{"jitter only", []nap{{0, 0, 5}, {0, 10, 9}, {1, 20, 10}, {0, 30, 3}}, nil},
		// seen at a lab's start: 57, 59 and 127 ms late within 358 ms;
		// the window (the last 300 ms) holds 4 ms of the first
		{"a map being made in chunks", []nap{{0, 0, 57}, {0, 62, 59}, {0, 226, 127}},
			[]want{{0, 358, 190, 3, []int{0}}}},
		{"short stalls far apart", []nap{{0, 0, 100}, {0, 400, 100}, {1, 800, 100}}, nil},
		// counted once: the next stall needs naps of its own
		{"reported once", []nap{{0, 0, 80}, {0, 90, 80}, {0, 180, 20}, {0, 210, 20}},
			[]want{{0, 175, 160, 2, []int{0}}}},
		{"a long nap clears its CPU's window", []nap{{0, 0, 100}, {0, 110, 160}, {0, 280, 100}},
			[]want{{110, 275, 160, 1, []int{0}}}},
		// one CPU after the other: the heartbeats wait for both
		{"CPU 0 then CPU 1", []nap{{0, 0, 90}, {1, 100, 90}},
			[]want{{0, 195, 180, 2, []int{0, 1}}}},
		// both at once: one stall of 100 ms, not 200
		{"both CPUs at once", []nap{{0, 0, 100}, {1, 2, 100}}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			var w stallWindowWatch
			var got []stall
			for _, n := range c.naps {
				if st, ok := w.add(n.cpu, at(n.start), time.Duration(n.late)*time.Millisecond); ok {
					got = append(got, st)
				}
			}
			if len(got) != len(c.want) {
				t.Fatalf("stalls %+v, want %+v", got, c.want)
			}
			for i, g := range got {
				wt := c.want[i]
				if !g.start.Equal(at(wt.start)) || !g.end.Equal(at(wt.end)) || g.late != time.Duration(wt.late)*time.Millisecond ||
					g.naps != wt.naps || !slices.Equal(g.cpus, wt.cpus) {
					t.Errorf("stall %d: %+v, want %+v", i, g, wt)
				}
				t.Log(g.what())
			}
		})
	}
}
