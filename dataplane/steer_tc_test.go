package dataplane

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

const tcActRedirect = 7 // TC_ACT_REDIRECT, what bpf_redirect returns

// loIfindex is the interface BPF_PROG_RUN gives both programs' packets
// (xdp_md.ingress_ifindex, skb->ifindex): the loopback device.
const loIfindex = 1

// steerRun runs one frame through one ingress program and returns its
// verdict and the frame as the program left it.
func (h *harness) steerRun(t *testing.T, prog *ebpf.Program, pkt []byte) (uint32, []byte) {
	t.Helper()
	out := make([]byte, len(pkt)+256)
	opts := &ebpf.RunOptions{Data: pkt, DataOut: out}
	if prog == h.objs.FshaXdp {
		opts.Context = xdpMd{DataEnd: uint32(len(pkt)), IngressIfindex: loIfindex}
	}
	ret, err := prog.Run(opts)
	if err != nil {
		t.Fatalf("run %v: %v", prog, err)
	}
	return ret, out[:len(pkt)]
}

func (h *harness) setSteerMode(t *testing.T, mode fshaSteerMode) {
	t.Helper()
	if err := h.maps.SetSteerMode(loIfindex, mode); err != nil {
		t.Fatal(err)
	}
}

// TestSteeringTCMatchesXDP: the same frames through the two steering
// paths. Each case says (from what the test set up, not from either
// program) whether the frame is to be steered. In xdp mode XDP ingress
// steers it (XDP_TX); in tc mode XDP ingress passes it and counts a
// handoff, and TC ingress steers it (TC_ACT_REDIRECT) into the very same
// bytes XDP_TX sends; every other frame both leave alone. TC ingress
// never steers on an interface in xdp mode, where XDP already did.
func TestSteeringTCMatchesXDP(t *testing.T) {
	h := newHarness(t, 64)
	t.Cleanup(func() {
		h.maps.SetSteering(0)
		h.maps.SteerModes.Delete(uint32(loIfindex))
		h.maps.DeletePeerFlowsWhere(func(PeerFlow) bool { return true })
	})
	owner := net.HardwareAddr{0x02, 0xaa, 0, 0, 0, 2}
	if err := h.maps.SetNodeMAC(2, owner); err != nil {
		t.Fatal(err)
	}
	steer4 := conn{vip: vip4, client: client4, vport: 445, cport: 42000}
	steer6 := conn{vip: vip6, client: client6, vport: 2049, cport: 42001}
	steerVLAN := conn{vip: vip4, client: client4, vport: 445, cport: 42002, vlans: []uint16{7}}
	unmarked := conn{vip: vip4, client: client4, vport: 445, cport: 42003}
	noMAC := conn{vip: vip4, client: client4, vport: 445, cport: 42004}
	local := conn{vip: vip4, client: client4, vport: 445, cport: 42005}
	newConn := conn{vip: vip4, client: client4, vport: 445, cport: 42006}
	untrackedPort := conn{vip: vip4, client: client4, vport: 22, cport: 42007}
	notVIP := conn{vip: other4, client: client4, vport: 445, cport: 42008}
	peer := func(c conn, pnn int, steer bool) PeerFlow {
		return PeerFlow{VIP: c.vip, VIPPort: c.vport, Client: c.client, ClientPort: c.cport, Owner: pnn, Steer: steer, LastSeen: time.Now()}
	}
	if err := h.maps.UpsertPeerFlows([]PeerFlow{
		peer(steer4, 2, true), peer(steer6, 2, true), peer(steerVLAN, 2, true),
		peer(unmarked, 2, false), peer(noMAC, 7, true), peer(local, 2, true),
		peer(untrackedPort, 2, true), peer(notVIP, 2, true),
	}); err != nil {
		t.Fatal(err)
	}
	// a local flow wins over a peer entry for the same tuple
	h.run(t, egress, local.out(tcpACK, 2, 1, 0).bytes(t))

	truncated := steer4.in(tcpACK, 1, 2, 0).bytes(t)[:14+20+10] // in the TCP header
	cases := []struct {
		name  string
		pkt   []byte
		steer bool
	}{
		{"ipv4 data", steer4.in(tcpACK|tcpPSH, 1, 2, 100).bytes(t), true},
		{"ipv4 pure ack", steer4.in(tcpACK, 101, 2, 0).bytes(t), true},
		{"ipv4 fin", steer4.in(tcpACK|tcpFIN, 101, 2, 0).bytes(t), true},
		{"ipv4 rst", steer4.in(tcpRST, 101, 0, 0).bytes(t), true},
		{"ipv6 data", steer6.in(tcpACK|tcpPSH, 1, 2, 200).bytes(t), true},
		{"vlan-tagged ipv4", steerVLAN.in(tcpACK|tcpPSH, 1, 2, 50).bytes(t), true},
		{"peer flow not marked to steer", unmarked.in(tcpACK, 1, 2, 10).bytes(t), false},
		{"owner without MAC", noMAC.in(tcpACK, 1, 2, 10).bytes(t), false},
		{"local flow", local.in(tcpACK, 1, 2, 10).bytes(t), false},
		{"new connection", newConn.in(tcpSYN, 1, 0, 0).bytes(t), false},
		{"untracked port", untrackedPort.in(tcpACK, 1, 2, 10).bytes(t), false},
		{"not a VIP", notVIP.in(tcpACK, 1, 2, 10).bytes(t), false},
		{"truncated tcp header", truncated, false},
		{"fragment", func() []byte {
			f := steer4.in(tcpACK, 1, 2, 40)
			f.moreFrags = true
			return f.bytes(t)
		}(), false},
	}
	if err := h.maps.SetSteering(1); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			// xdp mode: XDP_TX with the owner's MAC
			h.setSteerMode(t, fshaSteerModeSTEER_MODE_XDP)
			before := h.counters(t)
			xret, xout := h.steerRun(t, h.objs.FshaXdp, c.pkt)
			after := h.counters(t)
			if got := xret == xdpTX; got != c.steer {
				t.Fatalf("xdp mode: XDP verdict %d, steered %v, want %v", xret, got, c.steer)
			}
			if d := after.Ingress.Steered - before.Ingress.Steered; d != b2u(c.steer) {
				t.Errorf("xdp mode: steered counter +%d", d)
			}
			want := c.pkt
			if c.steer {
				want = append(append(append([]byte{}, owner...), c.pkt[0:6]...), c.pkt[12:]...)
			}
			if !bytes.Equal(xout, want) {
				t.Fatalf("xdp mode: frame\n%x\nwant\n%x", xout, want)
			}
			if ret, out := h.steerRun(t, h.objs.FshaTcIngress, c.pkt); ret != tcxNext || !bytes.Equal(out, c.pkt) {
				t.Errorf("xdp mode: TC ingress verdict %#x (frame changed: %v), want TCX_NEXT, untouched", ret, !bytes.Equal(out, c.pkt))
			}

			// tc mode: XDP passes and counts a handoff, TC redirects
			h.setSteerMode(t, fshaSteerModeSTEER_MODE_TC)
			before = h.counters(t)
			if ret, out := h.steerRun(t, h.objs.FshaXdp, c.pkt); ret != xdpPass || !bytes.Equal(out, c.pkt) {
				t.Fatalf("tc mode: XDP verdict %d (frame changed: %v), want XDP_PASS, untouched", ret, !bytes.Equal(out, c.pkt))
			}
			tret, tout := h.steerRun(t, h.objs.FshaTcIngress, c.pkt)
			after = h.counters(t)
			if got := tret == tcActRedirect; got != c.steer {
				t.Fatalf("tc mode: TC verdict %#x, steered %v, want %v", tret, got, c.steer)
			}
			if !c.steer && tret != tcxNext {
				t.Fatalf("tc mode: TC verdict %#x, want TCX_NEXT", tret)
			}
			if !bytes.Equal(tout, xout) {
				t.Fatalf("tc mode: TC frame\n%x\nXDP_TX frame\n%x", tout, xout)
			}
			if d := after.Ingress.SteerHandoffs - before.Ingress.SteerHandoffs; d != b2u(c.steer) {
				t.Errorf("tc mode: handoffs +%d", d)
			}
			if d := after.Ingress.TCSteered - before.Ingress.TCSteered; d != b2u(c.steer) {
				t.Errorf("tc mode: tc_steered +%d", d)
			}
			if d := after.Ingress.Steered - before.Ingress.Steered; d != 0 {
				t.Errorf("tc mode: XDP steered counter +%d", d)
			}
		})
	}

	// steering off: TC ingress leaves even a marked flow alone
	if err := h.maps.SetSteering(0); err != nil {
		t.Fatal(err)
	}
	pkt := cases[0].pkt
	if ret, out := h.steerRun(t, h.objs.FshaTcIngress, pkt); ret != tcxNext || !bytes.Equal(out, pkt) {
		t.Errorf("steering off: TC verdict %#x, want TCX_NEXT, untouched", ret)
	}
	if ret, _ := h.steerRun(t, h.objs.FshaXdp, pkt); ret != xdpPass {
		t.Errorf("steering off: XDP verdict %d, want XDP_PASS", ret)
	}
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

