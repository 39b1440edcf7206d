package dataplane

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// Differential fuzzing of the parsers and the flow logic: random frames go
// through the programs and through a model that decodes them with gopacket
// and applies fsha's rules; the counters, the flows, the tombstones, the
// handshakes and the ring buffer after the single run must be what the
// model says.
//
// Every input starts from the same tables (fuzzSeedState) and the same
// leases (fuzzLeases: per-VIP fencing on, some VIPs fenced, some draining),
// so a run depends on its input only. The seeds are in
// testdata/fuzz/<FuzzName>/; -fsha.write-seeds rewrites the builder-made
// ones there. Each run costs a few dozen map syscalls, so keep the
// minimisation of new inputs short or it eats the fuzzing time:
//
//	go test -run='^$' -fuzz=FuzzXDP -fuzztime=60s -fuzzminimizetime=200x ./dataplane

var writeSeeds = flag.Bool("fsha.write-seeds", false, "rewrite the builder-made fuzz seeds in testdata/fuzz")

// maxFuzzFrame bounds the frames run: a VLAN-tagged 1500-byte MTU frame
// fits, and BPF_PROG_RUN takes it linear for both program types.
const maxFuzzFrame = 1600

func FuzzXDP(f *testing.F)      { fuzzProg(f, ingress) }
func FuzzTCEgress(f *testing.F) { fuzzProg(f, egress) }

// fuzzState is the programs' tables as the model has them.
type fuzzState struct {
	flows      map[fshaFlowKey]fshaFlow // timestamps not compared
	closed     map[fshaFlowKey]uint32   // tombstones: the VIP side's next sequence number
	handshakes map[fshaFlowKey]uint32   // the client's ISN + 1, from the SYN-ACK
	// steered: peer flows XDP sends on to their owner (steering on, the
	// owner's MAC known); FuzzSequence's only
	steered map[fshaFlowKey]bool
}

func (s fuzzState) clone() fuzzState {
	return fuzzState{flows: maps.Clone(s.flows), closed: maps.Clone(s.closed), handshakes: maps.Clone(s.handshakes),
		steered: maps.Clone(s.steered)}
}

var (
	// newConn4 is a connection with no flow but a handshake seen.
	newConn4 = conn{vip: vip4, client: client4, vport: 445, cport: 50000}
	// closedConn4 closed with FINs; the server's next sequence was 1000.
	closedConn4 = conn{vip: vip4, client: client4, vport: 445, cport: 50003}
)

// fuzzSeedState is what each fuzz input starts with: c4 has already seen
// a FIN from the other side, so a FIN in the fuzzed direction closes it
// (and leaves a tombstone); c6 is established; newConn4's SYN-ACK
// acknowledged ISN 4899, so a flow created for it counts the client's
// bytes up to the segment's ACK; closedConn4 left a tombstone. The
// connections to fenced and draining VIPs are established too.
func fuzzSeedState(d fshaDirection) fuzzState {
	a := fshaFlow{FirstSeenNs: 1, LastSeenNs: 1, BytesIn: 10, BytesOut: 20, PacketsIn: 1, PacketsOut: 2,
		SeqIn: 1000, AckIn: 5000, SeqOut: 5000, AckOut: 1000, WindowIn: 100, WindowOut: 200}
	b := a
	b.State = uint8(fshaFlowStateFLOW_STATE_ESTABLISHED)
	if d == ingress {
		a.State, a.Fin = uint8(fshaFlowStateFLOW_STATE_FIN_SERVER), uint8(fshaFlowFinFLOW_FIN_OUT)
	} else {
		a.State, a.Fin = uint8(fshaFlowStateFLOW_STATE_FIN_CLIENT), uint8(fshaFlowFinFLOW_FIN_IN)
	}
	return fuzzState{
		flows: map[fshaFlowKey]fshaFlow{c4.key(): a, c6.key(): b, fenceConn4.key(): b, drainConn4.key(): b,
			fenceConn6.key(): b, drainConn6.key(): b},
		closed:     map[fshaFlowKey]uint32{closedConn4.key(): 1000},
		handshakes: map[fshaFlowKey]uint32{newConn4.key(): 4900},
	}
}

