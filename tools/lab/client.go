package lab

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// PutSMB writes data as file name in //vip/share with smbclient, from a
// local file in the client's directory.
func (c *Client) PutSMB(ctx context.Context, vip netip.Addr, name string, data []byte) error {
	f, err := os.CreateTemp(c.Dir, "put-*")
	if err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	local := f.Name()
	defer os.Remove(local)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("put %s: %w", name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("put %s: %w", name, err)
	}
	_, err = c.SMBClient(ctx, vip, fmt.Sprintf("put %q %q", local, name))
	return err
}

// GetSMB reads file name of //vip/share with smbclient into a local file
// of the client's directory and returns its content.
func (c *Client) GetSMB(ctx context.Context, vip netip.Addr, name string) ([]byte, error) {
	return c.getSMB(ctx, "//"+vip.String()+"/"+ShareName, name)
}

// WhoAnswers reads MarkerFile of //vip/node: the role of the node whose
// smbd answered on vip.
func (c *Client) WhoAnswers(ctx context.Context, vip netip.Addr) (string, error) {
	b, err := c.getSMB(ctx, "//"+vip.String()+"/"+MarkerShare, MarkerFile)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

func (c *Client) getSMB(ctx context.Context, service, name string) ([]byte, error) {
	got, err := c.getSMBFiles(ctx, service, []string{name})
	if err != nil {
		return nil, err
	}
	return got[name], nil
}

// GetSMBFiles reads several files of //vip/share in one smbclient session
// and returns their contents by name.
func (c *Client) GetSMBFiles(ctx context.Context, vip netip.Addr, names ...string) (map[string][]byte, error) {
	return c.getSMBFiles(ctx, "//"+vip.String()+"/"+ShareName, names)
}

func (c *Client) getSMBFiles(ctx context.Context, service string, names []string) (map[string][]byte, error) {
	dir, err := os.MkdirTemp(c.Dir, "get-")
	if err != nil {
		return nil, fmt.Errorf("smbclient get from %s: %w", service, err)
	}
	defer os.RemoveAll(dir)
	var cmds []string
	for i, name := range names {
		cmds = append(cmds, fmt.Sprintf("get %q %q", name, filepath.Join(dir, strconv.Itoa(i))))
	}
	out, err := c.Run(ctx, "smbclient", service, "-N", "-c", strings.Join(cmds, "; "))
	if err != nil {
		return nil, fmt.Errorf("smbclient get %v from %s: %w: %s", names, service, err, bytes.TrimSpace(out))
	}
	// smbclient reports some failures only in its output
	if bytes.Contains(out, []byte("NT_STATUS_")) {
		return nil, fmt.Errorf("smbclient get %v from %s: %s", names, service, bytes.TrimSpace(out))
	}
	got := map[string][]byte{}
	for i, name := range names {
		b, err := os.ReadFile(filepath.Join(dir, strconv.Itoa(i)))
		if err != nil {
			return nil, fmt.Errorf("smbclient get %s from %s: %w: %s", name, service, err, bytes.TrimSpace(out))
		}
		got[name] = b
	}
	return got, nil
}

// TryConnect opens one TCP connection from the client to addr within
// timeout and closes it at once (RST). It returns the client's end.
func (c *Client) TryConnect(ctx context.Context, addr netip.AddrPort, timeout time.Duration) (netip.AddrPort, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var local netip.AddrPort
	err := c.Do(func() error {
		var d net.Dialer
		conn, err := d.DialContext(ctx, "tcp", addr.String())
		if err != nil {
			return err
		}
		local = conn.LocalAddr().(*net.TCPAddr).AddrPort()
		_ = conn.(*net.TCPConn).SetLinger(0)
		return conn.Close()
	})
	return local, err
}

// Neighbour returns the MAC address the client's neighbour table holds for
// addr (nil when none or not resolved).
func (c *Client) Neighbour(addr netip.Addr) (net.HardwareAddr, error) {
	lk, err := c.eth0()
	if err != nil {
		return nil, err
	}
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	neighs, err := c.nl.NeighList(lk.Attrs().Index, family)
	if err != nil {
		return nil, fmt.Errorf("list neighbours in %s: %w", c.NS, err)
	}
	for _, n := range neighs {
		if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == addr && len(n.HardwareAddr) > 0 {
			return n.HardwareAddr, nil
		}
	}
	return nil, nil
}

// Frame is a frame the client received that speaks for a watched address:
// a TCP segment from it or an ARP packet with it as sender.
type Frame struct {
	// At is the kernel's receive time.
	At time.Time
	// Src is the sender's MAC address: which node sent it.
	Src net.HardwareAddr
	// ARP is set for address resolution, else TCP: ARP packets (Op 1
	// request, 2 reply) or, for an IPv6 address, NDP (1 neighbour
	// solicitation, 2 neighbour advertisement).
	ARP   bool
	ARPOp uint16
	// TCP ports and flags (SYN 0x02, RST 0x04, ACK 0x10).
	SrcPort, DstPort uint16
	Flags            uint8
}

// TCP flags of Frame.Flags.
const (
	FlagSYN = 0x02
	FlagRST = 0x04
	FlagACK = 0x10
)

func (f Frame) String() string {
	if f.ARP {
		return fmt.Sprintf("%s arp op %d from %s", f.At.Format("15:04:05.000000"), f.ARPOp, f.Src)
	}
	return fmt.Sprintf("%s tcp :%d->:%d flags %#02x from %s", f.At.Format("15:04:05.000000"), f.SrcPort, f.DstPort, f.Flags, f.Src)
}

// Watch records, from a packet socket on the client's eth0, every frame
// the client receives that speaks for one address (a VIP): TCP segments
// from it and ARP packets with it as sender. It tells which node answered
// and when, to the microsecond.
type Watch struct {
	addr   netip.Addr
	fd     int
	done   chan struct{}
	mu     sync.Mutex
	frames []Frame
	err    error
	// sent counts the frames the client sent to the address (TCP) or
	// about it (ARP requests), drops the frames the kernel could not hand
	// to the socket: Check uses both to tell a capture that worked.
	sent  int
	drops uint64

	closeFn func() error
}

// routeLink is the interface the client reaches addr through: eth0, or an
// interface of its own network (ClusterOptions.SecondNet).
func (c *Client) routeLink(addr netip.Addr) (netlink.Link, error) {
	routes, err := c.nl.RouteGet(addr.AsSlice())
	if err != nil || len(routes) == 0 {
		return c.eth0()
	}
	lk, err := c.nl.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, fmt.Errorf("find the interface to %s in %s: %w", addr, c.NS, err)
	}
	return lk, nil
}

