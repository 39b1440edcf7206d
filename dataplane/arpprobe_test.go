package dataplane

import (
	"bytes"
	"fmt"
	"net/netip"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/google/gopacket/layers"
)

// TestARPProbeFromFencedVIP: an ARP request the node sends with a VIP it
// may not answer for as the sender (a drain's VIP on loopback is the only
// address the kernel finds on an interface without one of its own) leaves
// as a probe, sender 0.0.0.0 and nothing else changed, counted as such;
// with the VIP held it leaves untouched; a gratuitous request (sender =
// target) and a reply from it are still dropped. Every lease state a VIP
// can be fenced in is run, and ingress is never rewritten.
func TestARPProbeFromFencedVIP(t *testing.T) {
	h := newHarness(t, 64)
	h.configure(t, []netip.Addr{vip4}, defaultPorts)
	if err := h.maps.SetFencingMode(false, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.maps.SetFencingMode(false, false) })
	egress := func(pkt []byte) (uint32, []byte) {
		t.Helper()
		out := make([]byte, len(pkt)+256)
		ret, err := h.objs.FshaTcEgress.Run(&ebpf.RunOptions{Data: pkt, DataOut: out})
		if err != nil {
			t.Fatal(err)
		}
		return ret, out[:len(pkt)]
	}
	request := leaseARPFrame(t, layers.ARPRequest, vip4, client4)
	probe := bytes.Clone(request)
	copy(probe[14+14:14+18], []byte{0, 0, 0, 0}) // the sender protocol address
	if !bytes.Equal(leaseARPFrame(t, layers.ARPRequest, netip.IPv4Unspecified(), client4), probe) {
		t.Fatal("the test's probe is not what gopacket builds for sender 0.0.0.0")
	}
	gratuitous := leaseARPFrame(t, layers.ARPRequest, vip4, vip4)
	reply := leaseARPFrame(t, layers.ARPReply, vip4, client4)

	for _, st := range leaseStates() {
		if err := h.maps.SetVIPLease(vip4, st.set(vip4)); err != nil {
			t.Fatal(err)
		}
		what := fmt.Sprintf("lease %s", st.name)
		before := h.counters(t)
		ret, out := egress(request)
		want := probe
		if st.arpOK {
			want = request
		}
		if ret != tcxNext || !bytes.Equal(out, want) {
			t.Errorf("%s: request from the VIP: verdict %#x, frame\n%x\nwant TCX_NEXT and\n%x", what, ret, out, want)
		}
		after := h.counters(t)
		if d := after.Egress.ARPProbed - before.Egress.ARPProbed; d != b2u(!st.arpOK) {
			t.Errorf("%s: arp_probed +%d", what, d)
		}
		if d := after.Egress.Fenced - before.Egress.Fenced; d != 0 {
			t.Errorf("%s: a probe counted as fenced (+%d)", what, d)
		}
		for name, pkt := range map[string][]byte{"gratuitous request": gratuitous, "reply": reply} {
			want := uint32(tcxNext)
			if !st.arpOK {
				want = tcxDrop
			}
			if ret, out := egress(pkt); ret != want || !bytes.Equal(out, pkt) {
				t.Errorf("%s: %s from the VIP: verdict %#x (changed %v), want %#x unchanged", what, name, ret, !bytes.Equal(out, pkt), want)
			}
		}
		// ingress: a request from the VIP (another node's) passes as it is
		if x, _ := verdicts(t, h, request); x != xdpPass {
			t.Errorf("%s: ingress request from the VIP: XDP verdict %d, want pass", what, x)
		}
	}
}
