package membership

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// transport is memberlist's network on one address and port: UDP for its
// packets (probes, gossip, and the ownership protocol's heartbeats and
// answers, see SendTo), TCP for its streams (joins, push/pull, reliable
// sends).
//
// It replaces memberlist's NetTransport for what a packet costs.
// NetTransport reads every datagram into a new 64 KiB buffer: with
// heartbeats every 50 ms to every node, a 9-node cluster makes 40 MB/s of
// garbage per node, a garbage collection several times a second, each with
// its stop-the-world pauses, in the daemon that must renew its leases on
// time (in a 9-node lab on two CPUs the daemons used a tenth less CPU with
// this transport). Here a datagram is read into one reused buffer and
// handed on in a copy of its own size; memberlist may keep that copy (it
// queues some messages for later), so the reused buffer is never handed
// out.
type transport struct {
	log      *zap.Logger
	addr     netip.AddrPort
	udp      *net.UDPConn
	tcp      *net.TCPListener
	packetCh chan *memberlist.Packet
	streamCh chan net.Conn
	closed   atomic.Bool
	// done is closed when Shutdown begins: memberlist stops reading the
	// channels before it shuts the transport down, so a reader blocked on
	// a send must learn of the end some other way.
	done chan struct{}
	wg   sync.WaitGroup
	// what the port carried (Membership.Traffic)
	packetsOut, packetsIn, packetBytesOut, packetBytesIn atomic.Uint64
	streamsOut, streamsIn, streamBytesOut, streamBytesIn atomic.Uint64
}

var _ memberlist.NodeAwareTransport = (*transport)(nil)

const (
	// maxDatagram is the largest UDP payload.
	maxDatagram = 65535
	// udpReadBuffer is the socket receive buffer asked for, as memberlist
	// does: a burst of gossip while the daemon is busy must not overflow.
	udpReadBuffer = 2 << 20
)

// newTransport binds TCP and UDP on addr.
func newTransport(log *zap.Logger, addr netip.AddrPort) (_ *transport, err error) {
	t := &transport{
		log: log, addr: addr,
		packetCh: make(chan *memberlist.Packet),
		streamCh: make(chan net.Conn),
		done:     make(chan struct{}),
	}
	t.tcp, err = net.ListenTCP("tcp", net.TCPAddrFromAddrPort(addr))
	if err != nil {
		return nil, fmt.Errorf("gossip: listen on TCP %s: %w", addr, err)
	}
	if addr.Port() == 0 { // tests: UDP on the port the kernel gave TCP
		t.addr = t.tcp.Addr().(*net.TCPAddr).AddrPort()
		t.addr = netip.AddrPortFrom(t.addr.Addr().Unmap(), t.addr.Port())
	}
	t.udp, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(t.addr))
	if err != nil {
		t.tcp.Close()
		return nil, fmt.Errorf("gossip: listen on UDP %s: %w", t.addr, err)
	}
	// Smaller buffers are still a working transport: ask for less until
	// the kernel accepts (as memberlist does).
	for size := udpReadBuffer; size >= 64<<10; size /= 2 {
		if t.udp.SetReadBuffer(size) == nil {
			break
		}
	}
	t.wg.Add(2)
	go t.readPackets()
	go t.acceptStreams()
	return t, nil
}

// FinalAdvertiseAddr is the address memberlist tells others: the one
// configured, else the bound one.
func (t *transport) FinalAdvertiseAddr(ip string, port int) (net.IP, int, error) {
	if ip == "" {
		return t.addr.Addr().AsSlice(), int(t.addr.Port()), nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return nil, 0, fmt.Errorf("gossip: advertise address %q: %w", ip, err)
	}
	return a.Unmap().AsSlice(), port, nil
}

func (t *transport) WriteTo(b []byte, addr string) (time.Time, error) {
	return t.WriteToAddress(b, memberlist.Address{Addr: addr})
}

