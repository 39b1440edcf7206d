// Package allocation decides which node holds which VIP. It is a pure
// function of the cluster view, so every node that sees the same view
// computes the same assignment and no coordinator is needed.
//
// The rules, in order:
//  1. only eligible nodes (alive, healthy, not disabled or banned) hold VIPs,
//     and a VIP only goes to a node its node list allows;
//  2. an operator's move (a pin) wins while its node is eligible;
//  3. a VIP stays where it is (no move without a reason);
//  4. orphaned VIPs go to the least loaded allowed node;
//  5. with the automatic failback policy, VIPs then move one by one from the
//     most to the least loaded node until counts differ by at most one
//     (where node lists allow it); with the sticky policy they stay.
//
// Ties are broken by rendezvous hashing of (VIP, node), so the choice is
// spread across nodes yet the same on every node, and a node that comes
// back gets back the VIPs that hash highest for it.
package allocation

import (
	"cmp"
	"encoding/binary"
	"hash/fnv"
	"net/netip"
	"slices"
)

// Policy says what happens when a node becomes eligible again.
type Policy int

const (
	// Automatic failback: a recovered node gets its share of VIPs back.
	Automatic Policy = iota
	// Sticky (manual) failback: VIPs stay where they are until an operator
	// moves them; only orphaned VIPs are placed.
	Sticky
)

func (p Policy) String() string {
	if p == Sticky {
		return "sticky"
	}
	return "automatic"
}

// None marks a VIP held by no node.
const None = -1

// VIP is one public address and the nodes (PNNs) allowed to hold it.
type VIP struct {
	Addr    netip.Addr
	Allowed []int // nil: any node
}

// Input is the cluster view the assignment is computed from.
type Input struct {
	VIPs []VIP
	// Eligible are the PNNs of the nodes that may hold VIPs now.
	Eligible []int
	// Current[i] is the PNN holding VIPs[i] now, or None.
	Current []int
	// Pins[i] is the PNN an operator moved VIPs[i] to, or None.
	Pins   []int
	Policy Policy
}

// Assign returns, for each VIP, the PNN that should hold it, or None when
// no eligible node may.
func Assign(in Input) []int {
	eligible := make(map[int]bool, len(in.Eligible))
	for _, n := range in.Eligible {
		eligible[n] = true
	}
	allowed := make([][]int, len(in.VIPs))
	for i, v := range in.VIPs {
		allowed[i] = allowedNodes(v, in.Eligible, eligible)
	}

	target := make([]int, len(in.VIPs))
	pinned := make([]bool, len(in.VIPs))
	load := make(map[int]int, len(in.Eligible))
	for i := range target {
		target[i] = None
		if p := at(in.Pins, i); p != None && slices.Contains(allowed[i], p) {
			target[i], pinned[i] = p, true
		} else if c := at(in.Current, i); c != None && slices.Contains(allowed[i], c) {
			target[i] = c
		}
		if target[i] != None {
			load[target[i]]++
		}
	}

	for i := range target {
		if target[i] != None || len(allowed[i]) == 0 {
			continue
		}
		best := allowed[i][0]
		for _, n := range allowed[i][1:] {
			if load[n] < load[best] || (load[n] == load[best] && prefers(in.VIPs[i], n, best)) {
				best = n
			}
		}
		target[i] = best
		load[best]++
	}

	if in.Policy == Automatic {
		rebalance(in.VIPs, allowed, pinned, target, load)
	}
	return target
}

// rebalance moves VIPs from the most to the least loaded allowed node while
// that narrows the gap. Each move lowers the sum of squared loads, so it
// ends; the bound is a guard, not a limit that is ever reached.
func rebalance(vips []VIP, allowed [][]int, pinned []bool, target []int, load map[int]int) {
	for range len(vips) * len(vips) {
		bestVIP, bestTo, bestGap := -1, None, 1
		for i, from := range target {
			if from == None || pinned[i] {
				continue
			}
			for _, to := range allowed[i] {
				gap := load[from] - load[to]
				if gap < 2 {
					continue
				}
				if gap > bestGap || (gap == bestGap && better(vips, i, to, bestVIP, bestTo)) {
					bestVIP, bestTo, bestGap = i, to, gap
				}
			}
		}
		if bestVIP < 0 {
			return
		}
		load[target[bestVIP]]--
		load[bestTo]++
		target[bestVIP] = bestTo
	}
}

// better breaks ties between candidate moves: the (VIP, node) pair with the
// higher rendezvous score wins.
func better(vips []VIP, i, to, j, jto int) bool {
	if j < 0 {
		return true
	}
	si, sj := score(vips[i].Addr, to), score(vips[j].Addr, jto)
	if si != sj {
		return si > sj
	}
	return cmp.Or(vips[i].Addr.Compare(vips[j].Addr), to-jto) < 0
}

// prefers tells whether VIP v would rather go to node a than to node b.
func prefers(v VIP, a, b int) bool {
	sa, sb := score(v.Addr, a), score(v.Addr, b)
	if sa != sb {
		return sa > sb
	}
	return a < b
}

// score is the rendezvous hash of a VIP and a node.
func score(addr netip.Addr, pnn int) uint64 {
	h := fnv.New64a()
	b, _ := addr.MarshalBinary()
	h.Write(b)
	var n [8]byte
	binary.LittleEndian.PutUint64(n[:], uint64(pnn))
	h.Write(n[:])
	return h.Sum64()
}

func allowedNodes(v VIP, order []int, eligible map[int]bool) []int {
	var out []int
	for _, n := range order {
		if eligible[n] && (v.Allowed == nil || slices.Contains(v.Allowed, n)) && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

func at(s []int, i int) int {
	if i < len(s) {
		return s[i]
	}
	return None
}
