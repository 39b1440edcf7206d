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
// first round is sent batch by batch as it is built, so the first
// tickles never wait for the whole plan (firstRound). The bypass also
// keeps tickles out of the tc egress hook, so fsha's egress program does
// not take them for a local socket's segments and create flows for them
// (TestTickleBypassesEgressHook).
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
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

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
	return t.tickle(ctx, len(conns), func(i int) Conn { return conns[i] }, repeats, spacing)
}

// tickle is Tickle over n connections that conn returns by index, in
// order, once each: a caller can hand over its own records (the peer
// index's keys) without converting them all first.
func (t *Tickler) tickle(ctx context.Context, n int, conn func(i int) Conn, repeats int, spacing time.Duration) (TickleStats, error) {
	start := time.Now()
	st := TickleStats{Conns: n}
	t.calls.Add(1)
	t.conns.Add(uint64(n))
	var errs []error
	defer func() {
		t.sent.Add(uint64(st.Sent))
		t.errs.Add(uint64(st.Errors))
	}()

	var hops *nextHops
	if t.mac != nil {
		var err error
		if hops, err = t.loadNextHops(); err != nil {
			// Not fatal: the kernel routes them all.
			t.log.Warn("cannot read routes and neighbours, sending through raw sockets", zap.Error(err))
		}
	}
	p, first := t.firstRound(ctx, n, conn, hops)
	st.Invalid, st.Packet, st.Raw = first.invalid, p.pkt.n, len(p.raw)
	st.Sent, st.Errors, st.Rounds = first.sent, first.failed, 1
	st.FirstRound = time.Since(start)
	if st.Invalid > 0 {
		errs = append(errs, first.invalidErr)
		t.log.Warn("invalid connections skipped", zap.Int("count", st.Invalid), zap.Error(first.invalidErr))
	}
	err := first.err
	for round := 1; ; round++ {
		// err is that of round number round, the last one sent
		if err != nil {
			errs = append(errs, fmt.Errorf("round %d: %w", round, err))
			if errors.Is(err, ErrTicklerClosed) || ctx.Err() != nil {
				break
			}
		}
		if round > repeats {
			break
		}
		if err := sleepCtx(ctx, spacing); err != nil {
			errs = append(errs, err)
			break
		}
		if len(p.raw) > 0 && p.hops != nil {
			t.replan(p)
		}
		var sent, failed int
		sent, failed, err = t.sendRound(ctx, p)
		st.Sent += sent
		st.Errors += failed
		st.Rounds++
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