// load makes the programs' tables s (h.reset has emptied them).
func (s fuzzState) load(t *testing.T, h *harness) {
	t.Helper()
	for k, v := range s.flows {
		if err := h.maps.Flows.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range s.closed {
		if err := h.maps.ClosedFlows.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range s.handshakes {
		if err := h.maps.Handshakes.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.maps.FlowCount.Put(uint32(0), uint64(len(s.flows))); err != nil {
		t.Fatal(err)
	}
}

// fuzzSeedFrames are the builder-made seeds: valid segments of the seeded
// flows and of new ones in every encapsulation, and broken ones.
func fuzzSeedFrames(t testing.TB, d fshaDirection) map[string][]byte {
	t.Helper()
	newc6 := conn{vip: vip6, client: client6, vport: 111, cport: 50001}
	seg := func(c conn, flags uint8, payload int, mod func(f *frame)) []byte {
		f := c.seg(d, flags, 1000, 5000, payload)
		if mod != nil {
			mod(&f)
		}
		return f.bytes(t)
	}
	fix := func(b []byte, fn func(b []byte)) []byte {
		b = bytes.Clone(b)
		fn(b)
		return b
	}
	fake := conn{vip: netip.MustParseAddr("198.19.0.11"), client: client4, vport: 445, cport: 1} // vip4's prefilter bit
	m := map[string][]byte{
		"ipv4-data":        seg(c4, tcpACK|tcpPSH, 100, nil),
		"ipv4-fin":         seg(c4, tcpFIN|tcpACK, 0, nil),
		"ipv4-rst":         seg(c4, tcpRST, 0, nil),
		"ipv4-syn":         seg(newConn4, tcpSYN, 0, nil),
		"ipv4-new-ack":     seg(newConn4, tcpACK, 0, nil),
		"ipv4-after-close": seg(closedConn4, tcpACK, 0, nil),
		"ipv4-reuse-after-close": seg(closedConn4, tcpACK, 0, func(f *frame) {
			if f.sport == 445 {
				f.seq = 0x12345678
			}
		}),
		"ipv4-synack":           seg(conn{vip: vip4, client: client4, vport: 445, cport: 50002}, tcpSYN|tcpACK, 0, nil),
		"ipv4-vlan":             seg(c4, tcpACK, 10, withVLANs(7)),
		"ipv4-qinq-options":     seg(newConn4, tcpACK, 10, func(f *frame) { f.vlans, f.ipOptions, f.tcpOptions = []uint16{7, 8}, 8, true }),
		"ipv4-fragment":         seg(c4, tcpACK, 10, func(f *frame) { f.moreFrags = true }),
		"ipv4-udp":              seg(c4, 0, 10, func(f *frame) { f.proto = layers.IPProtocolUDP }),
		"ipv4-icmp":             seg(c4, 0, 10, func(f *frame) { f.proto = layers.IPProtocolICMPv4 }),
		"ipv4-untracked-port":   seg(conn{vip: vip4, client: client4, vport: 22, cport: 1}, tcpACK, 0, nil),
		"ipv4-non-vip":          seg(conn{vip: other4, client: client4, vport: 445, cport: 1}, tcpACK, 0, nil),
		"ipv4-prefilter-only":   seg(fake, tcpACK, 0, nil),
		"ipv6-data":             seg(c6, tcpACK|tcpPSH, 100, nil),
		"ipv6-fin":              seg(c6, tcpFIN|tcpACK, 0, nil),
		"ipv6-new-extensions":   seg(newc6, tcpACK, 10, withExt(hbh, dstOpts, routing, ah)),
		"ipv6-qinq-tcp-options": seg(c6, tcpACK, 10, func(f *frame) { f.vlans, f.tcpOptions = []uint16{7, 8}, true }),
		"ipv6-fragment":         seg(c6, tcpACK, 10, withExt(hbh, frag6)),
		"ipv6-icmp":             seg(c6, 0, 10, func(f *frame) { f.proto = layers.IPProtocolICMPv6 }),
		"ipv6-six-extensions":   seg(newc6, tcpACK, 0, withExt(hbh, dstOpts, routing, ah, ah, dstOpts)),
		"ipv6-seven-extensions": seg(newc6, tcpACK, 0, withExt(hbh, dstOpts, routing, ah, ah, dstOpts, dstOpts)),
	}
	m["broken-truncated-tcp"] = m["ipv4-data"][:14+20+12]
	m["broken-truncated-ext"] = m["ipv6-new-extensions"][:14+40+16+5]
	m["broken-ihl-4"] = fix(m["ipv4-data"], func(b []byte) { b[14] = 0x44 })
	m["broken-ihl-15"] = fix(m["ipv4-fin"], func(b []byte) { b[14] = 0x4f })
	m["broken-doff-4"] = fix(m["ipv4-data"], func(b []byte) { b[14+20+12] = 0x40 })
	m["broken-doff-15"] = fix(m["ipv6-fin"], func(b []byte) { b[14+40+12] = 0xf0 })
	m["broken-total-length"] = fix(m["ipv4-data"], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 30) })
	m["broken-total-length-0"] = fix(m["ipv4-data"], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 0) })
	m["broken-payload-length"] = fix(m["ipv6-data"], func(b []byte) { binary.BigEndian.PutUint16(b[18:], 12) })
	m["broken-ah-length-0"] = fix(m["ipv6-new-extensions"], func(b []byte) { b[14+40+16+16+24+1] = 0 })
	m["broken-short"] = m["ipv4-data"][:13]
	m["broken-jumbo"] = fix(m["ipv6-new-extensions"], func(b []byte) { binary.BigEndian.PutUint16(b[18:], 0) })
	m["ipv4-ihl-15"] = seg(c4, tcpACK, 1, func(f *frame) { f.ipOptions = 40 })
	m["ipv4-long-total-length"] = fix(m["ipv4-data"], func(b []byte) { binary.BigEndian.PutUint16(b[16:], 1400) })
	m["ipv4-gso"] = fix(seg(c4, tcpACK, 1000, nil), func(b []byte) { binary.BigEndian.PutUint16(b[16:], 140) })
	m["three-vlans"] = seg(c4, tcpACK, 0, withVLANs(1, 2, 3))
	m["arp"] = fix(m["ipv4-data"], func(b []byte) { b[12], b[13] = 0x08, 0x06 })

	maps.Copy(m, leaseSeedFrames(t, d, seg))
	return m
}

