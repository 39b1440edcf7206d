package ownership

import (
	"net/netip"
	"testing"
)

// The heartbeats and the snapshot carry the node's MAC now (Local.MAC, a
// second interface after the first lost link) or, without it, the
// configured one.
func TestLocalMACReplacesConfigured(t *testing.T) {
	configured, linked := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 9}
	e, err := New(Config{Self: 0, Nodes: []int{0, 1, 2}, VIPs: []VIP{{Addr: netip.MustParseAddr("198.18.0.201")}},
		Timing: DefaultTiming(), MAC: configured, Start: 1})
	if err != nil {
		t.Fatal(err)
	}
	sent := func(now Mono) [6]byte {
		t.Helper()
		e.Tick(now)
		for _, env := range e.Ready().Send {
			if hb, ok := env.Msg.(*Heartbeat); ok {
				return hb.MAC
			}
		}
		t.Fatalf("no heartbeat sent at %v", now)
		return [6]byte{}
	}
	if got := sent(Mono(DefaultTiming().Renew) * 2); got != configured || e.Snapshot().MACs[0] != configured {
		t.Errorf("without a local MAC: heartbeat %x snapshot %x, want the configured %x", got, e.Snapshot().MACs[0], configured)
	}
	e.SetLocal(Mono(DefaultTiming().Renew)*3, Local{Healthy: true, MAC: linked})
	if got := sent(Mono(DefaultTiming().Renew) * 5); got != linked || e.Snapshot().MACs[0] != linked {
		t.Errorf("with a local MAC: heartbeat %x snapshot %x, want %x", got, e.Snapshot().MACs[0], linked)
	}
}

// The heartbeats carry the interfaces whose MAC differs from the node's
// (at most MaxIfaces, and fewer when the claims need the room), and the
// receiver's snapshot has them for the sender.
func TestInterfaceMACsInHeartbeats(t *testing.T) {
	nodeMAC := [6]byte{2, 0, 0, 0, 0, 1}
	var vips []VIP
	for i := range 40 {
		vips = append(vips, VIP{Addr: netip.AddrFrom16([16]byte{0x20, 0x01, 0, 2, 15: byte(i + 1)})})
	}
	cfg := func(self int) Config {
		return Config{Self: self, Nodes: []int{0, 1, 2}, VIPs: vips, Timing: DefaultTiming(), MAC: nodeMAC, Start: 1}
	}
	e, err := New(cfg(0))
	if err != nil {
		t.Fatal(err)
	}
	peer, err := New(cfg(1))
	if err != nil {
		t.Fatal(err)
	}
	var ifaces []IfaceMAC
	ifaces = append(ifaces, IfaceMAC{Name: "bond0", MAC: nodeMAC}, IfaceMAC{Name: "", MAC: [6]byte{2, 9}})
	for i := range MaxIfaces + 4 {
		ifaces = append(ifaces, IfaceMAC{Name: "vlan-storage" + string(rune('a'+i)), MAC: [6]byte{2, 0, 0, 0, 1, byte(i)}})
	}
	renew := Mono(DefaultTiming().Renew)
	e.SetLocal(renew, Local{Healthy: true, MAC: nodeMAC, Ifaces: ifaces})
	e.Tick(renew * 3)
	var hb *Heartbeat
	for _, env := range e.Ready().Send {
		if h, ok := env.Msg.(*Heartbeat); ok && env.To == 1 {
			hb = h
		}
	}
	if hb == nil {
		t.Fatal("no heartbeat to node 1")
	}
	if len(hb.Ifaces) != MaxIfaces || hb.Ifaces[0].Name != "vlan-storagea" {
		t.Fatalf("heartbeat interfaces %+v: want the first %d with a MAC of their own", hb.Ifaces, MaxIfaces)
	}
	if _, err := hb.MarshalBinary(); err != nil {
		t.Fatalf("heartbeat does not encode: %v", err)
	}
	peer.Receive(renew*3, hb)
	if got := peer.Snapshot().Ifaces[0]; len(got) != MaxIfaces || got[1] != hb.Ifaces[1] {
		t.Errorf("receiver's snapshot: %+v", got)
	}

	// 32 IPv6 claims leave less room: the interfaces give way
	big := *hb
	for i := range claimsPerMessage {
		big.Claims = append(big.Claims, Claim{VIP: vips[i].Addr, Epoch: 1 << 40, State: ClaimHeld})
	}
	big.Hears = []int{0, 1, 2}
	if _, err := big.MarshalBinary(); err == nil {
		t.Fatal("the untrimmed heartbeat fits: the test does not exercise the trim")
	}
	big.fitIfaces()
	if len(big.Ifaces) == 0 || len(big.Ifaces) == MaxIfaces {
		t.Fatalf("trimmed to %d interfaces: the test does not exercise the trim", len(big.Ifaces))
	}
	if _, err := big.MarshalBinary(); err != nil {
		t.Fatalf("trimmed heartbeat: %v", err)
	}
}