// TestChooseSteer: the steering path each kind of interface gets.
func TestChooseSteer(t *testing.T) {
	for _, c := range []struct {
		want            SteerMode
		driver, xdpMode string
		steer           fshaSteerMode
	}{
		{SteerAuto, "veth", XDPNative, fshaSteerModeSTEER_MODE_TC},
		{SteerAuto, "i40e", XDPNative, fshaSteerModeSTEER_MODE_XDP},
		{SteerAuto, "mlx5_core", XDPNative, fshaSteerModeSTEER_MODE_XDP},
		{SteerAuto, "i40e", XDPGeneric, fshaSteerModeSTEER_MODE_TC},
		{SteerAuto, "bridge", XDPGeneric, fshaSteerModeSTEER_MODE_TC},
		{SteerAuto, "macvlan", XDPNative, fshaSteerModeSTEER_MODE_TC},
		{SteerAuto, "", XDPNative, fshaSteerModeSTEER_MODE_TC},
		{SteerXDP, "veth", XDPGeneric, fshaSteerModeSTEER_MODE_XDP},
		{SteerTC, "i40e", XDPNative, fshaSteerModeSTEER_MODE_TC},
	} {
		got, why := chooseSteer(c.want, c.driver, c.xdpMode)
		if got != c.steer || why == "" {
			t.Errorf("%s on %q (%s): %s (%q), want %s", c.want, c.driver, c.xdpMode, steerModeName(got), why, steerModeName(c.steer))
		}
	}
	for in, want := range map[string]SteerMode{"": SteerAuto, "AUTO": SteerAuto, "xdp": SteerXDP, " tc ": SteerTC} {
		if got, err := ParseSteerMode(in); err != nil || got != want {
			t.Errorf("ParseSteerMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseSteerMode("skb"); err == nil {
		t.Error("ParseSteerMode(skb): no error")
	}
}
