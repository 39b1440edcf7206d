package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/google/gopacket/layers"

	"github.com/fsha/fsha/tools/testenv"
)

// BPF_PROG_RUN tests of fsha_xdp and fsha_tc_egress: every case runs a
// packet built with gopacket through the loaded programs and checks the
// verdict, the counters, the flows map and the ring buffer.

// Verdicts: both programs pass every packet.
const (
	xdpPass = 2          // XDP_PASS
	tcxNext = 0xffffffff // TCX_NEXT, -1
)

const (
	ingress = fshaDirectionDIRECTION_INGRESS
	egress  = fshaDirectionDIRECTION_EGRESS
)

var (
	vip4    = netip.MustParseAddr("198.18.0.10")
	vip4b   = netip.MustParseAddr("198.18.0.11")
	client4 = netip.MustParseAddr("198.19.0.20")
	other4  = netip.MustParseAddr("198.18.7.7") // not a VIP
	vip6    = netip.MustParseAddr("2001:2::10")
	client6 = netip.MustParseAddr("2001:2::20:1")
	other6  = netip.MustParseAddr("2001:2::7:7") // not a VIP

	defaultVIPs  = []netip.Addr{vip4, vip6}
	defaultPorts = []uint16{445, 139, 2049, 111}

	c4 = conn{vip: vip4, client: client4, vport: 445, cport: 40000}
	c6 = conn{vip: vip6, client: client6, vport: 2049, cport: 40001}
)

// xdpMd is struct xdp_md, the input context of an XDP run.
type xdpMd struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// harness is one loaded, unpinned copy of the programs and maps,
// configured through the Maps API as the daemon does.
type harness struct {
	objs   fshaObjects
	maps   Maps
	events *EventReader
	runs   [2]uint64   // packets run, per direction
	state  []*ebpf.Map // the programs' tables: flows, tombstones, handshakes...
	// dirty says the VIPs or ports may differ from the defaults, which
	// reset then restores (writing the whole prefilter takes a while).
	dirty bool
	// vips are the harness's default VIPs (defaultVIPs unless a test
	// says otherwise).
	vips []netip.Addr
}

func newHarness(t testing.TB, flowsMax uint32) *harness {
	t.Helper()
	testenv.RequireBPF(t)

	spec, err := newSpec(flowsMax)
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
		if m.Type == ebpf.LRUHash && m.MaxEntries > 4096 && name != fshaMapFlows {
			m.MaxEntries = 4096 // small tables reset fast; flows is sized by flowsMax
		}
	}
	h := &harness{vips: defaultVIPs}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			t.Fatalf("verifier: %+v", verr)
		}
		t.Fatalf("load objects: %v", err)
	}
	// The programs' own tables (flows, tombstones, handshakes...) are the
	// LRU hashes: entries made from packets must be evictable. reset
	// empties them all; the plain hashes are the daemon's (VIPs, peers).
	for _, m := range coll.Maps {
		if m.Type() == ebpf.LRUHash {
			h.state = append(h.state, m)
		}
	}
	err = coll.Assign(&h.objs)
	coll.Close()
	if err != nil {
		t.Fatalf("assign objects: %v", err)
	}
	t.Cleanup(func() { h.objs.Close() })
	h.maps = mapsOf(&h.objs.fshaMaps)

	if h.events, err = h.maps.NewEventReader(); err != nil {
		t.Fatalf("event reader: %v", err)
	}
	t.Cleanup(func() { h.events.Close() })
	h.configure(t, defaultVIPs, defaultPorts)
	h.dirty = false
	return h
}

func (h *harness) configure(t testing.TB, vips []netip.Addr, ports []uint16) {
	t.Helper()
	h.dirty = true
	if err := h.maps.SetVIPs(vips); err != nil {
		t.Fatalf("set vips: %v", err)
	}
	if err := h.maps.SetPorts(ports); err != nil {
		t.Fatalf("set ports: %v", err)
	}
	// no fencing: these tests are about tracking, and every packet passes
	if err := h.maps.DisableLease(); err != nil {
		t.Fatalf("disable lease: %v", err)
	}
}

// reset empties the programs' tables and the ring buffer and restores the
// default VIPs and ports; counters keep counting (tests use deltas).
func (h *harness) reset(t testing.TB) {
	t.Helper()
	for _, m := range h.state {
		var (
			k     = make([]byte, m.KeySize())
			keys  [][]byte
			value = make([]byte, m.ValueSize())
		)
		it := m.Iterate()
		for it.Next(&k, &value) {
			keys = append(keys, slices.Clone(k))
		}
		if err := it.Err(); err != nil {
			t.Fatalf("list %v: %v", m, err)
		}
		for _, k := range keys {
			if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Fatalf("delete from %v: %v", m, err)
			}
		}
	}
	if err := h.maps.FlowCount.Put(uint32(0), uint64(0)); err != nil {
		t.Fatalf("reset flow count: %v", err)
	}
	clearFlowCache(t, &h.maps)
	h.drainEvents(t)
	if h.dirty {
		h.configure(t, h.vips, defaultPorts)
		h.dirty = false
	}
}

