package lab

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// A Monitor asks, from a client namespace, every Interval and on the wire,
// who answers for each of a set of VIPs, and records every answer with the
// MAC address it came from: an oracle that owes nothing to fsha, its
// daemons or its maps. See monitorreport.go for what the records mean.
//
// ARP requests are sent from 0.0.0.0 (an RFC 5227 probe) with the probe's
// number in a made-up sender hardware address fe:TT:TT:SS:SS:SS (T: this
// monitor's random tag, S: the sequence number). Linux answers such a
// probe like any request (arp_ignore applies) but to the sender hardware
// address, and learns no neighbour entry from it: the nodes' neighbour
// tables keep the client's real MAC. The bridge never learns a tag MAC, so
// it floods the answer to every port, the client's too, where this
// monitor reads it as a frame for another host.
//
// Neighbour solicitations for IPv6 VIPs go to the solicited-node group
// from an address of the VIP's /64 that nobody holds, with the tag MAC as
// source link-layer address: the node updates its neighbour entry for
// that address with it and answers there. The VIP's /64 must be on-link
// for its holder (it is, for a VIP added with its prefix).
//
// With TCP, each round also sends a SYN to VIP:TCPPort to each target MAC
// directly (bypassing the client's neighbour table, so that every node is
// asked, not only the one the client believes in), from a source port the
// monitor reserved by binding a socket to it, with the sequence number in
// the ISN. A node that holds the VIP answers SYN-ACK (or RST-ACK when
// nothing listens); one that does not holds no such local address and
// drops the SYN. The monitor answers a SYN-ACK with a RST to the MAC that
// sent it, so no half-open connection lingers there. The client's kernel,
// which has no socket for the SYN-ACK, also sends a RST, routed by its own
// neighbour table; it is harmless and the monitor does not count it.

// MAC is an Ethernet address as a value, usable as a map key.
type MAC [6]byte

func (m MAC) String() string { return net.HardwareAddr(m[:]).String() }

// MACOf converts a 6-byte hardware address.
func MACOf(hw net.HardwareAddr) (MAC, error) {
	var m MAC
	if len(hw) != len(m) {
		return m, fmt.Errorf("hardware address %s: want 6 bytes", hw)
	}
	copy(m[:], hw)
	return m, nil
}

// MACNames maps the eth0 MAC of each host to its role, for
// MonitorOptions.Names.
func MACNames(hosts ...*Host) (map[MAC]string, error) {
	names := map[MAC]string{}
	for _, h := range hosts {
		hw, err := h.MAC()
		if err != nil {
			return nil, err
		}
		m, err := MACOf(hw)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", h.Role, err)
		}
		names[m] = h.Role
	}
	return names, nil
}

// MonitorOptions configures StartMonitor.
type MonitorOptions struct {
	// VIPs to probe (IPv4: ARP; IPv6: NDP); 1 to 64.
	VIPs []netip.Addr
	// Interval between rounds; 0 is 10 ms, at least 1 ms.
	Interval time.Duration
	// Names names the MACs that answer (see MACNames).
	Names map[MAC]string
	// TCP also sends, each round, a SYN to VIP:TCPPort (0: 445) to every
	// MAC of TCPTargets (nil: every MAC of Names). IPv4 VIPs only: the
	// lab's clients have no IPv6 address to send from.
	TCP        bool
	TCPPort    uint16
	TCPTargets []MAC
	// Settle is how long an answer may take: Stop waits that long for
	// the last ones, and reports of a running monitor leave out the
	// rounds sent less than Settle ago. 0 is max(100 ms, 5 Intervals).
	Settle time.Duration
	// Max bounds a monitor nobody stops; 0 is 10 minutes. Probing stops
	// then, and Err says so.
	Max time.Duration
}

const (
	maxMonitorVIPs = 64
	// maxSeq: the sequence number has 24 bits in the tag MAC.
	maxSeq = 1<<24 - 1
	// tcpPorts is how many source ports TCP probes take turns on: a port
	// comes back after tcpPorts rounds, when its last RST is long done.
	tcpPorts = 64
	// snapLen is what the receiving socket keeps of a frame: all the
	// headers the monitor reads, not the data of busy connections.
	snapLen = 256
)

// MonitorHealth tells whether the monitor itself lost anything.
type MonitorHealth struct {
	// Sent counts probes the kernel took; SendErrors those it refused.
	Sent, SendErrors int
	// OnWire counts the sent probes that the receiving socket saw leave
	// eth0: any fewer and the socket missed frames.
	OnWire int
	// Frames counts frames the receiving socket read.
	Frames int
	// SocketPackets and SocketDrops are the socket's PACKET_STATISTICS:
	// frames the kernel had for it, and those it dropped for want of
	// buffer space.
	SocketPackets, SocketDrops uint64
}

