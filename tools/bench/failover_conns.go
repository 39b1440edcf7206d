package main

// The failover suite's many connections (-failover-conns N): before each
// failure, N idle TCP connections from the client to VIP:port of the node
// about to fail, each of which has sent a few bytes (so the owner's data
// plane tracks it and replicates it to the other nodes), held there by a
// minimal accept-and-read listener (failover_conns_holder.go), a child of
// the bench in the node's namespace, which the power cut kills with the
// node's other processes. From the failure on, one thread waits on all N
// in epoll and records, for each, when and how its read ended: the
// takeover's tickles must get every one of them reset.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// connsPayload is what each connection sends before it waits.
var connsPayload = []byte("fsha")

// connsWindow is how many connections may be in the middle of their
// handshake at once: far below the holder's backlog (somaxconn, 4096).
const connsWindow = 256

// manyConns is the client end of the N connections: non-blocking sockets
// made on a thread in the client's namespace.
type manyConns struct {
	dst    netip.AddrPort
	client netip.Addr
	fds    []int
	ports  []uint16
	// ep holds every connection (EPOLLIN|EPOLLRDHUP, one shot), for
	// quiet and await.
	ep int
	// opened is how long connecting all of them and sending their bytes
	// took; sent when the last bytes were written.
	opened time.Duration
	sent   time.Time
	// queued is how long await's thread waited for a CPU (runnable, not
	// running) while it waited on the connections.
	queued time.Duration
}

// connsResult is what one trial's connections saw.
type connsResult struct {
	n int
	// opened is how long connecting them all and sending their bytes
	// took; replicated how long after the last bytes every survivor had
	// them all in its peer flows map (-1: not waited for, keepalived).
	opened, replicated time.Duration
	ends               []connEnd
	// queued is how long the thread that read them waited for a CPU
	queued  time.Duration
	capture connsCapture
	// counters are the client namespace's TCP counters from just before
	// the failure to the end of the trial; rxDropped its eth0's receive
	// drops; softnetDrops and softnetSqueezed the machine's backlog drops
	// and squeezes over the same time.
	counters  netCounters
	rxDropped uint64
	// linkDrops are the lab's links that dropped frames (linkDrops),
	// with how many
	linkDrops                     map[string]uint64
	softnetDrops, softnetSqueezed uint64
	// firstRound is how long the new owner's first tickle round took
	// (its "tickled" log line), NaN when not found.
	firstRound float64
}

// connsTrial is a trial's connections: the holder on the owner, the
// client's sockets, the waiter.
type connsTrial struct {
	mc     *manyConns
	holder *lab.Process
	client *lab.Client
	res    *connsResult
	before netCounters
	rx0    uint64
	links0 map[string]uint64
	sd0    uint64
	sq0    uint64
	done   chan []connEnd
}

// prepareConns starts the holder on owner, opens the connections to
// vip:-failover-conns-port and, for fsha, waits until every survivor has
// them all. The caller closes the result.
func (b *failoverBench) prepareConns(ctx context.Context, log *zap.Logger, c *lab.Cluster, sys failSystem,
	owner *lab.ClusterNode, survivors []*lab.ClusterNode, prefix netip.Prefix) (_ *connsTrial, err error) {
	dst := netip.AddrPortFrom(prefix.Addr(), b.connsPort)
	client := c.Clients[0]
	holder, err := startHolder(ctx, owner, dst.Port())
	if err != nil {
		return nil, err
	}
	ct := &connsTrial{holder: holder, client: client, res: &connsResult{n: b.conns, replicated: -1, firstRound: math.NaN()}}
	defer func() {
		if err != nil {
			ct.close()
		}
	}()
	if ct.mc, err = openConns(ctx, client, dst, b.conns); err != nil {
		return nil, err
	}
	ct.res.opened = ct.mc.opened
	if _, ok := sys.(*fshaSystem); ok {
		if ct.res.replicated, err = ct.mc.waitReplicated(ctx, survivors, owner, 60*time.Second); err != nil {
			return nil, err
		}
	}
	if now, err := c.Owner(prefix); err != nil || now != owner {
		return nil, errors.Join(fmt.Errorf("%s moved off %s while the connections were opened", prefix, owner.Role), err)
	}
	if err := ct.mc.quiet(); err != nil {
		return nil, err
	}
	if b.connsSysctls == nil {
		if b.connsSysctls, err = readSysctls(client.Host, "net.ipv4.tcp_invalid_ratelimit", "net.ipv4.tcp_challenge_ack_limit",
			"net.ipv4.ip_local_port_range"); err != nil {
			return nil, fmt.Errorf("sysctls of %s: %w", client.Role, err)
		}
		// machine-wide, shown in the first namespace only
		if v, err := os.ReadFile("/proc/sys/net/core/netdev_max_backlog"); err == nil {
			b.connsSysctls["net.core.netdev_max_backlog (machine)"] = strings.TrimSpace(string(v))
		}
	}
	if ct.before, err = readNetCounters(client.Host); err != nil {
		return nil, fmt.Errorf("counters of %s: %w", client.Role, err)
	}
	ct.rx0 = rxDropped(client.Host)
	ct.links0 = linkDrops(c)
	ct.sd0, ct.sq0 = softnetDrops()
	log.Info("connections ready", zap.Int("connections", b.conns), zap.Stringer("to", dst), zap.String("held_by", owner.Role),
		zap.Duration("opened", ct.res.opened), zap.Duration("replicated", ct.res.replicated))
	return ct, nil
}

