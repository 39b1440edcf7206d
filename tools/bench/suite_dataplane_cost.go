package main

// Suite "dataplane", part 1: where a tracked packet's time goes when its
// flow misses the flow cache (-flow-cost, issue 12). Behind the XDP
// drivers of the flow mix (suite_dataplane_mix.go), net of them as the
// fsha rows are, probe programs that do part of what fsha's XDP program
// does on that path:
//
//   - lookup: build the flow key from the frame and look the flow up in
//     the flows map, nothing else: one call to the kernel's hash lookup
//     (hash the key, load the bucket, walk its chain, compare the key);
//   - lookup + stores: then the stores a tracked segment makes into its
//     flow (last_seen, bytes, packets, sequence, ack, window);
//   - lookup in the flows map of the flow cache off data plane, which
//     its row "fsha, flow cache off" runs on;
//
// and, in random order only, the lookup in maps of other kinds holding
// the same flows: an LRU hash of one entry more than the flows map (the
// kernel rounds the buckets up to a power of two, so it has twice as
// many, and shorter chains), a preallocated hash, and a hash whose
// elements come from kmalloc (BPF_F_NO_PREALLOC: the kernel's direct
// map, where the preallocated elements are vmalloc'ed 4 KiB pages).
// Each probe counts its hits in a map of its own, and each row's verify
// checks that every run found its flow.

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/fsha/fsha/dataplane"
)

// costOptions are what the probe rows need beyond the main data plane.
type costOptions struct {
	uncached *dataplane.Unpinned // its flow cache off, its flows map filled alike
	capacity uint32              // of the flows maps
}

// costProbe is what a probe program does after it finds the flow.
type costProbe int

const (
	probeLookup costProbe = iota
	probeStores
)

// probeProgram returns an XDP program that looks up the flow of the IPv4
// frame (client = source) in flows, with probe's work after, counts each
// hit in hits[0] and returns XDP_PASS.
func probeProgram(flows, hits *ebpf.Map, probe costProbe) (*ebpf.Program, error) {
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20+4),
		asm.JGT.Reg(asm.R4, asm.R3, "out"),
	}
	// struct flow_key at fp-40: vip[16], client[16], vport, cport, family
	insns = append(insns, asm.Mov.Imm(asm.R5, 0))
	for off := int16(-40); off < 0; off += 8 {
		insns = append(insns, asm.StoreMem(asm.RFP, off, asm.R5, asm.DWord))
	}
	insns = append(insns,
		asm.LoadMem(asm.R4, asm.R2, 14+16, asm.Word), // daddr: the VIP
		asm.StoreMem(asm.RFP, -40, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 14+12, asm.Word), // saddr: the client
		asm.StoreMem(asm.RFP, -24, asm.R4, asm.Word),
		asm.LoadMem(asm.R4, asm.R2, 14+20+2, asm.Half), // dport
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.RFP, -8, asm.R4, asm.Half),
		asm.LoadMem(asm.R4, asm.R2, 14+20, asm.Half), // sport
		asm.HostTo(asm.BE, asm.R4, asm.Half),
		asm.StoreMem(asm.RFP, -6, asm.R4, asm.Half),
		asm.StoreImm(asm.RFP, -4, 2 /* FSHA_AF_INET */, asm.Byte),
		asm.LoadMapPtr(asm.R1, flows.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -40),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
	)
	if probe == probeStores {
		// struct flow: last_seen_ns 8, bytes_in 16, packets_in 32,
		// seq_in 48, ack_in 52, window_in 64
		insns = append(insns,
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
			asm.LoadMem(asm.R1, asm.R0, 16, asm.DWord),
			asm.Add.Imm(asm.R1, payloadLen),
			asm.StoreMem(asm.R0, 16, asm.R1, asm.DWord),
			asm.LoadMem(asm.R1, asm.R0, 32, asm.DWord),
			asm.Add.Imm(asm.R1, 1),
			asm.StoreMem(asm.R0, 32, asm.R1, asm.DWord),
			asm.StoreImm(asm.R0, 48, 1, asm.Word),
			asm.StoreImm(asm.R0, 52, 1, asm.Word),
			asm.StoreImm(asm.R0, 64, 1, asm.Half),
		)
	}
	insns = append(insns,
		asm.StoreImm(asm.RFP, -44, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, hits.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -44),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "out"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 2 /* XDP_PASS */).WithSymbol("out"),
		asm.Return(),
	)
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_probe", Type: ebpf.XDP, AttachType: ebpf.AttachXDP, Instructions: insns, License: "GPL"})
	if err != nil {
		return nil, fmt.Errorf("load probe program: %w", err)
	}
	return p, nil
}