// TestFuzzSeedCorpus checks that testdata holds the builder-made seeds (so
// `go test` runs them as the fuzz targets' seed corpus); -fsha.write-seeds
// writes them.
func TestFuzzSeedCorpus(t *testing.T) {
	for _, target := range []struct {
		name string
		d    fshaDirection
	}{{"FuzzXDP", ingress}, {"FuzzTCEgress", egress}} {
		dir := filepath.Join("testdata", "fuzz", target.name)
		for name, b := range fuzzSeedFrames(t, target.d) {
			path := filepath.Join(dir, "seed-"+name)
			content := fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b)
			if *writeSeeds {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, content, 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || !bytes.Equal(got, content) {
				t.Errorf("seed %s missing or stale (%v): run go test -run TestFuzzSeedCorpus -fsha.write-seeds ./dataplane", path, err)
			}
		}
	}
}

// TestFuzzModel checks the model itself on the builder-made seeds, so that
// a model that agrees with the programs for the wrong reason shows up.
func TestFuzzModel(t *testing.T) {
	want := map[string]pktClass{
		"ipv4-data": classCandidate, "ipv4-fin": classCandidate, "ipv4-rst": classCandidate,
		"ipv4-syn": classCandidate, "ipv4-new-ack": classCandidate, "ipv4-synack": classCandidate,
		"ipv4-after-close": classCandidate, "ipv4-reuse-after-close": classCandidate, "ipv4-vlan": classCandidate,
		"ipv4-qinq-options": classCandidate, "ipv4-fragment": classFragment, "ipv4-udp": classOther,
		"ipv4-icmp": classOther, "ipv4-untracked-port": classOther, "ipv4-non-vip": classOther,
		"ipv4-prefilter-only": classCandidate, "ipv6-data": classCandidate, "ipv6-fin": classCandidate,
		"ipv6-new-extensions": classCandidate, "ipv6-qinq-tcp-options": classCandidate,
		"ipv6-fragment": classFragment, "ipv6-icmp": classOther, "ipv6-six-extensions": classCandidate, "ipv6-seven-extensions": classParseError,
		"broken-truncated-tcp": classParseError, "broken-truncated-ext": classParseError,
		"broken-ihl-4": classParseError, "broken-ihl-15": classParseError, "broken-doff-4": classParseError,
		"broken-doff-15": classParseError, "broken-total-length": classParseError,
		"broken-total-length-0": classParseError, "broken-payload-length": classParseError,
		"broken-ah-length-0": classParseError, "broken-jumbo": classParseError,
		"ipv4-ihl-15": classCandidate, "ipv4-long-total-length": classCandidate, "ipv4-gso": classCandidate,
		"three-vlans": classOther, "arp": classOther,
		"ipv4-fenced-vip": classFenced, "ipv4-fenced-vip-fragment": classFenced, "ipv4-draining-vip": classCandidate,
		"ipv4-fenced-bucket-mate": classCandidate, "ipv6-fenced-vip": classFenced, "ipv6-draining-vip": classCandidate,
		"ipv6-fenced-bucket-non-vip": classCandidate, "arp-vip": classOther, "arp-fenced-vip": classFenced,
		"arp-draining-vip": classFenced, "arp-fenced-vip-vlan": classFenced, "arp-fenced-vip-short": classParseError,
		"nd-vip": classOther, "nd-fenced-vip": classFenced, "nd-draining-vip": classFenced,
		"ns-draining-vip": classFenced, "icmp-fenced-vip": classFenced, "icmpv6-fenced-vip": classFenced,
		"icmpv6-draining-vip":         classOther,
		"arp-request-from-fenced-vip": classARPProbed, "arp-request-from-draining-vip": classARPProbed,
		"arp-gratuitous-fenced-vip": classFenced,
	}
	// seeds the two directions see differently: a cut neighbour
	// advertisement from fence6 (egress) is still IP from it
	byDir := map[string][2]pktClass{"nd-fenced-vip-short": {classOther, classFenced}}
	for _, d := range []fshaDirection{ingress, egress} {
		for name, b := range fuzzSeedFrames(t, d) {
			if runRefused(b, d) {
				if name != "broken-short" {
					t.Errorf("%s/%s: refused", name, dirName(d))
				}
				continue
			}
			w, ok := want[name]
			if bd, found := byDir[name]; found {
				w, ok = bd[d], true
			}
			if !ok {
				t.Errorf("seed %s: no expected class", name)
			}
			if p := predict(b, d); p.class != w {
				t.Errorf("%s/%s: model says %v (%s), want %v", name, dirName(d), p.class, p, w)
			}
		}
	}
	// what the model takes from a segment it tracks
	p := predict(c6.out(tcpACK|tcpPSH, 7, 9, 33).bytes(t), egress)
	if p.key != c6.key() || p.seq != 7 || p.ack != 9 || p.payload != 33 || p.window != 509 || p.flags != tcpACK|tcpPSH {
		t.Errorf("model read %s", p)
	}
	p = predict(c4.in(tcpFIN, 7, 9, 0).bytes(t), ingress)
	if p.key != c4.key() || p.flags != tcpFIN || p.payload != 0 {
		t.Errorf("model read %s", p)
	}
}

