package allocation

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func vips(n int) []VIP {
	out := make([]VIP, n)
	for i := range out {
		out[i] = VIP{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)})}
	}
	return out
}

func none(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = None
	}
	return s
}

func loads(target []int, eligible []int) map[int]int {
	l := make(map[int]int)
	for _, n := range eligible {
		l[n] = 0
	}
	for _, n := range target {
		if n != None {
			l[n]++
		}
	}
	return l
}

func spread(l map[int]int) int {
	lo, hi := 1<<30, -1
	for _, v := range l {
		lo, hi = min(lo, v), max(hi, v)
	}
	return hi - lo
}

func moved(a, b []int) int {
	n := 0
	for i := range a {
		if a[i] != b[i] {
			n++
		}
	}
	return n
}

func TestColdStartIsBalanced(t *testing.T) {
	for nodes := 1; nodes <= 6; nodes++ {
		for n := 0; n <= 20; n++ {
			eligible := make([]int, nodes)
			for i := range eligible {
				eligible[i] = i
			}
			got := Assign(Input{VIPs: vips(n), Eligible: eligible, Current: none(n), Pins: none(n)})
			if s := spread(loads(got, eligible)); s > 1 {
				t.Errorf("%d nodes %d vips: spread %d: %v", nodes, n, s, got)
			}
			if slices.Contains(got, None) {
				t.Errorf("%d nodes %d vips: unassigned VIP: %v", nodes, n, got)
			}
		}
	}
}

func TestNoEligibleNodeHoldsNothing(t *testing.T) {
	got := Assign(Input{VIPs: vips(3), Current: []int{0, 1, 2}, Pins: none(3)})
	if !slices.Equal(got, none(3)) {
		t.Fatalf("got %v, want all None", got)
	}
}

func TestNodeDeathMovesOnlyItsVIPs(t *testing.T) {
	for _, policy := range []Policy{Automatic, Sticky} {
		v := vips(7)
		all := []int{0, 1, 2}
		before := Assign(Input{VIPs: v, Eligible: all, Current: none(7), Pins: none(7), Policy: policy})
		for dead := range all {
			survivors := slices.DeleteFunc(slices.Clone(all), func(n int) bool { return n == dead })
			after := Assign(Input{VIPs: v, Eligible: survivors, Current: before, Pins: none(7), Policy: policy})
			for i := range before {
				if before[i] != dead && after[i] != before[i] {
					t.Errorf("%v: node %d died, VIP %d moved from live node %d to %d", policy, dead, i, before[i], after[i])
				}
				if after[i] == dead || after[i] == None {
					t.Errorf("%v: VIP %d not taken over: %v", policy, i, after)
				}
			}
			if s := spread(loads(after, survivors)); s > 1 {
				t.Errorf("%v: after node %d died spread %d: %v", policy, dead, s, after)
			}
		}
	}
}

func TestFailbackPolicies(t *testing.T) {
	v := vips(6)
	// node 2 was down: nodes 0 and 1 hold everything
	current := Assign(Input{VIPs: v, Eligible: []int{0, 1}, Current: none(6), Pins: none(6)})
	all := []int{0, 1, 2}

	auto := Assign(Input{VIPs: v, Eligible: all, Current: current, Pins: none(6), Policy: Automatic})
	if l := loads(auto, all); l[2] != 2 || spread(l) != 0 {
		t.Errorf("automatic: recovered node got %d VIPs (loads %v), want its share 2", l[2], l)
	}
	if m := moved(current, auto); m != 2 {
		t.Errorf("automatic: %d VIPs moved, want exactly the 2 the recovered node takes", m)
	}

	sticky := Assign(Input{VIPs: v, Eligible: all, Current: current, Pins: none(6), Policy: Sticky})
	if !slices.Equal(sticky, current) {
		t.Errorf("sticky: VIPs moved on recovery: %v -> %v", current, sticky)
	}
}