// clearFlowCache empties every CPU's flow cache: a slot left by an earlier
// test would otherwise take the packets of a flow with the same key. It
// writes only the slots in use (a write of all of them costs milliseconds,
// which the fuzz targets would pay per input).
func clearFlowCache(t testing.TB, m *Maps) {
	t.Helper()
	var used []uint32
	err := m.forEachCacheSlot(func(k uint32, perCPU []fshaFlowCacheSlot) {
		if slices.ContainsFunc(perCPU, func(s fshaFlowCacheSlot) bool { return s != fshaFlowCacheSlot{} }) {
			used = append(used, k)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range used {
		if err := m.FlowCache.Put(k, make([]fshaFlowCacheSlot, ncpu)); err != nil {
			t.Fatalf("clear flow cache slot %d: %v", k, err)
		}
	}
}

// run runs one packet through the program of direction d and checks the
// verdict. The skb of a TC run is the data given: its len is len(pkt),
// which TestProgPayloadLength relies on and checks.
func (h *harness) run(t testing.TB, d fshaDirection, pkt []byte) {
	t.Helper()
	if h.runVerdict(t, d, pkt) {
		t.Fatalf("%s dropped the packet, want it passed", dirName(d))
	}
}

// runVerdict runs one packet through the program of direction d and
// reports whether it dropped it (a verdict other than a drop or a pass
// fails the test).
func (h *harness) runVerdict(t testing.TB, d fshaDirection, pkt []byte) bool {
	t.Helper()
	h.runs[d]++
	if d == ingress {
		ret, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt,
			Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
		if err != nil {
			t.Fatalf("run xdp: %v", err)
		}
		if ret != xdpPass && ret != xdpDrop {
			t.Fatalf("xdp verdict %d, want XDP_PASS (%d) or XDP_DROP (%d)", ret, xdpPass, xdpDrop)
		}
		return ret == xdpDrop
	}
	ret, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		t.Fatalf("run tc: %v", err)
	}
	if ret != tcxNext && ret != tcxDrop {
		t.Fatalf("tc verdict %#x, want TCX_NEXT (%#x) or TCX_DROP (%d)", ret, uint32(tcxNext), tcxDrop)
	}
	return ret == tcxDrop
}

func (h *harness) counters(t testing.TB) Counters {
	t.Helper()
	c, err := h.maps.ReadCounters()
	if err != nil {
		t.Fatalf("read counters: %v", err)
	}
	return c
}

// counterValues lists dc by enum counter.
func counterValues(dc DirectionCounters) [fshaCounterCOUNTER_MAX]uint64 {
	var v [fshaCounterCOUNTER_MAX]uint64
	for c, x := range map[fshaCounter]uint64{
		fshaCounterCOUNTER_OTHER: dc.Other, fshaCounterCOUNTER_PARSE_ERROR: dc.ParseErrors,
		fshaCounterCOUNTER_FRAGMENT: dc.Fragments, fshaCounterCOUNTER_UNTRACKED: dc.Untracked,
		fshaCounterCOUNTER_TRACKED: dc.Tracked, fshaCounterCOUNTER_FENCED: dc.Fenced,
		fshaCounterCOUNTER_CREATED: dc.Created, fshaCounterCOUNTER_CLOSED: dc.Closed,
		fshaCounterCOUNTER_EVICTED: dc.Evicted, fshaCounterCOUNTER_EVENTS_LOST: dc.EventsLost,
		fshaCounterCOUNTER_MAP_ERRORS: dc.MapErrors, fshaCounterCOUNTER_STEERED: dc.Steered,
		fshaCounterCOUNTER_STEER_ERRORS: dc.SteerErrors, fshaCounterCOUNTER_STEER_HANDOFF: dc.SteerHandoffs,
		fshaCounterCOUNTER_TC_STEERED: dc.TCSteered, fshaCounterCOUNTER_ARP_PROBED: dc.ARPProbed,
	} {
		v[c] = x
	}
	return v
}

func counterName(c int) string {
	names := map[fshaCounter]string{
		fshaCounterCOUNTER_OTHER: "OTHER", fshaCounterCOUNTER_PARSE_ERROR: "PARSE_ERROR",
		fshaCounterCOUNTER_FRAGMENT: "FRAGMENT", fshaCounterCOUNTER_UNTRACKED: "UNTRACKED",
		fshaCounterCOUNTER_TRACKED: "TRACKED", fshaCounterCOUNTER_FENCED: "FENCED",
		fshaCounterCOUNTER_CREATED: "CREATED", fshaCounterCOUNTER_CLOSED: "CLOSED",
		fshaCounterCOUNTER_EVICTED: "EVICTED", fshaCounterCOUNTER_EVENTS_LOST: "EVENTS_LOST",
		fshaCounterCOUNTER_MAP_ERRORS: "MAP_ERRORS", fshaCounterCOUNTER_STEERED: "STEERED",
		fshaCounterCOUNTER_STEER_ERRORS: "STEER_ERRORS", fshaCounterCOUNTER_STEER_HANDOFF: "STEER_HANDOFF",
		fshaCounterCOUNTER_TC_STEERED: "TC_STEERED", fshaCounterCOUNTER_ARP_PROBED: "ARP_PROBED",
	}
	if n, ok := names[fshaCounter(c)]; ok {
		return n
	}
	return fmt.Sprintf("counter-%d", c)
}

// delta is the change of every counter, per direction.
type delta [2][fshaCounterCOUNTER_MAX]uint64

func counterDelta(before, after Counters) delta {
	var d delta
	for dir, pair := range [][2]DirectionCounters{{before.Ingress, after.Ingress}, {before.Egress, after.Egress}} {
		b, a := counterValues(pair[0]), counterValues(pair[1])
		for i := range a {
			d[dir][i] = a[i] - b[i]
		}
	}
	return d
}

func (d delta) String() string {
	s := ""
	for dir, name := range []string{"ingress", "egress"} {
		for i, v := range d[dir] {
			if v != 0 {
				s += fmt.Sprintf(" %s.%s+%d", name, counterName(i), v)
			}
		}
	}
	if s == "" {
		return " none"
	}
	return s
}

func (h *harness) flows(t testing.TB) []Flow {
	t.Helper()
	fl, err := h.maps.AllFlows()
	if err != nil {
		t.Fatalf("read flows: %v", err)
	}
	return fl
}

// flow returns the flow of c, if tracked.
func (h *harness) flow(t testing.TB, c conn) (Flow, bool) {
	t.Helper()
	for _, f := range h.flows(t) {
		if c.is(f) {
			return f, true
		}
	}
	return Flow{}, false
}

// is reports whether f is the flow of c.
func (c conn) is(f Flow) bool {
	return f.VIP == c.vip && f.Client == c.client && f.VIPPort == c.vport && f.ClientPort == c.cport
}

func (h *harness) rawFlow(t testing.TB, c conn) (fshaFlow, bool) {
	t.Helper()
	v, err := h.maps.lookupFlow(c.key())
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return v, false
	}
	if err != nil {
		t.Fatalf("look up flow: %v", err)
	}
	return v, true
}

// drainEvents returns the events already in the ring buffer, without
// waiting for more.
func (h *harness) drainEvents(t testing.TB) []Event {
	t.Helper()
	var out []Event
	h.events.rd.SetDeadline(time.Now())
	for range 100000 {
		ev, err := h.events.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return out
		}
		if err != nil {
			t.Fatalf("read event: %v", err)
		}
		out = append(out, ev)
	}
	t.Fatalf("ring buffer does not drain")
	return nil
}

// checkTotals checks that every packet run counted exactly one outcome.
func (h *harness) checkTotals(t testing.TB) {
	t.Helper()
	c := h.counters(t)
	if c.Ingress.Packets != h.runs[ingress] || c.Egress.Packets != h.runs[egress] {
		t.Errorf("packets counted ingress %d egress %d, run ingress %d egress %d",
			c.Ingress.Packets, c.Egress.Packets, h.runs[ingress], h.runs[egress])
	}
}

// wantEvent is an event a packet must emit.
type wantEvent struct {
	typ    EventType
	reason CloseReason
	c      conn
	check  func(t *testing.T, f Flow) // optional, on the event's flow
}

func opened(c conn) wantEvent { return wantEvent{typ: EventOpen, c: c} }

func closed(c conn, r CloseReason) wantEvent { return wantEvent{typ: EventClose, reason: r, c: c} }

// step is one packet through one program and everything it must change.
// An OPEN event implies CREATED (counted on egress) and one more flow, a
// CLOSE event CLOSED (counted in the packet's direction) and one less.
type step struct {
	name    string
	dir     fshaDirection
	pkt     []byte
	want    fshaCounter // the outcome the packet counts
	events  []wantEvent
	evicted uint64
	check   func(t *testing.T, h *harness) // optional, after the run
}

func (h *harness) step(t *testing.T, s step) {
	t.Helper()
	before := h.counters(t)
	flowsBefore := len(h.flows(t))
	h.run(t, s.dir, s.pkt)
	got := counterDelta(before, h.counters(t))

	var want delta
	want[s.dir][s.want] = 1
	flowChange := 0
	for _, e := range s.events {
		if e.typ == EventOpen {
			want[egress][fshaCounterCOUNTER_CREATED]++
			flowChange++
		} else {
			want[s.dir][fshaCounterCOUNTER_CLOSED]++
			flowChange--
		}
	}
	want[egress][fshaCounterCOUNTER_EVICTED] += s.evicted
	flowChange -= int(s.evicted)
	if got != want {
		t.Errorf("%s: counters changed%s, want%s", s.name, got, want)
	}
	if n := len(h.flows(t)); n-flowsBefore != flowChange {
		t.Errorf("%s: flows %d -> %d, want a change of %d", s.name, flowsBefore, n, flowChange)
	}

	evs := h.drainEvents(t)
	if len(evs) != len(s.events) {
		t.Errorf("%s: %d events %+v, want %d", s.name, len(evs), evs, len(s.events))
	}
	for i := 0; i < len(evs) && i < len(s.events); i++ {
		g, w := evs[i], s.events[i]
		if g.Type != w.typ || g.Reason != w.reason || !w.c.is(g.Flow) {
			t.Errorf("%s: event %v %q %v:%d<-%v:%d, want %v %q for %+v", s.name, g.Type, g.Reason,
				g.Flow.VIP, g.Flow.VIPPort, g.Flow.Client, g.Flow.ClientPort, w.typ, w.reason, w.c)
		}
		wantState := StateEstablished
		if w.typ == EventClose {
			wantState = StateClosed
		}
		if g.Flow.State != wantState {
			t.Errorf("%s: %v event with state %v, want %v", s.name, g.Type, g.Flow.State, wantState)
		}
		if w.check != nil {
			w.check(t, g.Flow)
		}
	}
	if s.check != nil {
		s.check(t, h)
	}
}

// pktClass is what the parser makes of a packet.
type pktClass int

