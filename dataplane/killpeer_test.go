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
	// ranges around the port, not over it: nothing
	around := PortSet{{1, 444}, {446, 1023}} // the client's own port is ephemeral, above
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
