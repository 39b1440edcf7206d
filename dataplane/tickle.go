package dataplane

// Tickle ACKs: after a takeover, make every client of the VIP find out at
// once that its connection is gone.
//
// A tickle is a pure ACK from VIP:port to client:port whose sequence number
// lies outside the client's receive window. The client answers it with a
// duplicate ACK carrying its exact sequence numbers (RFC 793 p. 69; Linux:
// tcp_validate_incoming -> tcp_send_dupack); this node has no socket for
// the connection and answers that with a RST the client accepts, and the
// client's SMB or NFS stack reconnects instead of waiting for a
// retransmission timeout.
//
// How the segments leave, measured with `go run ./tools/bench -suite
// tickle` (2-vCPU VM shared with other jobs, kernel 6.18, IPv4, into a
// veth whose peer counts and drops at tc ingress; first round = read
// routes and neighbours, build, send; CPU = process CPU per connection,
// the peer's receive path included; medians of 5):
//
//	sender                                     100,000 conns   CPU/conn
//	AF_PACKET, PACKET_QDISC_BYPASS, sendmmsg   177 ms          1.8 us
//	AF_PACKET through the qdisc, sendmmsg      186 ms          2.0 us
//	raw IP socket (IPPROTO_RAW), sendmmsg      282 ms          3.4 us
//	AF_PACKET TX_RING (V2, bypass), prototype  same as sendmmsg +5%, single thread
//
// (1,000 conns: 2.4 ms, 10,000: 21 ms with AF_PACKET; similar through
// an XDP-drop peer.) The raw socket pays for routing and
// the neighbour layer per packet; a TX_RING saves the per-message
// syscall work but the kernel still builds an skb per frame, plus a copy
// into the ring, so it bought nothing for the complexity of an mmap ring;
// XDP cannot originate frames from userspace without AF_XDP (a UMEM and a
// queue of its own, driver support) or a live-frame BPF_PROG_RUN (XDP_TX
// needs native XDP in the driver, and on veth a program on the peer).
// So: AF_PACKET with the qdisc bypass, sendmmsg in batches of 1,024, and
// large rounds split over up to TickleMaxWorkers goroutines (one CPU's
// send path each; on a multi-queue NIC one transmit queue each). The
// bypass also keeps tickles out of the tc egress hook, so fsha's egress
// program does not take them for a local socket's segments and create
// flows for them (TestTickleBypassesEgressHook).
//
// AF_PACKET needs the next hop's MAC. It comes from the main routing
// table (longest prefix match, done here) and the kernel's neighbour
// table, both read once per Tickle call. A connection whose next hop has
// no usable neighbour entry (the new owner never talked to that client),
// or is reached through another interface, goes out through a raw IP
// socket instead: the kernel routes it and resolves the neighbour, queueing
// a few packets per neighbour meanwhile (unres_qlen_bytes) and dropping
// the rest, and the repeats go out by AF_PACKET once the entry is there.
// Policy routing rules are not consulted: where they send clients another
// way than the main table, use WithTickleMethod(TickleRaw).

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Tickle defaults: the first round leaves at once, then
// DefaultTickleRepeats more, DefaultTickleSpacing apart.
//
// A Linux client answers out-of-window segments at most once per 500 ms
// per connection (net.ipv4.tcp_invalid_ratelimit). The repeat at 300 ms
// covers a lost tickle (the client has not answered yet, so it is not
// rate limited); the one at 600 ms, past the rate limit, covers a lost
// answer or a lost RST. Both are inside the one-second failover target.
const (
	DefaultTickleRepeats = 2
	DefaultTickleSpacing = 300 * time.Millisecond
)

// ErrTicklerClosed is returned by Tickle after Close.
var ErrTicklerClosed = errors.New("tickler closed")

// Conn is one TCP connection to a VIP.
//
// Seq is the next sequence number the VIP side sends (Flow.SeqOut), Ack
// the next one it expects from the client (Flow.SeqIn); 0 means unknown
// (replicated connections carry none).
type Conn struct {
	VIP        netip.Addr
	VIPPort    uint16
	Client     netip.Addr
	ClientPort uint16
	Seq, Ack   uint32
}