const (
	classOther pktClass = iota
	classParseError
	classFragment
	// classCandidate is TCP between a VIP and a tracked port: ingress
	// counts it UNTRACKED (no flow yet), egress creates the flow when the
	// segment is neither SYN, RST nor FIN.
	classCandidate
	// classFenced is what would make the node answer for a VIP it may not
	// answer for now: dropped (only the fuzz targets fence).
	classFenced
	// classARPProbed is an outgoing ARP request asking for another
	// address with a fenced VIP as its sender: sent as a probe (sender
	// 0.0.0.0), counted ARP_PROBED.
	classARPProbed
)

func (c pktClass) String() string {
	switch c {
	case classOther:
		return "OTHER"
	case classParseError:
		return "PARSE_ERROR"
	case classFragment:
		return "FRAGMENT"
	case classCandidate:
		return "candidate"
	case classFenced:
		return "FENCED"
	case classARPProbed:
		return "ARP_PROBED"
	}
	return fmt.Sprintf("class-%d", int(c))
}

// stepFor is the step a packet of class cl makes on an empty table; c is
// the connection a candidate belongs to.
func stepFor(name string, d fshaDirection, pkt []byte, cl pktClass, c conn) step {
	s := step{name: name, dir: d, pkt: pkt}
	switch cl {
	case classOther:
		s.want = fshaCounterCOUNTER_OTHER
	case classParseError:
		s.want = fshaCounterCOUNTER_PARSE_ERROR
	case classFragment:
		s.want = fshaCounterCOUNTER_FRAGMENT
	case classCandidate:
		s.want = fshaCounterCOUNTER_UNTRACKED
		if d == egress {
			s.want = fshaCounterCOUNTER_TRACKED
			s.events = []wantEvent{opened(c)}
		}
	}
	return s
}

// dataSeg builds a 100-byte data segment of c in either direction, with
// mod applied to the frame and fix to its bytes (either may be nil).
func dataSeg(c conn, mod func(f *frame), fix func(f frame, b []byte)) func(t testing.TB, d fshaDirection) []byte {
	return func(t testing.TB, d fshaDirection) []byte {
		f := c.seg(d, tcpACK|tcpPSH, 1000, 2000, 100)
		if mod != nil {
			mod(&f)
		}
		b := f.bytes(t)
		if fix != nil {
			fix(f, b)
		}
		return b
	}
}

// Header field patches, on frames the builders made.
func setIHL(ihl byte) func(f frame, b []byte) {
	return func(f frame, b []byte) { b[f.l3Offset()] = 0x40 | ihl }
}

func setTotLen(n uint16) func(f frame, b []byte) {
	return func(f frame, b []byte) { binary.BigEndian.PutUint16(b[f.l3Offset()+2:], n) }
}

func setPayloadLen(n uint16) func(f frame, b []byte) {
	return func(f frame, b []byte) { binary.BigEndian.PutUint16(b[f.l3Offset()+4:], n) }
}

// setDoff sets the TCP data offset of a frame without IP options or
// extension headers.
func setDoff(doff byte) func(f frame, b []byte) {
	return func(f frame, b []byte) {
		l4 := f.l3Offset() + 20
		if f.src.Is6() {
			l4 = f.l3Offset() + 40
		}
		b[l4+12] = doff<<4 | b[l4+12]&0x0f
	}
}

func setEtherType(off int, typ layers.EthernetType) func(f frame, b []byte) {
	return func(f frame, b []byte) { binary.BigEndian.PutUint16(b[off:], uint16(typ)) }
}

func fixAll(fixes ...func(f frame, b []byte)) func(f frame, b []byte) {
	return func(f frame, b []byte) {
		for _, fix := range fixes {
			fix(f, b)
		}
	}
}

func withVLANs(ids ...uint16) func(f *frame) { return func(f *frame) { f.vlans = ids } }

func withExt(ext ...layers.IPProtocol) func(f *frame) { return func(f *frame) { f.ext = ext } }

const (
	hbh     = layers.IPProtocolIPv6HopByHop
	routing = layers.IPProtocolIPv6Routing
	dstOpts = layers.IPProtocolIPv6Destination
	ah      = layers.IPProtocolAH
	frag6   = layers.IPProtocolIPv6Fragment
)

