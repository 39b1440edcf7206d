package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
)

func isReset(err error) bool { return errors.Is(err, syscall.ECONNRESET) }

// probeSpec says how a client probes a VIP for new connections.
type probeSpec struct {
	// Interval between two connection attempts.
	Interval time.Duration
	// AttemptTTL is how long one attempt may wait for its SYN-ACK; shorter
	// than the kernel's first SYN retransmission (1 s), so every attempt
	// is one SYN sent at a known time.
	AttemptTTL time.Duration
	// Limit bounds the whole probe.
	Limit time.Duration
}

// probeResult is the first connection that succeeded.
type probeResult struct {
	At       time.Time // when the SYN-ACK arrived (poll returned)
	Attempts int
	Refused  int // attempts answered with a RST
	OK       bool
}

// prober is a thread in a client's namespace that, once started, opens a
// non-blocking TCP connection to the target every Interval until one
// succeeds. The sockets are made on that thread, so they belong to the
// client's namespace; the thread polls them itself, so there is no
// goroutine handoff in the measured path.
type prober struct {
	start chan time.Time
	done  chan struct{}
	res   probeResult
	err   error
}

// startProber starts the thread; call go on the prober to begin probing.
func startProber(ctx context.Context, c *lab.Client, dst netip.AddrPort, spec probeSpec) *prober {
	p := &prober{start: make(chan time.Time, 1), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		p.err = c.Do(func() error {
			at, ok := <-p.start
			if !ok {
				return nil
			}
			var err error
			p.res, err = probe(ctx, dst, spec, at)
			return err
		})
	}()
	return p
}

// begin starts probing now; from is the failure time Limit counts from.
func (p *prober) begin(from time.Time) { p.start <- from }

// cancel ends a prober that never began.
func (p *prober) cancel() { close(p.start) }

// wait returns the result once the probe ended.
func (p *prober) wait() (probeResult, error) {
	<-p.done
	return p.res, p.err
}

type attempt struct {
	fd     int
	opened time.Time
}

func probe(ctx context.Context, dst netip.AddrPort, spec probeSpec, from time.Time) (probeResult, error) {
	var res probeResult
	if !dst.Addr().Is4() {
		return res, errors.New("probe: IPv4 only")
	}
	sa := &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()}
	var pending []attempt
	defer func() {
		for _, a := range pending {
			unix.Close(a.fd)
		}
	}()
	deadline := from.Add(spec.Limit)
	next := time.Now()
	pfds := make([]unix.PollFd, 0, 128)
	for {
		now := time.Now()
		if now.After(deadline) {
			return res, nil
		}
		if err := ctx.Err(); err != nil {
			return res, err
		}
		if !now.Before(next) {
			next = now.Add(spec.Interval)
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return res, fmt.Errorf("probe socket: %w", err)
			}
			// closing sends a RST, not a FIN: the server forgets it at once
			if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
				unix.Close(fd)
				return res, fmt.Errorf("probe SO_LINGER: %w", err)
			}
			if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
				unix.Close(fd)
				if !errors.Is(err, unix.ENETUNREACH) && !errors.Is(err, unix.EHOSTUNREACH) {
					return res, fmt.Errorf("probe connect: %w", err)
				}
			} else {
				pending = append(pending, attempt{fd: fd, opened: now})
				res.Attempts++
			}
		}
		// attempts past their TTL are dropped before their SYN is resent
		kept := pending[:0]
		for _, a := range pending {
			if now.Sub(a.opened) > spec.AttemptTTL {
				unix.Close(a.fd)
				continue
			}
			kept = append(kept, a)
		}
		pending = kept
		pfds = pfds[:0]
		for _, a := range pending {
			pfds = append(pfds, unix.PollFd{Fd: int32(a.fd), Events: unix.POLLOUT})
		}
		wait := time.Until(next)
		ts := unix.NsecToTimespec(max(wait, 0).Nanoseconds())
		n, err := unix.Ppoll(pfds, &ts, nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return res, fmt.Errorf("probe poll: %w", err)
		}
		if n <= 0 {
			continue
		}
		at := time.Now()
		for i, a := range pending {
			if pfds[i].Revents == 0 {
				continue
			}
			soErr, err := unix.GetsockoptInt(a.fd, unix.SOL_SOCKET, unix.SO_ERROR)
			if err == nil && soErr == 0 {
				res.At, res.OK = at, true
				return res, nil // the deferred close resets it
			}
			if syscall.Errno(soErr) == unix.ECONNREFUSED {
				res.Refused++
			}
			// failed: closed with the expired ones next round
			pending[i].opened = time.Time{}
		}
	}
}
