package main

// Suite "dataplane", part 1: tracked packets of many flows. The tracked
// rows of the main table repeat one packet, one flow of the 1,000,000 in
// the map, which after its first run in a jiffy is a flow cache hit. Here
// a driver program writes each run's client into the frame before the
// measured program sees it: flow after flow in turn, in random order, or
// in a Zipf mix (flowmix.go), over the n4 IPv4 flows the map holds. The
// driver is an XDP or TC program that rewrites the frame as the veth
// sender does and tail-calls the measured program (a prog array of one,
// constant index: the JIT makes it a direct jump).
//
// The driver costs time of its own, which the rows take out: each order's
// driver also runs in front of the empty program, and a row's time in a
// round is its own minus (that driver row's minus the empty program's) in
// the same round. What is left compares with the main table's rows, the
// same empty program and the same target.
//
// Every run is checked: before the timing, the first 2,000 runs' frames
// must carry the clients the Go model of the order names, and around
// every timed run fsha's counters must say that each run was a tracked
// packet of an existing flow, nothing else.

import (
	"errors"
	"fmt"
	"io"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/fsha/fsha/dataplane"
)

// mixRows are the flow mix cases and their driver baselines.
type mixRows struct {
	run  []*progCase // to time, in table order
	rows []mixRow
	// the empty programs, timed among the main cases
	xdpEmpty, tcEmpty *progCase
	mix               *flowMix
	n4                int
	// what Close frees
	maps   []*ebpf.Map
	progs  []*ebpf.Program
	places []*vethPair
	links  []link.Link
}

// mixRow is one row: c, timed with its driver, net of driver, which is
// the same order's driver in front of the empty program (nil: c is that
// driver row).
type mixRow struct {
	c, driver *progCase
}

// newMixRows builds the flow mix cases for both hooks on dp, the main
// data plane, and finds the empty programs among cases. With cost
// (non-nil), it adds the probe rows of suite_dataplane_cost.go. Close
// frees what it created.
func newMixRows(dp *dataplane.Unpinned, cases []*progCase, mix *flowMix, n4 int, cost *costOptions) (_ *mixRows, err error) {
	s := &mixRows{mix: mix, n4: n4}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if s.xdpEmpty, s.tcEmpty, err = emptyCases(cases); err != nil {
		return nil, fmt.Errorf("flow mix cases: %w", err)
	}
	vip := netip.AddrPortFrom(benchVIP4, trackedPort)
	// the frame of client 0 with the sender's IP identification, toward
	// the server (XDP) and from it (TC)
	toServer := segment{src: benchClient(false, 0), dst: vip, ack: true, payload: payloadLen, ipID: senderIPID}
	fromServer := toServer
	fromServer.src, fromServer.dst = toServer.dst, toServer.src
	fromServer.srcMAC, fromServer.dstMAC = macB, macA
	orders := []flowOrder{orderInTurn, orderRandom, orderZipf}
	for _, h := range []struct {
		hook   string
		empty  *ebpf.Program
		fsha   *ebpf.Program
		seg    segment
		layout genLayout
	}{
		{"xdp", s.xdpEmpty.prog, dp.XDP, toServer, xdpToServer},
		{"tc", s.tcEmpty.prog, dp.TCEgress, fromServer, tcFromServer},
	} {
		pkt, err := h.seg.build()
		if err != nil {
			return nil, err
		}
		drivers := make(map[flowOrder]*progCase)
		for _, o := range orders {
			c, state, err := s.driven(h.hook, "driver, "+orderName(o)+", + empty program", h.empty, h.layout, pkt, o, n4)
			if err != nil {
				return nil, err
			}
			c.want = wantOwn
			c.verify = func() error { return verifyDriver(c, state, mix, o) }
			drivers[o] = c
			s.rows = append(s.rows, mixRow{c: c})
		}
		for _, v := range []struct {
			o     flowOrder
			flows int
		}{{orderInTurn, 1}, {orderInTurn, n4}, {orderRandom, n4}, {orderZipf, n4}} {
			name := "fsha: tracked IPv4, 1 flow, by the driver"
			if v.flows > 1 {
				name = fmt.Sprintf("fsha: tracked IPv4, %s flows, %s", thousands(v.flows), orderName(v.o))
			}
			c, state, err := s.driven(h.hook, name, h.fsha, h.layout, pkt, v.o, v.flows)
			if err != nil {
				return nil, err
			}
			c.u, c.want, c.target, c.tally = dp, outcomeTracked, trackedTarget, &dataplane.DirectionCounters{}
			c.verify = func() error {
				if err := verifyDriver(c, state, mix, v.o); err != nil {
					return err
				}
				return verifyCase(dp, c)
			}
			s.rows = append(s.rows, mixRow{c: c, driver: drivers[v.o]})
		}
		if cost != nil && h.hook == "xdp" {
			if err := s.addCostRows(dp, cost.uncached, drivers, pkt, cost.capacity); err != nil {
				return nil, err
			}
		}
	}
	return s, nil
}