// WatchAddr starts a Watch of the IPv4 or IPv6 address addr, on the
// interface the client reaches it through. The lab
// closes it on Close if the caller has not.
func (c *Client) WatchAddr(addr netip.Addr) (*Watch, error) {
	addr = addr.Unmap()
	lk, err := c.routeLink(addr)
	if err != nil {
		return nil, err
	}
	w := &Watch{addr: addr, fd: -1, done: make(chan struct{})}
	proto := int(htons(unix.ETH_P_ALL))
	err = c.Do(func() error {
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		w.fd = fd
		filter, err := watchFilter(addr)
		if err != nil {
			return fmt.Errorf("socket filter: %w", err)
		}
		prog := make([]unix.SockFilter, len(filter))
		for i, ins := range filter {
			prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
		}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
			return fmt.Errorf("attach socket filter: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: lk.Attrs().Index}); err != nil {
			return fmt.Errorf("bind packet socket: %w", err)
		}
		// room for a burst while the reader is descheduled; drops are
		// counted (PACKET_STATISTICS) and fail Check
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
			return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return fmt.Errorf("SO_TIMESTAMPNS: %w", err)
		}
		tv := unix.NsecToTimeval((50 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return fmt.Errorf("SO_RCVTIMEO: %w", err)
		}
		return nil
	})
	if err != nil {
		if w.fd >= 0 {
			unix.Close(w.fd)
		}
		return nil, fmt.Errorf("watch %s from %s: %w", addr, c.NS, err)
	}
	stop := make(chan struct{})
	go w.read(stop)
	var once sync.Once
	closeFn := func() error {
		once.Do(func() {
			close(stop)
			<-w.done
			w.readDrops()
			unix.Close(w.fd)
		})
		return nil
	}
	w.closeFn = closeFn
	c.lab.push("close watch of "+addr.String()+" in "+c.Role, closeFn)
	return w, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func (w *Watch) read(stop <-chan struct{}) {
	defer close(w.done)
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	// once stopped, what the kernel queued before is still read (a
	// frame that arrived just before Close belongs to the capture); the
	// first empty read ends it
	flags, stopping := unix.MSG_TRUNC, false
	for {
		if !stopping {
			select {
			case <-stop:
				stopping, flags = true, unix.MSG_TRUNC|unix.MSG_DONTWAIT
			default:
			}
		}
		n, oobn, _, from, err := unix.Recvmsg(w.fd, buf, oob, flags)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			if stopping && errors.Is(err, unix.EAGAIN) {
				return
			}
			continue
		}
		if err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			if w.toAddr(buf[:min(n, len(buf))]) {
				w.mu.Lock()
				w.sent++
				w.mu.Unlock()
			}
			continue
		}
		at := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
					sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
					nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
					at = time.Unix(sec, nsec)
				}
			}
		}
		if f, ok := w.parse(buf[:min(n, len(buf))]); ok {
			f.At = at
			w.mu.Lock()
			w.frames = append(w.frames, f)
			w.mu.Unlock()
		}
	}
}

