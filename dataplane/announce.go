package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/packet"
	"go.uber.org/zap"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// Announcement defaults: the first round leaves at once, then
// DefaultAnnounceCount-1 more follow, one every DefaultAnnounceInterval.
//
// Four rounds 250ms apart end within 750ms, inside the one-second failover
// target, so every repeat still helps a client that missed the first one
// (a frame lost while a switch port or bond was settling, a busy NIC). A
// client that did get the first round has switched already; the repeats
// cost two 60-byte frames per VIP per round, so even a few hundred VIPs
// moving at once stay far from a broadcast storm. Four is also more than
// the single announcement of the kernel's own arp_notify / ndisc_notify
// and the same order as CTDB's and keepalived's repeats.
const (
	DefaultAnnounceCount    = 4
	DefaultAnnounceInterval = 250 * time.Millisecond
)

// ErrNotEthernet is returned by NewAnnouncer for an interface without an
// Ethernet address (loopback, tun, wireguard): nothing to announce there.
var ErrNotEthernet = errors.New("interface has no ethernet address")

// ErrAnnouncerClosed is returned by Announce after Close.
var ErrAnnouncerClosed = errors.New("announcer closed")

// frameLink sends whole Ethernet frames. On a real interface conn is an
// AF_PACKET socket and to makes a packet.Addr; in tests any
// net.PacketConn (UDP on 127.0.0.1) and a fixed address.
type frameLink struct {
	conn net.PacketConn
	to   func(dst net.HardwareAddr) net.Addr
}

func (l frameLink) send(frame []byte, dst net.HardwareAddr) error {
	_, err := l.conn.WriteTo(frame, l.to(dst))
	return err
}

// AnnounceStats counts what an Announcer sent.
type AnnounceStats struct {
	Rounds uint64 // rounds with at least one frame sent
	Frames uint64 // frames sent
	Errors uint64 // frames that could not be sent
}

// Announcer tells the hosts on one interface's link that VIPs are now at
// this interface's MAC address: gratuitous ARP for IPv4, unsolicited
// neighbour advertisements for IPv6.
type Announcer struct {
	log   *zap.Logger
	iface string
	mac   net.HardwareAddr
	arp   frameLink
	ndp   frameLink

	mu     sync.Mutex
	active map[netip.Addr]*Announcement
	closed bool
	wg     sync.WaitGroup

	rounds, frames, errs atomic.Uint64
}

// NewAnnouncer opens send-only packet sockets on iface, in the network
// namespace of the calling thread. It needs CAP_NET_RAW.
func NewAnnouncer(log *zap.Logger, iface string) (_ *Announcer, err error) {
	ifi, err := net.InterfaceByName(iface)
	if err != nil {
		return nil, fmt.Errorf("announcer on %s: %w", iface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("announcer on %s: %w", iface, ErrNotEthernet)
	}
	var conns []net.PacketConn
	defer func() {
		if err != nil {
			for _, c := range conns {
				err = errors.Join(err, c.Close())
			}
		}
	}()
	arpConn, err := listenSendOnly(ifi, unix.ETH_P_ARP)
	if err != nil {
		return nil, fmt.Errorf("announcer on %s: arp socket: %w", iface, err)
	}
	conns = append(conns, arpConn)
	ndpConn, err := listenSendOnly(ifi, unix.ETH_P_IPV6)
	if err != nil {
		return nil, fmt.Errorf("announcer on %s: ipv6 socket: %w", iface, err)
	}
	conns = append(conns, ndpConn)
	to := func(dst net.HardwareAddr) net.Addr { return &packet.Addr{HardwareAddr: dst} }
	return newAnnouncer(log, ifi, frameLink{arpConn, to}, frameLink{ndpConn, to}), nil
}

// listenSendOnly opens a raw packet socket on ifi for protocol, with a
// filter that drops every received frame: the socket only sends, and must
// not queue a copy of every ARP or IPv6 frame on the link.
func listenSendOnly(ifi *net.Interface, protocol int) (*packet.Conn, error) {
	dropAll, err := bpf.Assemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})
	if err != nil {
		return nil, fmt.Errorf("assemble filter: %w", err)
	}
	return packet.Listen(ifi, packet.Raw, protocol, &packet.Config{Filter: dropAll})
}

func newAnnouncer(log *zap.Logger, ifi *net.Interface, arp, ndp frameLink) *Announcer {
	return &Announcer{
		log:    log.Named("dataplane").Named("announce").With(zap.String("iface", ifi.Name)),
		iface:  ifi.Name,
		mac:    ifi.HardwareAddr,
		arp:    arp,
		ndp:    ndp,
		active: make(map[netip.Addr]*Announcement),
	}
}

// Interface is the name of the interface announced on.
func (a *Announcer) Interface() string { return a.iface }

// Stats returns the counts so far.
func (a *Announcer) Stats() AnnounceStats {
	return AnnounceStats{Rounds: a.rounds.Load(), Frames: a.frames.Load(), Errors: a.errs.Load()}
}

// Announcement is one VIP being announced.
type Announcement struct {
	Addr netip.Addr
	// First is when the first frame of the first round was handed to the
	// kernel: the "first announcement" of the takeover timeline.
	First time.Time

	cancel context.CancelFunc
	done   chan struct{}
	rounds int
	err    error
}

// Stop cancels the rounds not sent yet and waits until no more can leave.
func (an *Announcement) Stop() {
	an.cancel()
	<-an.done
}

// Done is closed when the last round was sent or the announcement stopped.
func (an *Announcement) Done() <-chan struct{} { return an.done }

