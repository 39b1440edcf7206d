package ctdbclient

import (
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
)

// fakeCTDBD is a ctdbd client socket that answers the controls fsha sends
// as ctdbd 4.17 does (ctdb_daemon.c), records the messages it gets and
// passes leader broadcasts to the clients that registered for them.
type fakeCTDBD struct {
	t    *testing.T
	path string
	ln   net.Listener

	mu sync.Mutex
	// nodes is the node map; lock the cluster lock setting
	nodes []Node
	lock  string
	// status, when not 0, fails every control with errmsg
	status int32
	errmsg string
	// mute: read the requests, answer none
	mute bool
	// got: every message received; clients: the registered ones
	got     []sentMessage
	clients map[net.Conn]bool
	conns   []net.Conn
}

type sentMessage struct {
	dest  uint32
	srvid uint64
	data  []byte
}

func newFakeCTDBD(t *testing.T) *fakeCTDBD {
	t.Helper()
	f := &fakeCTDBD{t: t, path: filepath.Join(t.TempDir(), "ctdbd.socket"), clients: map[net.Conn]bool{}, lock: "!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /clusterfs/.ctdb.lock"}
	ln, err := net.Listen("unix", f.path)
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	t.Cleanup(f.close)
	go f.accept()
	return f
}

func (f *fakeCTDBD) close() {
	f.ln.Close()
	f.dropClients()
}

// dropClients closes every connection, as a ctdbd restart would.
func (f *fakeCTDBD) dropClients() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.clients = map[net.Conn]bool{}
}

func (f *fakeCTDBD) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conns = append(f.conns, c)
		f.mu.Unlock()
		go f.serve(c)
	}
}

func (f *fakeCTDBD) serve(c net.Conn) {
	defer c.Close()
	for {
		var lb [4]byte
		if _, err := io.ReadFull(c, lb[:]); err != nil {
			return
		}
		b := make([]byte, order.Uint32(lb[:]))
		if len(b) < headerLen {
			f.t.Errorf("fake ctdbd: packet length %d", len(b))
			return
		}
		copy(b, lb[:])
		if _, err := io.ReadFull(c, b[4:]); err != nil {
			return
		}
		if len(b)%alignment != 0 {
			f.t.Errorf("fake ctdbd: packet of %d bytes, not padded to %d", len(b), alignment)
		}
		h, err := DecodeHeader(b)
		if err != nil {
			f.t.Errorf("fake ctdbd: %v", err)
			return
		}
		switch h.Operation {
		case opReqMessage:
			m, err := DecodeMessage(b)
			if err != nil {
				f.t.Errorf("fake ctdbd: %v", err)
				return
			}
			f.mu.Lock()
			f.got = append(f.got, sentMessage{dest: h.DestNode, srvid: m.SrvID, data: append([]byte(nil), m.Data...)})
			f.mu.Unlock()
		case opReqControl:
			f.control(c, h, b[headerLen:])
		default:
			f.t.Errorf("fake ctdbd: operation %d", h.Operation)
			return
		}
	}
}

// control answers ctdb_req_control_old: opcode, pad, srvid, client_id,
// flags, datalen, data.
func (f *fakeCTDBD) control(c net.Conn, h Header, p []byte) {
	if h.DestNode != CurrentNode {
		f.t.Errorf("fake ctdbd: control to %#x", h.DestNode)
	}
	opcode, srvid, dlen := order.Uint32(p), order.Uint64(p[8:]), order.Uint32(p[24:])
	if dlen != 0 {
		f.t.Errorf("fake ctdbd: control %d with %d bytes of data", opcode, dlen)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.mute {
		return
	}
	var data []byte
	switch opcode {
	case controlRegisterSrvid:
		if srvid != SrvidLeader {
			f.t.Errorf("fake ctdbd: register srvid %#x", srvid)
		}
		f.clients[c] = true
	case controlGetNodemap:
		data = encodeNodemap(f.nodes)
	case controlGetReclockFile:
		if f.lock != "" {
			data = append([]byte(f.lock), 0)
		}
	default:
		f.t.Errorf("fake ctdbd: control %d", opcode)
	}
	if f.status != 0 {
		data = nil
	}
	if _, err := c.Write(encodeReply(h.ReqID, f.status, data, f.errmsg)); err != nil {
		f.t.Logf("fake ctdbd: %v", err)
	}
}

// broadcast passes a leader broadcast to the registered clients.
func (f *fakeCTDBD) broadcast(pnn uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.clients {
		if _, err := c.Write(EncodeMessage(CurrentNode, SrvidLeader, 0, EncodeLeader(pnn))); err != nil {
			f.t.Logf("fake ctdbd: %v", err)
		}
	}
}

func (f *fakeCTDBD) registered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.clients)
}

func (f *fakeCTDBD) messages() []sentMessage {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentMessage(nil), f.got...)
}

// encodeReply is ctdb_reply_control_old as daemon_control_callback
// builds it: status, datalen, errorlen, data, the error message without
// its NUL; the header's length unpadded, then padded by ctdb_queue_send.
func encodeReply(reqid uint32, status int32, data []byte, errmsg string) []byte {
	b := packet(opReplyControl, 0, reqid, 12+len(data)+len(errmsg))
	p := b[headerLen:]
	order.PutUint32(p, uint32(status))
	order.PutUint32(p[4:], uint32(len(data)))
	order.PutUint32(p[8:], uint32(len(errmsg)))
	copy(p[12:], data)
	copy(p[12+len(data):], errmsg)
	return b
}

// encodeNodemap is ctdb_node_map: num, then pnn, flags, ctdb_sock_addr.
func encodeNodemap(nodes []Node) []byte {
	b := order.AppendUint32(nil, uint32(len(nodes)))
	for _, n := range nodes {
		b = order.AppendUint32(b, n.PNN)
		b = order.AppendUint32(b, n.Flags)
		b = append(b, encodeSockAddr(n.Addr)...)
	}
	return b
}

func encodeSockAddr(a netip.Addr) []byte {
	b := make([]byte, sockAddrLen)
	binary.BigEndian.PutUint16(b[2:], 4379)
	switch {
	case a.Is6():
		order.PutUint16(b, afInet6)
		s := a.As16()
		copy(b[8:], s[:])
	default:
		order.PutUint16(b, afInet)
		if a.Is4() {
			s := a.As4()
			copy(b[4:], s[:])
		}
	}
	return b
}