func fuzzProg(f *testing.F, d fshaDirection) {
	h := newHarness(f, 64)
	setLeases(f, h)
	start := fuzzSeedState(d)
	prog := h.objs.FshaXdp
	if d == egress {
		prog = h.objs.FshaTcEgress
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > maxFuzzFrame {
			b = b[:maxFuzzFrame]
		}
		if runRefused(b, d) {
			if _, err := prog.Run(&ebpf.RunOptions{Data: b}); err == nil {
				t.Fatalf("BPF_PROG_RUN ran a frame it refuses (%d bytes): %x", len(b), b)
			}
			return
		}
		h.reset(t)
		start.load(t, h)

		p := predict(b, d)
		want := p.apply(d, start)
		before := h.counters(t)
		dropped := h.runVerdict(t, d, b)
		got := counterDelta(before, h.counters(t))
		if dropped != (p.class == classFenced) {
			t.Fatalf("dropped %v, model says %s\nframe %x", dropped, p, b)
		}
		if got != want.counters {
			t.Fatalf("counters changed%s, want%s\nmodel: %s\nframe %x", got, want.counters, p, b)
		}
		h.checkFlows(t, want, p, b)
	})
}

// runRefused reports whether BPF_PROG_RUN refuses b: a frame shorter than
// an Ethernet header for both program types and, for an skb (TC), an
// untagged IPv4 or IPv6 frame too short for the fixed IP header. The stack
// never hands the programs the former; an untagged short IP frame can
// reach TC egress from a packet socket, which only VLAN-tagged frames
// (TestProgTruncated) and the XDP runs can show here.
func runRefused(b []byte, d fshaDirection) bool {
	if len(b) < 14 {
		return true
	}
	if d == ingress {
		return false
	}
	switch layers.EthernetType(binary.BigEndian.Uint16(b[12:14])) {
	case layers.EthernetTypeIPv4:
		return len(b) < 14+20
	case layers.EthernetTypeIPv6:
		return len(b) < 14+40
	}
	return false
}

// prediction is what the model makes of one frame.
type prediction struct {
	class   pktClass
	why     string // the rule that decided, for failure messages
	key     fshaFlowKey
	flags   uint8
	seq     uint32
	ack     uint32
	window  uint16
	payload uint32
}

func (p prediction) String() string {
	if p.class != classCandidate {
		return p.why
	}
	return fmt.Sprintf("candidate %v:%d <-> %v:%d flags %#x seq %d ack %d win %d payload %d",
		bytesAddr(p.key.Vip, p.key.Family), p.key.Vport, bytesAddr(p.key.Client, p.key.Family), p.key.Cport,
		p.flags, p.seq, p.ack, p.window, p.payload)
}

func decided(cl pktClass, format string, args ...any) prediction {
	return prediction{class: cl, why: fmt.Sprintf(format, args...)}
}

// The program follows two VLAN tags and MAX_IPV6_EXT_HEADERS = 6 IPv6
// extension headers.
const (
	maxVLANTags   = 2
	maxIPv6ExtHdr = 6
)

