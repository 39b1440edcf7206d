package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

// A tiny run of the scale suite, every part: two sizes, two trials of
// each failure, half a second of gossip. Every table has its rows, and
// the simulated takeovers are bounded by the lease as the design says.
func TestScaleTinyRun(t *testing.T) {
	b := &scaleBench{nodes: []int{3, 5}, vipsPerNode: 2, trials: 2, timings: []string{"default"},
		failures: []string{"power", "network"}, seed: 1, workers: 1, gossip: true, gossipFor: 500 * time.Millisecond,
		gossipSet: []string{"tolerant"}, connRate: 100, gossipSettle: 100 * time.Millisecond}
	var out bytes.Buffer
	if err := b.run(context.Background(), zaptest.NewLogger(t), &out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	t.Log("\n" + text)
	if strings.Contains(text, "FAILED") {
		t.Fatal("a part failed")
	}
	for _, want := range []string{"A. failure", "B. ownership", "C. lease", "D. gossip", "E. replication", "F. per node",
		"members), MEASURED: 35 B ("} {
		if !strings.Contains(text, want) {
			t.Errorf("no %q in the output", want)
		}
	}
	for _, row := range []string{`default \(lease 250ms, renew 50ms\) +3 +6 +power cut +2 `, `default +5 +network cut `,
		`(?m)^default +5 +\d+ B +\d+ B +79`, `tolerant \(probe 1s, gossip 200ms, push/pull 30s\) +5 `, `(?m)^5 +4 +100 +146.4 kB/s`} {
		if !regexp.MustCompile(row).MatchString(text) {
			t.Errorf("no row matching %q", row)
		}
	}
	for _, c := range b.lastSims {
		for _, f := range b.failures {
			xs := tookOf(c, f)
			if len(xs) != b.trials {
				t.Fatalf("%d nodes, %s: %d trials passed of %d", c.nodes, f, len(xs), b.trials)
			}
			for _, x := range xs {
				if x < 0.150 || x > 0.260 {
					t.Errorf("%d nodes, %s: VIP answered again after %.1f ms, want within the lease (250 ms) + 10", c.nodes, f, x*1000)
				}
			}
		}
		if s := steadyStats(c); s.hbSent < 0.95*20*float64(c.nodes-1) || s.hbSent > 1.05*20*float64(c.nodes-1) {
			t.Errorf("%d nodes: %.1f heartbeats/s per node, want 20 per peer", c.nodes, s.hbSent)
		}
	}
}

// The gossip window of fsha's profiles: from two push/pull intervals after
// the start, whole intervals long.
func TestGossipSpan(t *testing.T) {
	for _, tc := range []struct {
		timing             string
		window, warm, span time.Duration
	}{
		{"tolerant", 20 * time.Second, time.Minute, 30 * time.Second},
		{"tolerant", 30 * time.Second, time.Minute, 30 * time.Second},
		{"fast", 20 * time.Second, 10 * time.Second, 20 * time.Second},
		{"fast", 21 * time.Second, 10 * time.Second, 25 * time.Second},
	} {
		warm, span := gossipSpan(gossipTimings[tc.timing], tc.window, 3*time.Second, true)
		if warm != tc.warm || span != tc.span {
			t.Errorf("%s, %v: warm %v, window %v; want %v, %v", tc.timing, tc.window, warm, span, tc.warm, tc.span)
		}
	}
}