// ConnOf returns the connection of a locally tracked flow, with its
// sequence numbers.
func ConnOf(f Flow) Conn {
	return Conn{VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort, Seq: f.SeqOut, Ack: f.SeqIn}
}

// PeerConn returns the connection of a flow replicated from another node
// (without sequence numbers).
func PeerConn(f PeerFlow) Conn {
	return Conn{VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort}
}

func (c Conn) String() string {
	return netip.AddrPortFrom(c.VIP, c.VIPPort).String() + "-" + netip.AddrPortFrom(c.Client, c.ClientPort).String()
}

// normalize unmaps IPv4-mapped addresses and checks c can be sent.
func (c Conn) normalize() (Conn, error) {
	c.VIP, c.Client = c.VIP.Unmap(), c.Client.Unmap()
	switch {
	case !c.VIP.IsValid() || !c.Client.IsValid():
		return c, fmt.Errorf("connection %s: missing address", c)
	case c.VIP.Is4() != c.Client.Is4():
		return c, fmt.Errorf("connection %s: mixed address families", c)
	case c.VIP.Zone() != "" || c.Client.Zone() != "":
		return c, fmt.Errorf("connection %s: scoped addresses are not supported", c)
	case c.VIPPort == 0 || c.ClientPort == 0:
		return c, fmt.Errorf("connection %s: port 0", c)
	}
	return c, nil
}

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

// TickleMethod is how a Tickler sends.
type TickleMethod int

const (
	// TicklePacket sends Ethernet frames on an AF_PACKET socket that
	// bypasses the qdisc, with sendmmsg; connections without a resolved
	// next hop go by TickleRaw. The default.
	TicklePacket TickleMethod = iota
	// TicklePacketQdisc is TicklePacket through the interface's qdisc
	// and tc egress hook.
	TicklePacketQdisc
	// TickleRaw sends IP packets on raw sockets (IPPROTO_RAW), with
	// sendmmsg: the kernel routes them and resolves the next hop.
	TickleRaw
)

func (m TickleMethod) String() string {
	switch m {
	case TicklePacket:
		return "AF_PACKET, qdisc bypass, sendmmsg"
	case TicklePacketQdisc:
		return "AF_PACKET via qdisc, sendmmsg"
	case TickleRaw:
		return "raw IP socket, sendmmsg"
	}
	return fmt.Sprintf("method-%d", int(m))
}

// TickleOption changes a Tickler's defaults.
type TickleOption func(*Tickler)

// WithTickleMethod makes the Tickler send with m.
func WithTickleMethod(m TickleMethod) TickleOption {
	return func(t *Tickler) { t.method = m }
}

// TickleStats is what one Tickle call did.
type TickleStats struct {
	Conns   int // connections asked for
	Invalid int // connections skipped: bad addresses or ports
	// Packet and Raw count the connections the first round sent through
	// the packet socket and through the raw sockets.
	Packet, Raw int
	Rounds      int // rounds sent
	Sent        int // segments sent, all rounds
	Errors      int // segments that could not be sent, all rounds
	// FirstRound is the time from the call to the last segment of the
	// first round: resolving next hops, building, sending.
	FirstRound time.Duration
	Duration   time.Duration // the whole call, repeats included
}

// TickleCounters are a Tickler's totals since it was made.
type TickleCounters struct {
	Calls, Conns, Sent, Errors uint64
}

// Tickler sends tickle ACKs out of one interface. It is safe for
// concurrent use.
type Tickler struct {
	log     *zap.Logger
	iface   string
	ifindex int
	mac     net.HardwareAddr // nil without Ethernet: raw sockets only
	method  TickleMethod
	nl      *netlink.Handle

	// pkt, raw4 and raw6 are socket fds, -1 when not open. They are
	// closed under mu held for writing; senders hold it for reading.
	mu     sync.RWMutex
	closed bool
	pkt    int
	raw4   int
	raw6   int

	calls, conns, sent, errs atomic.Uint64
}