func TestProgParse(t *testing.T) {
	h := newHarness(t, 64)
	cases := []struct {
		name string
		c    conn
		pkt  func(t testing.TB, d fshaDirection) []byte
		want pktClass
	}{
		{"ipv4", c4, dataSeg(c4, nil, nil), classCandidate},
		{"ipv6", c6, dataSeg(c6, nil, nil), classCandidate},
		{"ipv4 802.1q", c4, dataSeg(c4, withVLANs(100), nil), classCandidate},
		{"ipv6 802.1q", c6, dataSeg(c6, withVLANs(100), nil), classCandidate},
		{"ipv4 802.1ad+802.1q", c4, dataSeg(c4, withVLANs(100, 200), nil), classCandidate},
		{"ipv6 802.1ad+802.1q", c6, dataSeg(c6, withVLANs(100, 200), nil), classCandidate},
		{"ipv4 802.1q+802.1ad", c4, dataSeg(c4, withVLANs(100, 200), func(f frame, b []byte) {
			binary.BigEndian.PutUint16(b[12:], uint16(layers.EthernetTypeDot1Q))
			binary.BigEndian.PutUint16(b[16:], uint16(layers.EthernetTypeQinQ))
		}), classCandidate},
		{"three vlan tags", c4, dataSeg(c4, withVLANs(100, 200, 300), nil), classOther},
		{"ipv4 options ihl 6", c4, dataSeg(c4, func(f *frame) { f.ipOptions = 4 }, nil), classCandidate},
		{"ipv4 options ihl 15", c4, dataSeg(c4, func(f *frame) { f.ipOptions = 40 }, nil), classCandidate},
		{"ipv4 tcp options", c4, dataSeg(c4, func(f *frame) { f.tcpOptions = true }, nil), classCandidate},
		{"ipv6 tcp options", c6, dataSeg(c6, func(f *frame) { f.tcpOptions = true }, nil), classCandidate},
		{"ipv6 hop-by-hop", c6, dataSeg(c6, withExt(hbh), nil), classCandidate},
		{"ipv6 routing", c6, dataSeg(c6, withExt(routing), nil), classCandidate},
		{"ipv6 destination options", c6, dataSeg(c6, withExt(dstOpts), nil), classCandidate},
		{"ipv6 ah", c6, dataSeg(c6, withExt(ah), nil), classCandidate},
		{"ipv6 hbh dst routing ah", c6, dataSeg(c6, withExt(hbh, dstOpts, routing, ah), nil), classCandidate},
		{"ipv6 five extension headers", c6, dataSeg(c6, withExt(hbh, dstOpts, routing, ah, dstOpts), nil), classCandidate},
		// The program follows MAX_IPV6_EXT_HEADERS (6) extension headers:
		// a seventh is too many.
		{"ipv6 six extension headers", c6, dataSeg(c6, withExt(hbh, dstOpts, routing, ah, ah, dstOpts), nil), classCandidate},
		{"ipv6 seven extension headers", c6, dataSeg(c6, withExt(hbh, dstOpts, routing, ah, ah, dstOpts, dstOpts), nil), classParseError},
		{"ipv6 vlan hbh ah tcp options", c6, dataSeg(c6, func(f *frame) {
			f.vlans, f.ext, f.tcpOptions = []uint16{7}, []layers.IPProtocol{hbh, ah}, true
		}, nil), classCandidate},
		{"ipv6 fragment header", c6, dataSeg(c6, withExt(frag6), nil), classFragment},
		{"ipv6 hbh then fragment header", c6, dataSeg(c6, withExt(hbh, frag6), nil), classFragment},
		{"ipv6 fragment to non-vip", c6, dataSeg(conn{vip: other6, client: client6, vport: 2049, cport: 1}, withExt(frag6), nil), classOther},
		{"ipv4 first fragment (MF)", c4, dataSeg(c4, func(f *frame) { f.moreFrags = true }, nil), classFragment},
		{"ipv4 last fragment (offset)", c4, dataSeg(c4, func(f *frame) { f.fragOffset = 185 }, nil), classFragment},
		{"ipv4 middle fragment", c4, dataSeg(c4, func(f *frame) { f.moreFrags, f.fragOffset = true, 1 }, nil), classFragment},
		{"ipv4 fragment to non-vip", c4, dataSeg(conn{vip: other4, client: client4, vport: 445, cport: 1}, func(f *frame) { f.moreFrags = true }, nil), classOther},
		{"ipv4 don't-fragment set", c4, dataSeg(c4, nil, func(f frame, b []byte) { b[f.l3Offset()+6] |= 0x40 }), classCandidate},
		{"udp to vip", c4, dataSeg(c4, func(f *frame) { f.proto = layers.IPProtocolUDP }, nil), classOther},
		{"udp to ipv6 vip", c6, dataSeg(c6, func(f *frame) { f.proto = layers.IPProtocolUDP }, nil), classOther},
		{"icmp to vip", c4, dataSeg(c4, func(f *frame) { f.proto = layers.IPProtocolICMPv4 }, nil), classOther},
		{"icmpv6 to vip", c6, dataSeg(c6, func(f *frame) { f.proto = layers.IPProtocolICMPv6 }, nil), classOther},
		{"ipv6 no next header", c6, dataSeg(c6, nil, func(f frame, b []byte) { b[f.l3Offset()+6] = 59 }), classOther},
		{"non-vip ipv4", c4, dataSeg(conn{vip: other4, client: client4, vport: 445, cport: 1}, nil, nil), classOther},
		{"non-vip ipv6", c6, dataSeg(conn{vip: other6, client: client6, vport: 445, cport: 1}, nil, nil), classOther},
		{"untracked port ipv4", c4, dataSeg(conn{vip: vip4, client: client4, vport: 22, cport: 1}, nil, nil), classOther},
		{"untracked port ipv6", c6, dataSeg(conn{vip: vip6, client: client6, vport: 80, cport: 1}, nil, nil), classOther},
		{"arp", c4, dataSeg(c4, nil, setEtherType(12, layers.EthernetTypeARP)), classOther},
		{"802.3 length", c4, dataSeg(c4, nil, setEtherType(12, 100)), classOther},
		{"arp in vlan", c4, dataSeg(c4, withVLANs(5), setEtherType(16, layers.EthernetTypeARP)), classOther},
		{"ihl 0", c4, dataSeg(c4, nil, setIHL(0)), classParseError},
		{"ihl 4", c4, dataSeg(c4, nil, setIHL(4)), classParseError},
		{"ihl 15 past the packet", c4, dataSeg(c4, func(f *frame) { f.payload = 0 }, setIHL(15)), classParseError},
		// the prefilter rules a non-VIP address out before the rest of
		// the IP header is judged: not ours, not judged (see prefilter)
		{"ihl 15 past the packet, non-vip", c4, dataSeg(conn{vip: other4, client: client4, vport: 445, cport: 1}, func(f *frame) { f.payload = 0 }, setIHL(15)), classOther},
		{"ihl 6 eats the tcp header", c4, dataSeg(c4, func(f *frame) { f.payload = 0 }, setIHL(6)), classParseError},
		{"total length 0", c4, dataSeg(c4, nil, setTotLen(0)), classParseError},
		{"total length below ihl", c4, dataSeg(c4, nil, setTotLen(19)), classParseError},
		{"total length ends in tcp header", c4, dataSeg(c4, nil, setTotLen(20+19)), classParseError},
		{"total length ends in tcp options", c4, dataSeg(c4, func(f *frame) { f.tcpOptions = true }, setTotLen(20+39)), classParseError},
		// the length check comes after the port check: not ours, not judged
		{"total length short, untracked port", c4, dataSeg(conn{vip: vip4, client: client4, vport: 22, cport: 1}, nil, setTotLen(30)), classOther},
		{"total length exactly the headers", c4, dataSeg(c4, nil, setTotLen(40)), classCandidate},
		{"total length past the packet", c4, dataSeg(c4, nil, setTotLen(1400)), classCandidate},
		{"ipv6 payload length 0", c6, dataSeg(c6, nil, setPayloadLen(0)), classParseError},
		{"ipv6 payload length ends in tcp header", c6, dataSeg(c6, nil, setPayloadLen(19)), classParseError},
		{"ipv6 payload length ends in extension header", c6, dataSeg(c6, withExt(hbh, ah), setPayloadLen(30)), classParseError},
		{"ipv6 payload length ends in tcp after extensions", c6, dataSeg(c6, withExt(hbh, ah), setPayloadLen(40+10)), classParseError},
		{"ipv6 extension header longer than the packet", c6, dataSeg(c6, func(f *frame) { f.ext, f.payload = []layers.IPProtocol{dstOpts}, 0 },
			func(f frame, b []byte) { b[f.l3Offset()+40+1] = 20 }), classParseError},
		{"ipv6 extension header past the end, payload length agrees", c6, dataSeg(c6, func(f *frame) { f.ext, f.payload = []layers.IPProtocol{dstOpts}, 0 },
			fixAll(setPayloadLen(2000), func(f frame, b []byte) { b[f.l3Offset()+40+1] = 20 })), classParseError},
		{"ipv6 ah longer than the packet", c6, dataSeg(c6, func(f *frame) { f.ext, f.payload = []layers.IPProtocol{ah}, 0 },
			func(f frame, b []byte) { b[f.l3Offset()+40+1] = 40 }), classParseError},
		{"tcp data offset 0", c4, dataSeg(c4, nil, setDoff(0)), classParseError},
		{"tcp data offset 4", c4, dataSeg(c4, nil, setDoff(4)), classParseError},
		{"tcp data offset 4 ipv6", c6, dataSeg(c6, nil, setDoff(4)), classParseError},
		{"tcp data offset past the packet", c4, dataSeg(c4, func(f *frame) { f.payload = 30 }, setDoff(15)), classParseError},
		{"tcp data offset past the packet ipv6", c6, dataSeg(c6, func(f *frame) { f.payload = 0 }, setDoff(6)), classParseError},
		{"tcp data offset 15 within the packet", c4, dataSeg(c4, nil, setDoff(15)), classCandidate},
	}
	n := 0
	for _, tc := range cases {
		for _, d := range []fshaDirection{ingress, egress} {
			t.Run(fmt.Sprintf("%s/%v", tc.name, dirName(d)), func(t *testing.T) {
				h.reset(t)
				h.step(t, stepFor(tc.name, d, tc.pkt(t, d), tc.want, tc.c))
				n++
			})
		}
	}
	t.Logf("%d packets, %d cases", n, len(cases))
	h.checkTotals(t)
}

func dirName(d fshaDirection) string {
	if d == ingress {
		return "ingress"
	}
	return "egress"
}

// TestProgTruncated cuts frames with every kind of header at each header
// boundary and in the middle of each header: anything short of a complete
// TCP header is a parse error, in both directions.
func TestProgTruncated(t *testing.T) {
	h := newHarness(t, 64)
	frames := []struct {
		name string
		c    conn
		mod  func(f *frame)
	}{
		{"ipv4 qinq options", c4, func(f *frame) { f.vlans, f.ipOptions, f.tcpOptions = []uint16{10, 20}, 8, true }},
		{"ipv4 vlan", c4, func(f *frame) { f.vlans = []uint16{10} }},
		{"ipv6 vlan extensions", c6, func(f *frame) {
			f.vlans, f.tcpOptions, f.ext = []uint16{10}, true, []layers.IPProtocol{hbh, dstOpts, routing, ah}
		}},
		{"ipv6 qinq", c6, func(f *frame) { f.vlans = []uint16{10, 20} }},
		{"ipv4 options", c4, func(f *frame) { f.ipOptions, f.tcpOptions = 12, true }},
		{"ipv6 extensions", c6, func(f *frame) { f.ext = []layers.IPProtocol{hbh, routing, ah, dstOpts} }},
	}
	n := 0
	for _, fr := range frames {
		for _, d := range []fshaDirection{ingress, egress} {
			f := fr.c.seg(d, tcpACK|tcpPSH, 1000, 2000, 64)
			fr.mod(&f)
			b, cuts := f.build(t)
			end := cuts[len(cuts)-1].off // the end of the TCP header
			for i, ct := range cuts {
				name := fmt.Sprintf("%s/%s/%d %s at %d", fr.name, dirName(d), i, ct.name, ct.off)
				t.Run(name, func(t *testing.T) {
					if runRefused(b[:ct.off], d) {
						// an untagged IP frame shorter than the fixed IP
						// header: BPF_PROG_RUN has no skb for it (see
						// runRefused); XDP runs the same cut
						if _, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: b[:ct.off]}); err == nil {
							t.Errorf("tc ran a %d-byte frame", ct.off)
						}
						return
					}
					h.reset(t)
					cl := classParseError
					if ct.off == end {
						// headers complete, payload gone: the IP length
						// still claims it, which the parser accepts
						cl = classCandidate
					}
					h.step(t, stepFor(name, d, b[:ct.off], cl, fr.c))
					n++
				})
			}
		}
	}
	t.Logf("%d truncated frames", n)
	h.checkTotals(t)
}