// begin starts the waiter: the failure is at t0.
func (ct *connsTrial) begin(t0, deadline time.Time) {
	ct.done = make(chan []connEnd, 1)
	go func() { ct.done <- ct.mc.await(t0, deadline) }()
}

// wait returns once the waiter is done.
func (ct *connsTrial) wait() {
	ct.res.ends = <-ct.done
	ct.res.queued = ct.mc.queued
}

// finish reads the counters and the capture (closed) of the trial.
func (ct *connsTrial) finish(c *lab.Cluster, w *lab.Watch, t0 time.Time) {
	ct.res.linkDrops = map[string]uint64{}
	for k, v := range linkDrops(c) {
		if v > ct.links0[k] {
			ct.res.linkDrops[k] = v - ct.links0[k]
		}
	}
	if after, err := readNetCounters(ct.client.Host); err == nil {
		ct.res.counters = after.sub(ct.before)
	}
	ct.res.rxDropped = rxDropped(ct.client.Host) - ct.rx0
	sd, sq := softnetDrops()
	ct.res.softnetDrops, ct.res.softnetSqueezed = sd-ct.sd0, sq-ct.sq0
	_, _, drops := w.Counts()
	ct.res.capture = captureConns(w.Frames(), ct.mc.dst.Port(), ct.mc.ports, t0, drops)
}

// close closes the client's sockets and kills the holder (after a
// network or link cut it still runs).
func (ct *connsTrial) close() {
	if ct.mc != nil {
		ct.mc.close()
	}
	if !ct.holder.Exited() {
		_ = ct.holder.Kill()
	}
}

// tickleFirstRound is how long n's first tickle round of vip after t0
// took, from its "tickled" log line (NaN when there is none).
func tickleFirstRound(n *lab.ClusterNode, vip netip.Prefix, t0 time.Time) float64 {
	lines, err := n.FshaLog("tickled")
	if err != nil {
		return math.NaN()
	}
	for _, l := range lines {
		// the log's times have milliseconds
		if v, _ := l.Fields["vip"].(string); v != vip.String() || l.At.Before(t0.Add(-time.Millisecond)) {
			continue
		}
		if s, ok := l.Fields["first_round"].(float64); ok {
			return s
		}
	}
	return math.NaN()
}

// startHolder runs the holder (this binary, holdConnsCmd) on port in n's
// namespace and waits until it listens. The lab stops it on Close.
func startHolder(ctx context.Context, n *lab.ClusterNode, port uint16) (*lab.Process, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find the bench binary for the holder: %w", err)
	}
	p, err := n.Start("hold-conns", exe, holdConnsCmd, strconv.Itoa(int(port)))
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := p.WaitLog(wctx, holdConnsReady); err != nil {
		_ = p.Kill()
		return nil, fmt.Errorf("holder on %s: %w", n.Role, err)
	}
	return p, nil
}