// NewTickler opens the sockets to tickle through iface, in the network
// namespace of the calling thread. It needs CAP_NET_RAW (and
// CAP_NET_ADMIN for a large send buffer).
func NewTickler(log *zap.Logger, iface string, opts ...TickleOption) (_ *Tickler, err error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("tickler on %s: %w", iface, err)
	}
	t := &Tickler{
		log: log.Named("dataplane").Named("tickle").With(zap.String("iface", iface)), iface: iface,
		ifindex: ifi.Index, pkt: -1, raw4: -1, raw6: -1,
	}
	for _, o := range opts {
		o(t)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, t.Close())
		}
	}()
	if t.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		return nil, fmt.Errorf("tickler on %s: netlink: %w", iface, err)
	}
	if t.method != TickleRaw && len(ifi.HardwareAddr) == 6 {
		t.mac = ifi.HardwareAddr
		if t.pkt, err = openTicklePacketSocket(ifi.Index, t.method == TicklePacket); err != nil {
			return nil, fmt.Errorf("tickler on %s: %w", iface, err)
		}
	}
	if t.raw4, err = openTickleRawSocket(unix.AF_INET); err != nil {
		return nil, fmt.Errorf("tickler on %s: %w", iface, err)
	}
	// A namespace without IPv6 has no IPv6 VIPs either.
	if t.raw6, err = openTickleRawSocket(unix.AF_INET6); err != nil && !errors.Is(err, unix.EAFNOSUPPORT) {
		return nil, fmt.Errorf("tickler on %s: %w", iface, err)
	}
	return t, nil
}

// tickleSendBuffer is the send buffer of the sockets: room for a burst of
// frames a NIC has not sent yet (each costs about 1 KiB of skb).
const tickleSendBuffer = 8 << 20

// tickleSendTimeout bounds one sendmmsg call that waits for buffer space.
const tickleSendTimeout = 100 * time.Millisecond

func setTickleSendOptions(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, tickleSendBuffer); err != nil {
		// Without CAP_NET_ADMIN: as much as net.core.wmem_max allows.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, tickleSendBuffer); err != nil {
			return fmt.Errorf("set send buffer: %w", err)
		}
	}
	tv := unix.NsecToTimeval(tickleSendTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv); err != nil {
		return fmt.Errorf("set send timeout: %w", err)
	}
	return nil
}

// openTicklePacketSocket opens an AF_PACKET socket bound to ifindex with
// protocol 0: it sends whole frames and receives nothing.
func openTicklePacketSocket(ifindex int, bypass bool) (fd int, err error) {
	fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("packet socket: %w", err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	if err := setTickleSendOptions(fd); err != nil {
		return -1, fmt.Errorf("packet socket: %w", err)
	}
	if bypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			return -1, fmt.Errorf("packet socket: qdisc bypass: %w", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
		return -1, fmt.Errorf("bind packet socket: %w", err)
	}
	return fd, nil
}

// openTickleRawSocket opens a send-only raw socket for whole IP packets
// (IPPROTO_RAW implies IP_HDRINCL / IPV6_HDRINCL), which reports dropped
// packets (IP_RECVERR) instead of hiding them.
func openTickleRawSocket(family int) (fd int, err error) {
	fd, err = unix.Socket(family, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return -1, fmt.Errorf("raw socket (family %d): %w", family, err)
	}
	defer func() {
		if err != nil {
			unix.Close(fd)
			fd = -1
		}
	}()
	if err := setTickleSendOptions(fd); err != nil {
		return -1, fmt.Errorf("raw socket: %w", err)
	}
	if family == unix.AF_INET {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_RECVERR, 1)
	} else {
		err = unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVERR, 1)
	}
	if err != nil {
		return -1, fmt.Errorf("raw socket: recverr: %w", err)
	}
	return fd, nil
}

// Interface returns the name of the interface the Tickler sends on.
func (t *Tickler) Interface() string { return t.iface }

// Method returns how the Tickler sends.
func (t *Tickler) Method() TickleMethod {
	if t.mac == nil {
		return TickleRaw
	}
	return t.method
}

// Counters returns the Tickler's totals.
func (t *Tickler) Counters() TickleCounters {
	return TickleCounters{Calls: t.calls.Load(), Conns: t.conns.Load(), Sent: t.sent.Load(), Errors: t.errs.Load()}
}