// predict decodes b as the program of direction d would see it, with
// gopacket doing the decoding. Where gopacket is stricter or looser than
// the program for reasons that do not matter to tracking, the model
// follows the program, and says so:
//
//   - more than two VLAN tags: the program stops looking (OTHER).
//   - IPv4 total length 0: gopacket reads it as "the whole frame" (TSO);
//     for a packet that is not GSO, ip_rcv and the program refuse it.
//   - IPv4 and TCP options: the program does not read them, gopacket
//     validates their syntax; the model blanks them (end of list) first.
//   - IPv6: gopacket folds hop-by-hop and jumbograms into its IPv6 layer
//     and refuses payload length 0; the program has no jumbograms and
//     takes the length literally. gopacket decodes the fixed header alone
//     (next header and length neutralised in a copy); the model walks the
//     extension headers with gopacket's generic extension decoder (which,
//     unlike its routing decoder, does not insist on type 0) over the
//     payload the length claims, and AH with gopacket's AH decoder.
//   - AH with payload length 0 is 8 bytes, short of AH's own 12-byte
//     fixed part: gopacket refuses it, the program follows the length.
//   - a fragment header: the program stops there (FRAGMENT) whatever the
//     header holds, unless six extension headers came before it (then it
//     is the seventh: PARSE_ERROR).
//   - TCP is decoded from the frame past the IP headers, not from the IP
//     payload: the program reads the TCP header within the frame, checks
//     the port, and only then that the IP length covers the TCP header.
//   - fencing (fuzzLeases, per-VIP fencing on): ARP is read at its fixed
//     Ethernet/IPv4 offsets (hrd, pro and op unchecked); a neighbour
//     solicitation or advertisement is read from the frame past the IPv6
//     headers, whatever the payload length says, and one cut short of its
//     target is ICMPv6 like any other. Both come before the prefilter.
//     IP traffic to or from a fenced VIP is dropped once its IP header
//     parsed, fragments included.
func predict(b []byte, d fshaDirection) prediction {
	var eth layers.Ethernet
	if err := eth.DecodeFromBytes(b, gopacket.NilDecodeFeedback); err != nil {
		return decided(classParseError, "ethernet: %v", err)
	}
	typ, rest := eth.EthernetType, eth.Payload
	if eth.Length != 0 { // 802.3 length, not an EtherType
		return decided(classOther, "802.3 frame")
	}
	for tags := 0; typ == layers.EthernetTypeDot1Q || typ == layers.EthernetTypeQinQ; tags++ {
		if tags == maxVLANTags {
			return decided(classOther, "a third VLAN tag")
		}
		var q layers.Dot1Q
		if err := q.DecodeFromBytes(rest, gopacket.NilDecodeFeedback); err != nil {
			return decided(classParseError, "vlan: %v", err)
		}
		typ, rest = q.Type, q.Payload
	}
	l3Off := len(b) - len(rest)

	var (
		vip, client net.IP
		fragment    bool
		upper       layers.IPProtocol
		l3Len, hdrs int // what the IP header claims; IP and extension header bytes
		family      uint8
	)
	switch typ {
	case layers.EthernetTypeIPv4:
		// The prefilter looks at the VIP side's address before anything
		// else in the header (bpf/fsha.c: prefilter, parse_packet).
		if len(rest) >= 20 {
			a := netip.AddrFrom4([4]byte(rest[16:20]))
			if d == egress {
				a = netip.AddrFrom4([4]byte(rest[12:16]))
			}
			if !vipMaybe(a) {
				return decided(classOther, "ipv4: %v is not in the vip prefilter", a)
			}
		}
		if len(rest) >= 20 && binary.BigEndian.Uint16(rest[2:4]) == 0 {
			return decided(classParseError, "ipv4 total length 0")
		}
		cp := bytes.Clone(rest)
		if len(cp) >= 20 {
			if ihl := int(cp[0]&0x0f) * 4; ihl > 20 && ihl <= len(cp) {
				cp[20] = 0 // options: end of list
			}
		}
		var ip layers.IPv4
		if err := ip.DecodeFromBytes(cp, gopacket.NilDecodeFeedback); err != nil {
			return decided(classParseError, "ipv4: %v", err)
		}
		vip, client, family = ip.DstIP, ip.SrcIP, afInet
		fragment = ip.Flags&layers.IPv4MoreFragments != 0 || ip.FragOffset != 0
		upper, l3Len, hdrs = ip.Protocol, int(ip.Length), int(ip.IHL)*4

	case layers.EthernetTypeIPv6:
		cp := bytes.Clone(rest[:min(len(rest), 40)])
		if len(cp) == 40 {
			cp[6] = byte(layers.IPProtocolNoNextHeader)
			cp[4], cp[5] = 0, 1
		}
		var ip layers.IPv6
		if err := ip.DecodeFromBytes(cp, gopacket.NilDecodeFeedback); err != nil {
			return decided(classParseError, "ipv6: %v", err)
		}
		vip, client, family = ip.DstIP, ip.SrcIP, afInet6
		plen := int(binary.BigEndian.Uint16(rest[4:6]))
		next := layers.IPProtocol(rest[6])
		payload := rest[40:min(len(rest), 40+plen)]
		off := 0
	walk:
		for n := 0; ; n++ {
			var length int
			switch next {
			case layers.IPProtocolIPv6HopByHop, layers.IPProtocolIPv6Routing, layers.IPProtocolIPv6Destination:
				if n == maxIPv6ExtHdr {
					return decided(classParseError, "a seventh ipv6 extension header")
				}
				var x layers.IPv6ExtensionSkipper
				if err := x.DecodeFromBytes(payload[off:], gopacket.NilDecodeFeedback); err != nil {
					return decided(classParseError, "ipv6 %v: %v", next, err)
				}
				next, length = x.NextHeader, len(x.Contents)
			case layers.IPProtocolAH:
				if n == maxIPv6ExtHdr {
					return decided(classParseError, "a seventh ipv6 extension header")
				}
				var err error
				if next, length, err = decodeAH(payload[off:]); err != nil {
					return decided(classParseError, "ipv6 AH: %v", err)
				}
			case layers.IPProtocolIPv6Fragment:
				if n == maxIPv6ExtHdr {
					// the program looks at the seventh header only to
					// refuse it, a fragment header too
					return decided(classParseError, "a fragment header after six ipv6 extension headers")
				}
				fragment = true
				break walk
			default:
				break walk
			}
			off += length
		}
		upper, l3Len, hdrs = next, 40+plen, 40+off
		// neighbour discovery, before the prefilter
		if upper == layers.IPProtocolICMPv6 && len(rest) >= hdrs+24 {
			nd := rest[hdrs:]
			target := netip.AddrFrom16([16]byte(nd[8:24]))
			src := netip.AddrFrom16([16]byte(rest[8:24]))
			switch {
			case d == ingress && nd[0] == byte(layers.ICMPv6TypeNeighborSolicitation) && fencedARP(target):
				return decided(classFenced, "neighbour solicitation for %v", target)
			case d == egress && nd[0] == byte(layers.ICMPv6TypeNeighborSolicitation) && fencedARP(src):
				return decided(classFenced, "neighbour solicitation from %v", src)
			case d == egress && nd[0] == byte(layers.ICMPv6TypeNeighborAdvertisement) && fencedARP(target):
				return decided(classFenced, "neighbour advertisement for %v", target)
			}
		}

	case layers.EthernetTypeARP:
		if len(rest) < 28 {
			return decided(classParseError, "arp: %d bytes", len(rest))
		}
		if rest[4] != 6 || rest[5] != 4 {
			return decided(classOther, "arp: address lengths %d, %d", rest[4], rest[5])
		}
		a := netip.AddrFrom4([4]byte(rest[24:28])) // ingress: asked for (target)
		if d == egress {
			a = netip.AddrFrom4([4]byte(rest[14:18])) // egress: spoken for (sender)
		}
		if fencedARP(a) {
			op := binary.BigEndian.Uint16(rest[6:8])
			if d == egress && op == uint16(layers.ARPRequest) && !bytes.Equal(rest[14:18], rest[24:28]) {
				return decided(classARPProbed, "arp request from %v, sent as a probe", a)
			}
			return decided(classFenced, "arp for %v", a)
		}
		return decided(classOther, "arp for %v", a)

	default:
		return decided(classOther, "ethertype %v", typ)
	}

	if d == egress {
		vip, client = client, vip
	}
	vipAddr, _ := netip.AddrFromSlice(vip)
	if !vipMaybe(vipAddr) {
		return decided(classOther, "%v is not in the vip prefilter", vipAddr)
	}
	if fencedIP(vipAddr) {
		return decided(classFenced, "ip of %v", vipAddr)
	}
	if fragment {
		return decided(classFragment, "fragment")
	}
	if upper != layers.IPProtocolTCP {
		return decided(classOther, "protocol %v", upper)
	}

	l4 := bytes.Clone(rest[hdrs:])
	if len(l4) >= 20 {
		if doff := int(l4[12]>>4) * 4; doff > 20 && doff <= len(l4) {
			l4[20] = 0 // options: end of list
		}
	}
	var tcp layers.TCP
	if err := tcp.DecodeFromBytes(l4, gopacket.NilDecodeFeedback); err != nil {
		return decided(classParseError, "tcp: %v", err)
	}
	p := prediction{class: classCandidate, seq: tcp.Seq, ack: tcp.Ack, window: tcp.Window}
	p.flags = l4[13] & (tcpFIN | tcpSYN | tcpRST | tcpPSH | tcpACK)
	if l4[13]&tcpSYN != 0 && fencedARP(vipAddr) {
		return decided(classFenced, "new connection to %v", vipAddr)
	}
	cAddr, _ := netip.AddrFromSlice(client)
	p.key.Vip, _ = addrBytes(vipAddr)
	p.key.Client, _ = addrBytes(cAddr)
	p.key.Family = family
	p.key.Vport, p.key.Cport = uint16(tcp.DstPort), uint16(tcp.SrcPort)
	if d == egress {
		p.key.Vport, p.key.Cport = p.key.Cport, p.key.Vport
	}
	if !slices.Contains(defaultPorts, p.key.Vport) {
		return decided(classOther, "port %d not tracked", p.key.Vport)
	}
	tcpLen := int(tcp.DataOffset) * 4
	if l3Len < hdrs+tcpLen {
		return decided(classParseError, "ip length %d ends in the tcp header (%d+%d)", l3Len, hdrs, tcpLen)
	}
	l4Len := l3Len - hdrs
	if l4Off := l3Off + hdrs; d == egress && len(b)-l4Off > l4Len {
		l4Len = len(b) - l4Off // a GSO segment is longer than its IP header says
	}
	p.payload = uint32(l4Len - tcpLen)
	return p
}

