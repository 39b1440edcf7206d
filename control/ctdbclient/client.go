package ctdbclient

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// Conn is one client connection to the local ctdbd. It is not safe for
// concurrent use: one goroutine asks, or listens.
type Conn struct {
	path  string
	c     net.Conn
	r     *bufio.Reader
	reqid uint32
	// messages read while waiting for a control's reply
	pending []Message
}

// Dial connects to ctdbd's client socket at path. ctdbd asks nothing of a
// new client: it may send controls and messages at once.
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("connect to ctdbd at %s: %w", path, err)
	}
	return &Conn{path: path, c: c, r: bufio.NewReader(c)}, nil
}

// Close closes the connection; ctdbd forgets the client's handlers.
func (c *Conn) Close() error { return c.c.Close() }

// bound makes the connection's reads and writes end with ctx: at its
// deadline, or at once when it is cancelled. The returned func undoes it.
func (c *Conn) bound(ctx context.Context) func() {
	d, _ := ctx.Deadline()
	_ = c.c.SetDeadline(d)
	stop := context.AfterFunc(ctx, func() { _ = c.c.SetDeadline(time.Unix(1, 0)) })
	return func() {
		stop()
		_ = c.c.SetDeadline(time.Time{})
	}
}

// ctxErr prefers ctx's error to the i/o timeout it caused.
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		// the connection's deadline is ctx's, which may not have
		// fired yet
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return fmt.Errorf("%w (%w)", context.DeadlineExceeded, err)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%w)", ctx.Err(), err)
	}
	return err
}

func (c *Conn) write(ctx context.Context, b []byte) error {
	if _, err := c.c.Write(b); err != nil {
		return fmt.Errorf("write to ctdbd at %s: %w", c.path, ctxErr(ctx, err))
	}
	return nil
}

// readPacket reads one whole packet.
func (c *Conn) readPacket(ctx context.Context) ([]byte, error) {
	var lb [4]byte
	if _, err := io.ReadFull(c.r, lb[:]); err != nil {
		return nil, fmt.Errorf("read from ctdbd at %s: %w", c.path, ctxErr(ctx, err))
	}
	n := order.Uint32(lb[:])
	if n < headerLen || n > maxPacket {
		return nil, fmt.Errorf("read from ctdbd at %s: %w", c.path, protoErr("packet length %d", n))
	}
	b := make([]byte, n)
	copy(b, lb[:])
	if _, err := io.ReadFull(c.r, b[4:]); err != nil {
		return nil, fmt.Errorf("read from ctdbd at %s: %w", c.path, ctxErr(ctx, err))
	}
	return b, nil
}

// control sends a control to the local ctdbd and returns its reply's
// data. Messages that arrive before the reply are kept for ReadMessage.
func (c *Conn) control(ctx context.Context, name string, opcode uint32, srvid uint64) ([]byte, error) {
	defer c.bound(ctx)()
	c.reqid++
	id := c.reqid
	if err := c.write(ctx, encodeControl(id, opcode, srvid, nil)); err != nil {
		return nil, fmt.Errorf("ctdb control %s: %w", name, err)
	}
	for {
		b, err := c.readPacket(ctx)
		if err != nil {
			return nil, fmt.Errorf("ctdb control %s: %w", name, err)
		}
		h, err := DecodeHeader(b)
		if err != nil {
			return nil, fmt.Errorf("ctdb control %s: %w", name, err)
		}
		switch {
		case h.Operation == opReqMessage:
			m, err := DecodeMessage(b)
			if err != nil {
				return nil, fmt.Errorf("ctdb control %s: %w", name, err)
			}
			c.pending = append(c.pending, m)
		case h.Operation == opReplyControl && h.ReqID == id:
			r, err := decodeReply(b)
			if err != nil {
				return nil, fmt.Errorf("ctdb control %s: %w", name, err)
			}
			if r.status != 0 {
				return nil, fmt.Errorf("ctdb control %s: ctdbd answered status %d: %q", name, r.status, r.errmsg)
			}
			return r.data, nil
		}
		// anything else (a stale reply) is not for this ask
	}
}

// RegisterSrvid asks ctdbd to pass this client the messages for srvid,
// from every node (ctdb_client_set_message_handler).
func (c *Conn) RegisterSrvid(ctx context.Context, srvid uint64) error {
	_, err := c.control(ctx, "register_srvid", controlRegisterSrvid, srvid)
	return err
}

// Nodemap is the local ctdbd's node map (`ctdb status`'s nodes): every
// node's PNN, address and flags.
func (c *Conn) Nodemap(ctx context.Context) ([]Node, error) {
	b, err := c.control(ctx, "get_nodemap", controlGetNodemap, 0)
	if err != nil {
		return nil, err
	}
	nodes, err := DecodeNodemap(b)
	if err != nil {
		return nil, fmt.Errorf("ctdb control get_nodemap: %w", err)
	}
	return nodes, nil
}

// ClusterLock is the local ctdbd's cluster lock setting (`ctdb
// getreclock`): "" when it runs without one.
func (c *Conn) ClusterLock(ctx context.Context) (string, error) {
	b, err := c.control(ctx, "get_reclock_file", controlGetReclockFile, 0)
	if err != nil {
		return "", err
	}
	return trimNUL(b), nil
}

// Send sends data to the handlers of srvid on dest (a PNN,
// CurrentNode or BroadcastConnected). ctdbd does not answer messages.
func (c *Conn) Send(ctx context.Context, dest uint32, srvid uint64, data []byte) error {
	defer c.bound(ctx)()
	c.reqid++
	if err := c.write(ctx, EncodeMessage(dest, srvid, c.reqid, data)); err != nil {
		return fmt.Errorf("ctdb message %#x to %#x: %w", srvid, dest, err)
	}
	return nil
}

// BroadcastUnknownLeader sends what a recovery daemon sends when it calls
// an election (force_election): "leader unknown" to every connected
// node. Each recovery daemon that gets it stops waiting for the leader's
// broadcasts and, with a cluster lock, tries to take the lock: the node
// that gets it leads. Without a cluster lock it only starts waiting for
// an election that nobody calls (ctdb_recoverd.c, leader_handler):
// callers check ClusterLock first.
func (c *Conn) BroadcastUnknownLeader(ctx context.Context) error {
	return c.Send(ctx, BroadcastConnected, SrvidLeader, EncodeLeader(UnknownPNN))
}

// ReadMessage waits for the next message for a registered srvid.
func (c *Conn) ReadMessage(ctx context.Context) (Message, error) {
	if len(c.pending) > 0 {
		m := c.pending[0]
		c.pending = c.pending[1:]
		return m, nil
	}
	defer c.bound(ctx)()
	for {
		b, err := c.readPacket(ctx)
		if err != nil {
			return Message{}, err
		}
		h, err := DecodeHeader(b)
		if err != nil {
			return Message{}, fmt.Errorf("read from ctdbd at %s: %w", c.path, err)
		}
		if h.Operation != opReqMessage {
			continue // a late control reply
		}
		m, err := DecodeMessage(b)
		if err != nil {
			return Message{}, fmt.Errorf("read from ctdbd at %s: %w", c.path, err)
		}
		return m, nil
	}
}