// Close closes the sockets; a Tickle under way stops after its current
// batch.
func (t *Tickler) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	t.closed = true
	var errs []error
	for _, fd := range []*int{&t.pkt, &t.raw4, &t.raw6} {
		if *fd >= 0 {
			errs = append(errs, unix.Close(*fd))
			*fd = -1
		}
	}
	if t.nl != nil {
		t.nl.Close()
	}
	return errors.Join(errs...)
}

// Tickle sends a tickle ACK for every connection in conns: the first round
// at once, then repeats more rounds spacing apart (see the defaults). It
// returns when the last round is out or ctx ends; the error is ctx's, or
// reports the segments that could not be sent, or invalid connections.
func (t *Tickler) Tickle(ctx context.Context, conns []Conn, repeats int, spacing time.Duration) (TickleStats, error) {
	start := time.Now()
	st := TickleStats{Conns: len(conns)}
	t.calls.Add(1)
	t.conns.Add(uint64(len(conns)))
	var errs []error
	defer func() {
		t.sent.Add(uint64(st.Sent))
		t.errs.Add(uint64(st.Errors))
	}()

	valid := make([]Conn, 0, len(conns))
	for _, c := range conns {
		c, err := c.normalize()
		if err != nil {
			if st.Invalid == 0 {
				errs = append(errs, err)
			}
			st.Invalid++
			continue
		}
		valid = append(valid, c)
	}
	if st.Invalid > 0 {
		t.log.Warn("invalid connections skipped", zap.Int("count", st.Invalid), zap.Error(errs[0]))
	}

	var hops *nextHops
	if t.mac != nil {
		var err error
		if hops, err = t.loadNextHops(); err != nil {
			// Not fatal: the kernel routes them all.
			t.log.Warn("cannot read routes and neighbours, sending through raw sockets", zap.Error(err))
		}
	}
	p := t.plan(valid, hops)
	st.Packet, st.Raw = p.pkt.n, len(p.rawIdx)
	for round := 0; round <= repeats; round++ {
		if round > 0 {
			if err := sleepCtx(ctx, spacing); err != nil {
				errs = append(errs, err)
				break
			}
			if len(p.rawIdx) > 0 && p.hops != nil {
				t.replan(p)
			}
		}
		sent, failed, err := t.sendRound(ctx, p)
		st.Sent += sent
		st.Errors += failed
		st.Rounds++
		if round == 0 {
			st.FirstRound = time.Since(start)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("round %d: %w", round+1, err))
			if errors.Is(err, ErrTicklerClosed) || ctx.Err() != nil {
				break
			}
		}
	}
	st.Duration = time.Since(start)
	t.log.Info("tickled", zap.Int("conns", st.Conns), zap.Int("packet", st.Packet), zap.Int("raw", st.Raw),
		zap.Int("rounds", st.Rounds), zap.Int("sent", st.Sent), zap.Int("errors", st.Errors),
		zap.Duration("first_round", st.FirstRound), zap.Duration("duration", st.Duration))
	if len(errs) > 0 {
		return st, fmt.Errorf("tickle on %s: %w", t.iface, errors.Join(errs...))
	}
	return st, nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-tm.C:
		return nil
	}
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
	conns []Conn
	pkt   frameList // Ethernet frames for the packet socket
	// rawIdx are the indexes in conns of the connections sent through the
	// raw sockets, raw4 and raw6 their packets.
	rawIdx     []int
	raw4, raw6 frameList
	// hops is set when next hops were resolved: the routes and what each
	// client resolved to.
	hops *nextHops
}

// plan builds the frames of conns: Ethernet frames for those whose next
// hop hops resolves, IP packets for the raw sockets for the others (and
// for all without hops).
func (t *Tickler) plan(conns []Conn, hops *nextHops) *ticklePlan {
	p := &ticklePlan{conns: conns, hops: hops}
	if hops == nil {
		p.rawIdx = make([]int, len(conns))
		for i := range conns {
			p.rawIdx[i] = i
		}
		t.buildRaw(p)
		return p
	}
	p.pkt = newFrameList(len(conns))
	for i := range conns {
		c := &conns[i]
		mac := hops.lookup(c.Client)
		if mac == nil {
			p.rawIdx = append(p.rawIdx, i)
			continue
		}
		s := tickleSegment(*c)
		p.pkt.commit(s.putFrame(p.pkt.next(), t.mac, mac))
	}
	t.buildRaw(p)
	return p
}

