package dataplane

// Probing a drain's return path. While a VIP drains, its old connections'
// client packets reach this node only through the new holder's steering
// (the VIP is on loopback here, announced there). When that path is
// broken (a NIC whose XDP_TX drops or corrupts frames, --steer-mode xdp
// where it does not work), the clients hang until the drain timeout. The
// old holder sees it by itself: it sends each connection a TCP keepalive
// probe (an ACK one byte behind what the client acknowledged, which the
// client must answer with an ACK: RFC 9293 3.10.7.4) and watches whether
// any packet of them arrives. The probe changes nothing in either TCP
// stack: the client drops it after answering, and the answer is a
// duplicate ACK to the local socket.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// DrainProbe is what one ProbeVIP call saw and did.
type DrainProbe struct {
	// Conns are this node's connections to the VIP.
	Conns int
	// PacketsIn is what they received from their clients so far (the
	// flows' packets_in, summed): it grows when the clients' packets
	// arrive.
	PacketsIn uint64
	// Sent is the number of probes sent.
	Sent int
}

// ProbeVIP reads how many packets this node's connections to vip have
// received, then, with send, sends each connection's client a keepalive
// probe from the VIP, whose answer comes back the way the client's
// packets do.
func (a *Actions) ProbeVIP(vip netip.Addr, send bool) (DrainProbe, error) {
	var p DrainProbe
	var segs []tcpSegment
	each := func(f Flow) bool {
		p.Conns++
		p.PacketsIn += f.PacketsIn
		segs = append(segs, probeSegment(f))
		return true
	}
	err := a.maps.ForEachFlowOfVIP(vip, each)
	if errors.Is(err, ErrIndexNotReady) {
		p, segs = DrainProbe{}, nil
		err = a.maps.ForEachFlow(func(f Flow) bool {
			if f.VIP == vip {
				return each(f)
			}
			return true
		})
	}
	if err != nil {
		return p, fmt.Errorf("read the flows of %s: %w", vip, err)
	}
	if !send || len(segs) == 0 {
		return p, nil
	}
	p.Sent, err = sendSegments(segs)
	return p, err
}

// probeSegment is f's keepalive probe: an ACK from the VIP one byte below
// the client's receive point (out of its window, so it answers), with the
// acknowledgement and window the server last sent.
func probeSegment(f Flow) tcpSegment {
	return tcpSegment{src: f.VIP, dst: f.Client, sport: f.VIPPort, dport: f.ClientPort,
		seq: f.AckIn - 1, ack: f.SeqIn, flags: tcpFlagACK, window: f.WindowOut}
}

// sendSegments sends IP packets through raw sockets, routed by the
// kernel, and returns how many left.
func sendSegments(segs []tcpSegment) (int, error) {
	var sent int
	var errs []error
	for _, family := range []int{unix.AF_INET, unix.AF_INET6} {
		l := newFrameList(len(segs))
		l.dsts = make([]netip.Addr, len(segs))
		for i := range segs {
			s := &segs[i]
			if s.src.Is4() != (family == unix.AF_INET) {
				continue
			}
			n := s.ipLen()
			s.put(l.next()[:n])
			l.dsts[l.n] = s.dst
			l.commit(n)
		}
		if l.n == 0 {
			continue
		}
		fd, err := openTickleRawSocket(family)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		n, _, err := sendFrames(context.Background(), fd, &l, true)
		unix.Close(fd)
		sent += n
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return sent, fmt.Errorf("send probes: %w", err)
	}
	return sent, nil
}