// Check returns nil when the monitor lost nothing: every probe left and
// was seen leaving, and the socket dropped nothing. Call it after Stop.
func (h MonitorHealth) Check() error {
	var errs []error
	if h.SendErrors > 0 {
		errs = append(errs, fmt.Errorf("monitor: %d probes refused by the kernel", h.SendErrors))
	}
	if h.OnWire != h.Sent {
		errs = append(errs, fmt.Errorf("monitor: %d probes sent, %d seen leaving eth0", h.Sent, h.OnWire))
	}
	if h.SocketDrops > 0 {
		errs = append(errs, fmt.Errorf("monitor: packet socket dropped %d of %d frames", h.SocketDrops, h.SocketPackets))
	}
	return errors.Join(errs...)
}

// Monitor probes VIPs from a client; see StartMonitor.
type Monitor struct {
	client  *Client
	opts    MonitorOptions
	log     *zap.Logger
	tag     [2]byte
	src     MAC
	srcIP   [4]byte
	ifindex int
	targets []MAC
	vips    map[netip.Addr]bool

	sendFD, recvFD int
	portFDs        []int
	ports          []uint16
	portSet        map[uint16]bool

	stopSend   chan struct{}
	sendDone   chan struct{}
	recvDone   chan struct{}
	drainUntil atomic.Int64 // unix nanoseconds; 0 while probing
	stopOnce   sync.Once
	closeErr   error

	mu      sync.Mutex
	probes  []SentProbe
	replies []Reply
	health  MonitorHealth
	err     error
	stopped bool
}

// StartMonitor starts probing opts.VIPs from the client's eth0. Stop ends
// it; the lab stops it on Close if the caller has not.
func (c *Client) StartMonitor(opts MonitorOptions) (_ *Monitor, err error) {
	if len(opts.VIPs) == 0 || len(opts.VIPs) > maxMonitorVIPs {
		return nil, fmt.Errorf("monitor: %d VIPs, want 1 to %d", len(opts.VIPs), maxMonitorVIPs)
	}
	if opts.Interval == 0 {
		opts.Interval = 10 * time.Millisecond
	}
	if opts.Interval < time.Millisecond {
		return nil, fmt.Errorf("monitor: interval %v, want at least 1ms", opts.Interval)
	}
	if opts.Settle <= 0 {
		opts.Settle = max(100*time.Millisecond, 5*opts.Interval)
	}
	if opts.Max <= 0 {
		opts.Max = 10 * time.Minute
	}
	if opts.TCPPort == 0 {
		opts.TCPPort = 445
	}
	lk, err := c.eth0()
	if err != nil {
		return nil, err
	}
	m := &Monitor{client: c, opts: opts, ifindex: lk.Attrs().Index, vips: map[netip.Addr]bool{},
		sendFD: -1, recvFD: -1, portSet: map[uint16]bool{},
		stopSend: make(chan struct{}), sendDone: make(chan struct{}), recvDone: make(chan struct{})}
	m.log = c.logger().Named("monitor")
	if m.src, err = MACOf(lk.Attrs().HardwareAddr); err != nil {
		return nil, err
	}
	for _, v := range opts.VIPs {
		if !v.IsValid() || v.Is4In6() {
			return nil, fmt.Errorf("monitor: VIP %v: want an IPv4 or IPv6 address", v)
		}
		m.vips[v] = true
	}
	if opts.TCP {
		if !c.IP().Is4() {
			return nil, errors.New("monitor: TCP probes need the client's IPv4 address")
		}
		m.srcIP = c.IP().As4()
		m.targets = slices.Clone(opts.TCPTargets)
		if m.targets == nil {
			for mac := range opts.Names {
				m.targets = append(m.targets, mac)
			}
			slices.SortFunc(m.targets, func(a, b MAC) int { return strings.Compare(string(a[:]), string(b[:])) })
		}
		if len(m.targets) == 0 {
			return nil, errors.New("monitor: TCP probes need TCPTargets or Names")
		}
	}
	if _, err := rand.Read(m.tag[:]); err != nil {
		return nil, fmt.Errorf("monitor: random tag: %w", err)
	}
	defer func() {
		if err != nil {
			m.closeFDs()
		}
	}()
	if err := c.Do(m.openSockets); err != nil {
		return nil, fmt.Errorf("monitor in %s: %w", c.NS, err)
	}
	go m.recvLoop()
	go m.sendLoop()
	c.lab.push("stop monitor in "+c.Role, func() error { _ = m.Stop(); return m.closeErr })
	m.log.Info("monitor started", zap.Stringers("vips", opts.VIPs), zap.Duration("interval", opts.Interval), zap.Bool("tcp", opts.TCP))
	return m, nil
}

