package dataplane

// Ending this node's TCP connections with one peer on some ports: when
// fsha has decided that a node is dead, the connections of a cluster
// service with it (ctdbd's, port 4379; GlusterFS's glusterd, 24007, and
// bricks, 49152 and up) may still look alive to that service, which then
// waits for its own, slower, keepalives. Destroying them makes the
// service see the peer gone at once (CTDB marks a node disconnected when
// its transport's socket fails; a brick drops a disconnected client's
// locks, a client gives up a disconnected brick), much as `ss -K dst PEER
// '( sport = :PORT or dport = :PORT )'` would, but only the service's end
// of each port (KillPeerPorts). See docs/ctdb-lab/RESULTS.md and
// BENCHMARKS.md (I/O freeze) for what it saves.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// KillPeerPort is KillPeerPorts for one port.
func KillPeerPort(log *zap.Logger, peer netip.Addr, port uint16) (KillStats, error) {
	return KillPeerPorts(log, peer, PortSet{{port, port}})
}

// KillPeerPorts destroys the TCP connections of this network namespace
// with peer that belong to a service on ports: those this node accepted
// on a port of the set (a local listener's) and those it opened to a
// port of the set on peer. A connection's other end does not count:
// GlusterFS's brick ports (49152-60999) overlap Linux's ephemeral ports,
// and the peer's ssh session to this node's port 22 from its port 50000
// is no brick's. It needs CAP_NET_ADMIN.
func KillPeerPorts(log *zap.Logger, peer netip.Addr, ports PortSet) (KillStats, error) {
	if len(ports) == 0 {
		return KillStats{}, nil
	}
	s, err := openSockDiag()
	if err != nil {
		return KillStats{}, err
	}
	defer s.Close()
	peer = peer.Unmap()
	var socks []diagSock
	// both families: an IPv6 listener on [::] accepts IPv4 connections
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		got, err := s.dumpTCP(family)
		if err != nil {
			return KillStats{}, err
		}
		socks = append(socks, got...)
	}
	return killConns(log, peerConns(socks, peer, ports), destroySockets)
}

// diagSock is one TCP socket of a sock_diag dump.
type diagSock struct {
	state        uint8
	src, dst     netip.Addr // unmapped
	sport, dport uint16
}

// dumpTCP lists the TCP sockets of family in this namespace, every state.
func (s *sockDiag) dumpTCP(family uint8) ([]diagSock, error) {
	req := make([]byte, nlmsgHeaderLen+inetDiagReqV2Len)
	ne := binary.NativeEndian
	ne.PutUint32(req[0:], uint32(len(req)))
	ne.PutUint16(req[4:], unix.SOCK_DIAG_BY_FAMILY)
	ne.PutUint16(req[6:], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	ne.PutUint32(req[8:], 1)
	r := req[nlmsgHeaderLen:]
	r[0] = family
	r[1] = unix.IPPROTO_TCP
	ne.PutUint32(r[4:], ^uint32(0)) // every state
	if err := unix.Sendto(s.fd, req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag dump: %w", err)
	}
	var out []diagSock
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
				if d, ok := decodeDiagSock(p); ok {
					out = append(out, d)
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

// decodeDiagSock decodes one inet_diag_msg.
func decodeDiagSock(p []byte) (diagSock, bool) {
	if len(p) < inetDiagMsgLen {
		return diagSock{}, false
	}
	d := diagSock{state: p[1], sport: binary.BigEndian.Uint16(p[4:]), dport: binary.BigEndian.Uint16(p[6:])}
	switch p[0] {
	case unix.AF_INET:
		d.src, d.dst = netip.AddrFrom4([4]byte(p[8:12])), netip.AddrFrom4([4]byte(p[24:28]))
	case unix.AF_INET6:
		d.src, d.dst = netip.AddrFrom16([16]byte(p[8:24])).Unmap(), netip.AddrFrom16([16]byte(p[24:40])).Unmap()
	default:
		return diagSock{}, false
	}
	return d, true
}

// peerConns picks, from a namespace's sockets, the live connections with
// peer that belong to a service on ports (see KillPeerPorts), each as a
// Conn whose "VIP" side is the local socket (what destroySockets looks
// up). A connection is this node's service end when a listener holds its
// local port (on its address or on all), and this node's client end
// otherwise.
func peerConns(socks []diagSock, peer netip.Addr, ports PortSet) []Conn {
	type listener struct {
		addr netip.Addr
		port uint16
	}
	listening := map[listener]bool{}
	for _, d := range socks {
		if d.state == tcpStateListen {
			listening[listener{d.src, d.sport}] = true
		}
	}
	serves := func(d diagSock) bool {
		return listening[listener{d.src, d.sport}] ||
			listening[listener{netip.IPv4Unspecified(), d.sport}] || listening[listener{netip.IPv6Unspecified(), d.sport}]
	}
	var out []Conn
	for _, d := range socks {
		if d.state == tcpStateListen || d.state == tcpStateTimeWait || d.state == tcpStateClose || d.dst != peer {
			continue
		}
		service := d.dport // this node dialled peer's service
		if serves(d) {
			service = d.sport // peer dialled this node's
		}
		if ports.Contains(service) {
			out = append(out, Conn{VIP: d.src, VIPPort: d.sport, Client: d.dst, ClientPort: d.dport})
		}
	}
	return out
}