// decodeAH decodes an IPv6 authentication header with gopacket.
func decodeAH(b []byte) (layers.IPProtocol, int, error) {
	if len(b) >= 2 && b[1] == 0 {
		if len(b) < 8 {
			return 0, 0, errors.New("truncated")
		}
		return layers.IPProtocol(b[0]), 8, nil
	}
	pkt := gopacket.NewPacket(b, layers.LayerTypeIPSecAH, gopacket.DecodeOptions{NoCopy: true})
	a, ok := pkt.Layer(layers.LayerTypeIPSecAH).(*layers.IPSecAH)
	if !ok {
		if e := pkt.ErrorLayer(); e != nil {
			return 0, 0, e.Error()
		}
		return 0, 0, errors.New("no AH layer")
	}
	return a.NextHeader, a.ActualLength, nil
}

// vipMaybe is the prefilter with the fuzz targets' VIPs.
func vipMaybe(a netip.Addr) bool {
	ab, af := addrBytes(a)
	for _, v := range fuzzVIPs {
		vb, vf := addrBytes(v)
		if vipFilterBit(ab, af) == vipFilterBit(vb, vf) {
			return true
		}
	}
	return false
}

// fuzzWant is what one run must do.
type fuzzWant struct {
	counters delta
	fuzzState
	updated *fshaFlowKey    // a flow whose last_seen must have moved
	events  []fshaFlowEvent // key, flow, type, reason; times not compared
}

