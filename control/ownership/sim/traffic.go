package sim

import "github.com/fsha/fsha/control/ownership"

// Traffic counts one node's ownership messages as the simulator encodes
// them (the wire format, without the gossip layer's framing and
// encryption or any UDP/IP header): sent, whatever the network then did
// with them, and received while the node was powered (lost ones not;
// duplicates twice).
type Traffic struct {
	Sent, Received Messages
}

// Messages counts messages and their encoded bytes by type.
type Messages struct {
	Heartbeats, Replies, Releases Count
}

// Count is a number of messages and their bytes.
type Count struct {
	Msgs, Bytes int64
}

// Total is every message of m.
func (m Messages) Total() Count {
	return Count{Msgs: m.Heartbeats.Msgs + m.Replies.Msgs + m.Releases.Msgs,
		Bytes: m.Heartbeats.Bytes + m.Replies.Bytes + m.Releases.Bytes}
}

// Sub is the difference m - o (what was counted since o).
func (m Messages) Sub(o Messages) Messages {
	return Messages{Heartbeats: m.Heartbeats.sub(o.Heartbeats), Replies: m.Replies.sub(o.Replies),
		Releases: m.Releases.sub(o.Releases)}
}

// Sub is the difference t - o (what was counted since o).
func (t Traffic) Sub(o Traffic) Traffic {
	return Traffic{Sent: t.Sent.Sub(o.Sent), Received: t.Received.Sub(o.Received)}
}

func (c Count) sub(o Count) Count { return Count{Msgs: c.Msgs - o.Msgs, Bytes: c.Bytes - o.Bytes} }

// add counts one encoded message.
func (m *Messages) add(b []byte) {
	var c *Count
	switch ownership.MessageType(b) {
	case ownership.TypeHeartbeat:
		c = &m.Heartbeats
	case ownership.TypeReply:
		c = &m.Replies
	case ownership.TypeRelease:
		c = &m.Releases
	default:
		return
	}
	c.Msgs++
	c.Bytes += int64(len(b))
}

// count counts one decoded message of size bytes encoded.
func (m *Messages) count(msg any, size int) {
	var c *Count
	switch msg.(type) {
	case *ownership.Heartbeat:
		c = &m.Heartbeats
	case *ownership.Reply:
		c = &m.Replies
	case *ownership.Release:
		c = &m.Releases
	default:
		return
	}
	c.Msgs++
	c.Bytes += int64(size)
}
