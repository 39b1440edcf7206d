package dataplane

// Building what a tickle round sends: TCP segments as IP packets or
// Ethernet frames, with their checksums, and the plan of which
// connection leaves by which socket.

import (
	"encoding/binary"
	"net"
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// TCP flags.
const (
	tcpFlagRST = 0x04
	tcpFlagACK = 0x10
)

// Segment sizes: Ethernet header, IPv4 and IPv6 headers, TCP header
// without options; Ethernet frames are padded to the 60-byte minimum.
const (
	ethHeaderLen = 14
	ip4HeaderLen = 20
	ip6HeaderLen = 40
	tcpHeaderLen = 20
	ethMinFrame  = 60
	// frameStride is the room for one frame in a frame list: the largest
	// is an IPv6 one, 14 + 40 + 20 = 74 bytes.
	frameStride = 80
)

// tickleSeqBehind is how far behind the VIP side's next sequence number a
// tickle's sequence number lies when that number is known: 1 GiB puts it
// before the client's receive window (at most 1 GiB, RFC 7323) even when
// the tracked number is off by up to as much either way.
const tickleSeqBehind = 1 << 30

// tickleWindow is the window a tickle advertises. The client drops the
// segment before looking at it; nonzero in case it ever does not.
const tickleWindow = 8192

// tcpSegment is one IP packet with a TCP header, no options, no payload.
type tcpSegment struct {
	src, dst     netip.Addr
	sport, dport uint16
	seq, ack     uint32
	flags        uint8
	window       uint16
}

// tickleSegment is c's tickle: a pure ACK from the VIP whose sequence
// number lies outside the client's window.
func tickleSegment(c Conn) tcpSegment {
	s := tcpSegment{src: c.VIP, dst: c.Client, sport: c.VIPPort, dport: c.ClientPort, flags: tcpFlagACK, window: tickleWindow}
	if c.Seq != 0 || c.Ack != 0 {
		s.seq, s.ack = c.Seq-tickleSeqBehind, c.Ack
	}
	return s
}

// ipLen is the length of s as an IP packet.
func (s *tcpSegment) ipLen() int {
	if s.src.Is4() {
		return ip4HeaderLen + tcpHeaderLen
	}
	return ip6HeaderLen + tcpHeaderLen
}

// put writes s as an IP packet into b, which must hold s.ipLen() bytes,
// with correct IPv4 header and TCP checksums. The hot path of a tickle: no
// allocation, no reflection.
func (s *tcpSegment) put(b []byte) {
	var tcp []byte
	var sum uint32 // of the TCP pseudo-header
	if s.src.Is4() {
		ip := b[:ip4HeaderLen]
		src, dst := s.src.As4(), s.dst.As4()
		ip[0] = 0x45 // version 4, 5 words
		ip[1] = 0
		binary.BigEndian.PutUint16(ip[2:], ip4HeaderLen+tcpHeaderLen)
		binary.BigEndian.PutUint16(ip[4:], 0)      // identification
		binary.BigEndian.PutUint16(ip[6:], 0x4000) // don't fragment
		ip[8] = 64                                 // TTL
		ip[9] = unix.IPPROTO_TCP
		ip[10], ip[11] = 0, 0
		copy(ip[12:16], src[:])
		copy(ip[16:20], dst[:])
		binary.BigEndian.PutUint16(ip[10:], checksumFold(checksumAdd(0, ip)))
		sum = checksumAdd(0, ip[12:20]) + unix.IPPROTO_TCP + tcpHeaderLen
		tcp = b[ip4HeaderLen : ip4HeaderLen+tcpHeaderLen]
	} else {
		ip := b[:ip6HeaderLen]
		src, dst := s.src.As16(), s.dst.As16()
		binary.BigEndian.PutUint32(ip[0:], 6<<28) // version 6, class 0, flow 0
		binary.BigEndian.PutUint16(ip[4:], tcpHeaderLen)
		ip[6] = unix.IPPROTO_TCP
		ip[7] = 64 // hop limit
		copy(ip[8:24], src[:])
		copy(ip[24:40], dst[:])
		sum = checksumAdd(0, ip[8:40]) + unix.IPPROTO_TCP + tcpHeaderLen
		tcp = b[ip6HeaderLen : ip6HeaderLen+tcpHeaderLen]
	}
	binary.BigEndian.PutUint16(tcp[0:], s.sport)
	binary.BigEndian.PutUint16(tcp[2:], s.dport)
	binary.BigEndian.PutUint32(tcp[4:], s.seq)
	binary.BigEndian.PutUint32(tcp[8:], s.ack)
	tcp[12] = tcpHeaderLen / 4 << 4 // data offset
	tcp[13] = s.flags
	binary.BigEndian.PutUint16(tcp[14:], s.window)
	tcp[16], tcp[17] = 0, 0 // checksum
	tcp[18], tcp[19] = 0, 0 // urgent pointer
	binary.BigEndian.PutUint16(tcp[16:], checksumFold(checksumAdd(sum, tcp)))
}

// putFrame writes s as an Ethernet frame from src to dst into b, which
// must hold frameStride bytes, and returns the frame's length.
func (s *tcpSegment) putFrame(b []byte, src, dst net.HardwareAddr) int {
	copy(b[0:6], dst)
	copy(b[6:12], src)
	if s.src.Is4() {
		binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IP)
	} else {
		binary.BigEndian.PutUint16(b[12:], unix.ETH_P_IPV6)
	}
	n := ethHeaderLen + s.ipLen()
	s.put(b[ethHeaderLen:n])
	if n < ethMinFrame {
		clear(b[n:ethMinFrame])
		n = ethMinFrame
	}
	return n
}