// WriteToAddress sends one datagram from the gossip port.
func (t *transport) WriteToAddress(b []byte, a memberlist.Address) (time.Time, error) {
	to, err := netip.ParseAddrPort(a.Addr)
	if err != nil {
		// memberlist's peers are addresses; a name would come from a
		// join list given by hand.
		ua, rerr := net.ResolveUDPAddr("udp", a.Addr)
		if rerr != nil {
			return time.Time{}, fmt.Errorf("gossip: send to %q: %w", a.Addr, rerr)
		}
		to = ua.AddrPort()
	}
	n, err := t.udp.WriteToUDPAddrPort(b, netip.AddrPortFrom(to.Addr().Unmap(), to.Port()))
	if err == nil {
		t.packetsOut.Add(1)
		t.packetBytesOut.Add(uint64(n))
	}
	return time.Now(), err
}

func (t *transport) PacketCh() <-chan *memberlist.Packet { return t.packetCh }

func (t *transport) DialTimeout(addr string, timeout time.Duration) (net.Conn, error) {
	return t.DialAddressTimeout(memberlist.Address{Addr: addr}, timeout)
}

func (t *transport) DialAddressTimeout(a memberlist.Address, timeout time.Duration) (net.Conn, error) {
	d := net.Dialer{Timeout: timeout}
	c, err := d.Dial("tcp", a.Addr)
	if err != nil {
		return nil, err
	}
	t.streamsOut.Add(1)
	return &countedConn{Conn: c, t: t}, nil
}

// countedConn counts a stream's bytes into its transport's totals.
type countedConn struct {
	net.Conn
	t *transport
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.t.streamBytesIn.Add(uint64(n))
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.t.streamBytesOut.Add(uint64(n))
	return n, err
}

// traffic reads the totals.
func (t *transport) traffic() Traffic {
	return Traffic{
		PacketsSent: t.packetsOut.Load(), PacketsReceived: t.packetsIn.Load(),
		PacketBytesSent: t.packetBytesOut.Load(), PacketBytesReceived: t.packetBytesIn.Load(),
		StreamsOpened: t.streamsOut.Load(), StreamsAccepted: t.streamsIn.Load(),
		StreamBytesSent: t.streamBytesOut.Load(), StreamBytesReceived: t.streamBytesIn.Load(),
	}
}

func (t *transport) StreamCh() <-chan net.Conn { return t.streamCh }

// Shutdown closes both sockets and waits for the readers to end.
func (t *transport) Shutdown() error {
	if t.closed.Swap(true) {
		return nil
	}
	close(t.done)
	err := errors.Join(t.tcp.Close(), t.udp.Close())
	t.wg.Wait()
	return err
}

func (t *transport) readPackets() {
	defer t.wg.Done()
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := t.udp.ReadFromUDPAddrPort(buf)
		at := time.Now()
		if err != nil {
			if t.closed.Load() {
				return
			}
			t.log.Warn("gossip: read a datagram", zap.Error(err))
			time.Sleep(10 * time.Millisecond) // a persistent error must not spin
			continue
		}
		if n == 0 {
			continue
		}
		t.packetsIn.Add(1)
		t.packetBytesIn.Add(uint64(n))
		p := &memberlist.Packet{
			Buf:       append([]byte(nil), buf[:n]...),
			From:      net.UDPAddrFromAddrPort(netip.AddrPortFrom(from.Addr().Unmap(), from.Port())),
			Timestamp: at,
		}
		select {
		case t.packetCh <- p:
		case <-t.done:
			return
		}
	}
}

func (t *transport) acceptStreams() {
	defer t.wg.Done()
	backoff := time.Duration(0)
	for {
		c, err := t.tcp.AcceptTCP()
		if err != nil {
			if t.closed.Load() {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.log.Warn("gossip: accept a stream", zap.Error(err), zap.Duration("retry_in", backoff))
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		t.streamsIn.Add(1)
		select {
		case t.streamCh <- &countedConn{Conn: c, t: t}:
		case <-t.done:
			c.Close()
			return
		}
	}
}