// driven returns a case that runs target behind a driver of order o over
// flows flows on pkt, and the driver's state. An XDP driver is attached
// to a veth end of its own (see progRun).
func (s *mixRows) driven(hook, name string, target *ebpf.Program, l genLayout, pkt []byte, o flowOrder, flows int) (*progCase, *ebpf.Map, error) {
	state, err := newGenState("bench_driver")
	if err != nil {
		return nil, nil, err
	}
	s.maps = append(s.maps, state)
	if err := s.mix.setOrder(state, o, flows); err != nil {
		return nil, nil, err
	}
	calls, err := ebpf.NewMap(&ebpf.MapSpec{Name: "bench_target", Type: ebpf.ProgramArray, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		return nil, nil, fmt.Errorf("create prog array: %w", err)
	}
	s.maps = append(s.maps, calls)
	typ, attach, failed := ebpf.XDP, ebpf.AttachXDP, int32(0) // XDP_ABORTED
	if hook == "tc" {
		typ, attach, failed = ebpf.SchedCLS, ebpf.AttachNone, 2 // TC_ACT_SHOT
	}
	if target == s.xdpEmpty.prog || target == s.tcEmpty.prog {
		attach = ebpf.AttachNone // as emptyProgram loads them
	}
	insns := append(asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}, s.mix.rewrite(state, l, "call")...)
	insns = append(insns,
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("call"),
		asm.LoadMapPtr(asm.R2, calls.FD()),
		asm.Mov.Imm(asm.R3, 0),
		asm.FnTailCall.Call(),
		asm.Mov.Imm(asm.R0, failed),
		asm.Return(),
	)
	driver, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "bench_driver", Type: typ, AttachType: attach, Instructions: insns, License: "GPL"})
	if err != nil {
		return nil, nil, fmt.Errorf("load %s driver: %w", hook, err)
	}
	s.progs = append(s.progs, driver)
	if err := calls.Put(uint32(0), uint32(target.FD())); err != nil {
		return nil, nil, fmt.Errorf("%s %s: put the measured program behind the driver: %w", hook, name, err)
	}
	if hook == "xdp" {
		if err := s.attach(driver); err != nil {
			return nil, nil, err
		}
	}
	c := &progCase{hook: hook, name: name, prog: driver, pkt: pkt}
	s.run = append(s.run, c)
	return c, state, nil
}

// attach attaches an XDP driver to a free veth end, making a pair when
// none is left.
func (s *mixRows) attach(p *ebpf.Program) error {
	side := len(s.links) % 2
	if side == sideA {
		pair, err := newVethPair()
		if err != nil {
			return err
		}
		s.places = append(s.places, pair)
	}
	l, err := s.places[len(s.places)-1].attachXDP(side, p)
	if err != nil {
		return err
	}
	s.links = append(s.links, l)
	return nil
}

// Close detaches and frees the drivers, their maps and veths.
func (s *mixRows) Close() error {
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	for _, p := range s.progs {
		errs = append(errs, p.Close())
	}
	for _, m := range s.maps {
		errs = append(errs, m.Close())
	}
	for _, p := range s.places {
		errs = append(errs, p.Close())
	}
	s.links, s.progs, s.maps, s.places = nil, nil, nil, nil
	return errors.Join(errs...)
}

