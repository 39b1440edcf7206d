package main

// Suite "dataplane", part 1: the cost of steering (DESIGN.md, "Steering
// paths, and the lab's network"). During a drain the VIP's new holder sends
// the packets of old connections back to the node that holds their
// sockets, on the path the interface's steer mode says: xdp (XDP ingress
// rewrites the MACs and returns XDP_TX) or tc (XDP ingress passes the
// packet up and counts a handoff; TC ingress rewrites the MACs and
// redirects it to the same interface's egress).
//
// The steering data plane is loaded as the first one (the same flows),
// with steering on and one peer flow, of a client port outside the filled
// ones, marked to steer to node ownerPNN. BPF_PROG_RUN runs both hooks'
// programs on the loopback device of the calling thread's namespace
// (xdp_md.ingress_ifindex, skb->ifindex): each case writes that device's
// steer mode before it runs. The cases run in the same rounds as the
// others and compare with the same empty programs.
//
// BPF_PROG_RUN acts on no verdict: XDP_TX sends nothing and bpf_redirect
// only records the target. The rows are the programs' cost alone, without
// the skb the tc path builds before TC ingress or either path's transmit.
// Part 2 (veth pps) has no steering modes: a veth drops XDP_TX frames unless
// its peer runs XDP, and the peer there runs the sender, which would send
// every steered frame straight back.
//
// Repeated runs share one buffer: from the second run on, the frame carries
// the MACs the first one wrote. Neither program reads them to decide, so
// every run takes the same path, as verifySteer checks over many runs.

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/fsha/fsha/dataplane"
	"go.uber.org/zap"
)

// loIfindex is the loopback device's ifindex, the same in every namespace.
const loIfindex = 1

// ownerPNN is the node that holds the steered flow's socket, at ownerMAC.
const ownerPNN = 2

var ownerMAC = net.HardwareAddr{0x02, 0xf5, 0x4a, 0x00, 0x00, 0x03}

// Verdicts, as the kernel's uapi numbers them.
const (
	xdpPass       = 2
	xdpTX         = 3
	tcxNext       = ^uint32(0) // TCX_NEXT (-1)
	tcActRedirect = 7          // TC_ACT_REDIRECT, what bpf_redirect returns
)

// steeredClient is the client of the flow to steer: the tracked cases'
// IPv4 client with a port below the filled ones, so no local flow has it.
func steeredClient(n4 int) netip.AddrPort {
	return netip.AddrPortFrom(benchClient(false, n4/2).Addr(), 9999)
}

// loadSteer loads the steering data plane: what load loads, the same
// flows, then ownerPNN's MAC, one peer flow to steer to it, steering on.
func (b *dataplaneBench) loadSteer(log *zap.Logger, opts dataplane.UnpinnedOptions, n4 int) (*dataplane.Unpinned, error) {
	u, err := b.load(log, opts, n4, false)
	if err != nil {
		return nil, err
	}
	err = func() error {
		if err := u.SetNodeMAC(ownerPNN, ownerMAC); err != nil {
			return err
		}
		c := steeredClient(n4)
		if err := u.UpsertPeerFlows([]dataplane.PeerFlow{{VIP: benchVIP4, VIPPort: trackedPort,
			Client: c.Addr(), ClientPort: c.Port(), Owner: ownerPNN, LastSeen: time.Now(), Steer: true}}); err != nil {
			return err
		}
		return u.SetSteering(1)
	}()
	if err != nil {
		u.Close()
		return nil, err
	}
	return u, nil
}

// steerRows are the steering cases and the baselines they compare with.
type steerRows struct {
	// run are the cases to time, in table order; hook "xdp" or "tc-in"
	// (TC ingress).
	run []*progCase
	// the empty programs, timed among the other cases
	xdpEmpty, tcEmpty *progCase
	// the tc path's two programs on a steered packet
	handoff, redirect *progCase
	flows             int
	// place has the steering XDP program attached, as progRun explains
	place *vethPair
	link  link.Link
}

// emptyCases finds the empty XDP and TC programs among cases: the
// baselines the rows of fsha's programs are measured against.
func emptyCases(cases []*progCase) (xdp, tc *progCase, err error) {
	for _, c := range cases {
		switch {
		case c.want != wantBaseline:
		case c.hook == "xdp":
			xdp = c
		case c.hook == "tc":
			tc = c
		}
	}
	if xdp == nil || tc == nil {
		return nil, nil, errors.New("no empty programs to compare with")
	}
	return xdp, tc, nil
}

