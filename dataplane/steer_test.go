package dataplane

import (
	"bytes"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

const xdpTX = 3 // XDP_TX

// TestSteering: with steering on, a packet of a peer flow marked to steer
// leaves again (XDP_TX) towards its owner's MAC; unmarked peer flows, local
// flows and new connections go to the local stack; steering off passes all.
func TestSteering(t *testing.T) {
	h := newHarness(t, 64)
	t.Cleanup(func() { h.maps.SetSteering(0) })
	owner := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	if err := h.maps.SetNodeMAC(2, owner); err != nil {
		t.Fatal(err)
	}
	steered := conn{vip: vip4, client: client4, vport: 445, cport: 41000}
	plain := conn{vip: vip4, client: client4, vport: 445, cport: 41001}
	noMAC := conn{vip: vip4, client: client4, vport: 445, cport: 41002}
	newConn := conn{vip: vip4, client: client4, vport: 445, cport: 41003}
	if err := h.maps.UpsertPeerFlows([]PeerFlow{
		{VIP: vip4, VIPPort: 445, Client: client4, ClientPort: 41000, Owner: 2, Steer: true, LastSeen: time.Now()},
		{VIP: vip4, VIPPort: 445, Client: client4, ClientPort: 41001, Owner: 2},
		{VIP: vip4, VIPPort: 445, Client: client4, ClientPort: 41002, Owner: 7, Steer: true},
	}); err != nil {
		t.Fatal(err)
	}
	run := func(pkt []byte) (uint32, []byte) {
		out := make([]byte, len(pkt)+256)
		ret, err := h.objs.FshaXdp.Run(&ebpf.RunOptions{Data: pkt, DataOut: out,
			Context: xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: 1}})
		if err != nil {
			t.Fatal(err)
		}
		return ret, out[:len(pkt)]
	}

	pkt := steered.in(tcpACK, 1, 2, 10).bytes(t)
	if ret, _ := run(pkt); ret != xdpPass {
		t.Fatalf("steering off: verdict %d, want pass", ret)
	}
	if err := h.maps.SetSteering(1); err != nil {
		t.Fatal(err)
	}
	before := h.counters(t)
	ret, out := run(pkt)
	if ret != xdpTX {
		t.Fatalf("steered flow: verdict %d, want XDP_TX", ret)
	}
	if !bytes.Equal(out[0:6], owner) || !bytes.Equal(out[6:12], pkt[0:6]) || !bytes.Equal(out[12:], pkt[12:]) {
		t.Fatalf("steered frame: dst %x src %x; want dst %x src %x, rest unchanged", out[0:6], out[6:12], owner, pkt[0:6])
	}
	if after := h.counters(t); after.Ingress.Steered != before.Ingress.Steered+1 {
		t.Fatalf("steered counter %d -> %d", before.Ingress.Steered, after.Ingress.Steered)
	}
	for name, c := range map[string]conn{"unmarked peer flow": plain, "new connection": newConn} {
		if ret, _ := run(c.in(tcpSYN, 1, 0, 0).bytes(t)); ret != xdpPass {
			t.Errorf("%s: verdict %d, want pass", name, ret)
		}
	}
	before = h.counters(t)
	if ret, _ := run(noMAC.in(tcpACK, 1, 2, 0).bytes(t)); ret != xdpPass {
		t.Errorf("owner without MAC: verdict %d, want pass", ret)
	}
	if after := h.counters(t); after.Ingress.SteerErrors != before.Ingress.SteerErrors+1 {
		t.Errorf("steer errors not counted")
	}

	// a local flow wins over a peer entry for the same tuple
	h.run(t, egress, steered.out(tcpACK, 2, 1, 0).bytes(t))
	if ret, _ := run(pkt); ret != xdpPass {
		t.Errorf("local flow: verdict %d, want pass", ret)
	}

	var got []PeerFlow
	if err := h.maps.ForEachPeerFlow(func(f PeerFlow) bool { got = append(got, f); return true }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("peer flows: %+v", got)
	}
	n, err := h.maps.DeletePeerFlowsWhere(func(f PeerFlow) bool { return f.Owner == 2 })
	if err != nil || n != 2 {
		t.Fatalf("deleted %d (%v), want 2", n, err)
	}
	h.maps.DeletePeerFlowsWhere(func(PeerFlow) bool { return true })
}

func TestPeerMapFull(t *testing.T) {
	m := bareMaps(t)
	m.indexes().setPeerLimits(4, 4)
	var flows []PeerFlow
	for i := range 6 {
		flows = append(flows, PeerFlow{VIP: vip4, VIPPort: 445, Client: client4, ClientPort: uint16(100 + i), Owner: 1})
	}
	waitPeerReady(t, m)
	if err := m.UpsertPeerFlows(flows); !errors.Is(err, ErrPeerMapFull) {
		t.Fatalf("want ErrPeerMapFull, got %v", err)
	}
	// the index holds what was stored, no more
	stored, err := m.PeerFlowsOf(vip4, nil)
	if err != nil || len(stored) != 4 || m.IndexStats().PeerFlows != 4 {
		t.Fatalf("index holds %d (%v, %+v), the map 4", len(stored), err, m.IndexStats())
	}
}
