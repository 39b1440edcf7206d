package dataplane

import (
	"net/netip"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// KillPeerPort(s) ends the connections with one peer on some ports (the
// kick that makes ctdbd and GlusterFS see a dead node at once), and no
// other: not the same client's IPv6 connection, nothing for ports without
// connections.
func TestKillPeerPort(t *testing.T) {
	l := newTickleLab(t)
	v4, v6 := l.dial(t, l.vip4), l.dial(t, l.vip6)
	srv4, srv6 := serverRead(v4), serverRead(v6)
	v4.expectBlocked(t)

	var st KillStats
	var err error
	// a peer with no connection: nothing to do
	l.in(t, l.nsS, func() { st, err = KillPeerPort(zaptest.NewLogger(t), netip.MustParseAddr("198.18.9.77"), 445) })
	if err != nil || st.Conns != 0 {
		t.Fatalf("kill of a peer without connections: %+v, %v", st, err)
	}
	// the client's address on another port: nothing
	l.in(t, l.nsS, func() { st, err = KillPeerPort(zaptest.NewLogger(t), l.cli4, 4379) })
	if err != nil || st.Conns != 0 {
		t.Fatalf("kill on a port without connections: %+v, %v", st, err)
	}
	// every port but 445: the client's own (ephemeral) port is in it, and
	// does not count, the service's is 445
	around := PortSet{{1, 444}, {446, 65535}}
	l.in(t, l.nsS, func() { st, err = KillPeerPorts(zaptest.NewLogger(t), l.cli4, around) })
	if err != nil || st.Conns != 0 {
		t.Fatalf("kill on %s: %+v, %v", around, st, err)
	}
	v4.expectBlocked(t)

	// a range over the port
	l.in(t, l.nsS, func() { st, err = KillPeerPorts(zaptest.NewLogger(t), l.cli4, PortSet{{4379, 4379}, {400, 500}}) })
	if err != nil {
		t.Fatalf("KillPeerPort: %v", err)
	}
	if st.Conns != 1 || st.Destroyed != 1 || st.Errors != 0 {
		t.Errorf("stats %+v, want the one IPv4 connection destroyed", st)
	}
	took := v4.expectReset(t, time.Second)
	t.Logf("client reset %v after KillPeerPort returned", took)
	expectErrno(t, "server read", srv4, unix.ECONNABORTED)
	// the same client's IPv6 connection lives on
	v6.expectBlocked(t)
	select {
	case err := <-srv6:
		t.Errorf("the IPv6 connection's server read ended: %v", err)
	default:
	}
	// and the IPv6 one goes when asked for by its own address
	l.in(t, l.nsS, func() { st, err = KillPeerPort(zaptest.NewLogger(t), l.cli6, 445) })
	if err != nil || st.Destroyed != 1 {
		t.Errorf("IPv6 kill: %+v, %v", st, err)
	}
	v6.expectReset(t, time.Second)
}

// peerConns keeps a connection by its service's port: the local one when
// a listener holds it, the peer's otherwise; never by the other end's
// port, which may be an ephemeral port inside the set.
func TestPeerConnsByService(t *testing.T) {
	a := netip.MustParseAddr
	self, peer, other := a("198.18.0.11"), a("198.18.0.13"), a("198.18.0.12")
	gluster := PortSet{{24007, 24007}, {49152, 60999}}
	est := uint8(1) // TCP_ESTABLISHED
	socks := []diagSock{
		{state: tcpStateListen, src: self, sport: 56217},                 // a brick
		{state: tcpStateListen, src: netip.IPv4Unspecified(), sport: 22}, // sshd on all
		{state: tcpStateListen, src: netip.IPv6Unspecified(), sport: 24007},
		{state: est, src: self, sport: 56217, dst: peer, dport: 49144},  // peer's client on our brick: kill
		{state: est, src: self, sport: 49133, dst: peer, dport: 58753},  // our client on peer's brick: kill
		{state: est, src: self, sport: 24007, dst: peer, dport: 49151},  // peer's glusterd on ours: kill
		{state: est, src: self, sport: 22, dst: peer, dport: 50000},     // peer's ssh from a port in the set: keep
		{state: est, src: self, sport: 55296, dst: peer, dport: 4400},   // ours from a port in the set: keep
		{state: est, src: self, sport: 56217, dst: other, dport: 49144}, // another node on our brick: keep
		{state: tcpStateTimeWait, src: self, sport: 49133, dst: peer, dport: 58754},
	}
	got := peerConns(socks, peer, gluster)
	want := []Conn{
		{VIP: self, VIPPort: 56217, Client: peer, ClientPort: 49144},
		{VIP: self, VIPPort: 49133, Client: peer, ClientPort: 58753},
		{VIP: self, VIPPort: 24007, Client: peer, ClientPort: 49151},
	}
	if len(got) != len(want) {
		t.Fatalf("peerConns = %+v, want %+v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("conn %d = %+v, want %+v", i, got[i], want[i])
		}
	}
}