// openConns opens n connections from c to dst, at most connsWindow
// handshakes at a time, and writes connsPayload on each once it is
// established. The sockets close with a RST (SO_LINGER 0) and have no
// TCP keepalive.
func openConns(ctx context.Context, c *lab.Client, dst netip.AddrPort, n int) (_ *manyConns, err error) {
	if !dst.Addr().Is4() {
		return nil, errors.New("-failover-conns: IPv4 VIPs only")
	}
	mc := &manyConns{dst: dst, client: c.IP(), fds: make([]int, 0, n), ports: make([]uint16, n), ep: -1}
	defer func() {
		if err != nil {
			mc.close()
		}
	}()
	start := time.Now()
	err = c.Do(func() error {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			return fmt.Errorf("epoll: %w", err)
		}
		defer unix.Close(ep)
		sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
		events := make([]unix.EpollEvent, connsWindow)
		pending, done := 0, 0
		for done < n {
			if err := ctx.Err(); err != nil {
				return err
			}
			for pending < connsWindow && len(mc.fds) < n {
				i := len(mc.fds)
				fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return fmt.Errorf("socket %d of %d: %w", i+1, n, err)
				}
				mc.fds = append(mc.fds, fd)
				if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
					return fmt.Errorf("SO_LINGER: %w", err)
				}
				if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
					return fmt.Errorf("connect %d of %d: %w", i+1, n, err)
				}
				if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &unix.EpollEvent{Events: unix.EPOLLOUT, Fd: int32(i)}); err != nil {
					return fmt.Errorf("epoll add: %w", err)
				}
				pending++
			}
			k, err := unix.EpollWait(ep, events, 5000)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return fmt.Errorf("epoll wait: %w", err)
			}
			if k == 0 {
				return fmt.Errorf("no handshake completed in 5 s (%d of %d connected)", done, n)
			}
			for _, ev := range events[:k] {
				i := int(ev.Fd)
				fd := mc.fds[i]
				soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
				if err == nil && soErr != 0 {
					err = syscall.Errno(soErr)
				}
				if err != nil {
					return fmt.Errorf("connection %d of %d: %w", i+1, n, err)
				}
				if w, err := unix.Write(fd, connsPayload); err != nil || w != len(connsPayload) {
					return fmt.Errorf("connection %d of %d: write %d bytes: %w", i+1, n, w, err)
				}
				sa, err := unix.Getsockname(fd)
				if err != nil {
					return fmt.Errorf("getsockname: %w", err)
				}
				mc.ports[i] = uint16(sa.(*unix.SockaddrInet4).Port)
				if err := unix.EpollCtl(ep, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
					return fmt.Errorf("epoll del: %w", err)
				}
				pending--
				done++
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("open %d connections to %s: %w", n, dst, err)
	}
	mc.sent = time.Now()
	mc.opened = mc.sent.Sub(start)
	if mc.ep, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	for i, fd := range mc.fds {
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(i)}
		if err := unix.EpollCtl(mc.ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll add: %w", err)
		}
	}
	return mc, nil
}

// close closes every socket (a RST each, to whoever holds the VIP now).
func (mc *manyConns) close() {
	for _, fd := range mc.fds {
		unix.Close(fd)
	}
	mc.fds = nil
	if mc.ep >= 0 {
		unix.Close(mc.ep)
		mc.ep = -1
	}
}

// quiet fails when a connection has something to read or has ended: the
// holder never writes, so before the failure there must be nothing.
func (mc *manyConns) quiet() error {
	events := make([]unix.EpollEvent, 1)
	k, err := unix.EpollWait(mc.ep, events, 0)
	if err != nil && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("epoll wait: %w", err)
	}
	if k > 0 {
		i := events[0].Fd
		return fmt.Errorf("connection %d of %d (port %d) woke before the failure (events %#x)", i+1, len(mc.fds), mc.ports[i], events[0].Events)
	}
	return nil
}