// TestProgShortFrame: frames shorter than an Ethernet header never reach
// the programs; BPF_PROG_RUN refuses them as the stack does.
func TestProgShortFrame(t *testing.T) {
	h := newHarness(t, 64)
	b := c4.in(tcpACK, 1, 1, 0).bytes(t)[:13]
	if _, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: b}); err == nil {
		t.Errorf("xdp ran a 13-byte frame")
	}
	if _, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: b}); err == nil {
		t.Errorf("tc ran a 13-byte frame")
	}
}

// established opens a flow for c the way a real connection does and
// returns the next sequence numbers of the client and the server.
func established(t *testing.T, h *harness, c conn) (cseq, sseq uint32) {
	t.Helper()
	ci, si := uint32(0x10000000), uint32(0xfffffff0) // the server's wraps soon
	for _, s := range []step{
		{name: "client SYN", dir: ingress, pkt: c.in(tcpSYN, ci, 0, 0).bytes(t), want: fshaCounterCOUNTER_UNTRACKED},
		{name: "server SYN-ACK", dir: egress, pkt: c.out(tcpSYN|tcpACK, si, ci+1, 0).bytes(t), want: fshaCounterCOUNTER_UNTRACKED},
		{name: "client ACK", dir: ingress, pkt: c.in(tcpACK, ci+1, si+1, 0).bytes(t), want: fshaCounterCOUNTER_UNTRACKED},
		{name: "client data", dir: ingress, pkt: c.in(tcpACK|tcpPSH, ci+1, si+1, 100).bytes(t), want: fshaCounterCOUNTER_UNTRACKED},
		{name: "server ACK", dir: egress, pkt: c.out(tcpACK, si+1, ci+101, 0).bytes(t), want: fshaCounterCOUNTER_TRACKED,
			events: []wantEvent{{typ: EventOpen, c: c, check: func(t *testing.T, f Flow) {
				if f.PacketsOut != 1 || f.BytesOut != 0 || f.SeqOut != si+1 || f.AckOut != ci+101 {
					t.Errorf("open event flow %+v", f)
				}
			}}},
			check: func(t *testing.T, h *harness) {
				f, ok := h.flow(t, c)
				if !ok {
					t.Fatalf("no flow for %+v after the server's ACK", c)
				}
				want := Flow{VIP: c.vip, VIPPort: c.vport, Client: c.client, ClientPort: c.cport,
					FirstSeen: f.FirstSeen, LastSeen: f.LastSeen, PacketsOut: 1,
					// the request sent before the server's first segment,
					// known from the SYN-ACK's acknowledgement number
					BytesIn: 100,
					SeqIn:   ci + 101, AckIn: si + 1, SeqOut: si + 1, AckOut: ci + 101, WindowOut: 509,
					State: StateEstablished}
				if f != want {
					t.Errorf("new flow\n %+v, want\n %+v", f, want)
				}
				if d := time.Since(f.FirstSeen); d < -time.Second || d > 5*time.Second || !f.LastSeen.Equal(f.FirstSeen) {
					t.Errorf("first seen %v (%v ago), last seen %v", f.FirstSeen, d, f.LastSeen)
				}
			}},
	} {
		h.step(t, s)
	}
	if len(h.flows(t)) != 1 {
		t.Fatalf("want exactly one flow, have %+v", h.flows(t))
	}
	return ci + 101, si + 1
}