// parse keeps TCP from the address, and ARP with it as sender or NDP
// advertising it.
func (w *Watch) parse(b []byte) (Frame, bool) {
	if len(b) < 14 {
		return Frame{}, false
	}
	f := Frame{Src: net.HardwareAddr(bytes.Clone(b[6:12]))}
	p := b[14:]
	switch binary.BigEndian.Uint16(b[12:14]) {
	case unix.ETH_P_ARP:
		// htype ptype hlen plen op sha[6] spa[4] ...
		if !w.addr.Is4() || len(p) < 28 || p[4] != 6 || p[5] != 4 || !w.is(p[14:18]) {
			return Frame{}, false
		}
		f.ARP, f.ARPOp = true, binary.BigEndian.Uint16(p[6:8])
		return f, true
	case unix.ETH_P_IP:
		if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP || !w.is(p[12:16]) {
			return Frame{}, false
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || len(p) < ihl+14 {
			return Frame{}, false
		}
		return tcpFrame(f, p[ihl:]), true
	case unix.ETH_P_IPV6:
		if len(p) < 40 || p[0]>>4 != 6 {
			return Frame{}, false
		}
		switch l4 := p[40:]; {
		case p[6] == unix.IPPROTO_TCP && w.is(p[8:24]) && len(l4) >= 14:
			return tcpFrame(f, l4), true
		case p[6] == unix.IPPROTO_ICMPV6 && len(l4) >= 24 && l4[0] == ndpAdvertisement && w.is(l4[8:24]):
			// type code checksum flags[4] target[16]: an advertisement of
			// the address, from whichever node
			f.ARP, f.ARPOp = true, 2
			return f, true
		}
	}
	return Frame{}, false
}

// ICMPv6 types of NDP (RFC 4861).
const (
	ndpSolicitation  = 135
	ndpAdvertisement = 136
)

func tcpFrame(f Frame, t []byte) Frame {
	f.SrcPort, f.DstPort, f.Flags = binary.BigEndian.Uint16(t[0:2]), binary.BigEndian.Uint16(t[2:4]), t[13]
	return f
}

// is tells whether b is the watched address.
func (w *Watch) is(b []byte) bool {
	a, ok := netip.AddrFromSlice(b)
	return ok && a == w.addr
}

// toAddr tells whether a frame the client sent goes to the address: a TCP
// segment for it, an ARP request or a neighbour solicitation asking for it.
func (w *Watch) toAddr(b []byte) bool {
	if len(b) < 14 {
		return false
	}
	p := b[14:]
	switch binary.BigEndian.Uint16(b[12:14]) {
	case unix.ETH_P_ARP:
		return w.addr.Is4() && len(p) >= 28 && w.is(p[24:28])
	case unix.ETH_P_IP:
		return len(p) >= 20 && p[9] == unix.IPPROTO_TCP && w.is(p[16:20])
	case unix.ETH_P_IPV6:
		if len(p) < 40 {
			return false
		}
		l4 := p[40:]
		return (p[6] == unix.IPPROTO_TCP && w.is(p[24:40])) ||
			(p[6] == unix.IPPROTO_ICMPV6 && len(l4) >= 24 && l4[0] == ndpSolicitation && w.is(l4[8:24]))
	}
	return false
}

// readDrops adds the kernel's count of frames dropped at this socket since
// the last read (reading PACKET_STATISTICS resets it).
func (w *Watch) readDrops() {
	st, err := unix.GetsockoptTpacketStats(w.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		if w.err == nil {
			w.err = fmt.Errorf("PACKET_STATISTICS: %w", err)
		}
		return
	}
	w.drops += uint64(st.Drops)
}

// Check tells whether the capture can serve as an oracle: it ran without
// error, lost no frame, and saw traffic both ways (frames the client sent
// to the address and frames from it). "No RST seen" means nothing from a
// capture that saw nothing. It closes the watch first, to count every drop.
func (w *Watch) Check() error {
	w.Close()
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return fmt.Errorf("capture of %s failed: %w", w.addr, w.err)
	case w.drops > 0:
		return fmt.Errorf("capture of %s dropped %d frames", w.addr, w.drops)
	case w.sent == 0 || len(w.frames) == 0:
		return fmt.Errorf("capture of %s saw %d frames sent to it and %d from it, want both > 0", w.addr, w.sent, len(w.frames))
	}
	return nil
}