// checksumAdd adds b, as big-endian 16-bit words, to an Internet checksum
// sum (RFC 1071). b has an even length here.
func checksumAdd(sum uint32, b []byte) uint32 {
	for len(b) >= 8 {
		sum += uint32(binary.BigEndian.Uint16(b)) + uint32(binary.BigEndian.Uint16(b[2:])) +
			uint32(binary.BigEndian.Uint16(b[4:])) + uint32(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	return sum
}

// checksumFold folds sum into 16 bits and complements it.
func checksumFold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// frameList holds frames (or IP packets) back to back, frameStride apart.
type frameList struct {
	buf  []byte
	lens []uint8
	dsts []netip.Addr // for raw sockets: each packet's destination
	n    int
}

func newFrameList(capacity int) frameList {
	return frameList{buf: make([]byte, capacity*frameStride), lens: make([]uint8, capacity)}
}

func (l *frameList) next() []byte { return l.buf[l.n*frameStride : (l.n+1)*frameStride] }

func (l *frameList) commit(n int) { l.lens[l.n] = uint8(n); l.n++ }

func (l *frameList) frame(i int) []byte { return l.buf[i*frameStride : i*frameStride+int(l.lens[i])] }

// slice returns frames from..to-1 of l, sharing its memory.
func (l *frameList) slice(from, to int) *frameList {
	s := &frameList{buf: l.buf[from*frameStride : to*frameStride], lens: l.lens[from:to], n: to - from}
	if l.dsts != nil {
		s.dsts = l.dsts[from:to]
	}
	return s
}

// ticklePlan is what every round of one Tickle call sends.
type ticklePlan struct {
	pkt frameList // Ethernet frames for the packet socket
	// raw are the connections sent through the raw sockets, raw4 and
	// raw6 their packets.
	raw        []Conn
	raw4, raw6 frameList
	// hops is set when next hops were resolved: the routes and what each
	// client resolved to.
	hops *nextHops
}

// newPlan returns an empty plan with room for n frames for the packet
// socket when next hops were resolved (without hops, everything is raw).
func newPlan(n int, hops *nextHops) *ticklePlan {
	p := &ticklePlan{hops: hops}
	if hops != nil {
		p.pkt = newFrameList(n)
	}
	return p
}

// add puts c, normalized, in p: an Ethernet frame when its next hop
// resolves, else in p.raw (buildRaw makes their packets).
func (t *Tickler) add(p *ticklePlan, c Conn) {
	if p.hops != nil {
		if mac := p.hops.lookup(c.Client); mac != nil {
			s := tickleSegment(c)
			p.pkt.commit(s.putFrame(p.pkt.next(), t.mac, mac))
			return
		}
	}
	p.raw = append(p.raw, c)
}

// plan builds the frames of conns, normalized: Ethernet frames for those
// whose next hop hops resolves, IP packets for the raw sockets for the
// others (and for all without hops).
func (t *Tickler) plan(conns []Conn, hops *nextHops) *ticklePlan {
	p := newPlan(len(conns), hops)
	for _, c := range conns {
		t.add(p, c)
	}
	t.buildRaw(p)
	return p
}

// buildRaw builds the raw sockets' packets for p.raw.
func (t *Tickler) buildRaw(p *ticklePlan) {
	var n4 int
	for i := range p.raw {
		if p.raw[i].VIP.Is4() {
			n4++
		}
	}
	p.raw4, p.raw6 = newFrameList(n4), newFrameList(len(p.raw)-n4)
	p.raw4.dsts, p.raw6.dsts = make([]netip.Addr, n4), make([]netip.Addr, len(p.raw)-n4)
	for _, c := range p.raw {
		l := &p.raw6
		if c.VIP.Is4() {
			l = &p.raw4
		}
		s := tickleSegment(c)
		n := s.ipLen()
		s.put(l.next()[:n])
		l.dsts[l.n] = c.Client
		l.commit(n)
	}
}

// replan moves the raw sockets' connections whose next hop has been
// resolved since to the packet socket.
func (t *Tickler) replan(p *ticklePlan) {
	if err := p.hops.reloadNeighbours(t); err != nil {
		t.log.Debug("reload neighbours", zap.Error(err))
		return
	}
	var still []Conn
	for _, c := range p.raw {
		mac := p.hops.lookup(c.Client)
		if mac == nil {
			still = append(still, c)
			continue
		}
		s := tickleSegment(c)
		p.pkt.commit(s.putFrame(p.pkt.next(), t.mac, mac))
	}
	if len(still) != len(p.raw) {
		t.log.Debug("next hops resolved", zap.Int("moved", len(p.raw)-len(still)), zap.Int("raw", len(still)))
		p.raw = still
		t.buildRaw(p)
	}
}
