package dataplane

// The tickler's sockets and sending a round on them with sendmmsg.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

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

// sendRound sends every frame of p once.
func (t *Tickler) sendRound(ctx context.Context, p *ticklePlan) (sent, failed int, err error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		return 0, 0, ErrTicklerClosed
	}
	return t.sendLocked(ctx, []*frameList{&p.pkt, &p.raw4, &p.raw6})
}

// sendLocked sends lists (p.pkt, p.raw4, p.raw6: on the packet socket,
// the IPv4 and the IPv6 raw socket) with t.mu held for reading; nil lists
// are skipped.
func (t *Tickler) sendLocked(ctx context.Context, lists []*frameList) (sent, failed int, err error) {
	var errs []error
	for i, l := range lists {
		if l == nil || l.n == 0 {
			continue
		}
		fd := []int{t.pkt, t.raw4, t.raw6}[i]
		if fd < 0 {
			failed += l.n
			errs = append(errs, fmt.Errorf("%d segments: %w", l.n, unix.EAFNOSUPPORT))
			continue
		}
		s, f, err := sendParallel(ctx, fd, l, i > 0)
		sent += s
		failed += f
		if err != nil {
			errs = append(errs, err)
		}
	}
	return sent, failed, errors.Join(errs...)
}

// firstResult is what the first round did.
type firstResult struct {
	sent, failed int
	err          error
	// invalid counts the connections skipped, invalidErr says why the
	// first was
	invalid    int
	invalidErr error
}

// firstRound builds the plan of the n connections conn returns and sends
// the first round as it builds it: each batch of frames for the packet
// socket leaves once built (to up to TickleMaxWorkers senders when the
// round is large enough for sendParallel to share it), so that the first
// tickles do not wait for the whole plan. For 100,000 connections that
// wait (normalizing, next hops, frames) was 15-25 ms of the 30-55 ms from
// a takeover's decision to its first tickle (the takeover bench suite).
// The raw sockets' packets (clients whose next hop is unresolved) are
// built and sent at the end.
func (t *Tickler) firstRound(ctx context.Context, n int, conn func(i int) Conn, hops *nextHops) (*ticklePlan, firstResult) {
	var r firstResult
	p := newPlan(n, hops)
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.closed {
		r.err = ErrTicklerClosed
		return p, r
	}
	var errs []error
	var (
		batches chan *frameList
		results []firstResult
		wg      sync.WaitGroup
	)
	if workers := tickleWorkers(n); workers > 1 && hops != nil {
		batches = make(chan *frameList, n/mmsgBatch+1)
		results = make([]firstResult, workers)
		for w := range workers {
			wg.Go(func() {
				for l := range batches {
					s, f, err := sendFrames(ctx, t.pkt, l, false)
					results[w].sent += s
					results[w].failed += f
					if err != nil && results[w].err == nil {
						results[w].err = err
					}
				}
			})
		}
	}
	flushed := 0
	flush := func() {
		if p.pkt.n == flushed {
			return
		}
		l := p.pkt.slice(flushed, p.pkt.n)
		flushed = p.pkt.n
		if batches != nil {
			batches <- l
			return
		}
		s, f, err := sendFrames(ctx, t.pkt, l, false)
		r.sent += s
		r.failed += f
		if err != nil {
			errs = append(errs, err)
		}
	}
	for i := range n {
		c, err := conn(i).normalize()
		if err != nil {
			if r.invalid == 0 {
				r.invalidErr = err
			}
			r.invalid++
			continue
		}
		t.add(p, c)
		if p.pkt.n-flushed >= mmsgBatch {
			if ctx.Err() != nil {
				break
			}
			flush()
		}
	}
	if ctx.Err() == nil {
		flush()
	}
	if batches != nil {
		close(batches)
		wg.Wait()
		for _, w := range results {
			r.sent += w.sent
			r.failed += w.failed
			if w.err != nil {
				errs = append(errs, w.err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		errs = append(errs, err)
	} else if len(p.raw) > 0 {
		t.buildRaw(p)
		s, f, err := t.sendLocked(ctx, []*frameList{nil, &p.raw4, &p.raw6})
		r.sent += s
		r.failed += f
		if err != nil {
			errs = append(errs, err)
		}
	}
	r.err = errors.Join(errs...)
	return p, r
}

// A round of at least 2 x TickleWorkerFrames frames is sent from several
// goroutines, TickleWorkerFrames or more each, at most TickleMaxWorkers
// and one per CPU.
const (
	TickleWorkerFrames = 4096
	TickleMaxWorkers   = 4
)

// tickleWorkers is how many goroutines send a round of n frames.
func tickleWorkers(n int) int {
	return min(runtime.GOMAXPROCS(0), runtime.NumCPU(), TickleMaxWorkers, n/TickleWorkerFrames)
}

// sendParallel sends l on fd from up to one goroutine per CPU (each
// kernel send path runs on its CPU, with its own transmit queue on a
// multi-queue NIC), in contiguous shares.
func sendParallel(ctx context.Context, fd int, l *frameList, named bool) (sent, failed int, err error) {
	workers := tickleWorkers(l.n)
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
