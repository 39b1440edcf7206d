package dataplane

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// TestSteeringPerInterfaceMAC: a steered frame goes to its owner's MAC on
// the network of the interface it came in on (peer_macs) when the owner
// said one, to the owner's node MAC otherwise, on both steering paths;
// an owner with neither is a steer error. SetPeerMACs replaces what it
// wrote for that owner and only that.
func TestSteeringPerInterfaceMAC(t *testing.T) {
	h := newHarness(t, 64)
	t.Cleanup(func() {
		h.maps.SetSteering(0)
		h.maps.SteerModes.Delete(uint32(loIfindex))
		h.maps.DeletePeerFlowsWhere(func(PeerFlow) bool { return true })
		h.maps.SetPeerMACs(2, nil)
		h.maps.SetPeerMACs(7, nil)
		h.maps.SetPeerMACs(3, nil)
	})
	nodeMAC := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	onLo := [6]byte{0x02, 0xbb, 0, 0, 0, 2}
	elsewhere := [6]byte{0x02, 0xcc, 0, 0, 0, 2}
	only7 := [6]byte{0x02, 0xbb, 0, 0, 0, 7}
	if err := h.maps.SetNodeMAC(2, nodeMAC); err != nil {
		t.Fatal(err)
	}
	c2 := conn{vip: vip4, client: client4, vport: 445, cport: 43000}
	c7 := conn{vip: vip6, client: client6, vport: 2049, cport: 43001}
	c9 := conn{vip: vip4, client: client4, vport: 445, cport: 43002}
	if err := h.maps.UpsertPeerFlows([]PeerFlow{
		{VIP: c2.vip, VIPPort: c2.vport, Client: c2.client, ClientPort: c2.cport, Owner: 2, Steer: true, LastSeen: time.Now()},
		{VIP: c7.vip, VIPPort: c7.vport, Client: c7.client, ClientPort: c7.cport, Owner: 7, Steer: true, LastSeen: time.Now()},
		{VIP: c9.vip, VIPPort: c9.vport, Client: c9.client, ClientPort: c9.cport, Owner: 9, Steer: true, LastSeen: time.Now()},
	}); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetSteering(1); err != nil {
		t.Fatal(err)
	}
	// dst is the MAC the frame must leave with; nil: not steered
	check := func(step string, c conn, dst []byte) {
		t.Helper()
		pkt := c.in(tcpACK|tcpPSH, 1, 2, 20).bytes(t)
		want := pkt
		if dst != nil {
			want = append(append(append([]byte{}, dst...), pkt[0:6]...), pkt[12:]...)
		}
		h.setSteerMode(t, fshaSteerModeSTEER_MODE_XDP)
		ret, out := h.steerRun(t, h.objs.FshaXdp, pkt)
		if (ret == xdpTX) != (dst != nil) || !bytes.Equal(out, want) {
			t.Errorf("%s: xdp path: verdict %d, frame\n%x\nwant\n%x", step, ret, out, want)
		}
		h.setSteerMode(t, fshaSteerModeSTEER_MODE_TC)
		ret, out = h.steerRun(t, h.objs.FshaTcIngress, pkt)
		if (ret == tcActRedirect) != (dst != nil) || !bytes.Equal(out, want) {
			t.Errorf("%s: tc path: verdict %#x, frame\n%x\nwant\n%x", step, ret, out, want)
		}
	}

	check("no interface MACs", c2, nodeMAC)
	check("no interface MACs, owner without node MAC", c7, nil)

	// node 2 said its MAC on this interface's network and on another's
	if err := h.maps.SetPeerMACs(2, map[int][6]byte{loIfindex: onLo, 99: elsewhere}); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.SetPeerMACs(7, map[int][6]byte{loIfindex: only7}); err != nil {
		t.Fatal(err)
	}
	check("interface MAC", c2, onLo[:])
	check("interface MAC, owner without node MAC", c7, only7[:])
	// a new node MAC keeps the interface MACs in force
	if err := h.maps.SetNodeMAC(2, nodeMAC); err != nil {
		t.Fatal(err)
	}
	check("interface MAC after the node MAC was written again", c2, onLo[:])
	before := h.counters(t)
	check("owner without any MAC", c9, nil)
	if after := h.counters(t); after.Ingress.SteerErrors != before.Ingress.SteerErrors+1 {
		t.Errorf("owner without any MAC: steer errors %d -> %d, want +1 (xdp path)", before.Ingress.SteerErrors, after.Ingress.SteerErrors)
	}

	// node 2 no longer has this interface's network: back to its node MAC;
	// node 7's entry is untouched
	if err := h.maps.SetPeerMACs(2, map[int][6]byte{99: elsewhere}); err != nil {
		t.Fatal(err)
	}
	check("interface MAC withdrawn", c2, nodeMAC)
	check("another owner's entry kept", c7, only7[:])
	var nm fshaNodeMac
	got, err := h.maps.PeerMACs()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || len(got[2]) != 1 || got[2][99] != elsewhere || got[7][loIfindex] != only7 {
		t.Fatalf("peer macs: %v", got)
	}
	if err := h.maps.NodeMacs.Lookup(uint32(2), &nm); err != nil || nm.Valid&uint16(fshaNodeMacFlagsNODE_MAC_PER_IFACE) == 0 {
		t.Errorf("node 2's node_macs entry %+v (%v): interface MACs not flagged", nm, err)
	}
	// none left for node 2: the programs no longer look for them
	if err := h.maps.SetPeerMACs(2, nil); err != nil {
		t.Fatal(err)
	}
	if err := h.maps.NodeMacs.Lookup(uint32(2), &nm); err != nil || nm.Valid != uint16(fshaNodeMacFlagsNODE_MAC_VALID) || nm.Mac != [6]byte(nodeMAC) {
		t.Errorf("node 2's node_macs entry %+v (%v), want its MAC, valid, no interface MACs", nm, err)
	}
	check("interface MACs all withdrawn", c2, nodeMAC)
	if err := h.maps.SetPeerMACs(MaxNodes, nil); err == nil {
		t.Error("node out of range accepted")
	}
	if err := h.maps.SetPeerMACs(3, map[int][6]byte{loIfindex: {}}); err != nil {
		t.Fatal(err)
	}
	if got, _ := h.maps.PeerMACs(); got[3] != nil {
		t.Errorf("a zero MAC was written: %v", got[3])
	}
}
