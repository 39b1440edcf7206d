package main

// Which flow each generated packet belongs to: the orders in which the
// packet generators of suite "dataplane" (the veth sender and the
// BPF_PROG_RUN drivers of suite_dataplane_mix.go) walk the filled flows.
// A generator keeps a counter i in its state map and writes client
// benchClient(f) into each frame, f = the order's flow for i:
//
//   - in turn: f = i, i counting 0, 1, ... n-1, 0, ...: consecutive packets
//     are consecutive flows, whose map entries BatchUpdate filled next to
//     each other in memory.
//   - random: f = perm(i), i counting over the n flows as in turn: a
//     full-period permutation of [0, n), so each flow gets one packet per
//     period and consecutive packets hit unrelated flows.
//   - Zipf: f = zipf[i], i counting 0 ... 2^20-1: a table drawn once from a
//     Zipf distribution over the n flows (rank to flow at random).
//
// The permutation works on b-bit numbers, 2^b the smallest power of two
// >= n: two rounds of multiplication by an odd constant mod 2^b and a
// right xorshift, each a bijection of [0, 2^b). Results >= n walk on
// through the permutation until they fall in [0, n) (cycle walking), which
// keeps it a bijection of [0, n); newFlowMix finds the longest walk and
// the generated code unrolls that many steps.

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
	"math/rand/v2"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// flowOrder is how a generator picks the flow of each packet; its value is
// what the generator's state holds.
type flowOrder uint32

const (
	orderInTurn flowOrder = iota
	orderRandom
	orderZipf
)

const (
	// zipfS is the exponent of the Zipf mix, zipfEntries its table's size.
	zipfS       = 1.1
	zipfBits    = 20
	zipfEntries = 1 << zipfBits
	// zipfSeed makes every run draw the same table.
	zipfSeed = 12
	// permMulA and permMulB are the permutation's odd multipliers, taken
	// mod 2^b.
	permMulA = 0x9e3b5
	permMulB = 0x6a2d3
	// maxPermWalk bounds the unrolled cycle walk.
	maxPermWalk = 32
)

// flowMix holds what the generators need for n flows: the permutation's
// parameters and the Zipf table.
type flowMix struct {
	n      uint32
	mask   uint32 // 2^b - 1
	s1, s2 uint32 // xorshifts
	walk   int    // longest cycle walk over [0, n)
	// zipf[i] is the flow of the Zipf order's i-th packet; zipfMap holds it
	zipf    []uint32
	zipfMap *ebpf.Map
	// of the Zipf table: the share of its packets that go to the 1% most
	// frequent flows (ranks), and how many flows it names at all
	zipfTop1 float64
	zipfUsed int
}

// newFlowMix computes the orders over n flows and loads the Zipf table
// into a map. Close frees it.
func newFlowMix(n int) (_ *flowMix, err error) {
	m, err := planFlowMix(n)
	if err != nil {
		return nil, err
	}
	m.zipfMap, err = ebpf.NewMap(&ebpf.MapSpec{Name: "bench_zipf", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: zipfEntries})
	if err != nil {
		return nil, fmt.Errorf("create zipf map: %w", err)
	}
	keys := make([]uint32, zipfEntries)
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := m.zipfMap.BatchUpdate(keys, m.zipf, nil); err != nil {
		m.zipfMap.Close()
		return nil, fmt.Errorf("fill zipf map: %w", err)
	}
	return m, nil
}

// planFlowMix computes the orders over n flows.
func planFlowMix(n int) (*flowMix, error) {
	if n < 1 || n > 1<<30 {
		return nil, fmt.Errorf("flow mix over %d flows: want 1 to 2^30", n)
	}
	b := uint32(bits.Len32(uint32(n - 1)))
	m := &flowMix{n: uint32(n), mask: uint32(1)<<b - 1, s1: b/2 + 1, s2: max(b/2, 1)}
	for i := range m.n {
		_, w := m.random(i)
		m.walk = max(m.walk, w)
	}
	if m.walk > maxPermWalk {
		return nil, fmt.Errorf("flow mix over %d flows: a cycle walk of %d steps, want <= %d", n, m.walk, maxPermWalk)
	}
	m.drawZipf()
	return m, nil
}

