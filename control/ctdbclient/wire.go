// Package ctdbclient speaks the few parts of CTDB's client protocol that
// fsha needs, on the local ctdbd's unix socket (what smbd and the ctdb
// tool use): listen to the leader broadcasts (the recovery daemons'
// CTDB_SRVID_LEADER messages), read the node map and the cluster lock
// setting, and send CTDB's own "unknown leader" broadcast, which makes
// every connected node's recovery daemon start an election at once.
//
// The layout follows ctdb/protocol (Samba 4.17, unchanged since): every
// packet starts with ctdb_req_header (eight uint32: length of the whole
// packet, magic "CTDB", protocol version 1, generation, operation,
// destination node, source node, request id), in the host's byte order,
// padded to 8 bytes.
package ctdbclient

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// DefaultSocket is ctdbd's client socket unless ctdb.conf or CTDB_SOCKET
// says otherwise.
const DefaultSocket = "/var/run/ctdb/ctdbd.socket"

// Header fields and addresses (ctdb/protocol/protocol.h).
const (
	Magic    = 0x43544442 // "CTDB"
	Protocol = 1

	// CurrentNode addresses the ctdbd the client is connected to.
	CurrentNode = 0xF0000001
	// BroadcastConnected addresses every node this ctdbd sees connected,
	// itself included.
	BroadcastConnected = 0xF0000004
	// UnknownPNN is "no node": in a leader broadcast, "there is no
	// leader, elect one".
	UnknownPNN = 0xFFFFFFFF

	// SrvidLeader is the recovery daemons' leader broadcast: a uint32
	// PNN, the leader's (every second, from the leader), or UnknownPNN.
	SrvidLeader uint64 = 0xF101000000000000
)

// Operations (enum ctdb_operation).
const (
	opReqMessage   = 5
	opReqControl   = 7
	opReplyControl = 8
)

// Controls (enum ctdb_controls).
const (
	controlRegisterSrvid  = 23
	controlGetNodemap     = 91
	controlGetReclockFile = 99
)

const (
	headerLen = 32
	// alignment: ctdb_allocate_pkt pads every packet to 8 bytes
	alignment = 8
	// maxPacket bounds what is read from the socket: fsha asks for
	// nothing larger than a node map (36 bytes a node).
	maxPacket = 1 << 20
	// sockAddrLen is sizeof(ctdb_sock_addr), the union of sockaddr_in
	// and sockaddr_in6
	sockAddrLen = 28
	// nodeLen is a ctdb_node_and_flags: pnn, flags, address
	nodeLen = 8 + sockAddrLen

	afInet  = 2
	afInet6 = 10
)

var order = binary.NativeEndian

// Header is ctdb_req_header.
type Header struct {
	Length, Magic, Version, Generation, Operation, DestNode, SrcNode, ReqID uint32
}

// Message is a CTDB_REQ_MESSAGE: data for the handlers of srvid.
type Message struct {
	SrvID uint64
	Data  []byte
}

// Node is one entry of CTDB's node map.
type Node struct {
	PNN   uint32
	Flags uint32
	// Addr is the node's address; the zero Addr for a deleted node
	// (0.0.0.0 in CTDB's map).
	Addr netip.Addr
}

// Node flags (NODE_FLAGS_*).
const (
	NodeDisconnected = 0x01
	NodeDeleted      = 0x10
)

// ErrProtocol wraps every decoding error.
var ErrProtocol = errors.New("ctdb protocol")

func protoErr(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrProtocol, fmt.Sprintf(format, args...))
}

// packet returns a zeroed packet of payload bytes after the header, its
// length padded, with the header filled in.
func packet(op, dest, reqid uint32, payload int) []byte {
	n := (headerLen + payload + alignment - 1) &^ (alignment - 1)
	b := make([]byte, n)
	for i, v := range []uint32{uint32(n), Magic, Protocol, 0, op, dest, 0, reqid} {
		order.PutUint32(b[4*i:], v)
	}
	return b
}

// EncodeMessage is a CTDB_REQ_MESSAGE to dest's handlers of srvid
// (ctdb_req_message_old: srvid, datalen, data).
func EncodeMessage(dest uint32, srvid uint64, reqid uint32, data []byte) []byte {
	b := packet(opReqMessage, dest, reqid, 12+len(data))
	order.PutUint64(b[headerLen:], srvid)
	order.PutUint32(b[headerLen+8:], uint32(len(data)))
	copy(b[headerLen+12:], data)
	return b
}

// EncodeLeader is a leader broadcast's data: pnn, or UnknownPNN.
func EncodeLeader(pnn uint32) []byte {
	return order.AppendUint32(nil, pnn)
}

// encodeControl is a CTDB_REQ_CONTROL to the local ctdbd
// (ctdb_req_control_old: opcode, pad, srvid, client_id, flags, datalen,
// data).
func encodeControl(reqid, opcode uint32, srvid uint64, data []byte) []byte {
	b := packet(opReqControl, CurrentNode, reqid, 28+len(data))
	p := b[headerLen:]
	order.PutUint32(p[0:], opcode)
	order.PutUint64(p[8:], srvid)
	order.PutUint32(p[24:], uint32(len(data)))
	copy(p[28:], data)
	return b
}