// buildRaw builds the raw sockets' packets for p.rawIdx.
func (t *Tickler) buildRaw(p *ticklePlan) {
	var n4 int
	for _, i := range p.rawIdx {
		if p.conns[i].VIP.Is4() {
			n4++
		}
	}
	p.raw4, p.raw6 = newFrameList(n4), newFrameList(len(p.rawIdx)-n4)
	p.raw4.dsts, p.raw6.dsts = make([]netip.Addr, n4), make([]netip.Addr, len(p.rawIdx)-n4)
	for _, i := range p.rawIdx {
		c := p.conns[i]
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
	var still []int
	for _, i := range p.rawIdx {
		c := p.conns[i]
		mac := p.hops.lookup(c.Client)
		if mac == nil {
			still = append(still, i)
			continue
		}
		s := tickleSegment(c)
		p.pkt.commit(s.putFrame(p.pkt.next(), t.mac, mac))
	}
	if len(still) != len(p.rawIdx) {
		t.log.Debug("next hops resolved", zap.Int("moved", len(p.rawIdx)-len(still)), zap.Int("raw", len(still)))
		p.rawIdx = still
		t.buildRaw(p)
	}
}

// sendRound sends every frame of p once.
func (t *Tickler) sendRound(ctx context.Context, p *ticklePlan) (sent, failed int, err error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0, 0, ErrTicklerClosed
	}
	var errs []error
	for _, job := range []struct {
		fd    int
		l     *frameList
		named bool
	}{{t.pkt, &p.pkt, false}, {t.raw4, &p.raw4, true}, {t.raw6, &p.raw6, true}} {
		if job.l.n == 0 {
			continue
		}
		if job.fd < 0 {
			failed += job.l.n
			errs = append(errs, fmt.Errorf("%d segments: %w", job.l.n, unix.EAFNOSUPPORT))
			continue
		}
		s, f, err := sendParallel(ctx, job.fd, job.l, job.named)
		sent += s
		failed += f
		if err != nil {
			errs = append(errs, err)
		}
	}
	return sent, failed, errors.Join(errs...)
}

// A round of at least 2 x TickleWorkerFrames frames is sent from several
// goroutines, TickleWorkerFrames or more each, at most TickleMaxWorkers
// and one per CPU.
const (
	TickleWorkerFrames = 4096
	TickleMaxWorkers   = 4
)

// sendParallel sends l on fd from up to one goroutine per CPU (each
// kernel send path runs on its CPU, with its own transmit queue on a
// multi-queue NIC), in contiguous shares.
func sendParallel(ctx context.Context, fd int, l *frameList, named bool) (sent, failed int, err error) {
	workers := min(runtime.GOMAXPROCS(0), runtime.NumCPU(), TickleMaxWorkers, l.n/TickleWorkerFrames)
	if workers <= 1 {
		return sendFrames(ctx, fd, l, named)
	}
	type result struct {
		sent, failed int
		err          error
	}
	results := make([]result, workers)
	var wg sync.WaitGroup
	for w := range workers {
		part := l.slice(w*l.n/workers, (w+1)*l.n/workers)
		wg.Go(func() {
			r := &results[w]
			r.sent, r.failed, r.err = sendFrames(ctx, fd, part, named)
		})
	}
	wg.Wait()
	var errs []error
	for _, r := range results {
		sent += r.sent
		failed += r.failed
		if r.err != nil {
			errs = append(errs, r.err)
		}
	}
	return sent, failed, errors.Join(errs...)
}

// mmsghdr is struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
}

// mmsgBatch is the most messages one sendmmsg call takes (UIO_MAXIOV).
const mmsgBatch = 1024

// tickleStall is how long a send may make no progress (full queues) before
// the rest of the round is given up.
const tickleStall = 250 * time.Millisecond

