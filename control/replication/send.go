package replication

// The sending side: one stream per peer carrying this node's flows.

import (
	"context"
	"crypto/cipher"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

type peerConn struct {
	peer   Peer
	queue  chan []byte
	cancel context.CancelFunc
	resync atomic.Bool
	// propose is the stream version the next connection proposes, and
	// notReady the wait before asking a peer whose index was not ready
	// again; both belong to runPeer's goroutine.
	propose  byte
	notReady time.Duration
}

// enqueue never blocks: a peer too slow to keep up loses its queue and is
// resynced instead, which is always correct.
func (pc *peerConn) enqueue(msg []byte, records int, r *Replicator) {
	select {
	case pc.queue <- msg:
		return
	default:
	}
	if !pc.resync.Swap(true) {
		r.resyncs.Add(1)
		r.log.Warn("peer too slow, it will be resynced", zap.Int("peer", pc.peer.PNN), zap.Int("dropped_records", records))
	}
	pc.drain()
}

// drain empties the queue: deltas dropped together with their later
// closes can never resurrect a closed connection.
func (pc *peerConn) drain() {
	for {
		select {
		case <-pc.queue:
		default:
			return
		}
	}
}

// runPeer keeps a stream to one peer: connect, sync, then deltas; after
// any error, reconnect (and sync again) until ctx ends.
func (r *Replicator) runPeer(ctx context.Context, pc *peerConn) {
	log := r.log.With(zap.Int("peer", pc.peer.PNN))
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		start := time.Now()
		err := r.stream(ctx, pc)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > time.Minute {
			backoff = 100 * time.Millisecond
		}
		log.Debug("replication stream ended, reconnecting", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

const ioTimeout = 5 * time.Second

// notReadyRetry is the first wait before a digest is sent again to a peer
// that could not compare it yet.
const notReadyRetry = 250 * time.Millisecond

func (r *Replicator) stream(ctx context.Context, pc *peerConn) error {
	// from the node address: the peer checks it against the nodes file
	d := net.Dialer{Timeout: time.Second, LocalAddr: &net.TCPAddr{IP: r.cfg.Addr.AsSlice()}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(pc.peer.Addr.String(), strconv.Itoa(r.cfg.Port)))
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()

	propose := pc.propose
	mine, err := newHello(propose, r.cfg.Self, r.cfg.Key)
	if err != nil {
		return err
	}
	conn.SetDeadline(time.Now().Add(ioTimeout))
	if err := writeHello(conn, mine); err != nil {
		return err
	}
	theirs, err := readHello(conn)
	if err != nil {
		if propose > streamVersion1 {
			// a version 1 peer closes on a newer hello: propose 1 next
			pc.propose = streamVersion1
		}
		return err
	}
	// after a version 1 stream, try the newest version again next time
	pc.propose = r.maxVersion()
	if theirs.version > propose {
		return fmt.Errorf("%w: peer %d answered version %d to %d", ErrHandshake, pc.peer.PNN, theirs.version, propose)
	}
	if theirs.flags != mine.flags {
		return fmt.Errorf("%w: peer %d disagrees on encryption (is --gossip-key the same everywhere?)", ErrHandshake, pc.peer.PNN)
	}
	aead, err := sessionAEAD(r.cfg.Key, mine.salt, theirs.salt)
	if err != nil {
		return err
	}
	conn.SetReadDeadline(time.Time{})
	version := theirs.version
	fr := &framer{aead: aead, dir: dirToServer}
	send := func(msg []byte, records int) error {
		conn.SetWriteDeadline(time.Now().Add(ioTimeout))
		if err := fr.write(conn, msg); err != nil {
			return err
		}
		r.bytesSent.Add(uint64(len(msg)))
		r.recordsSent.Add(uint64(records))
		return nil
	}

	// Deltas queued before this stream are dropped: the snapshot or the
	// digest round that starts it covers them.
	pc.drain()
	pc.resync.Store(false)
	var (
		answers <-chan *Message
		readErr <-chan error
	)
	if version == streamVersion1 {
		if err := r.sendSnapshot(send); err != nil {
			return err
		}
	} else {
		done := make(chan struct{})
		defer close(done)
		answers, readErr = r.readAnswers(conn, aead, pc.peer.PNN, done)
		r.requestDigest(pc.peer.PNN)
	}
	for {
		if pc.resync.Swap(false) {
			if version == streamVersion1 {
				pc.drain()
				if err := r.sendSnapshot(send); err != nil {
					return err
				}
			} else {
				r.requestDigest(pc.peer.PNN)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case msg := <-pc.queue:
			kind := Kind(msg[1])
			if kind.version() > version {
				continue // a digest: this peer cannot read it
			}
			records := 0
			if kind == KindDelta {
				records = (len(msg) - headerSize) / recordSize
			}
			if err := send(msg, records); err != nil {
				return err
			}
			if kind == KindDigest {
				r.digestsSent.Add(1)
			}
		case m := <-answers:
			if err := r.answer(pc, m, send); err != nil {
				return err
			}
		case err := <-readErr:
			return fmt.Errorf("read answers: %w", err)
		case <-time.After(time.Second):
			// a keepalive of sorts: an empty delta shows a dead peer
			if err := send(mustEncode(&Message{Kind: KindDelta, Owner: uint16(r.cfg.Self)}), 0); err != nil {
				return err
			}
		}
	}
}

// readAnswers reads the peer's answers to digests (version 2 streams)
// until the connection fails or done closes. An answer that is malformed
// or not an answer is counted and dropped; a frame that does not
// authenticate ends the stream.
func (r *Replicator) readAnswers(conn net.Conn, aead cipher.AEAD, pnn int, done <-chan struct{}) (<-chan *Message, <-chan error) {
	answers := make(chan *Message)
	errc := make(chan error, 1)
	back := &framer{aead: aead, dir: dirToClient}
	go func() {
		for {
			b, err := back.read(conn)
			if err != nil {
				if errors.Is(err, ErrFrame) {
					r.badStreams.Add(1)
				}
				errc <- err
				return
			}
			m, err := DecodeMessage(b)
			if err == nil && (int(m.Owner) != r.cfg.Self || (m.Kind != KindResync && m.Kind != KindNotReady)) {
				err = fmt.Errorf("%w: node %d answered with a %s about node %d's flows", ErrBadMessage, pnn, m.Kind, m.Owner)
			}
			if err != nil {
				r.badMessages.Add(1)
				r.log.Warn("replication answer rejected", zap.Int("peer", pnn), zap.Error(err))
				continue
			}
			select {
			case answers <- m:
			case <-done:
				return
			}
		}
	}()
	return answers, errc
}

// answer acts on a peer's answer to a digest: copy again the VIPs that
// differ, or ask again later.
func (r *Replicator) answer(pc *peerConn, m *Message, send func([]byte, int) error) error {
	switch m.Kind {
	case KindNotReady:
		pc.notReady = min(max(2*pc.notReady, notReadyRetry), max(r.cfg.DigestInterval, notReadyRetry))
		pnn := pc.peer.PNN
		time.AfterFunc(pc.notReady, func() { r.requestDigest(pnn) })
	case KindResync:
		pc.notReady = 0
		if len(m.VIPs) > 0 {
			r.log.Info("peer's copy differs, sending those VIPs' connections again",
				zap.Int("peer", pc.peer.PNN), zap.Stringers("vips", m.VIPs))
		}
		for _, vip := range m.VIPs {
			if err := r.sendVIPSnapshot(send, vip); err != nil {
				return err
			}
		}
	}
	return nil
}

// sendSnapshot sends every local flow, framed by begin and end markers
// that carry a fresh generation.
func (r *Replicator) sendSnapshot(send func([]byte, int) error) error {
	gen := r.nextGen()
	owner := uint16(r.cfg.Self)
	if err := send(mustEncode(&Message{Kind: KindSnapBegin, Owner: owner, Gen: gen}), 0); err != nil {
		return err
	}
	c := r.chunker(send, gen)
	err := r.local(c.add)
	if c.err != nil {
		return c.err
	}
	if err != nil {
		return fmt.Errorf("read local flows for a snapshot: %w", err)
	}
	if err := c.flush(); err != nil {
		return err
	}
	r.snapshots.Add(1)
	return send(mustEncode(&Message{Kind: KindSnapEnd, Owner: owner, Gen: gen}), 0)
}

// sendVIPSnapshot sends this node's flows to vip, framed by markers that
// carry a fresh generation: the peer drops what it holds of them that
// the copy lacks. When the flows cannot be read, the copy is left
// unfinished (the peer drops nothing) and the next digest round retries.
func (r *Replicator) sendVIPSnapshot(send func([]byte, int) error, vip netip.Addr) error {
	gen := r.nextGen()
	owner := uint16(r.cfg.Self)
	if err := send(mustEncode(&Message{Kind: KindVIPSnapBegin, Owner: owner, Gen: gen, VIPs: []netip.Addr{vip}}), 0); err != nil {
		return err
	}
	c := r.chunker(send, gen)
	err := r.localIdx.ForEachFlowOfVIP(vip, c.add)
	if c.err != nil {
		return c.err
	}
	if err != nil {
		r.log.Warn("cannot read a VIP's connections for a peer, will retry", zap.Stringer("vip", vip), zap.Error(err))
		return nil
	}
	if err := c.flush(); err != nil {
		return err
	}
	r.vipSnapshots.Add(1)
	return send(mustEncode(&Message{Kind: KindVIPSnapEnd, Owner: owner, Gen: gen, VIPs: []netip.Addr{vip}}), 0)
}

// chunker sends flows as KindSnapChunk messages of one generation.
type chunker struct {
	send func([]byte, int) error
	m    Message
	now  int64
	err  error
}

func (r *Replicator) chunker(send func([]byte, int) error, gen uint32) *chunker {
	return &chunker{send: send, now: time.Now().UnixNano(),
		m: Message{Kind: KindSnapChunk, Owner: uint16(r.cfg.Self), Gen: gen, Records: make([]Record, 0, 1024)}}
}

// add adds one flow; it returns false once sending failed.
func (c *chunker) add(f dataplane.Flow) bool {
	last := c.now
	if !f.LastSeen.IsZero() {
		last = f.LastSeen.UnixNano()
	}
	c.m.Records = append(c.m.Records, Record{Op: OpOpen, VIP: f.VIP, VIPPort: f.VIPPort, Client: f.Client, ClientPort: f.ClientPort, LastSeen: last})
	return len(c.m.Records) < MaxRecords || c.flush() == nil
}

func (c *chunker) flush() error {
	if len(c.m.Records) == 0 || c.err != nil {
		return c.err
	}
	msg, err := AppendMessage(nil, &c.m)
	if err == nil {
		err = c.send(msg, len(c.m.Records))
	}
	c.m.Records = c.m.Records[:0]
	c.err = err
	return err
}