// newSteerRows builds the steering cases on the steering data plane dp and
// finds the empty programs among cases. Close frees what it attached.
func newSteerRows(dp *dataplane.Unpinned, cases []*progCase, n4 int) (_ *steerRows, err error) {
	s := &steerRows{flows: n4 + flows6}
	if s.xdpEmpty, s.tcEmpty, err = emptyCases(cases); err != nil {
		return nil, fmt.Errorf("steering cases: %w", err)
	}
	vip := netip.AddrPortFrom(benchVIP4, trackedPort)
	steered, err := segment{src: steeredClient(n4), dst: vip, ack: true, payload: payloadLen}.build()
	if err != nil {
		return nil, err
	}
	tracked, err := segment{src: benchClient(false, n4/2), dst: vip, ack: true, payload: payloadLen}.build()
	if err != nil {
		return nil, err
	}
	// per: how each run moves the ingress counters (nothing else may move)
	add := func(hook, name string, prog *ebpf.Program, pkt []byte, path dataplane.SteerMode, ret uint32, per dataplane.DirectionCounters) *progCase {
		c := &progCase{u: dp, hook: hook, name: name, prog: prog, pkt: pkt, want: wantOwn}
		c.setup = func() error { return dp.SetSteerPath(loIfindex, path) }
		c.verify = func() error { return verifySteer(c, ret, per) }
		s.run = append(s.run, c)
		return c
	}
	add("xdp", "fsha, steering on: tracked IPv4, not steered", dp.XDP, tracked, dataplane.SteerXDP, xdpPass,
		dataplane.DirectionCounters{Packets: 1, Tracked: 1})
	add("xdp", "steer xdp: peer flow, xdp mode (XDP_TX)", dp.XDP, steered, dataplane.SteerXDP, xdpTX,
		dataplane.DirectionCounters{Packets: 1, Steered: 1})
	s.handoff = add("xdp", "steer tc: peer flow, tc mode (XDP_PASS, handoff)", dp.XDP, steered, dataplane.SteerTC, xdpPass,
		dataplane.DirectionCounters{Packets: 1, SteerHandoffs: 1})
	// TC ingress counts nothing but what it steers: XDP counted the rest.
	add("tc-in", "fsha, steering on: tracked IPv4, not steered", dp.TCIngress, tracked, dataplane.SteerTC, tcxNext,
		dataplane.DirectionCounters{})
	s.redirect = add("tc-in", "steer tc: peer flow, tc mode (TC_ACT_REDIRECT)", dp.TCIngress, steered, dataplane.SteerTC, tcActRedirect,
		dataplane.DirectionCounters{TCSteered: 1})

	// BPF_PROG_RUN of an XDP program not attached anywhere pays for the
	// kernel's XDP dispatcher on every call (see progRun): the steering
	// data plane's gets a veth of its own, which sees no traffic.
	if s.place, err = newVethPair(); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if s.link, err = s.place.attachXDP(sideA, dp.XDP); err != nil {
		return nil, err
	}
	return s, nil
}

// Close detaches the steering XDP program and deletes its veth.
func (s *steerRows) Close() error {
	var errs []error
	if s.link != nil {
		errs = append(errs, s.link.Close())
		s.link = nil
	}
	if s.place != nil {
		errs = append(errs, s.place.Close())
		s.place = nil
	}
	return errors.Join(errs...)
}