func TestProgLifecycle(t *testing.T) {
	h := newHarness(t, 64)
	tracked := fshaCounterCOUNTER_TRACKED
	untracked := fshaCounterCOUNTER_UNTRACKED
	conns := []struct {
		name string
		c    conn
	}{
		{"ipv4", c4},
		{"ipv6", c6},
		{"ipv4 vlan", conn{vip: vip4, client: client4, vport: 445, cport: 40002, vlans: []uint16{42}}},
		{"ipv6 qinq", conn{vip: vip6, client: client6, vport: 2049, cport: 40003, vlans: []uint16{42, 43}}},
	}
	state := func(c conn, st FlowState, fin uint8) func(t *testing.T, h *harness) {
		return func(t *testing.T, h *harness) {
			f, ok := h.flow(t, c)
			raw, _ := h.rawFlow(t, c)
			if !ok || f.State != st || raw.Fin != fin {
				t.Errorf("flow %+v (found %v, fin %d), want state %v fin %d", f, ok, raw.Fin, st, fin)
			}
		}
	}
	gone := func(c conn) func(t *testing.T, h *harness) {
		return func(t *testing.T, h *harness) {
			if f, ok := h.flow(t, c); ok {
				t.Errorf("flow still there: %+v", f)
			}
		}
	}
	tombstone := func(c conn, want uint32, present bool) func(t *testing.T, h *harness) {
		return func(t *testing.T, h *harness) {
			var seq uint32
			err := h.maps.ClosedFlows.Lookup(c.key(), &seq)
			if present && (err != nil || seq != want) {
				t.Errorf("closed_flows: %d, %v; want %d", seq, err, want)
			}
			if !present && !errors.Is(err, ebpf.ErrKeyNotExist) {
				t.Errorf("closed_flows has %d (%v), want no entry", seq, err)
			}
		}
	}
	finIn, finOut := uint8(fshaFlowFinFLOW_FIN_IN), uint8(fshaFlowFinFLOW_FIN_OUT)

	for _, cc := range conns {
		c := cc.c
		t.Run(cc.name+"/updates", func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			time.Sleep(20 * time.Millisecond) // a few jiffies: last_seen must move
			for _, s := range []step{
				{name: "server data", dir: egress, pkt: c.out(tcpACK|tcpPSH, ss, cs, 300).bytes(t), want: tracked,
					check: func(t *testing.T, h *harness) {
						f, _ := h.flow(t, c)
						if f.BytesOut != 300 || f.PacketsOut != 2 || f.SeqOut != ss+300 || f.AckOut != cs ||
							f.BytesIn != 100 || f.PacketsIn != 0 || !f.LastSeen.After(f.FirstSeen) {
							t.Errorf("after server data: %+v", f)
						}
					}},
				{name: "client data", dir: ingress, pkt: c.in(tcpACK|tcpPSH, cs, ss+300, 200).bytes(t), want: tracked,
					check: func(t *testing.T, h *harness) {
						f, _ := h.flow(t, c)
						if f.BytesIn != 300 || f.PacketsIn != 1 || f.SeqIn != cs+200 || f.AckIn != ss+300 ||
							f.WindowIn != 501 || f.BytesOut != 300 || f.State != StateEstablished {
							t.Errorf("after client data: %+v", f)
						}
					}},
				{name: "client retransmission", dir: ingress, pkt: c.in(tcpACK|tcpPSH, cs, ss+300, 200).bytes(t), want: tracked,
					check: func(t *testing.T, h *harness) {
						f, _ := h.flow(t, c)
						if f.BytesIn != 500 || f.PacketsIn != 2 || f.SeqIn != cs+200 {
							t.Errorf("after a retransmission: %+v", f)
						}
					}},
				{name: "server pure ACK", dir: egress, pkt: c.out(tcpACK, ss+300, cs+200, 0).bytes(t), want: tracked,
					check: func(t *testing.T, h *harness) {
						f, _ := h.flow(t, c)
						if f.BytesOut != 300 || f.PacketsOut != 3 || f.SeqOut != ss+300 || f.AckOut != cs+200 || f.WindowOut != 509 {
							t.Errorf("after a server ACK: %+v", f)
						}
					}},
				{name: "client SYN on the flow", dir: ingress, pkt: c.in(tcpSYN, 7, 0, 0).bytes(t), want: tracked,
					check: func(t *testing.T, h *harness) {
						f, _ := h.flow(t, c)
						if f.SeqIn != cs+200 || f.PacketsIn != 3 {
							t.Errorf("an old SYN moved seq_in: %+v", f)
						}
					}},
			} {
				h.step(t, s)
			}
		})

		t.Run(cc.name+"/client FIN first", func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			for _, s := range []step{
				{name: "client FIN", dir: ingress, pkt: c.in(tcpFIN|tcpACK, cs, ss, 0).bytes(t), want: tracked, check: state(c, StateFinClient, finIn)},
				{name: "client FIN again", dir: ingress, pkt: c.in(tcpFIN|tcpACK, cs, ss, 0).bytes(t), want: tracked, check: state(c, StateFinClient, finIn)},
				{name: "server data after the client's FIN", dir: egress, pkt: c.out(tcpACK|tcpPSH, ss, cs+1, 10).bytes(t), want: tracked, check: state(c, StateFinClient, finIn)},
				{name: "server FIN", dir: egress, pkt: c.out(tcpFIN|tcpACK, ss+10, cs+1, 0).bytes(t), want: tracked,
					events: []wantEvent{{typ: EventClose, reason: CloseFIN, c: c, check: func(t *testing.T, f Flow) {
						if f.PacketsIn != 2 || f.PacketsOut != 3 || f.BytesOut != 10 || f.SeqOut != ss+11 || f.SeqIn != cs+1 {
							t.Errorf("close event flow %+v", f)
						}
					}}},
					check: tombstone(c, ss+11, true)},
				{name: "client's last ACK", dir: ingress, pkt: c.in(tcpACK, cs+1, ss+11, 0).bytes(t), want: untracked, check: gone(c)},
				{name: "server FIN retransmitted", dir: egress, pkt: c.out(tcpFIN|tcpACK, ss+10, cs+1, 0).bytes(t), want: untracked, check: gone(c)},
				{name: "server ACK at the FIN's sequence", dir: egress, pkt: c.out(tcpACK, ss+10, cs+1, 0).bytes(t), want: untracked, check: gone(c)},
			} {
				h.step(t, s)
			}
		})

		t.Run(cc.name+"/server FIN first", func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			for _, s := range []step{
				{name: "server FIN", dir: egress, pkt: c.out(tcpFIN|tcpACK, ss, cs, 0).bytes(t), want: tracked, check: state(c, StateFinServer, finOut)},
				{name: "client data after the server's FIN", dir: ingress, pkt: c.in(tcpACK|tcpPSH, cs, ss+1, 50).bytes(t), want: tracked, check: state(c, StateFinServer, finOut)},
				{name: "client FIN", dir: ingress, pkt: c.in(tcpFIN|tcpACK, cs+50, ss+1, 0).bytes(t), want: tracked,
					events: []wantEvent{closed(c, CloseFIN)}, check: tombstone(c, ss+1, true)},
				{name: "server's last ACK", dir: egress, pkt: c.out(tcpACK, ss+1, cs+51, 0).bytes(t), want: untracked, check: gone(c)},
				{name: "server's last ACK again", dir: egress, pkt: c.out(tcpACK, ss+1, cs+51, 0).bytes(t), want: untracked, check: gone(c)},
				{name: "new connection on the same ports", dir: egress, pkt: c.out(tcpACK, ss+0x40000000, 99, 0).bytes(t), want: tracked,
					events: []wantEvent{opened(c)}, check: tombstone(c, 0, false)},
			} {
				h.step(t, s)
			}
			f, _ := h.flow(t, c)
			if f.SeqOut != ss+0x40000000 || f.AckOut != 99 || f.PacketsIn != 0 {
				t.Errorf("new connection's flow %+v", f)
			}
		})

		t.Run(cc.name+"/client RST", func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			for _, s := range []step{
				{name: "client FIN", dir: ingress, pkt: c.in(tcpFIN|tcpACK, cs, ss, 0).bytes(t), want: tracked, check: state(c, StateFinClient, finIn)},
				{name: "client RST", dir: ingress, pkt: c.in(tcpRST, cs+1, 0, 0).bytes(t), want: tracked,
					events: []wantEvent{closed(c, CloseRSTIn)}, check: tombstone(c, 0, false)},
				{name: "client RST again", dir: ingress, pkt: c.in(tcpRST, cs+1, 0, 0).bytes(t), want: untracked, check: gone(c)},
				// no tombstone after a reset: the next egress ACK is a new flow
				{name: "server ACK", dir: egress, pkt: c.out(tcpACK, ss, cs, 0).bytes(t), want: tracked, events: []wantEvent{opened(c)}},
			} {
				h.step(t, s)
			}
		})

		t.Run(cc.name+"/server RST", func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			for _, s := range []step{
				{name: "server RST", dir: egress, pkt: c.out(tcpRST|tcpACK, ss, cs, 0).bytes(t), want: tracked,
					events: []wantEvent{{typ: EventClose, reason: CloseRSTOut, c: c, check: func(t *testing.T, f Flow) {
						if f.PacketsOut != 1 || f.SeqOut != ss {
							t.Errorf("close event flow %+v", f)
						}
					}}}, check: gone(c)},
				{name: "client data after the reset", dir: ingress, pkt: c.in(tcpACK, cs, ss, 10).bytes(t), want: untracked, check: gone(c)},
				{name: "server RST without a flow", dir: egress, pkt: c.out(tcpRST, ss, 0, 0).bytes(t), want: untracked, check: gone(c)},
			} {
				h.step(t, s)
			}
		})
	}

	t.Run("no flow from SYN, RST or FIN", func(t *testing.T) {
		h.reset(t)
		for _, s := range []step{
			{name: "server SYN-ACK", dir: egress, pkt: c4.out(tcpSYN|tcpACK, 1, 2, 0).bytes(t), want: untracked},
			{name: "server FIN", dir: egress, pkt: c4.out(tcpFIN|tcpACK, 1, 2, 0).bytes(t), want: untracked},
			{name: "server FIN with data", dir: egress, pkt: c4.out(tcpFIN|tcpACK|tcpPSH, 1, 2, 10).bytes(t), want: untracked},
			{name: "server RST", dir: egress, pkt: c4.out(tcpRST, 1, 0, 0).bytes(t), want: untracked},
			{name: "server SYN", dir: egress, pkt: c4.out(tcpSYN, 1, 0, 0).bytes(t), want: untracked},
			{name: "client ACK", dir: ingress, pkt: c4.in(tcpACK, 1, 2, 0).bytes(t), want: untracked},
			{name: "client data", dir: ingress, pkt: c4.in(tcpACK|tcpPSH, 1, 2, 1000).bytes(t), want: untracked},
			{name: "client FIN", dir: ingress, pkt: c4.in(tcpFIN|tcpACK, 1, 2, 0).bytes(t), want: untracked},
			{name: "client RST", dir: ingress, pkt: c4.in(tcpRST, 1, 0, 0).bytes(t), want: untracked},
			{name: "egress data without ACK flag", dir: egress, pkt: c4.out(tcpPSH, 1, 0, 10).bytes(t), want: tracked, events: []wantEvent{opened(c4)}},
		} {
			h.step(t, s)
		}
	})
	h.checkTotals(t)
}