// Close frees the Zipf map.
func (m *flowMix) Close() error { return m.zipfMap.Close() }

// step is one round of the permutation of [0, 2^b).
func (m *flowMix) step(x uint32) uint32 {
	x = x * permMulA & m.mask
	x ^= x >> m.s1
	x = x * permMulB & m.mask
	x ^= x >> m.s2
	return x
}

// random returns the random order's flow for counter i < n, and how many
// extra steps the walk took.
func (m *flowMix) random(i uint32) (flow uint32, walk int) {
	y := m.step(i)
	for y >= m.n {
		y = m.step(y)
		walk++
	}
	return y, walk
}

// flow is what the generated code computes: the flow of counter i in
// order o (i < the order's period).
func (m *flowMix) flow(o flowOrder, i uint32) uint32 {
	switch o {
	case orderRandom:
		f, _ := m.random(i)
		return f
	case orderZipf:
		return m.zipf[i]
	}
	return i
}

// period is the counter's period in order o over the n flows.
func (m *flowMix) period(o flowOrder) uint32 {
	if o == orderZipf {
		return zipfEntries
	}
	return m.n
}

// drawZipf draws the Zipf table: ranks from P(k) ~ (1+k)^-zipfS, k < n,
// each rank given to a flow by a random permutation, so that the hot
// flows lie anywhere in the map's memory.
func (m *flowMix) drawZipf() {
	r := rand.New(rand.NewPCG(zipfSeed, zipfSeed))
	flowOf := r.Perm(int(m.n))
	z := rand.NewZipf(r, zipfS, 1, uint64(m.n-1))
	top := max(uint64(m.n/100), 1)
	m.zipf = make([]uint32, zipfEntries)
	used := make(map[uint64]struct{})
	var inTop int
	for i := range m.zipf {
		k := z.Uint64()
		if k < top {
			inTop++
		}
		used[k] = struct{}{}
		m.zipf[i] = uint32(flowOf[k])
	}
	m.zipfTop1 = float64(inTop) / zipfEntries
	m.zipfUsed = len(used)
}

// zipfTop1Exact is the share of the 1% most frequent of n flows under
// Zipf's law with exponent zipfS, computed from the distribution.
func zipfTop1Exact(n int) float64 {
	top := max(n/100, 1)
	var all, head float64
	for k := range n {
		p := math.Pow(float64(k+1), -zipfS)
		all += p
		if k < top {
			head += p
		}
	}
	return head / all
}

// orderName names o for the tables.
func orderName(o flowOrder) string {
	switch o {
	case orderRandom:
		return "random order"
	case orderZipf:
		return "Zipf s=" + strconv.FormatFloat(zipfS, 'f', -1, 64)
	}
	return "in turn"
}

// Generator state: the value of a generator's state map at index 0.
type genState struct {
	I, N, Order, _ uint32
}

const genStateSize = 16

// genLayout says where a generator finds the frame and its client.
type genLayout struct {
	// offsets of data and data_end in the program's context
	dataOff, dataEndOff int16
	// the client's port and the last byte of its IPv4 address in the frame
	// (source for a packet to the server, destination for one from it)
	portOff, addrLastOff int16
}

var (
	// xdpToServer: XDP (xdp_md), the client is the source
	xdpToServer = genLayout{dataOff: 0, dataEndOff: 4, portOff: 14 + 20, addrLastOff: 14 + 15}
	// tcFromServer: TC (__sk_buff), the client is the destination
	tcFromServer = genLayout{dataOff: 76, dataEndOff: 80, portOff: 14 + 22, addrLastOff: 14 + 19}
)

// ipIDOff is the IPv4 identification's offset in the frame.
const ipIDOff = 14 + 4