// verifyDriver runs c's driver 2,000 times, one run at a time, and checks
// that each run's frame carries the client of the order's next flow, as
// flowMix.flow computes it, with a valid IPv4 header checksum.
func verifyDriver(c *progCase, state *ebpf.Map, mix *flowMix, o flowOrder) error {
	const runs = 2000
	var st genState
	if err := state.Lookup(uint32(0), &st); err != nil {
		return fmt.Errorf("%s %s: read driver state: %w", c.hook, c.name, err)
	}
	out := make([]byte, len(c.pkt)+256)
	client := func(frame []byte) (int, error) {
		ip := frame[14:34]
		var sum uint32
		for i := 0; i < len(ip); i += 2 {
			sum += uint32(ip[i])<<8 | uint32(ip[i+1])
		}
		for sum > 0xffff {
			sum = sum&0xffff + sum>>16
		}
		if sum != 0xffff {
			return 0, fmt.Errorf("IPv4 header checksum off by %#x", 0xffff-sum)
		}
		addr, port := frame[14+15], frame[14+20:14+22] // toward the server
		if c.hook == "tc" {
			addr, port = frame[14+19], frame[14+22:14+24]
		}
		return int(addr)<<14 + (int(port[0])<<8 + int(port[1]) - 10000), nil
	}
	for k := range runs {
		i := (st.I + uint32(k)) % st.N
		if _, err := c.prog.Run(&ebpf.RunOptions{Data: c.pkt, DataOut: out}); err != nil {
			return fmt.Errorf("%s %s: %w", c.hook, c.name, err)
		}
		got, err := client(out)
		if err != nil {
			return fmt.Errorf("%s %s: run %d: %w", c.hook, c.name, k, err)
		}
		if want := mix.flow(o, i); got != int(want) {
			return fmt.Errorf("%s %s: run %d (counter %d) wrote flow %d, want %d", c.hook, c.name, k, i, got, mix.flow(o, i))
		}
	}
	return nil
}

// check says whether every timed run of the fsha cases was a tracked
// packet of an existing flow, from the counters around each run.
func (s *mixRows) check(runs int) ([]string, error) {
	var lines []string
	for _, r := range s.rows {
		if r.driver == nil || r.c.tally == nil {
			continue
		}
		t := r.c.tally
		if t.Tracked != uint64(runs) || t.Packets != t.Tracked || t.Created != 0 || t.Closed != 0 || t.Evicted != 0 || t.MapErrors != 0 {
			return nil, fmt.Errorf("%s %s: fsha counted %+v over %d timed runs, want each a tracked packet of an existing flow",
				r.c.hook, r.c.name, *t, runs)
		}
		lines = append(lines, fmt.Sprintf("%-3s %s: %s runs, %s tracked, %d untracked, %d created, %d other",
			r.c.hook, r.c.name, thousands(runs), thousands(int(t.Tracked)), t.Untracked, t.Created, t.Other))
	}
	return lines, nil
}

// write prints the flow mix table: per hook the empty program, the
// drivers over it, and the fsha cases net of their driver.
func (s *mixRows) write(out io.Writer, repeat, rounds int) error {
	checks, err := s.check(repeat * rounds)
	if err != nil {
		return err
	}
	t := &table{header: progHeader}
	for _, g := range []struct {
		hook string
		base *progCase
	}{{"xdp", s.xdpEmpty}, {"tc", s.tcEmpty}} {
		t.add(caseRow(g.hook, g.base, g.base)...)
		for _, r := range s.rows {
			if r.c.hook != g.hook {
				continue
			}
			if r.driver == nil {
				t.add(caseRow(g.hook, r.c, g.base)...)
				continue
			}
			net := *r.c
			net.ns = make([]float64, len(r.c.ns))
			for i := range net.ns {
				net.ns[i] = r.c.ns[i] - (r.driver.ns[i] - g.base.ns[i])
			}
			t.add(caseRow(g.hook, &net, g.base)...)
		}
	}
	fmt.Fprintf(out, "\nFlow mix, in the same BPF_PROG_RUN rounds as above: tracked %d-byte segments of the %s IPv4 flows of\n",
		len(s.xdpEmpty.pkt), thousands(s.n4))
	fmt.Fprintf(out, "the map, a driver program writing each run's client into the frame and tail-calling the program\n")
	fmt.Fprintf(out, "(in turn = flows 0, 1, 2, ...; random order = a full-period permutation of the flows, each once per\n")
	fmt.Fprintf(out, " period; Zipf = a table of %s flows drawn with P(rank k) ~ k^-%g, ranks given to flows at random:\n",
		thousands(zipfEntries), zipfS)
	fmt.Fprintf(out, " the top 1%% of flows get %.1f%% of its packets (%.1f%% by the law), it names %s flows; driver rows =\n",
		s.mix.zipfTop1*100, zipfTop1Exact(s.n4)*100, thousands(s.mix.zipfUsed))
	fmt.Fprintf(out, " the driver of an order in front of the empty program, x empty = its cost over the empty program's;\n")
	fmt.Fprintf(out, " fsha rows = net of their driver: per round, the row's ns/pkt minus its driver row's excess over the\n")
	fmt.Fprintf(out, " empty program in that round, then ns/pkt, best, x empty and the target as in the main table)\n\n")
	if err := t.write(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nfsha's counters around every timed run (xdp: ingress, tc: egress):\n")
	for _, l := range checks {
		fmt.Fprintf(out, "  %s\n", l)
	}
	return nil
}