// verifySteer checks that c takes the path it claims, with its setup done:
// verdict ret, the frame readdressed to ownerMAC if ret sends it on and
// untouched if not, and over many runs the ingress counters moved by per
// on each run and nothing else (egress counters, live flows).
func verifySteer(c *progCase, ret uint32, per dataplane.DirectionCounters) error {
	fail := func(format string, args ...any) error {
		return fmt.Errorf("%s %s: "+format, append([]any{c.hook, c.name}, args...)...)
	}
	out := make([]byte, len(c.pkt)+256)
	got, err := c.prog.Run(&ebpf.RunOptions{Data: c.pkt, DataOut: out})
	if err != nil {
		return fail("%w", err)
	}
	want := c.pkt
	if ret == xdpTX || ret == tcActRedirect {
		want = slices.Concat([]byte(ownerMAC), c.pkt[0:6], c.pkt[12:])
	}
	if got != ret || !bytes.Equal(out[:len(c.pkt)], want) {
		return fail("returned %d with frame %x, want %d with %x", int32(got), out[:len(c.pkt)], int32(ret), want)
	}

	const runs = 1000
	before, err := c.u.ReadCounters()
	if err != nil {
		return err
	}
	if got, err = c.prog.Run(&ebpf.RunOptions{Data: c.pkt, Repeat: runs}); err != nil {
		return fail("%w", err)
	}
	after, err := c.u.ReadCounters()
	if err != nil {
		return err
	}
	moved := combineCounters(after.Ingress, before.Ingress, func(a, b uint64) uint64 { return a - b })
	wantMoved := combineCounters(per, per, func(a, _ uint64) uint64 { return a * runs })
	if got != ret || moved != wantMoved || after.Egress != before.Egress || after.Flows != before.Flows {
		return fail("%d runs returned %d and moved the ingress counters by %+v (egress changed: %v, flows %d -> %d); want %d, %+v",
			runs, int32(got), moved, after.Egress != before.Egress, before.Flows, after.Flows, int32(ret), wantMoved)
	}
	return nil
}

// combineCounters applies f to every counter of a and its peer in b.
func combineCounters(a, b dataplane.DirectionCounters, f func(a, b uint64) uint64) dataplane.DirectionCounters {
	var r dataplane.DirectionCounters
	va, vb, vr := reflect.ValueOf(a), reflect.ValueOf(b), reflect.ValueOf(&r).Elem()
	for i := range vr.NumField() {
		vr.Field(i).SetUint(f(va.Field(i).Uint(), vb.Field(i).Uint()))
	}
	return r
}

// write prints the steering table: each hook's cases under its empty
// program, then the tc path's two programs summed round by round.
func (s *steerRows) write(out io.Writer) error {
	t := &table{header: progHeader}
	for _, g := range []struct {
		hook string
		base *progCase
	}{{"xdp", s.xdpEmpty}, {"tc-in", s.tcEmpty}} {
		t.add(caseRow(g.hook, g.base, g.base)...)
		for _, c := range s.run {
			if c.hook == g.hook {
				t.add(caseRow(g.hook, c, g.base)...)
			}
		}
	}
	sumBase := &progCase{name: "empty programs, XDP + TC", want: wantBaseline, ns: addRounds(s.xdpEmpty.ns, s.tcEmpty.ns)}
	sum := &progCase{name: "steer tc: XDP handoff + TC redirect", want: wantOwn, ns: addRounds(s.handoff.ns, s.redirect.ns)}
	t.add(caseRow("xdp+tc-in", sumBase, sumBase)...)
	t.add(caseRow("xdp+tc-in", sum, sumBase)...)

	fmt.Fprintf(out, "\nSteering (drain), in the same BPF_PROG_RUN rounds as above: a %d-byte segment of a flow to steer to\n", len(s.handoff.pkt))
	fmt.Fprintf(out, "another node (steering on, 1 peer flow, %s flows), the interface (loopback here) in xdp or tc mode\n", thousands(s.flows))
	fmt.Fprintf(out, "(xdp path = XDP ingress alone, XDP_TX; tc path = XDP ingress passes the packet up (handoff) and tc-in,\n")
	fmt.Fprintf(out, " the TCX ingress program, rewrites it and redirects it to the interface's egress; xdp+tc-in = the tc\n")
	fmt.Fprintf(out, " path's whole program cost: per round, the sum of its two programs' ns/pkt, x empty over the sum of\n")
	fmt.Fprintf(out, " the two empty programs' in the same round; not steered = a tracked segment of the same VIP on the\n")
	fmt.Fprintf(out, " same data plane; no targets. Programs only: BPF_PROG_RUN acts on no verdict, so the skb the tc path\n")
	fmt.Fprintf(out, " builds before TC ingress and either path's transmit are not in these figures)\n\n")
	return t.write(out)
}

// addRounds adds two cases' times round by round.
func addRounds(a, b []float64) []float64 {
	sum := make([]float64, len(a))
	for r := range a {
		sum[r] = a[r] + b[r]
	}
	return sum
}
