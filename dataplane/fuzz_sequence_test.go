package dataplane

import (
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Differential fuzzing of sequences: a fuzz input is a run of segments
// of a few connections, both ways (client to VIP through XDP ingress, VIP
// to client through TC egress), with the flow cache live across them and
// jiffies passing between some, so that a flow's segments take the cache
// in one jiffy and fold it into the map in the next. One connection is a
// peer's, to steer (steering on, its owner's MAC known): XDP must send its
// segments back out (XDP_TX) until a segment of this node's own creates a
// local flow for it. After every segment the counters, the flows (the
// cache's pending counts folded in, as every reader folds them), the
// tombstones, the handshakes and the events must be what the one-packet
// model says from the state the previous segments left.
//
// The segments run on one CPU: the cache is per CPU, and a flow closed on
// one CPU loses what another CPU's slot held of it in that jiffy (by
// design, bpf/flowcache.h slot_forget), which the model does not follow.
//
//	go test -run='^$' -fuzz=FuzzSequence -fuzztime=60s -fuzzminimizetime=200x ./dataplane

// seqOpSize is the bytes of one segment in a FuzzSequence input:
// connection and direction, TCP flags, payload length, options, and a
// sequence number jump.
const seqOpSize = 5

// maxSeqOps bounds a sequence: each segment costs a few dozen syscalls.
const maxSeqOps = 24

var (
	// steerConn is a peer's connection to vip4 that XDP steers to node 2.
	steerConn = conn{vip: vip4, client: client4, vport: 445, cport: 50010}
	// freshConn4 has no state at all.
	freshConn4 = conn{vip: vip4, client: client4, vport: 2049, cport: 50011}
	// seqConns are the connections a sequence's segments belong to.
	seqConns = []conn{c4, c6, newConn4, closedConn4, steerConn, freshConn4, fenceConn4, drainConn4}
)

// seqFlags are the TCP flags a segment can have: the fuzzer picks a
// combination of them (the others are not fsha's business).
const seqFlags = tcpSYN | tcpACK | tcpFIN | tcpRST | tcpPSH

func FuzzSequence(f *testing.F) {
	h := newHarness(f, 64)
	setLeases(f, h)
	if err := h.maps.SetNodeMAC(2, net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}); err != nil {
		f.Fatal(err)
	}
	if err := h.maps.UpsertPeerFlows([]PeerFlow{{VIP: steerConn.vip, VIPPort: steerConn.vport, Client: steerConn.client,
		ClientPort: steerConn.cport, Owner: 2, Steer: true, LastSeen: time.Now()}}); err != nil {
		f.Fatal(err)
	}
	if err := h.maps.SetSteering(1); err != nil {
		f.Fatal(err)
	}
	op := func(ci int, egress bool, flags uint8, payload uint8, nextJiffy bool, jump uint8) []byte {
		b := []byte{byte(ci), flags, payload, 0, jump}
		if egress {
			b[0] |= 0x80
		}
		if nextJiffy {
			b[3] |= 1
		}
		return b
	}
	seq := func(ops ...[]byte) []byte {
		var b []byte
		for _, o := range ops {
			b = append(b, o...)
		}
		return b
	}
	// a new connection's life: SYN, SYN-ACK, ACK, data both ways, a jiffy, more data, FINs
	f.Add(seq(op(5, false, tcpSYN, 0, false, 0), op(5, true, tcpSYN|tcpACK, 0, false, 0), op(5, false, tcpACK, 0, false, 0),
		op(5, false, tcpACK|tcpPSH, 100, false, 0), op(5, true, tcpACK|tcpPSH, 200, false, 0), op(5, true, tcpACK, 0, false, 0),
		op(5, false, tcpACK|tcpPSH, 50, true, 0), op(5, true, tcpACK|tcpPSH, 10, false, 0),
		op(5, false, tcpFIN|tcpACK, 0, false, 0), op(5, true, tcpFIN|tcpACK, 0, false, 0), op(5, false, tcpACK, 0, false, 0)))
	// an established flow through the cache, then a RST
	f.Add(seq(op(1, false, tcpACK|tcpPSH, 10, false, 0), op(1, false, tcpACK|tcpPSH, 10, false, 0), op(1, true, tcpACK, 0, false, 0),
		op(1, false, tcpACK|tcpPSH, 10, true, 0), op(1, true, tcpRST, 0, false, 0)))
	// the steered peer flow, then a local flow for the same tuple
	f.Add(seq(op(4, false, tcpACK|tcpPSH, 30, false, 0), op(4, false, tcpACK, 0, true, 0), op(4, true, tcpACK|tcpPSH, 40, false, 0),
		op(4, false, tcpACK, 0, false, 0)))
	// a handshake seen, a tombstone, fenced and draining VIPs
	f.Add(seq(op(2, true, tcpACK, 0, false, 0), op(3, true, tcpACK, 0, false, 0), op(3, true, tcpACK, 0, false, 7),
		op(6, false, tcpACK, 0, false, 0), op(7, true, tcpSYN|tcpACK, 0, false, 0), op(7, false, tcpACK|tcpPSH, 5, false, 0),
		op(0, false, tcpFIN|tcpACK, 0, false, 0)))

	f.Fuzz(func(t *testing.T, b []byte) {
		onCPU0(t)
		h.reset(t)
		state := fuzzSeedState(ingress)
		state.load(t, h)
		state.steered = map[fshaFlowKey]bool{steerConn.key(): true} // the daemon's, not reset
		// each side's next sequence number, per connection: in-order
		// segments unless an op jumps
		next := map[int][2]uint32{}
		for i := range seqConns {
			next[i] = [2]uint32{1000, 5000}
		}
		for n := 0; n < maxSeqOps && len(b) >= seqOpSize; n++ {
			o := b[:seqOpSize]
			b = b[seqOpSize:]
			ci := int(o[0]&0x7f) % len(seqConns)
			d, side := ingress, 0
			if o[0]&0x80 != 0 {
				d, side = egress, 1
			}
			flags, payload := o[1]&seqFlags, int(o[2])
			if o[3]&1 != 0 {
				time.Sleep(5 * time.Millisecond) // a jiffy or more (HZ >= 250)
			}
			sq := next[ci]
			sq[side] += uint32(o[4]) << 10 // a jump: out of order, a reused tuple
			pkt := seqConns[ci].seg(d, flags, sq[side], sq[1-side], payload).bytes(t)
			sq[side] += uint32(payload)
			if flags&(tcpSYN|tcpFIN) != 0 {
				sq[side]++
			}
			next[ci] = sq

			p := predict(pkt, d)
			want := p.apply(d, state)
			before := h.counters(t)
			ret := seqRun(t, h, d, pkt)
			got := counterDelta(before, h.counters(t))
			steered := want.counters[ingress][fshaCounterCOUNTER_STEERED] == 1
			switch {
			case d == ingress && p.class == classFenced && ret != xdpDrop,
				d == ingress && steered && ret != xdpTX,
				d == ingress && !steered && p.class != classFenced && ret != xdpPass,
				d == egress && p.class == classFenced && ret != tcxDrop,
				d == egress && p.class != classFenced && ret != tcxNext:
				t.Fatalf("segment %d (%s): verdict %d, model says %s (steered %v)\nframe %x", n, dirName(d), ret, p, steered, pkt)
			}
			if got != want.counters {
				t.Fatalf("segment %d (%s): counters changed%s, want%s\nmodel: %s\nframe %x", n, dirName(d), got, want.counters, p, pkt)
			}
			h.checkFlows(t, want, p, pkt)
			if t.Failed() {
				t.FailNow()
			}
			state = want.fuzzState
			// the model keeps no clock: the next segment's "new flow"
			// check is for flows new then
			var k fshaFlowKey
			var v fshaFlow
			it := h.maps.Flows.Iterate()
			for it.Next(&k, &v) {
				if mf, ok := state.flows[k]; ok {
					mf.FirstSeenNs, mf.LastSeenNs = v.FirstSeenNs, v.LastSeenNs
					state.flows[k] = mf
				}
			}
			if err := it.Err(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

// seqRun runs one frame through the program of direction d, the flow
// cache and every table as the last run left them, and returns its
// verdict.
func seqRun(t *testing.T, h *harness, d fshaDirection, pkt []byte) uint32 {
	t.Helper()
	opts := &ebpf.RunOptions{Data: pkt, DataOut: make([]byte, len(pkt)+256)}
	prog := h.objs.FshaTcEgress
	if d == ingress {
		prog = h.objs.FshaXdp
		opts.Context = xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: loIfindex}
	}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("run %s: %v", dirName(d), err)
	}
	return ret
}
