package dataplane

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestPruneFlows: a flow whose local socket is gone is removed, one whose
// socket lives is kept.
func TestPruneFlows(t *testing.T) {
	h := newHarness(t, 64)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cli, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	local := netip.MustParseAddrPort(srv.LocalAddr().String())
	remote := netip.MustParseAddrPort(srv.RemoteAddr().String())
	h.configure(t, []netip.Addr{local.Addr(), vip4}, []uint16{local.Port(), 445})

	alive := conn{vip: local.Addr(), client: remote.Addr(), vport: local.Port(), cport: remote.Port()}
	gone := conn{vip: vip4, client: client4, vport: 445, cport: 40999}
	h.run(t, egress, alive.out(tcpACK, 1, 1, 0).bytes(t))
	h.run(t, egress, gone.out(tcpACK, 1, 1, 0).bytes(t))
	if len(h.flows(t)) != 2 {
		t.Fatalf("flows: %+v", h.flows(t))
	}
	time.Sleep(50 * time.Millisecond) // older than the socket list
	n, err := h.maps.PruneFlows()
	if err != nil || n != 1 {
		t.Fatalf("pruned %d (%v), want 1", n, err)
	}
	if _, ok := h.flow(t, alive); !ok {
		t.Fatal("the flow of a live socket was pruned")
	}
	if _, ok := h.flow(t, gone); ok {
		t.Fatal("the flow without a socket is still there")
	}
}