// DecodeHeader checks and decodes the header of the packet b (the whole
// packet, as its Length says).
func DecodeHeader(b []byte) (Header, error) {
	if len(b) < headerLen {
		return Header{}, protoErr("packet of %d bytes, shorter than its header", len(b))
	}
	var h Header
	for i, f := range []*uint32{&h.Length, &h.Magic, &h.Version, &h.Generation, &h.Operation, &h.DestNode, &h.SrcNode, &h.ReqID} {
		*f = order.Uint32(b[4*i:])
	}
	switch {
	case h.Magic != Magic:
		return h, protoErr("bad magic %#x", h.Magic)
	case h.Version != Protocol:
		return h, protoErr("protocol version %d, want %d", h.Version, Protocol)
	case int(h.Length) != len(b):
		return h, protoErr("header says %d bytes, packet has %d", h.Length, len(b))
	}
	return h, nil
}

// DecodeMessage decodes a CTDB_REQ_MESSAGE packet.
func DecodeMessage(b []byte) (Message, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return Message{}, err
	}
	if h.Operation != opReqMessage {
		return Message{}, protoErr("operation %d, not a message", h.Operation)
	}
	p := b[headerLen:]
	if len(p) < 12 {
		return Message{}, protoErr("message of %d bytes", len(p))
	}
	n := order.Uint32(p[8:])
	if uint64(n) > uint64(len(p)-12) {
		return Message{}, protoErr("message data of %d bytes in %d", n, len(p)-12)
	}
	return Message{SrvID: order.Uint64(p), Data: p[12 : 12+n]}, nil
}

// DecodeLeader decodes a leader broadcast's data: a PNN, or UnknownPNN.
// Like ctdb_uint32_pull it reads the first 4 bytes.
func DecodeLeader(data []byte) (uint32, error) {
	if len(data) < 4 {
		return 0, protoErr("leader broadcast of %d bytes", len(data))
	}
	return order.Uint32(data), nil
}

// reply is a CTDB_REPLY_CONTROL (ctdb_reply_control_old: status,
// datalen, errorlen, data, error message).
type reply struct {
	reqid  uint32
	status int32
	data   []byte
	errmsg string
}

func decodeReply(b []byte) (reply, error) {
	h, err := DecodeHeader(b)
	if err != nil {
		return reply{}, err
	}
	if h.Operation != opReplyControl {
		return reply{}, protoErr("operation %d, not a control reply", h.Operation)
	}
	p := b[headerLen:]
	if len(p) < 12 {
		return reply{}, protoErr("control reply of %d bytes", len(p))
	}
	dlen, elen := uint64(order.Uint32(p[4:])), uint64(order.Uint32(p[8:]))
	if dlen+elen > uint64(len(p)-12) {
		return reply{}, protoErr("control reply says %d+%d bytes, has %d", dlen, elen, len(p)-12)
	}
	return reply{
		reqid:  h.ReqID,
		status: int32(order.Uint32(p)),
		data:   p[12 : 12+dlen],
		errmsg: trimNUL(p[12+dlen : 12+dlen+elen]),
	}, nil
}

// DecodeNodemap decodes a node map (ctdb_node_map: num, then num
// ctdb_node_and_flags).
func DecodeNodemap(b []byte) ([]Node, error) {
	if len(b) < 4 {
		return nil, protoErr("node map of %d bytes", len(b))
	}
	num := uint64(order.Uint32(b))
	if num*nodeLen > uint64(len(b)-4) {
		return nil, protoErr("node map of %d nodes in %d bytes", num, len(b))
	}
	nodes := make([]Node, num)
	for i := range nodes {
		e := b[4+i*nodeLen:]
		a, err := decodeSockAddr(e[8:nodeLen])
		if err != nil {
			return nil, fmt.Errorf("node map entry %d: %w", i, err)
		}
		nodes[i] = Node{PNN: order.Uint32(e), Flags: order.Uint32(e[4:]), Addr: a}
	}
	return nodes, nil
}

// decodeSockAddr decodes a ctdb_sock_addr: a struct sockaddr_in or
// sockaddr_in6 as the host lays it out (family in host order, port and
// address in network order). 0.0.0.0 (a deleted node) is the zero Addr.
func decodeSockAddr(b []byte) (netip.Addr, error) {
	switch fam := order.Uint16(b); fam {
	case afInet:
		a := netip.AddrFrom4([4]byte(b[4:8]))
		if a.IsUnspecified() {
			return netip.Addr{}, nil
		}
		return a, nil
	case afInet6:
		a := netip.AddrFrom16([16]byte(b[8:24]))
		if a.IsUnspecified() {
			return netip.Addr{}, nil
		}
		return a, nil
	default:
		return netip.Addr{}, protoErr("address family %d", fam)
	}
}

func trimNUL(b []byte) string {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return string(b)
}