// costMapKinds are the other maps the lookup probe runs on: name, type,
// flags (BPF_F_NO_PREALLOC 1). Not an LRU with BPF_F_NO_COMMON_LRU: its
// lookup is the common LRU's, and each CPU's lists hold capacity/CPUs
// elements, so one CPU cannot fill it (nor could egress create 1M flows
// on one CPU).
var costMapKinds = []struct {
	name  string
	typ   ebpf.MapType
	flags uint32
	extra uint32 // entries beyond the flows map's capacity
}{
	// one more entry than a power of two: the kernel doubles the buckets
	{"LRU hash, one entry more (2x buckets)", ebpf.LRUHash, 0, 1},
	{"hash, preallocated", ebpf.Hash, 0, 0},
	{"hash, BPF_F_NO_PREALLOC (kmalloc)", ebpf.Hash, 1, 0},
}

// addCostRows adds the probe rows behind the XDP drivers, and the flow
// cache off rows of uncached, to s.
func (s *mixRows) addCostRows(dp, uncached *dataplane.Unpinned, drivers map[flowOrder]*progCase, pkt []byte, capacity uint32) error {
	hits, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_hits", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create hits map: %w", err)
	}
	s.maps = append(s.maps, hits)
	type probeRow struct {
		name  string
		flows *ebpf.Map
		probe costProbe
	}
	rows := []probeRow{
		{"probe: flows map lookup", dp.Flows, probeLookup},
		{"probe: flows map lookup + stores", dp.Flows, probeStores},
		{"probe: flows map lookup, flow cache off's map", uncached.Flows, probeLookup},
	}
	var kinds []probeRow // random order only
	count, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_count", Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return fmt.Errorf("create flow count map: %w", err)
	}
	s.maps = append(s.maps, count)
	for _, k := range costMapKinds {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_flows", Type: k.typ, KeySize: dp.Flows.KeySize(),
			ValueSize: dp.Flows.ValueSize(), MaxEntries: capacity + k.extra, Flags: k.flags})
		if err != nil {
			return fmt.Errorf("create %s map: %w", k.name, err)
		}
		s.maps = append(s.maps, m)
		if err := (&dataplane.Maps{Flows: m, FlowCount: count}).FillFlows(netip.AddrPortFrom(benchVIP4, trackedPort), s.n4,
			func(i int) netip.AddrPort { return benchClient(false, i) }); err != nil {
			return fmt.Errorf("fill %s map: %w", k.name, err)
		}
		kinds = append(kinds, probeRow{"probe: lookup in " + k.name, m, probeLookup})
	}
	for _, o := range []flowOrder{orderInTurn, orderRandom, orderZipf} {
		all := rows
		if o == orderRandom {
			all = append(slices.Clone(rows), kinds...)
		}
		for _, r := range all {
			p, err := probeProgram(r.flows, hits, r.probe)
			if err != nil {
				return err
			}
			s.progs = append(s.progs, p)
			c, state, err := s.driven("xdp", fmt.Sprintf("%s, %s", r.name, orderName(o)), p, xdpToServer, pkt, o, s.n4)
			if err != nil {
				return err
			}
			c.want = wantOwn
			c.verify = func() error {
				if err := verifyDriver(c, state, s.mix, o); err != nil {
					return err
				}
				return verifyHits(c, hits)
			}
			s.rows = append(s.rows, mixRow{c: c, driver: drivers[o]})
		}
		name := fmt.Sprintf("fsha, flow cache off: tracked IPv4, %s flows, %s", thousands(s.n4), orderName(o))
		c, state, err := s.driven("xdp", name, uncached.XDP, xdpToServer, pkt, o, s.n4)
		if err != nil {
			return err
		}
		c.u, c.want, c.tally = uncached, outcomeTracked, &dataplane.DirectionCounters{}
		c.verify = func() error {
			if err := verifyDriver(c, state, s.mix, o); err != nil {
				return err
			}
			return verifyCase(uncached, c)
		}
		s.rows = append(s.rows, mixRow{c: c, driver: drivers[o]})
	}
	return nil
}

// verifyHits runs c 1,000 times and checks that its probe found the flow
// every time.
func verifyHits(c *progCase, hits *ebpf.Map) error {
	const runs = 1000
	var before, after uint64
	if err := hits.Lookup(uint32(0), &before); err != nil {
		return err
	}
	if _, err := c.prog.Run(&ebpf.RunOptions{Data: c.pkt, Repeat: runs}); err != nil {
		return fmt.Errorf("%s %s: %w", c.hook, c.name, err)
	}
	if err := hits.Lookup(uint32(0), &after); err != nil {
		return err
	}
	if after-before != runs {
		return fmt.Errorf("%s %s: found %d flows in %d runs, want every one", c.hook, c.name, after-before, runs)
	}
	return nil
}