// openSockets runs in the client's namespace.
func (m *Monitor) openSockets() error {
	var err error
	// Protocol 0 until bound: nothing is queued before the filter is on.
	if m.recvFD, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	filter, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 2}, // ethertype
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_ARP, SkipTrue: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_IPV6, SkipTrue: 3},
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.ETH_P_IP, SkipTrue: 3},
		bpf.LoadAbsolute{Off: 23, Size: 1}, // IPv4 protocol
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.IPPROTO_TCP, SkipTrue: 1},
		bpf.RetConstant{Val: snapLen},
		bpf.RetConstant{Val: 0},
	})
	if err != nil {
		return fmt.Errorf("assemble socket filter: %w", err)
	}
	prog := make([]unix.SockFilter, len(filter))
	for i, ins := range filter {
		prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
	}
	if err := unix.SetsockoptSockFprog(m.recvFD, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
		&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
		return fmt.Errorf("attach socket filter: %w", err)
	}
	if err := unix.SetsockoptInt(m.recvFD, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	if err := unix.SetsockoptInt(m.recvFD, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
	}
	tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(m.recvFD, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(m.recvFD, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: m.ifindex}); err != nil {
		return fmt.Errorf("bind packet socket: %w", err)
	}
	// Protocol 0: a send-only socket, so it queues nothing.
	if m.sendFD, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0); err != nil {
		return fmt.Errorf("packet socket: %w", err)
	}
	if !m.opts.TCP {
		return nil
	}
	for range tcpPorts {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("reserve a TCP port: %w", err)
		}
		m.portFDs = append(m.portFDs, fd)
		// Bound, never listening: connect() will not pick the port, and
		// the kernel answers segments to it with a RST.
		if err := unix.Bind(fd, &unix.SockaddrInet4{}); err != nil {
			return fmt.Errorf("reserve a TCP port: %w", err)
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return fmt.Errorf("reserve a TCP port: %w", err)
		}
		p := uint16(sa.(*unix.SockaddrInet4).Port)
		m.ports = append(m.ports, p)
		m.portSet[p] = true
	}
	return nil
}

func (m *Monitor) closeFDs() error {
	var errs []error
	for _, fd := range append([]int{m.sendFD, m.recvFD}, m.portFDs...) {
		if fd >= 0 {
			if err := unix.Close(fd); err != nil {
				errs = append(errs, err)
			}
		}
	}
	m.sendFD, m.recvFD, m.portFDs = -1, -1, nil
	return errors.Join(errs...)
}

func (m *Monitor) fail(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
		m.log.Warn("monitor stopped early", zap.Error(err))
	}
}

// Stop stops probing, waits Settle for the last answers and closes the
// sockets. It returns what stopped the monitor early, if anything; the
// records stay readable. A second Stop returns the same.
func (m *Monitor) Stop() error {
	m.stopOnce.Do(func() {
		close(m.stopSend)
		<-m.sendDone
		m.drainUntil.Store(time.Now().Add(m.opts.Settle).UnixNano())
		<-m.recvDone
		m.readSocketStats()
		m.closeErr = m.closeFDs()
		m.mu.Lock()
		m.stopped = true
		h, replies := m.health, len(m.replies)
		m.mu.Unlock()
		m.log.Info("monitor stopped", zap.Int("sent", h.Sent), zap.Int("on_wire", h.OnWire),
			zap.Int("frames", h.Frames), zap.Uint64("socket_drops", h.SocketDrops), zap.Int("replies", replies))
	})
	return errors.Join(m.Err(), m.closeErr)
}

// Err is what stopped the monitor early (a receive error, the probe
// limit, Max), if anything.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Health returns the monitor's own counters (final after Stop).
func (m *Monitor) Health() MonitorHealth {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.health
}

// Probes returns every probe sent so far, in order (Probes()[i].Seq == i).
func (m *Monitor) Probes() []SentProbe {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.probes)
}

// Replies returns every answer recorded so far, in arrival order.
func (m *Monitor) Replies() []Reply {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.replies)
}

// settled returns the probes to report on (while running, those sent
// at least Settle ago) and the replies.
func (m *Monitor) settled() ([]SentProbe, []Reply) {
	m.mu.Lock()
	defer m.mu.Unlock()
	probes := m.probes
	if !m.stopped {
		cut := time.Now().Add(-m.opts.Settle)
		n, _ := slices.BinarySearchFunc(probes, cut, func(p SentProbe, t time.Time) int { return p.At.Compare(t) })
		probes = probes[:n]
	}
	return slices.Clone(probes), slices.Clone(m.replies)
}

// Overlaps is FindOverlaps over what the monitor recorded (settled rounds
// only while it runs).
func (m *Monitor) Overlaps(window time.Duration) []Overlap {
	p, r := m.settled()
	return FindOverlaps(p, r, window)
}