// waitReplicated waits until every node of survivors has all the
// connections in its peer flows map, as owner's, and returns how long
// after the last connection's bytes the last of them had them all.
func (mc *manyConns) waitReplicated(ctx context.Context, survivors []*lab.ClusterNode, owner *lab.ClusterNode, limit time.Duration) (time.Duration, error) {
	want := make(map[uint16]bool, len(mc.ports))
	for _, p := range mc.ports {
		want[p] = true
	}
	var pms []*dataplane.PinnedMaps
	defer func() {
		for _, pm := range pms {
			pm.Close()
		}
	}()
	for _, n := range survivors {
		pm, err := dataplane.OpenPinned(n.PinPath)
		if err != nil {
			return 0, err
		}
		pms = append(pms, pm)
	}
	have := make([]int, len(survivors))
	done := make([]bool, len(survivors))
	var last time.Duration
	deadline := mc.sent.Add(limit)
	for {
		left := 0
		for i, pm := range pms {
			if done[i] {
				continue
			}
			have[i] = 0
			err := pm.ForEachPeerFlow(func(f dataplane.PeerFlow) bool {
				if f.VIP == mc.dst.Addr() && f.VIPPort == mc.dst.Port() && f.Client == mc.client && want[f.ClientPort] &&
					f.Owner == owner.PNN && !f.Steer {
					have[i]++
				}
				return true
			})
			if err != nil {
				return 0, fmt.Errorf("peer flows of %s: %w", survivors[i].Role, err)
			}
			if have[i] == len(want) {
				done[i] = true
				last = time.Since(mc.sent)
				continue
			}
			left++
		}
		if left == 0 {
			return last, nil
		}
		if time.Now().After(deadline) {
			var parts []string
			for i, n := range survivors {
				parts = append(parts, fmt.Sprintf("%s %d", n.Role, have[i]))
			}
			return 0, fmt.Errorf("%d connections to %s not replicated within %v: %s of %d", len(want), mc.dst, limit, strings.Join(parts, ", "), len(want))
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// connEnd is how one connection's wait ended: at, seconds since the
// failure (+Inf when it did not end within the bound), and how.
type connEnd struct {
	at   float64
	kind string // outcomeReset, outcomeEOF, outcomeTimeout or "error: ..."
}

// await waits, on a thread of its own, until every connection's read has
// ended or deadline passes, and returns how each ended, in the order of
// mc.ports. Times are taken right after each read returned.
func (mc *manyConns) await(t0, deadline time.Time) []connEnd {
	ends := make([]connEnd, len(mc.fds))
	for i := range ends {
		ends[i] = connEnd{at: math.Inf(1), kind: outcomeTimeout}
	}
	_ = onThread(func() error {
		// how long this thread waited for a CPU while it waited here
		q0 := runqueueWait()
		defer func() { mc.queued = runqueueWait() - q0 }()
		events := make([]unix.EpollEvent, 1024)
		buf := make([]byte, 512)
		left := len(mc.fds)
		for left > 0 {
			wait := time.Until(deadline)
			if wait <= 0 {
				return nil
			}
			k, err := unix.EpollWait(mc.ep, events, int(min(wait, 100*time.Millisecond)/time.Millisecond)+1)
			if err != nil {
				if errors.Is(err, unix.EINTR) {
					continue
				}
				return err
			}
			for _, ev := range events[:k] {
				i := int(ev.Fd)
				fd := mc.fds[i]
				n, err := unix.Read(fd, buf)
				at := time.Now()
				var kind string
				switch {
				case n > 0 || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR):
					// bytes (the holder never writes) or a spurious wake:
					// wait on
					rearm := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(i)}
					_ = unix.EpollCtl(mc.ep, unix.EPOLL_CTL_MOD, fd, &rearm)
					continue
				case n == 0 && err == nil:
					kind = outcomeEOF
				case errors.Is(err, unix.ECONNRESET):
					kind = outcomeReset
				default:
					kind = "error: " + unix.ErrnoName(err.(syscall.Errno))
				}
				ends[i] = connEnd{at: at.Sub(t0).Seconds(), kind: kind}
				left--
			}
		}
		return nil
	})
	return ends
}

// runqueueWait is how long the calling thread has waited for a CPU, in
// all (/proc/thread-self/schedstat: run time, run-queue wait, slices).
func runqueueWait() time.Duration {
	b, err := os.ReadFile("/proc/thread-self/schedstat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	ns, _ := strconv.ParseInt(f[1], 10, 64)
	return time.Duration(ns)
}
