package membership

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap/zaptest"
)

func newLoopbackTransport(t *testing.T) *transport {
	t.Helper()
	tr, err := newTransport(zaptest.NewLogger(t), netip.MustParseAddrPort("127.0.0.1:0"))
	if err != nil {
		t.Fatal(err)
	}
	if tr.udp.LocalAddr().String() != tr.tcp.Addr().String() {
		t.Fatalf("UDP on %v, TCP on %v: want one port", tr.udp.LocalAddr(), tr.tcp.Addr())
	}
	return tr
}

// The transport hands memberlist each datagram in a buffer of its own
// size, which later datagrams never overwrite, and sends to an address
// given as host:port.
func TestTransportPackets(t *testing.T) {
	a, b := newLoopbackTransport(t), newLoopbackTransport(t)
	defer a.Shutdown()
	defer b.Shutdown()
	to := b.udp.LocalAddr().String()
	msgs := [][]byte{[]byte("first datagram, the longer one"), []byte("second")}
	for _, m := range msgs {
		if _, err := a.WriteToAddress(m, memberlist.Address{Addr: to, Name: "b"}); err != nil {
			t.Fatal(err)
		}
	}
	var got []*memberlist.Packet
	for range msgs {
		select {
		case p := <-b.PacketCh():
			got = append(got, p)
		case <-time.After(5 * time.Second):
			t.Fatalf("got %d of %d datagrams", len(got), len(msgs))
		}
	}
	for i, p := range got {
		if !bytes.Equal(p.Buf, msgs[i]) || cap(p.Buf) > 64 {
			t.Errorf("datagram %d: %q (cap %d), want %q in a buffer of its size", i, p.Buf, cap(p.Buf), msgs[i])
		}
		if p.From.String() != a.udp.LocalAddr().String() {
			t.Errorf("datagram %d from %v, want %v", i, p.From, a.udp.LocalAddr())
		}
	}
	if _, err := a.WriteTo([]byte("x"), "not an address"); err == nil {
		t.Error("a send to a malformed address succeeded")
	}
}

// Streams dialled to the transport come out of StreamCh; Shutdown ends
// the readers even while nobody reads the channels.
func TestTransportStreamsAndShutdown(t *testing.T) {
	a, b := newLoopbackTransport(t), newLoopbackTransport(t)
	defer a.Shutdown()
	c, err := a.DialTimeout(b.tcp.Addr().String(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case s := <-b.StreamCh():
		s.Close()
	case <-time.After(5 * time.Second):
		t.Fatal("no stream accepted")
	}
	// A datagram nobody reads leaves the reader blocked on the channel.
	if _, err := a.WriteTo([]byte("unread"), b.udp.LocalAddr().String()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	done := make(chan error)
	go func() { done <- b.Shutdown() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown hangs with a reader blocked on PacketCh")
	}
	if err := b.Shutdown(); err != nil {
		t.Errorf("second shutdown: %v", err)
	}
}

func TestTransportAdvertise(t *testing.T) {
	a := newLoopbackTransport(t)
	defer a.Shutdown()
	ip, port, err := a.FinalAdvertiseAddr("198.18.0.11", 4380)
	if err != nil || ip.String() != "198.18.0.11" || port != 4380 {
		t.Errorf("advertise 198.18.0.11:4380 = %v %d %v", ip, port, err)
	}
	if _, _, err := a.FinalAdvertiseAddr("not-an-ip", 1); err == nil {
		t.Error("a malformed advertise address was accepted")
	}
}
