package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"time"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
)

// cutClock times a link cut at the switch (lab.Cut) to about a
// millisecond. Lab.Cut runs `nft -f` in the switch namespace, and the cut
// lands at the commit of its transaction, near the end of a run that takes
// 5 ms on a quiet machine and hundreds on a loaded one (the process starts
// are most of it). So the clock does not start before the call: while it
// runs, the client sends the owner one small frame every millisecond
// (EtherType 0x88b5, local experimental, to the owner's MAC: its kernel
// drops it unread), and a packet socket on the owner's switch port records,
// with kernel timestamps, the frames the switch still delivers to it. The
// cut fell between the last frame delivered and the next one sent.
type cutClock struct {
	send, recv int // sockets: client's eth0, owner's switch port
	frame      []byte
}

const (
	cutClockType     = 0x88b5
	cutClockInterval = time.Millisecond
)

// cutTiming is when a cut landed: after last, the kernel time at which the
// switch delivered the last frame to the owner's port, and no later than
// next, when the client sent the first frame the switch did not deliver.
type cutTiming struct {
	last, next time.Time
	call       time.Duration // how long the cut call took
}

func newCutClock(l *lab.Lab, client *lab.Client, owner *lab.ClusterNode) (_ *cutClock, err error) {
	dst, err := owner.MAC()
	if err != nil {
		return nil, err
	}
	src, err := client.MAC()
	if err != nil {
		return nil, err
	}
	c := &cutClock{send: -1, recv: -1, frame: make([]byte, 60)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	copy(c.frame[0:6], dst)
	copy(c.frame[6:12], src)
	binary.BigEndian.PutUint16(c.frame[12:14], cutClockType)

	err = client.Do(func() error {
		ifi, err := net.InterfaceByName(lab.HostIface)
		if err != nil {
			return err
		}
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.send = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(cutClockType), Ifindex: ifi.Index})
	})
	if err != nil {
		return nil, fmt.Errorf("cut clock sender in %s: %w", client.NS, err)
	}
	err = l.Switch.Do(func() error {
		ifi, err := net.InterfaceByName(owner.Role)
		if err != nil {
			return err
		}
		// Protocol 0 receives nothing until the bind below, after the
		// filter is on (a socket made with ETH_P_ALL would queue every
		// frame until then). ETH_P_ALL: only such sockets see the frames
		// a port transmits.
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("packet socket: %w", err)
		}
		c.recv = fd
		filter, err := bpf.Assemble([]bpf.Instruction{
			bpf.LoadAbsolute{Off: 12, Size: 2},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: cutClockType, SkipTrue: 1},
			bpf.RetConstant{Val: 64},
			bpf.RetConstant{Val: 0},
		})
		if err != nil {
			return err
		}
		prog := make([]unix.SockFilter, len(filter))
		for i, ins := range filter {
			prog[i] = unix.SockFilter{Code: ins.Op, Jt: ins.Jt, Jf: ins.Jf, K: ins.K}
		}
		if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER,
			&unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}); err != nil {
			return fmt.Errorf("attach filter: %w", err)
		}
		if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
			return err
		}
		tv := unix.NsecToTimeval((10 * time.Millisecond).Nanoseconds())
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		return nil, fmt.Errorf("cut clock receiver on switch port %s: %w", owner.Role, err)
	}
	return c, nil
}

func (c *cutClock) Close() {
	for _, fd := range []int{c.send, c.recv} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	c.send, c.recv = -1, -1
}

// around runs cut while the frames flow and says when the cut landed. The
// frames must reach the port before the cut (checked, for at most a
// second) and stop after it. When cut succeeded but the frames tell
// nothing, it returns an error with the call's start and end as the
// bounds of the cut.
func (c *cutClock) around(cut func() error) (cutTiming, error) {
	var (
		mu    sync.Mutex
		sent  []time.Time           // by sequence number
		seen  = map[int]time.Time{} // sequence -> kernel time at the port
		stop  = make(chan struct{})
		wg    sync.WaitGroup
		first = make(chan struct{})
		serr  error
	)
	wg.Add(2)
	go func() { // sender
		defer wg.Done()
		frame := append([]byte(nil), c.frame...)
		for seq := 0; ; seq++ {
			select {
			case <-stop:
				return
			default:
			}
			binary.BigEndian.PutUint32(frame[14:18], uint32(seq))
			mu.Lock()
			sent = append(sent, time.Now())
			mu.Unlock()
			if _, err := unix.Write(c.send, frame); err != nil {
				mu.Lock()
				serr = fmt.Errorf("cut clock send: %w", err)
				mu.Unlock()
				return
			}
			time.Sleep(cutClockInterval)
		}
	}()
	go func() { // receiver
		defer wg.Done()
		buf := make([]byte, 128)
		oob := make([]byte, 128)
		once := sync.Once{}
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, oobn, _, _, err := unix.Recvmsg(c.recv, buf, oob, 0)
			if err != nil || n < 18 {
				continue // timeout (10 ms) or interrupted: check stop
			}
			if !bytes.Equal(buf[6:14], c.frame[6:14]) {
				continue // not ours (source MAC and EtherType)
			}
			at := time.Time{}
			if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
				for _, m := range msgs {
					if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SO_TIMESTAMPNS && len(m.Data) >= 16 {
						at = time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
					}
				}
			}
			if at.IsZero() {
				continue
			}
			mu.Lock()
			seen[int(binary.BigEndian.Uint32(buf[14:18]))] = at
			mu.Unlock()
			once.Do(func() { close(first) })
		}
	}()
	finish := func() {
		close(stop)
		wg.Wait()
	}
	select {
	case <-first:
	case <-time.After(time.Second):
		finish()
		return cutTiming{}, errors.Join(errors.New("cut clock: no frame reached the owner's switch port within 1s"), serr)
	}
	began := time.Now()
	err := cut()
	ret := time.Now()
	call := ret.Sub(began)
	// Frames sent after the call returned must be lost: wait for three of
	// them (a loaded machine may starve the sender), then for any frame
	// still in flight.
	for deadline := ret.Add(time.Second); time.Now().Before(deadline); time.Sleep(cutClockInterval) {
		mu.Lock()
		n := len(sent) - sort.Search(len(sent), func(i int) bool { return sent[i].After(ret) })
		mu.Unlock()
		if n >= 3 {
			break
		}
	}
	time.Sleep(20 * cutClockInterval)
	finish()
	if err != nil {
		return cutTiming{}, err
	}
	// The cut is in place from here on. Without a usable clock, the cut
	// fell somewhere in the call.
	t := cutTiming{call: call, last: began, next: ret}
	if serr != nil {
		return t, serr
	}
	last := -1
	for seq := range seen {
		last = max(last, seq)
	}
	if last < 0 || last+1 >= len(sent) || !seen[last].After(began) {
		return t, fmt.Errorf("cut clock: %d frames sent, the last one through the port was number %d (%d after the call began): no usable time",
			len(sent), last, len(sent)-sort.Search(len(sent), func(i int) bool { return sent[i].After(began) }))
	}
	t.last, t.next = seen[last], sent[last+1]
	return t, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