// Stats is ComputeStats over what the monitor recorded (settled rounds
// only while it runs).
func (m *Monitor) Stats() []VIPStats {
	p, r := m.settled()
	return ComputeStats(p, r)
}

// StatsOf returns the stats of one VIP probed one way (zero when none).
func (m *Monitor) StatsOf(vip netip.Addr, kind ProbeKind) VIPStats {
	for _, s := range m.Stats() {
		if s.VIP == vip && s.Kind == kind {
			return s
		}
	}
	return VIPStats{VIP: vip, Kind: kind}
}

// Save writes probes and replies to a file of the client's directory, one
// a line in time order, for post-mortems; it returns the path.
func (m *Monitor) Save(name string) (string, error) {
	probes, replies := m.Probes(), m.Replies()
	type line struct {
		at   time.Time
		text string
	}
	lines := make([]line, 0, len(probes)+len(replies))
	for _, p := range probes {
		s := fmt.Sprintf("probe seq %d round %d %s %s to %s", p.Seq, p.Round, p.Kind, p.VIP, p.To)
		if p.Failed {
			s += " FAILED"
		}
		lines = append(lines, line{p.At, s})
	}
	for _, r := range replies {
		s := fmt.Sprintf("reply seq %d round %d %s %s from %s (%s)", r.Seq, r.Round, r.Kind, r.VIP, r.Who(), r.MAC)
		if r.Unsolicited {
			s = fmt.Sprintf("unsolicited %s %s from %s (%s)", r.Kind, r.VIP, r.Who(), r.MAC)
		}
		if r.Kind == ProbeTCP {
			s += fmt.Sprintf(" flags %#02x", r.Flags)
		}
		lines = append(lines, line{r.At, s})
	}
	slices.SortStableFunc(lines, func(a, b line) int { return a.at.Compare(b.at) })
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(l.at.Format("15:04:05.000000 "))
		b.WriteString(l.text)
		b.WriteByte('\n')
	}
	path := filepath.Join(m.client.Dir, name)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("save monitor records: %w", err)
	}
	return path, nil
}

func (m *Monitor) sendLoop() {
	defer close(m.sendDone)
	tick := time.NewTicker(m.opts.Interval)
	defer tick.Stop()
	end := time.Now().Add(m.opts.Max)
	for round := uint32(0); ; round++ {
		if err := m.sendRound(round); err != nil {
			m.fail(err)
			return
		}
		select {
		case <-m.stopSend:
			return
		case <-tick.C:
		}
		if time.Now().After(end) {
			m.fail(fmt.Errorf("monitor: probed for %v (Max), stopped probing", m.opts.Max))
			return
		}
	}
}

func (m *Monitor) sendRound(round uint32) error {
	for _, vip := range m.opts.VIPs {
		kind, to := ProbeARP, MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
		if vip.Is6() {
			a := vip.As16()
			kind, to = ProbeNDP, MAC{0x33, 0x33, 0xff, a[13], a[14], a[15]}
		}
		if err := m.send(round, vip, kind, to); err != nil {
			return err
		}
		if !m.opts.TCP || !vip.Is4() {
			continue
		}
		for _, t := range m.targets {
			if err := m.send(round, vip, ProbeTCP, t); err != nil {
				return err
			}
		}
	}
	return nil
}

// send records a probe, then sends it; a refused send is counted, not
// fatal (the client's own link may be down on purpose).
func (m *Monitor) send(round uint32, vip netip.Addr, kind ProbeKind, to MAC) error {
	m.mu.Lock()
	seq := uint32(len(m.probes))
	if seq > maxSeq {
		m.mu.Unlock()
		return fmt.Errorf("monitor: %d probes sent, the limit", maxSeq)
	}
	m.probes = append(m.probes, SentProbe{Seq: seq, Round: round, VIP: vip, Kind: kind, To: to, At: time.Now()})
	m.mu.Unlock()
	var frame []byte
	switch kind {
	case ProbeARP:
		frame = m.arpRequest(seq, vip)
	case ProbeNDP:
		frame = m.neighSolicit(seq, vip)
	case ProbeTCP:
		frame = m.tcpFrame(to, vip, m.ports[int(round)%len(m.ports)], m.isn(seq), 0, FlagSYN)
	}
	err := m.sendFrame(frame, to)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err != nil {
		m.probes[seq].Failed = true
		m.health.SendErrors++
		return nil
	}
	m.health.Sent++
	return nil
}

func (m *Monitor) sendFrame(frame []byte, to MAC) error {
	sa := &unix.SockaddrLinklayer{Ifindex: m.ifindex, Halen: 6}
	copy(sa.Addr[:], to[:])
	return unix.Sendto(m.sendFD, frame, 0, sa)
}