// sendFrames sends every frame of l on fd with sendmmsg, addressed to
// l.dsts when named. Full queues (ENOBUFS, EAGAIN) are waited out with a
// backoff, bounded by tickleStall; a frame the kernel refuses otherwise is
// counted as failed and skipped.
func sendFrames(ctx context.Context, fd int, l *frameList, named bool) (sent, failed int, err error) {
	msgs := make([]mmsghdr, min(l.n, mmsgBatch))
	iovs := make([]unix.Iovec, len(msgs))
	var sa4 []unix.RawSockaddrInet4
	var sa6 []unix.RawSockaddrInet6
	if named {
		sa4, sa6 = make([]unix.RawSockaddrInet4, len(msgs)), make([]unix.RawSockaddrInet6, len(msgs))
	}
	var firstErr error
	fail := func(e error) {
		failed++
		if firstErr == nil {
			firstErr = e
		}
	}
	for base := 0; base < l.n; base += len(msgs) {
		k := min(len(msgs), l.n-base)
		for j := range k {
			f := l.frame(base + j)
			iovs[j].Base = &f[0]
			iovs[j].SetLen(len(f))
			msgs[j] = mmsghdr{hdr: unix.Msghdr{Iov: &iovs[j], Iovlen: 1}}
			if named {
				dst := l.dsts[base+j]
				if dst.Is4() {
					sa4[j] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dst.As4()}
					msgs[j].hdr.Name = (*byte)(unsafe.Pointer(&sa4[j]))
					msgs[j].hdr.Namelen = unix.SizeofSockaddrInet4
				} else {
					sa6[j] = unix.RawSockaddrInet6{Family: unix.AF_INET6, Addr: dst.As16()}
					msgs[j].hdr.Name = (*byte)(unsafe.Pointer(&sa6[j]))
					msgs[j].hdr.Namelen = unix.SizeofSockaddrInet6
				}
			}
		}
		i := 0
		backoff := 20 * time.Microsecond
		progress := time.Now()
		for i < k {
			n, errno := sendmmsg(fd, msgs[i:k])
			if n > 0 {
				i += n
				sent += n
				backoff = 20 * time.Microsecond
				progress = time.Now()
				continue
			}
			if errno == 0 { // sent nothing, said nothing: a full queue
				errno = unix.EAGAIN
			}
			switch errno {
			case unix.EINTR:
			case unix.ENOBUFS, unix.EAGAIN, unix.ENOMEM:
				if ctx.Err() != nil || time.Since(progress) > tickleStall {
					for ; i < l.n-base; i++ {
						fail(fmt.Errorf("queue full: %w", errno))
					}
					return sent, failed, fmt.Errorf("%d segments not sent: %w", failed, firstErr)
				}
				time.Sleep(backoff)
				backoff = min(2*backoff, 2*time.Millisecond)
			case unix.ENETDOWN, unix.ENXIO, unix.ENODEV, unix.EBADF:
				// The interface (or socket) is gone: so is the round.
				for ; i < l.n-base; i++ {
					fail(errno)
				}
				return sent, failed, fmt.Errorf("%d segments not sent: %w", failed, firstErr)
			default:
				// This frame only (no route to its client, say).
				fail(errno)
				i++
			}
		}
		if err := ctx.Err(); err != nil && base+k < l.n {
			failed += l.n - base - k
			return sent, failed, err
		}
	}
	if failed > 0 {
		return sent, failed, fmt.Errorf("%d segments not sent: %w", failed, firstErr)
	}
	return sent, 0, nil
}

// sendmmsg sends msgs on fd and returns how many left, or the error of the
// first when none did.
func sendmmsg(fd int, msgs []mmsghdr) (int, unix.Errno) {
	n, _, errno := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&msgs[0])), uintptr(len(msgs)), 0, 0, 0)
	if errno != 0 {
		return 0, errno
	}
	return int(n), 0
}

// nextHops resolves clients to the MAC address of their next hop on the
// Tickler's interface, from the main routing table and the neighbour
// table as they were when loaded.
type nextHops struct {
	ifindex int
	routes  []hopRoute // longest prefix first
	neigh   map[[16]byte]net.HardwareAddr
	// cache maps clients to next hops (invalid: not via ifindex) when
	// there are too many routes to scan for every client.
	cache map[[16]byte]netip.Addr
	// last is the last next hop looked up, and its MAC address: most
	// clients of a VIP share one (a router, or one client host with
	// several connections).
	last    netip.Addr
	lastMAC net.HardwareAddr
}

