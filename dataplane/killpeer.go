package dataplane

// Ending this node's TCP connections with one peer on some ports: when
// fsha has decided that a node is dead, the connections of a cluster
// service with it (ctdbd's, port 4379; GlusterFS's glusterd, 24007, and
// bricks, 49152 and up) may still look alive to that service, which then
// waits for its own, slower, keepalives. Destroying them makes the
// service see the peer gone at once (CTDB marks a node disconnected when
// its transport's socket fails; a brick drops a disconnected client's
// locks, a client gives up a disconnected brick), as `ss -K dst PEER '(
// sport = :PORT or dport = :PORT )'` would. See docs/ctdb-lab/RESULTS.md
// and BENCHMARKS.md (I/O freeze) for what it saves.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// KillPeerPort destroys the TCP connections of this network namespace
// whose remote end is peer and whose local or remote port is port. It
// needs CAP_NET_ADMIN.
func KillPeerPort(log *zap.Logger, peer netip.Addr, port uint16) (KillStats, error) {
	return KillPeerPorts(log, peer, PortSet{{port, port}})
}

// KillPeerPorts destroys the TCP connections of this network namespace
// whose remote end is peer and whose local or remote port is in ports.
// It needs CAP_NET_ADMIN.
func KillPeerPorts(log *zap.Logger, peer netip.Addr, ports PortSet) (KillStats, error) {
	if len(ports) == 0 {
		return KillStats{}, nil
	}
	conns, err := peerConns(peer.Unmap(), ports)
	if err != nil {
		return KillStats{}, err
	}
	return killConns(log, conns, destroySockets)
}

// peerConns lists the live TCP connections with peer on ports, each as a
// Conn whose "VIP" side is the local socket (what destroySockets looks up).
func peerConns(peer netip.Addr, ports PortSet) ([]Conn, error) {
	s, err := openSockDiag()
	if err != nil {
		return nil, err
	}
	defer s.Close()
	req := make([]byte, nlmsgHeaderLen+inetDiagReqV2Len)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1)
	r := req[nlmsgHeaderLen:]
	r[0] = unix.AF_INET
	if peer.Is6() {
		r[0] = unix.AF_INET6
	}
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state; filtered below
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	var out []Conn
	for done := false; !done; {
		err := s.receive("sock_diag dump", func(typ uint16, _ uint32, p []byte) error {
			switch {
			case done:
			case typ == unix.NLMSG_DONE:
				done = true
			case typ == unix.NLMSG_ERROR:
				if err := nlError(p); err != nil {
					return fmt.Errorf("sock_diag dump: %w", err)
				}
			case typ == unix.SOCK_DIAG_BY_FAMILY:
				if c, ok := peerConn(p, peer, ports); ok {
					out = append(out, c)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// peerConn decodes one inet_diag_msg and keeps it when it is a live
// connection with peer on ports.
func peerConn(p []byte, peer netip.Addr, ports PortSet) (Conn, bool) {
	if len(p) < inetDiagMsgLen {
		return Conn{}, false
	}
	state := p[1]
	if state == tcpStateListen || state == tcpStateTimeWait || state == tcpStateClose {
		return Conn{}, false
	}
	sport, dport := binary.BigEndian.Uint16(p[4:]), binary.BigEndian.Uint16(p[6:])
	var src, dst netip.Addr
	if p[0] == unix.AF_INET {
		src, dst = netip.AddrFrom4([4]byte(p[8:12])), netip.AddrFrom4([4]byte(p[24:28]))
	} else {
		src, dst = netip.AddrFrom16([16]byte(p[8:24])).Unmap(), netip.AddrFrom16([16]byte(p[24:40])).Unmap()
	}
	if dst != peer || (!ports.Contains(sport) && !ports.Contains(dport)) {
		return Conn{}, false
	}
	return Conn{VIP: src, VIPPort: sport, Client: dst, ClientPort: dport}, true
}