// rewrite returns the instructions that write one client into the frame:
// R6 holds the context, state the generator's state map. They take the
// counter i from state, advance it (mod its n), compute the flow f of i in
// the state's order, and write benchClient(f) into the frame: port
// 10000 + (f & 0x3fff), last address byte f >> 14, and the IP
// identification senderIPID - (f >> 14), which keeps the IPv4 header
// checksum valid (the address byte and the identification's low byte add
// up to the same). They jump to label out when there is nothing to
// rewrite and fall through after the rewrite; labels "random", "zipf",
// "picked" and "store" are theirs. R0-R5 and R7-R9 are clobbered.
func (m *flowMix) rewrite(state *ebpf.Map, l genLayout, out string) asm.Instructions {
	insns := asm.Instructions{
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, state.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, out),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word), // i
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word), // n
		asm.Mov.Reg(asm.R9, asm.R7),
		asm.Add.Imm(asm.R9, 1),
		asm.JLT.Reg(asm.R9, asm.R8, "store"),
		asm.Mov.Imm(asm.R9, 0),
		asm.StoreMem(asm.R0, 0, asm.R9, asm.Word).WithSymbol("store"),
		asm.LoadMem(asm.R1, asm.R0, 8, asm.Word), // order
		asm.JEq.Imm(asm.R1, int32(orderRandom), "random"),
		asm.JEq.Imm(asm.R1, int32(orderZipf), "zipf"),
		asm.Ja.Label("picked"),
	}
	// random: R7 = perm(R7), walking on while >= n
	step := func() asm.Instructions {
		return asm.Instructions{
			asm.Mul.Imm(asm.R7, permMulA),
			asm.And.Imm(asm.R7, int32(m.mask)),
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.RSh.Imm(asm.R1, int32(m.s1)),
			asm.Xor.Reg(asm.R7, asm.R1),
			asm.Mul.Imm(asm.R7, permMulB),
			asm.And.Imm(asm.R7, int32(m.mask)),
			asm.Mov.Reg(asm.R1, asm.R7),
			asm.RSh.Imm(asm.R1, int32(m.s2)),
			asm.Xor.Reg(asm.R7, asm.R1),
		}
	}
	first := step()
	first[0] = first[0].WithSymbol("random")
	insns = append(insns, first...)
	for range m.walk {
		insns = append(insns, asm.JLT.Imm(asm.R7, int32(m.n), "picked"))
		insns = append(insns, step()...)
	}
	insns = append(insns,
		asm.Ja.Label("picked"),
		// zipf: R7 = zipf[R7]
		asm.StoreMem(asm.RFP, -8, asm.R7, asm.Word).WithSymbol("zipf"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.LoadMapPtr(asm.R1, m.zipfMap.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, out),
		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word),
		// the client of flow R7 into the frame
		asm.LoadMem(asm.R2, asm.R6, l.dataOff, asm.Word).WithSymbol("picked"),
		asm.LoadMem(asm.R3, asm.R6, l.dataEndOff, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, int32(max(l.portOff, l.addrLastOff)+2)),
		asm.JGT.Reg(asm.R4, asm.R3, out),
		asm.Mov.Reg(asm.R5, asm.R7),
		asm.And.Imm(asm.R5, 0x3fff),
		asm.Add.Imm(asm.R5, 10000),
		asm.HostTo(asm.BE, asm.R5, asm.Half),
		asm.StoreMem(asm.R2, l.portOff, asm.R5, asm.Half),
		asm.Mov.Reg(asm.R5, asm.R7),
		asm.RSh.Imm(asm.R5, 14),
		asm.StoreMem(asm.R2, l.addrLastOff, asm.R5, asm.Byte),
		asm.Mov.Imm(asm.R4, senderIPID),
		asm.Sub.Reg(asm.R4, asm.R5),
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.R2, ipIDOff, asm.R4, asm.Half),
	)
	return insns
}

// newGenState creates a generator's state map: index 0 the genState,
// index 1 a counter the veth sender keeps (steeredBack).
func newGenState(name string) (*ebpf.Map, error) {
	s, err := ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.Array, KeySize: 4, ValueSize: genStateSize, MaxEntries: 2})
	if err != nil {
		return nil, fmt.Errorf("create %s map: %w", name, err)
	}
	return s, nil
}

// setOrder makes the generator of state send order o over the mix's n
// flows (n = 1: flow 0 only, in turn), from the order's start.
func (m *flowMix) setOrder(state *ebpf.Map, o flowOrder, n int) error {
	p := m.period(o)
	if o == orderInTurn {
		p = uint32(n)
	}
	if p == 0 {
		return errors.New("generator over no flows")
	}
	if err := state.Put(uint32(0), genState{N: p, Order: uint32(o)}); err != nil {
		return fmt.Errorf("set generator state: %w", err)
	}
	return nil
}