// apply runs the flow logic of bpf/fsha.c on the seeded table.
func (p prediction) apply(d fshaDirection, start fuzzState) fuzzWant {
	w := fuzzWant{fuzzState: start.clone()}
	outcome := func(c fshaCounter) { w.counters[d][c]++ }
	switch p.class {
	case classOther:
		outcome(fshaCounterCOUNTER_OTHER)
		return w
	case classParseError:
		outcome(fshaCounterCOUNTER_PARSE_ERROR)
		return w
	case classFragment:
		outcome(fshaCounterCOUNTER_FRAGMENT)
		return w
	case classFenced:
		outcome(fshaCounterCOUNTER_FENCED)
		return w
	case classARPProbed:
		outcome(fshaCounterCOUNTER_ARP_PROBED)
		return w
	}

	f, exists := w.flows[p.key]
	if !exists {
		if d == egress && p.flags&(tcpSYN|tcpACK|tcpRST) == tcpSYN|tcpACK {
			w.handshakes[p.key] = p.ack // the client's ISN + 1
			outcome(fshaCounterCOUNTER_UNTRACKED)
			return w
		}
		if d == ingress && w.steered[p.key] {
			outcome(fshaCounterCOUNTER_STEERED) // a peer's: sent on to it (XDP_TX)
			return w
		}
		if d == ingress || p.flags&(tcpSYN|tcpRST|tcpFIN) != 0 {
			outcome(fshaCounterCOUNTER_UNTRACKED)
			return w
		}
		isVIP := func(a netip.Addr) bool { k := vipKey(a); return k.Addr == p.key.Vip && k.Family == p.key.Family }
		if !slices.ContainsFunc(fuzzVIPs, isVIP) {
			outcome(fshaCounterCOUNTER_OTHER) // only the prefilter matched
			return w
		}
		if tomb, ok := w.closed[p.key]; ok {
			if p.seq == tomb || p.seq+1 == tomb {
				outcome(fshaCounterCOUNTER_UNTRACKED) // the end of a closed connection
				return w
			}
			delete(w.closed, p.key)
		}
		var bytesIn uint64
		if isn, ok := w.handshakes[p.key]; ok {
			if sent := p.ack - isn; sent < 1<<30 {
				bytesIn = uint64(sent) // what the client sent before
			}
			delete(w.handshakes, p.key)
		}
		nf := fshaFlow{BytesIn: bytesIn, BytesOut: uint64(p.payload), PacketsOut: 1, SeqOut: p.seq + p.payload, AckOut: p.ack,
			SeqIn: p.ack, AckIn: p.seq, WindowOut: p.window, State: uint8(fshaFlowStateFLOW_STATE_ESTABLISHED)}
		w.flows[p.key] = nf
		outcome(fshaCounterCOUNTER_TRACKED)
		w.counters[egress][fshaCounterCOUNTER_CREATED]++
		w.events = append(w.events, fshaFlowEvent{Key: p.key, Flow: nf, Type: uint8(fshaFlowEventTypeFLOW_EVENT_OPEN)})
		return w
	}

	outcome(fshaCounterCOUNTER_TRACKED)
	closeFlow := func(reason fshaFlowCloseReason) {
		ev := f
		ev.State = uint8(fshaFlowStateFLOW_STATE_CLOSED)
		w.events = append(w.events, fshaFlowEvent{Key: p.key, Flow: ev,
			Type: uint8(fshaFlowEventTypeFLOW_EVENT_CLOSE), Reason: uint8(reason)})
		if reason == fshaFlowCloseReasonFLOW_CLOSE_FIN {
			w.closed[p.key] = f.SeqOut
		}
		delete(w.flows, p.key)
		w.counters[d][fshaCounterCOUNTER_CLOSED]++
	}
	if p.flags&tcpRST != 0 {
		if d == ingress {
			// only a RST near the expected sequence number closes
			if off := int32(p.seq - f.SeqIn); off >= -65536 && off < 1<<24 {
				closeFlow(fshaFlowCloseReasonFLOW_CLOSE_RST_IN)
			}
		} else {
			closeFlow(fshaFlowCloseReasonFLOW_CLOSE_RST_OUT)
		}
		return w
	}
	end := p.seq + p.payload
	if p.flags&(tcpSYN|tcpFIN) != 0 {
		end++
	}
	mine, theirs := uint8(fshaFlowFinFLOW_FIN_IN), uint8(fshaFlowFinFLOW_FIN_OUT)
	finState := uint8(fshaFlowStateFLOW_STATE_FIN_CLIENT)
	if d == ingress {
		f.PacketsIn++
		f.BytesIn += uint64(p.payload)
		if int32(end-f.SeqIn) > 0 {
			f.SeqIn = end
		}
		if p.flags&tcpACK != 0 {
			f.AckIn = p.ack
		}
		f.WindowIn = p.window
	} else {
		f.PacketsOut++
		f.BytesOut += uint64(p.payload)
		if int32(end-f.SeqOut) > 0 {
			f.SeqOut = end
		}
		if p.flags&tcpACK != 0 {
			f.AckOut = p.ack
		}
		f.WindowOut = p.window
		mine, theirs = theirs, mine
		finState = uint8(fshaFlowStateFLOW_STATE_FIN_SERVER)
	}
	if p.flags&tcpFIN != 0 {
		f.Fin |= mine
		if f.Fin&theirs != 0 {
			closeFlow(fshaFlowCloseReasonFLOW_CLOSE_FIN)
			return w
		}
		f.State = finState
	}
	w.flows[p.key] = f
	w.updated = &p.key
	return w
}