// collidingAddr finds another address in p with a's prefilter bit.
func collidingAddr(t *testing.T, a netip.Addr, p netip.Prefix) netip.Addr {
	t.Helper()
	ab, af := addrBytes(a)
	want := vipFilterBit(ab, af)
	x := p.Masked().Addr()
	for range 1 << 17 {
		if !p.Contains(x) {
			break
		}
		if b, f := addrBytes(x); x != a && vipFilterBit(b, f) == want {
			return x
		}
		x = x.Next()
	}
	t.Fatalf("no address in %v shares the prefilter bit of %v", p, a)
	return netip.Addr{}
}

// TestProgPrefilterCollision: an address that only shares a VIP's
// prefilter bit is never tracked on egress; ingress, which only has the
// prefilter, finds no flow for it.
func TestProgPrefilterCollision(t *testing.T) {
	h := newHarness(t, 64)
	for _, tc := range []struct {
		vip    netip.Addr
		prefix netip.Prefix
		c      conn
	}{
		{vip4, netip.MustParsePrefix("198.18.0.0/15"), c4},
		{vip6, netip.MustParsePrefix("2001:2::/48"), c6},
	} {
		fake := collidingAddr(t, tc.vip, tc.prefix)
		c := tc.c
		c.vip = fake
		t.Run(fake.String(), func(t *testing.T) {
			h.reset(t)
			h.step(t, step{name: "egress ACK from " + fake.String(), dir: egress, pkt: c.out(tcpACK, 1, 2, 10).bytes(t),
				want: fshaCounterCOUNTER_OTHER})
			h.step(t, step{name: "ingress data to " + fake.String(), dir: ingress, pkt: c.in(tcpACK, 2, 1, 10).bytes(t),
				want: fshaCounterCOUNTER_UNTRACKED})
			h.step(t, step{name: "real vip still tracked", dir: egress, pkt: tc.c.out(tcpACK, 1, 2, 10).bytes(t),
				want: fshaCounterCOUNTER_TRACKED, events: []wantEvent{opened(tc.c)}})
		})
	}
	t.Run("vip without the track flag", func(t *testing.T) {
		h.reset(t)
		h.dirty = true
		if err := h.maps.Vips.Put(vipKey(vip4), fshaVipInfo{}); err != nil {
			t.Fatal(err)
		}
		h.step(t, step{name: "egress ACK", dir: egress, pkt: c4.out(tcpACK, 1, 2, 10).bytes(t), want: fshaCounterCOUNTER_OTHER})
	})
	t.Run("vip gone from vips, prefilter bit left", func(t *testing.T) {
		h.reset(t)
		h.dirty = true
		if err := h.maps.Vips.Delete(vipKey(vip6)); err != nil {
			t.Fatal(err)
		}
		h.step(t, step{name: "egress ACK", dir: egress, pkt: c6.out(tcpACK, 1, 2, 10).bytes(t), want: fshaCounterCOUNTER_OTHER})
	})
	h.checkTotals(t)
}