// hopCacheRoutes is the number of routes from which lookups are cached.
const hopCacheRoutes = 32

type hopRoute struct {
	dst netip.Prefix
	gw  netip.Addr // invalid: on link
	// ok is false for a route that does not send out of the interface
	// through one known gateway: another interface, multipath, blackhole.
	ok bool
}

func (t *Tickler) loadNextHops() (*nextHops, error) {
	h := &nextHops{ifindex: t.ifindex}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := retryDump(func() ([]netlink.Route, error) {
			return t.nl.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if hr, ok := hopRouteOf(fam, r, t.ifindex); ok {
				h.routes = append(h.routes, hr)
			}
		}
	}
	h.sortRoutes()
	if err := h.reloadNeighbours(t); err != nil {
		return nil, err
	}
	return h, nil
}

// sortRoutes puts the longest prefixes first; among equal prefixes the
// kernel's order (lowest metric first) stands.
func (h *nextHops) sortRoutes() {
	slices.SortStableFunc(h.routes, func(a, b hopRoute) int { return b.dst.Bits() - a.dst.Bits() })
	if len(h.routes) >= hopCacheRoutes {
		h.cache = map[[16]byte]netip.Addr{}
	}
}

// hopRouteOf converts a route; ok is false for routes that never match.
func hopRouteOf(fam int, r netlink.Route, ifindex int) (hopRoute, bool) {
	var dst netip.Prefix
	if r.Dst == nil {
		if fam == netlink.FAMILY_V4 {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		} else {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
	} else {
		a, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			return hopRoute{}, false
		}
		bits, _ := r.Dst.Mask.Size()
		if fam == netlink.FAMILY_V4 {
			a = a.Unmap()
		}
		dst = netip.PrefixFrom(a, bits)
	}
	if !dst.IsValid() {
		return hopRoute{}, false
	}
	hr := hopRoute{dst: dst.Masked()}
	if r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 || r.Via != nil || r.LinkIndex != ifindex {
		return hr, true // matches, but the kernel must route it
	}
	if r.Gw != nil {
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok {
			return hr, true
		}
		if fam == netlink.FAMILY_V4 {
			gw = gw.Unmap()
		}
		hr.gw = gw
	}
	hr.ok = true
	return hr, true
}

func (h *nextHops) reloadNeighbours(t *Tickler) error {
	h.neigh = map[[16]byte]net.HardwareAddr{}
	h.last, h.lastMAC = netip.Addr{}, nil
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := retryDump(func() ([]netlink.Neigh, error) { return t.nl.NeighList(h.ifindex, fam) })
		if err != nil {
			return fmt.Errorf("list neighbours: %w", err)
		}
		for _, n := range ns {
			const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT
			if n.State&usable == 0 || len(n.HardwareAddr) != 6 || isZeroMAC(n.HardwareAddr) {
				continue
			}
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				h.neigh[a.Unmap().As16()] = n.HardwareAddr
			}
		}
	}
	return nil
}

// retryDump runs a netlink dump again (a few times) when the table
// changed under it, as it may right after a takeover added addresses.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for range 3 {
		xs, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return xs, err
		}
	}
	return dump()
}

func isZeroMAC(m net.HardwareAddr) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

// nextHop returns client's next hop, invalid when it is not through the
// interface.
func (h *nextHops) nextHop(client netip.Addr) netip.Addr {
	var key [16]byte
	if h.cache != nil {
		key = client.As16()
		if hop, ok := h.cache[key]; ok {
			return hop
		}
	}
	var hop netip.Addr
	for i := range h.routes {
		r := &h.routes[i]
		if r.dst.Contains(client) {
			if r.ok {
				hop = client
				if r.gw.IsValid() {
					hop = r.gw
				}
			}
			break
		}
	}
	if h.cache != nil {
		h.cache[key] = hop
	}
	return hop
}

// lookup returns the MAC address of client's next hop, nil when it is not
// on the interface or not resolved.
func (h *nextHops) lookup(client netip.Addr) net.HardwareAddr {
	hop := h.nextHop(client)
	if !hop.IsValid() {
		return nil
	}
	if hop != h.last {
		h.last, h.lastMAC = hop, h.neigh[hop.As16()]
	}
	return h.lastMAC
}