// checkFlows compares the flows map, the tombstones and the ring buffer
// with the model's.
func (h *harness) checkFlows(t *testing.T, w fuzzWant, p prediction, b []byte) {
	t.Helper()
	got := map[fshaFlowKey]fshaFlow{}
	pend, err := h.maps.pending()
	if err != nil {
		t.Fatal(err)
	}
	var (
		k fshaFlowKey
		v fshaFlow
	)
	it := h.maps.Flows.Iterate()
	for it.Next(&k, &v) {
		pend.apply(&k, &v)
		got[k] = v
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	noTimes := func(f fshaFlow) fshaFlow { f.FirstSeenNs, f.LastSeenNs = 0, 0; return f }
	for k, wf := range w.flows {
		gf, ok := got[k]
		if !ok || noTimes(gf) != noTimes(wf) {
			t.Errorf("flow %+v:\n got %+v (present %v)\nwant %+v\nmodel: %s\nframe %x", k, gf, ok, wf, p, b)
			continue
		}
		if wf.FirstSeenNs == 0 && (gf.FirstSeenNs == 0 || gf.LastSeenNs != gf.FirstSeenNs) {
			t.Errorf("new flow's times %d %d", gf.FirstSeenNs, gf.LastSeenNs)
		}
		if w.updated != nil && *w.updated == k && gf.LastSeenNs <= 1 {
			t.Errorf("updated flow's last_seen stayed %d", gf.LastSeenNs)
		}
	}
	for k := range got {
		if _, ok := w.flows[k]; !ok {
			t.Errorf("unexpected flow %+v: %+v\nmodel: %s\nframe %x", k, got[k], p, b)
		}
	}

	for _, tbl := range []struct {
		name string
		m    *ebpf.Map
		want map[fshaFlowKey]uint32
	}{{"closed_flows", h.maps.ClosedFlows, w.closed}, {"handshakes", h.maps.Handshakes, w.handshakes}} {
		var seq uint32
		got := map[fshaFlowKey]uint32{}
		it := tbl.m.Iterate()
		for it.Next(&k, &seq) {
			got[k] = seq
		}
		if err := it.Err(); err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(got, tbl.want) {
			t.Errorf("%s %v, want %v\nmodel: %s\nframe %x", tbl.name, got, tbl.want, p, b)
		}
	}

	evs := h.drainEvents(t)
	if len(evs) != len(w.events) {
		t.Fatalf("%d events, want %d\nmodel: %s\nframe %x", len(evs), len(w.events), p, b)
	}
	for i, g := range evs {
		we := w.events[i]
		want := flowOf(&we.Key, &we.Flow, clock{})
		want.FirstSeen, want.LastSeen = g.Flow.FirstSeen, g.Flow.LastSeen
		if g.Type != EventType(we.Type) || g.Reason != CloseReason(we.Reason) || g.Flow != want {
			t.Errorf("event %v %q %+v\nwant %v %q %+v", g.Type, g.Reason, g.Flow, EventType(we.Type), CloseReason(we.Reason), want)
		}
	}
}