// Wait waits for the end of the announcement and returns how many rounds
// were sent (a stopped one sends fewer than asked) and the first error of
// the repeated rounds.
func (an *Announcement) Wait() (rounds int, err error) {
	<-an.done
	return an.rounds, an.err
}

// Announce announces addr: the first round at once, before it returns,
// then count-1 more, one every interval, in the background (count <= 0 and
// interval <= 0 mean the defaults). A round is a gratuitous ARP request
// and a gratuitous ARP reply for IPv4, an unsolicited neighbour
// advertisement for IPv6. The repeats end early when ctx is done, when the
// Announcement or the addr is stopped, when addr is announced anew, or at
// Close. Announce fails only if no frame of the first round could be sent.
func (a *Announcer) Announce(ctx context.Context, addr netip.Addr, count int, interval time.Duration) (*Announcement, error) {
	addr = addr.Unmap()
	frames, err := a.buildFrames(addr)
	if err != nil {
		return nil, fmt.Errorf("announce %s on %s: %w", addr, a.iface, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("announce %s on %s: %w", addr, a.iface, err)
	}
	if count <= 0 {
		count = DefaultAnnounceCount
	}
	if interval <= 0 {
		interval = DefaultAnnounceInterval
	}

	ctx, cancel := context.WithCancel(ctx)
	an := &Announcement{Addr: addr, cancel: cancel, done: make(chan struct{})}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		cancel()
		return nil, fmt.Errorf("announce %s on %s: %w", addr, a.iface, ErrAnnouncerClosed)
	}
	old := a.active[addr]
	a.active[addr] = an
	a.wg.Add(1)
	a.mu.Unlock()
	if old != nil {
		old.Stop() // its rounds start over with ours
	}

	first, err := a.round(frames)
	if first.IsZero() {
		a.finish(an, 0, nil)
		return nil, fmt.Errorf("announce %s on %s: %w", addr, a.iface, err)
	}
	an.First = first
	if err != nil {
		a.log.Warn("part of the first announcement not sent", zap.Stringer("vip", addr), zap.Error(err))
	}
	a.log.Debug("announced", zap.Stringer("vip", addr), zap.Int("count", count), zap.Duration("interval", interval))
	go a.repeat(ctx, an, frames, count-1, interval)
	return an, nil
}

// Stop stops the repeats of addr's announcement, if one runs: on release
// the node must stop claiming the address.
func (a *Announcer) Stop(addr netip.Addr) {
	a.mu.Lock()
	an := a.active[addr.Unmap()]
	a.mu.Unlock()
	if an != nil {
		an.Stop()
	}
}

// Close stops every announcement and closes the sockets.
func (a *Announcer) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return nil
	}
	a.closed = true
	for _, an := range a.active {
		an.cancel()
	}
	a.mu.Unlock()
	a.wg.Wait()
	return errors.Join(a.arp.conn.Close(), a.ndp.conn.Close())
}

func (a *Announcer) repeat(ctx context.Context, an *Announcement, frames []outFrame, n int, interval time.Duration) {
	rounds := 1
	var firstErr error
	defer func() { a.finish(an, rounds, firstErr) }()
	if n <= 0 {
		return
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for range n {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		// A release may have come while waiting for the tick.
		if ctx.Err() != nil {
			return
		}
		sent, err := a.round(frames)
		if !sent.IsZero() {
			rounds++
		}
		if err != nil {
			a.log.Warn("announcement not sent", zap.Stringer("vip", an.Addr), zap.Int("round", rounds+1), zap.Error(err))
			if firstErr == nil {
				firstErr = err
			}
		}
	}
}

func (a *Announcer) finish(an *Announcement, rounds int, err error) {
	an.rounds, an.err = rounds, err
	an.cancel()
	a.mu.Lock()
	if a.active[an.Addr] == an {
		delete(a.active, an.Addr)
	}
	a.mu.Unlock()
	close(an.done)
	a.wg.Done()
}

// round sends frames and returns when the first one was handed to the
// kernel (zero if none was) and the errors.
func (a *Announcer) round(frames []outFrame) (time.Time, error) {
	var first time.Time
	var errs []error
	for _, f := range frames {
		if err := f.link.send(f.data, f.dst); err != nil {
			a.errs.Add(1)
			errs = append(errs, err)
			continue
		}
		if first.IsZero() {
			first = time.Now()
		}
		a.frames.Add(1)
	}
	if !first.IsZero() {
		a.rounds.Add(1)
	}
	return first, errors.Join(errs...)
}

type outFrame struct {
	link frameLink
	dst  net.HardwareAddr
	data []byte
}

// buildFrames builds one round of announcement frames for addr.
func (a *Announcer) buildFrames(addr netip.Addr) ([]outFrame, error) {
	switch {
	case !addr.IsValid():
		return nil, errors.New("invalid address")
	case addr.IsUnspecified() || addr.IsMulticast() || addr.IsLoopback():
		return nil, errors.New("not a unicast address")
	case addr.Is4():
		req, reply, err := garpFrames(a.mac, addr)
		if err != nil {
			return nil, err
		}
		return []outFrame{
			{link: a.arp, dst: ethBroadcast, data: req},
			{link: a.arp, dst: ethBroadcast, data: reply},
		}, nil
	default:
		na, err := unsolicitedNAFrame(a.mac, addr)
		if err != nil {
			return nil, err
		}
		return []outFrame{{link: a.ndp, dst: ethAllNodes, data: na}}, nil
	}
}
