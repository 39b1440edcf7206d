package dataplane

import (
	"net/netip"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
)

// TestProbeSegment: a drain's probe is a TCP keepalive probe as RFC 9293
// (3.8.4) has it, decoded from the bytes sent: from the VIP to the client,
// ACK only, its sequence number one below what the client acknowledged
// last (so the client must answer), the server's acknowledgement and
// window, a valid checksum.
func TestProbeSegment(t *testing.T) {
	for _, f := range []Flow{
		{VIP: netip.MustParseAddr("198.18.0.10"), VIPPort: 445, Client: netip.MustParseAddr("198.18.0.101"), ClientPort: 50000,
			AckIn: 1000, SeqIn: 777, WindowOut: 501},
		{VIP: netip.MustParseAddr("2001:2::10"), VIPPort: 2049, Client: netip.MustParseAddr("2001:2::101"), ClientPort: 700,
			AckIn: 0, SeqIn: 1, WindowOut: 9}, // the sequence space wraps
	} {
		s := probeSegment(f)
		b := make([]byte, s.ipLen())
		s.put(b)
		first := layers.LayerTypeIPv4
		if f.VIP.Is6() {
			first = layers.LayerTypeIPv6
		}
		pkt := gopacket.NewPacket(b, first, gopacket.Default)
		tcp, _ := pkt.Layer(layers.LayerTypeTCP).(*layers.TCP)
		if tcp == nil || pkt.ErrorLayer() != nil {
			t.Fatalf("%s: undecodable probe %x", f.VIP, b)
		}
		if !tcp.ACK || tcp.SYN || tcp.FIN || tcp.RST || tcp.PSH || len(tcp.Payload) != 0 ||
			tcp.Seq != f.AckIn-1 || tcp.Ack != f.SeqIn || tcp.Window != f.WindowOut ||
			uint16(tcp.SrcPort) != f.VIPPort || uint16(tcp.DstPort) != f.ClientPort {
			t.Errorf("%s: probe %+v", f.VIP, tcp)
		}
		if want := wantTCPChecksum(t, pkt.NetworkLayer(), tcp); tcp.Checksum != want {
			t.Errorf("%s: checksum %#04x, want %#04x", f.VIP, tcp.Checksum, want)
		}
		src, dst := pkt.NetworkLayer().NetworkFlow().Endpoints()
		if src.String() != f.VIP.String() || dst.String() != f.Client.String() {
			t.Errorf("probe %s > %s, want %s > %s", src, dst, f.VIP, f.Client)
		}
	}
}