func TestNodeListsAreRespected(t *testing.T) {
	v := vips(4)
	v[0].Allowed = []int{2}
	v[1].Allowed = []int{0, 1}
	v[2].Allowed = []int{5} // not a live node
	got := Assign(Input{VIPs: v, Eligible: []int{0, 1, 2}, Current: []int{1, 2, 0, None}, Pins: []int{None, 2, None, None}})
	if got[0] != 2 {
		t.Errorf("VIP 0 may only be on node 2, got %d", got[0])
	}
	if got[1] != 0 && got[1] != 1 {
		t.Errorf("VIP 1 may only be on 0 or 1 (even when pinned elsewhere), got %d", got[1])
	}
	if got[2] != None {
		t.Errorf("VIP 2 has no eligible node, got %d", got[2])
	}
}

func TestPinWins(t *testing.T) {
	v := vips(4)
	all := []int{0, 1}
	current := Assign(Input{VIPs: v, Eligible: all, Current: none(4), Pins: none(4)})
	pins := none(4)
	to := 1 - current[0]
	pins[0] = to
	for _, policy := range []Policy{Automatic, Sticky} {
		got := Assign(Input{VIPs: v, Eligible: all, Current: current, Pins: pins, Policy: policy})
		if got[0] != to {
			t.Errorf("%v: pinned VIP 0 on %d, want %d", policy, got[0], to)
		}
	}
	// a pin to a node that is not eligible is ignored
	pins[0] = 7
	if got := Assign(Input{VIPs: v, Eligible: all, Current: current, Pins: pins}); got[0] != current[0] {
		t.Errorf("pin to a dead node moved VIP 0 to %d", got[0])
	}
}

// TestRandomViews checks the properties on random views: every node computes
// the same answer whatever order it lists the view in, node lists hold,
// and with the automatic policy and no node lists counts differ by <= 1.
func TestRandomViews(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 2000 {
		nNodes := 1 + rng.IntN(8)
		nVIPs := rng.IntN(24)
		v := vips(nVIPs)
		withLists := rng.IntN(2) == 0
		var eligible []int
		for n := range nNodes {
			if rng.IntN(4) != 0 {
				eligible = append(eligible, n)
			}
		}
		current, pins := none(nVIPs), none(nVIPs)
		for i := range v {
			if withLists && rng.IntN(3) == 0 {
				v[i].Allowed = []int{rng.IntN(nNodes), rng.IntN(nNodes)}
			}
			if rng.IntN(2) == 0 {
				current[i] = rng.IntN(nNodes)
			}
			if rng.IntN(10) == 0 {
				pins[i] = rng.IntN(nNodes)
			}
		}
		policy := Policy(rng.IntN(2))
		in := Input{VIPs: v, Eligible: eligible, Current: current, Pins: pins, Policy: policy}
		got := Assign(in)

		shuffled := slices.Clone(eligible)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		in2 := in
		in2.Eligible = shuffled
		if again := Assign(in2); !slices.Equal(got, again) {
			t.Fatalf("trial %d: order of the view changed the answer: %v vs %v", trial, got, again)
		}
		for i, n := range got {
			if n == None {
				continue
			}
			if !slices.Contains(eligible, n) {
				t.Fatalf("trial %d: VIP %d on ineligible node %d", trial, i, n)
			}
			if v[i].Allowed != nil && !slices.Contains(v[i].Allowed, n) {
				t.Fatalf("trial %d: VIP %d on node %d outside its list %v", trial, i, n, v[i].Allowed)
			}
		}
		if !withLists && policy == Automatic && len(eligible) > 0 {
			unpinned := slices.Clone(got)
			for i := range pins {
				if pins[i] != None && slices.Contains(eligible, pins[i]) {
					unpinned[i] = None
				}
			}
			if slices.Equal(unpinned, got) && spread(loads(got, eligible)) > 1 {
				t.Fatalf("trial %d: unbalanced %v (%v)", trial, got, fmt.Sprint(loads(got, eligible)))
			}
		}
	}
}