func TestProgSetVIPs(t *testing.T) {
	h := newHarness(t, 64)
	cb := conn{vip: vip4b, client: client4, vport: 445, cport: 40000}
	vip6b := netip.MustParseAddr("2001:2::11")
	c6b := conn{vip: vip6b, client: client6, vport: 2049, cport: 40001}

	h.configure(t, []netip.Addr{vip4, vip4b, vip6, vip6b}, defaultPorts)
	for _, c := range []conn{c4, cb, c6, c6b} {
		h.step(t, step{name: "create " + c.vip.String(), dir: egress, pkt: c.out(tcpACK, 1, 2, 0).bytes(t),
			want: fshaCounterCOUNTER_TRACKED, events: []wantEvent{opened(c)}})
	}

	h.configure(t, []netip.Addr{vip4, vip6}, defaultPorts)
	got, err := h.maps.VIPs()
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, netip.Addr.Compare)
	if want := []netip.Addr{vip4, vip6}; !slices.Equal(got, want) {
		t.Errorf("VIPs() = %v, want %v", got, want)
	}
	for _, c := range []conn{cb, c6b} {
		h.step(t, step{name: "removed vip, new flow", dir: egress, pkt: c.out(tcpACK, 1000, 2, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
		// its old flow stays in the table but is no longer updated
		h.step(t, step{name: "removed vip, old flow, ingress", dir: ingress, pkt: c.in(tcpACK, 2, 1, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
		h.step(t, step{name: "removed vip, old flow, egress", dir: egress, pkt: c.out(tcpRST, 1, 2, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
	}
	for _, c := range []conn{c4, c6} {
		h.step(t, step{name: "kept vip", dir: ingress, pkt: c.in(tcpACK, 2, 1, 0).bytes(t), want: fshaCounterCOUNTER_TRACKED})
	}

	h.configure(t, nil, defaultPorts)
	if got, err := h.maps.VIPs(); err != nil || len(got) != 0 {
		t.Errorf("VIPs() after removing all = %v, %v", got, err)
	}
	h.step(t, step{name: "no vips", dir: ingress, pkt: c4.in(tcpRST, 2, 1, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
	if _, ok := h.flow(t, c4); !ok {
		t.Errorf("the flow of a removed VIP closed")
	}
	h.checkTotals(t)
}

func TestProgSetPorts(t *testing.T) {
	h := newHarness(t, 64)
	nfs := conn{vip: vip4, client: client4, vport: 2049, cport: 800}
	smb := c4

	h.configure(t, defaultVIPs, []uint16{445})
	if got, err := h.maps.TrackedPorts(); err != nil || !slices.Equal(got, []uint16{445}) {
		t.Errorf("TrackedPorts() = %v, %v; want [445]", got, err)
	}
	h.step(t, step{name: "2049 untracked", dir: egress, pkt: nfs.out(tcpACK, 1, 2, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
	h.step(t, step{name: "445 tracked", dir: egress, pkt: smb.out(tcpACK, 1, 2, 0).bytes(t),
		want: fshaCounterCOUNTER_TRACKED, events: []wantEvent{opened(smb)}})

	h.configure(t, defaultVIPs, []uint16{2049, 111})
	if got, err := h.maps.TrackedPorts(); err != nil || !slices.Equal(got, []uint16{111, 2049}) {
		t.Errorf("TrackedPorts() = %v, %v; want [111 2049]", got, err)
	}
	h.step(t, step{name: "445 no longer tracked", dir: ingress, pkt: smb.in(tcpRST, 2, 1, 0).bytes(t), want: fshaCounterCOUNTER_OTHER})
	h.step(t, step{name: "2049 now tracked", dir: egress, pkt: nfs.out(tcpACK, 1, 2, 0).bytes(t),
		want: fshaCounterCOUNTER_TRACKED, events: []wantEvent{opened(nfs)}})
	h.step(t, step{name: "port 0", dir: egress, pkt: conn{vip: vip4, client: client4, cport: 1}.out(tcpACK, 1, 2, 0).bytes(t),
		want: fshaCounterCOUNTER_OTHER})
	h.checkTotals(t)
}

// TestProgPayloadLength: bytes are TCP payload bytes. Ingress trusts the
// IP length (NIC padding is not payload); egress takes the skb length when
// it is longer (a GSO segment carries more than its IP header says).
func TestProgPayloadLength(t *testing.T) {
	h := newHarness(t, 64)
	cs, ss := established(t, h, c4)

	f := c4.in(tcpACK, cs, ss, 0)
	f.padTo = 60
	pad := f.bytes(t)
	if len(pad) != 60 {
		t.Fatalf("padded frame is %d bytes", len(pad))
	}
	h.step(t, step{name: "padded client ACK", dir: ingress, pkt: pad, want: fshaCounterCOUNTER_TRACKED})
	h.step(t, step{name: "client data with trailing bytes", dir: ingress,
		pkt: append(c4.in(tcpACK, cs, ss, 10).bytes(t), make([]byte, 90)...), want: fshaCounterCOUNTER_TRACKED})
	if fl, _ := h.flow(t, c4); fl.BytesIn != 100+10 || fl.SeqIn != cs+10 {
		t.Errorf("ingress counted %d bytes, seq_in %d; want 110 (100 before the flow), %d", fl.BytesIn, fl.SeqIn, cs+10)
	}

	gso := c4.out(tcpACK|tcpPSH, ss, cs+10, 1000).bytes(t)
	binary.BigEndian.PutUint16(gso[14+2:], 20+20+100) // the IP header of the first segment
	h.step(t, step{name: "egress super-segment", dir: egress, pkt: gso, want: fshaCounterCOUNTER_TRACKED})
	if fl, _ := h.flow(t, c4); fl.BytesOut != 1000 || fl.SeqOut != ss+1000 {
		t.Errorf("egress counted %d bytes, seq_out %d; want 1000, %d", fl.BytesOut, fl.SeqOut, ss+1000)
	}
	h.checkTotals(t)
}

// TestProgTableFull: with room for N flows, creating N+K counts K
// evictions and the table never holds more than N.
func TestProgTableFull(t *testing.T) {
	const n, k = 64, 16
	h := newHarness(t, n)
	before := h.counters(t)
	for i := range n + k {
		c := conn{vip: vip4, client: client4, vport: 445, cport: uint16(10000 + i)}
		h.run(t, egress, c.out(tcpACK, 1, 2, 0).bytes(t))
	}
	after := h.counters(t)
	d := counterDelta(before, after)
	if d[egress][fshaCounterCOUNTER_CREATED] != n+k || d[egress][fshaCounterCOUNTER_TRACKED] != n+k {
		t.Errorf("created %d tracked %d, want %d", d[egress][fshaCounterCOUNTER_CREATED], d[egress][fshaCounterCOUNTER_TRACKED], n+k)
	}
	if got := d[egress][fshaCounterCOUNTER_EVICTED]; got != k {
		t.Errorf("evicted %d, want %d", got, k)
	}
	if after.Flows != n {
		t.Errorf("flow count %d, want %d", after.Flows, n)
	}
	fl := h.flows(t)
	if len(fl) > n || len(fl) == 0 {
		t.Errorf("%d flows in a table of %d", len(fl), n)
	}
	// the newest flow always survives
	last := conn{vip: vip4, client: client4, vport: 445, cport: 10000 + n + k - 1}
	if _, ok := h.flow(t, last); !ok {
		t.Errorf("newest flow evicted")
	}
	t.Logf("%d flows left after %d creations in a table of %d", len(fl), n+k, n)
	if evs := h.drainEvents(t); len(evs) != n+k {
		t.Errorf("%d open events, want %d", len(evs), n+k)
	}
	h.checkTotals(t)
}

// TestProgDecode checks the Go view of flows and events against the
// packets sent.
func TestProgDecode(t *testing.T) {
	h := newHarness(t, 64)
	c := conn{vip: vip6, client: client6, vport: 139, cport: 50000}
	start := time.Now()
	h.run(t, egress, c.out(tcpACK|tcpPSH, 7000, 9000, 33).bytes(t))
	evs := h.drainEvents(t)
	if len(evs) != 1 {
		t.Fatalf("events %+v", evs)
	}
	ev := evs[0]
	if ev.Type != EventOpen || ev.Type.String() != "open" || ev.Reason != CloseNone || ev.Reason.String() != "" {
		t.Errorf("open event %v %q", ev.Type, ev.Reason)
	}
	f := ev.Flow
	if f.VIP != vip6 || f.Client != client6 || f.VIPPort != 139 || f.ClientPort != 50000 ||
		f.BytesOut != 33 || f.PacketsOut != 1 || f.SeqOut != 7033 || f.AckOut != 9000 || f.SeqIn != 9000 || f.AckIn != 7000 ||
		f.WindowOut != 509 || f.State != StateEstablished || f.State.String() != "established" {
		t.Errorf("event flow %+v", f)
	}
	if f.FirstSeen.Before(start.Add(-time.Second)) || f.FirstSeen.After(time.Now().Add(time.Second)) {
		t.Errorf("first seen %v, sent at %v", f.FirstSeen, start)
	}
	if Proto(f.VIPPort) != "smb" {
		t.Errorf("Proto(%d) = %q", f.VIPPort, Proto(f.VIPPort))
	}

	h.run(t, ingress, c.in(tcpRST, 9000, 0, 0).bytes(t))
	evs = h.drainEvents(t)
	if len(evs) != 1 || evs[0].Type != EventClose || evs[0].Type.String() != "close" ||
		evs[0].Reason != CloseRSTIn || evs[0].Reason.String() != "client-reset" ||
		evs[0].Flow.State != StateClosed || evs[0].Flow.State.String() != "closed" || !c.is(evs[0].Flow) {
		t.Errorf("close event %+v", evs)
	}

	for port, want := range map[uint16]string{445: "smb", 139: "smb", 2049: "nfs", 111: "rpcbind", 22: "tcp"} {
		if got := Proto(port); got != want {
			t.Errorf("Proto(%d) = %q, want %q", port, got, want)
		}
	}
	for st, want := range map[FlowState]string{StateEstablished: "established", StateFinClient: "fin-client",
		StateFinServer: "fin-server", StateClosed: "closed", 9: "state-9"} {
		if got := st.String(); got != want {
			t.Errorf("FlowState(%d) = %q, want %q", st, got, want)
		}
	}
	for r, want := range map[CloseReason]string{CloseRSTOut: "server-reset", CloseFIN: "fin", 9: "reason-9"} {
		if got := r.String(); got != want {
			t.Errorf("CloseReason(%d) = %q, want %q", r, got, want)
		}
	}
	h.checkTotals(t)
}

// skbContext is a struct __sk_buff for BPF_PROG_RUN with the GSO fields
// set, laid out as the running kernel's BTF says.
func skbContext(t *testing.T, gsoSegs, gsoSize uint32) []byte {
	t.Helper()
	kernel, err := btf.LoadKernelSpec()
	if err != nil {
		t.Fatalf("kernel BTF: %v", err)
	}
	var skb *btf.Struct
	if err := kernel.TypeByName("__sk_buff", &skb); err != nil {
		t.Fatalf("struct __sk_buff: %v", err)
	}
	ctx := make([]byte, skb.Size)
	for _, m := range skb.Members {
		switch m.Name {
		case "gso_segs":
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], gsoSegs)
		case "gso_size":
			binary.NativeEndian.PutUint32(ctx[m.Offset.Bytes():], gsoSize)
		}
	}
	return ctx
}

// TestProgBigTCP sends BIG TCP super-segments on egress: over 64 KiB, the
// IPv4 total length and the IPv6 payload length are 0 and the skb's length
// is the truth. Outside GSO, a zero length stays a parse error
// (TestProgParse).
func TestProgBigTCP(t *testing.T) {
	h := newHarness(t, 64)
	for _, c := range []conn{c4, c6} {
		t.Run(c.vip.String(), func(t *testing.T) {
			h.reset(t)
			cs, ss := established(t, h, c)
			const payload = 3000 // a BPF_PROG_RUN skb is at most a page
			pkt := c.out(tcpACK|tcpPSH, ss, cs, payload).bytes(t)
			if c.vip.Is4() {
				binary.BigEndian.PutUint16(pkt[14+2:], 0)
			} else {
				binary.BigEndian.PutUint16(pkt[14+4:], 0)
			}
			before := h.counters(t)
			ret, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: pkt, Context: skbContext(t, 3, 1000)})
			if err != nil {
				t.Fatalf("run tc: %v", err)
			}
			h.runs[egress]++
			if d := counterDelta(before, h.counters(t)); ret != tcxNext || d[egress][fshaCounterCOUNTER_TRACKED] != 1 {
				t.Fatalf("verdict %#x, counters %s; want TCX_NEXT and tracked", ret, d)
			}
			if f, _ := h.flow(t, c); f.BytesOut != payload || f.SeqOut != ss+payload || f.PacketsOut != 2 {
				t.Errorf("flow after a super-segment %+v, want %d bytes out", f, payload)
			}
			h.checkTotals(t)
		})
	}
}