// Counts are the frames sent to the address, received from it, and
// dropped, for logs.
func (w *Watch) Counts() (sent, received int, drops uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sent, len(w.frames), w.drops
}

// Frames returns what was recorded so far, in arrival order.
func (w *Watch) Frames() []Frame {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Frame(nil), w.frames...)
}

// Err is the error that stopped the watch early, if any.
func (w *Watch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the watch; Frames still works.
func (w *Watch) Close() error { return w.closeFn() }

// SaveFrames writes frames to a file of the host's directory, one a line,
// for post-mortems; it returns the path.
func (h *Host) SaveFrames(name string, frames []Frame) (string, error) {
	var b strings.Builder
	for _, f := range frames {
		b.WriteString(f.String())
		b.WriteByte('\n')
	}
	path := filepath.Join(h.Dir, name)
	return path, os.WriteFile(path, []byte(b.String()), 0o644)
}

// Probe is one TCP connection attempt of ProbeTCP.
type Probe struct {
	// Start and End bound the attempt.
	Start, End time.Time
	// Local is the client's end, when connected.
	Local netip.AddrPort
	// Err is why it failed (nil: connected).
	Err error
	// By is the MAC address that sent the SYN-ACK, when the watch saw it:
	// which node answered.
	By net.HardwareAddr
}

// ProbeOptions tunes ProbeTCP.
type ProbeOptions struct {
	// Interval between attempts; 0 is 10 ms.
	Interval time.Duration
	// Timeout of one attempt; 0 is 200 ms.
	Timeout time.Duration
	// Max bounds the whole run; 0 is 15 s.
	Max time.Duration
	// Until stops the run after the first probe for which it is true
	// (probes that are under way then are waited for); nil runs for Max.
	Until func(Probe) bool
	// Watch attributes the probes' SYN-ACKs to MAC addresses; it must
	// watch the probed address. Nil: no attribution.
	Watch *Watch
}

// ProbeTCP opens a new TCP connection from the client to addr every
// Interval, each closed at once, until Until holds for one or Max passes.
// Attempts overlap: one that hangs (a SYN into a dead node) does not delay
// the next. It returns the probes in start order.
func (c *Client) ProbeTCP(ctx context.Context, addr netip.AddrPort, opts ProbeOptions) []Probe {
	if opts.Interval <= 0 {
		opts.Interval = 10 * time.Millisecond
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 200 * time.Millisecond
	}
	if opts.Max <= 0 {
		opts.Max = 15 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Max)
	defer cancel()
	var (
		mu     sync.Mutex
		probes []*Probe
		wg     sync.WaitGroup
		done   = make(chan struct{})
		once   sync.Once
	)
	// The watch reads frames on its own: give it a moment to catch up.
	attribute := func(p *Probe, tries int) {
		if opts.Watch == nil || p.Err != nil {
			return
		}
		for range tries {
			for _, f := range opts.Watch.Frames() {
				if !f.ARP && f.DstPort == p.Local.Port() && f.SrcPort == addr.Port() && f.Flags&(FlagSYN|FlagACK) == FlagSYN|FlagACK {
					p.By = f.Src
					return
				}
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	tick := time.NewTicker(opts.Interval)
	defer tick.Stop()
loop:
	for {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p := &Probe{Start: time.Now()}
			p.Local, p.Err = c.TryConnect(ctx, addr, opts.Timeout)
			p.End = time.Now()
			attribute(p, 20)
			mu.Lock()
			probes = append(probes, p)
			mu.Unlock()
			if opts.Until != nil && opts.Until(*p) {
				once.Do(func() { close(done) })
			}
		}()
		select {
		case <-done:
			break loop
		case <-ctx.Done():
			break loop
		case <-tick.C:
		}
	}
	wg.Wait()
	out := make([]Probe, len(probes))
	for i, p := range probes {
		if p.By == nil {
			attribute(p, 1)
		}
		out[i] = *p
	}
	slices.SortFunc(out, func(a, b Probe) int { return a.Start.Compare(b.Start) })
	return out
}
