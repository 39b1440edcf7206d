package main

import (
	"math"
	"testing"
)

// The random order visits every flow once per period, and consecutive
// packets land as far apart as uniformly random ones would.
func TestFlowMixRandomIsPermutation(t *testing.T) {
	for _, n := range []int{1, 2, 3, 1000, 999_000, 1 << 20} {
		m, err := planFlowMix(n)
		if err != nil {
			t.Fatal(err)
		}
		seen := make([]bool, n)
		near := 0
		prev := uint32(0)
		for i := range uint32(n) {
			f := m.flow(orderRandom, i)
			if f >= uint32(n) || seen[f] {
				t.Fatalf("n=%d: counter %d gives flow %d, out of range or seen before", n, i, f)
			}
			seen[f] = true
			if i > 0 && max(f, prev)-min(f, prev) < 1024 {
				near++
			}
			prev = f
		}
		// uniform: P(|f - prev| < 1024) ~ 2048/n, over n packets ~ 2048
		if n > 100_000 && near > 2*2048 {
			t.Errorf("n=%d: %d consecutive packets within 1,024 flows of each other, want about 2,048", n, near)
		}
	}
}

// The Zipf table names existing flows only, and its head is as heavy as
// the law says.
func TestFlowMixZipf(t *testing.T) {
	const n = 999_000
	m, err := planFlowMix(n)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range m.zipf {
		if f >= n {
			t.Fatalf("entry %d: flow %d of %d", i, f, n)
		}
	}
	if exact := zipfTop1Exact(n); math.Abs(m.zipfTop1-exact) > 0.01 {
		t.Errorf("top 1%% of flows get %.3f of the table, the law says %.3f", m.zipfTop1, exact)
	}
	if m.period(orderZipf) != zipfEntries || len(m.zipf) != zipfEntries {
		t.Errorf("zipf period %d, table %d, want %d", m.period(orderZipf), len(m.zipf), zipfEntries)
	}
	t.Logf("s=%g over %d flows: top 1%% get %.1f%% (law %.1f%%), %d flows named", zipfS, n, m.zipfTop1*100, zipfTop1Exact(n)*100, m.zipfUsed)
}
