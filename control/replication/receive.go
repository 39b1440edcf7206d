package replication

// The receiving side: the peers' streams, applied to the store.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

// ownerState is what this node knows of one owner's streams to it.
type ownerState struct {
	// streams numbers the owner's streams in the order they were
	// accepted.
	streams atomic.Uint64

	// mu serializes the application of the owner's messages, whatever
	// stream they come on.
	mu sync.Mutex
	// newest is the newest stream that delivered a message: the older
	// ones are stale.
	newest uint64
	// gen is the generation flows are written with: the latest
	// snapshot's, full or of one VIP.
	gen  uint32
	snap snapState
}

// snapState is a snapshot being received.
type snapState struct {
	active bool
	all    bool       // a full snapshot; else one VIP's
	vip    netip.Addr // the VIP of a VIP snapshot
	gen    uint32
}

func (r *Replicator) ownerState(owner int) *ownerState {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.owners[owner]
	if st == nil {
		st = &ownerState{}
		r.owners[owner] = st
	}
	return st
}

// serveVersion is the newest stream version this node accepts: version 2
// needs the peer index to compare digests with.
func (r *Replicator) serveVersion() byte {
	if r.peerIdx != nil {
		return streamVersion2
	}
	return streamVersion1
}

// serve receives one peer's stream and applies it to the store.
func (r *Replicator) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	log := r.log.With(zap.Stringer("from", conn.RemoteAddr()))
	fail := func(err error) {
		r.badStreams.Add(1)
		log.Warn("replication stream rejected", zap.Error(err))
	}

	conn.SetDeadline(time.Now().Add(ioTimeout))
	theirs, err := readHello(conn)
	if err != nil {
		fail(err)
		return
	}
	owner := int(theirs.pnn)
	remote, _ := netip.ParseAddrPort(conn.RemoteAddr().String())
	if want, ok := r.cfg.Nodes[owner]; !ok || want != remote.Addr().Unmap() || owner == r.cfg.Self {
		fail(fmt.Errorf("%w: claims to be node %d from %s", ErrHandshake, owner, remote.Addr()))
		return
	}
	// Number the stream before answering its hello: the owner sends
	// nothing on it before our hello, and opens its next stream only
	// after this one, so the numbers follow the owner's order.
	st := r.ownerState(owner)
	stream := st.streams.Add(1)
	version := min(theirs.version, r.serveVersion())
	mine, err := newHello(version, r.cfg.Self, r.cfg.Key)
	if err != nil {
		fail(err)
		return
	}
	if theirs.flags != mine.flags {
		fail(fmt.Errorf("%w: node %d disagrees on encryption", ErrHandshake, owner))
		return
	}
	if err := writeHello(conn, mine); err != nil {
		return
	}
	aead, err := sessionAEAD(r.cfg.Key, theirs.salt, mine.salt)
	if err != nil {
		fail(err)
		return
	}
	fr := &framer{aead: aead, dir: dirToServer}
	back := &framer{aead: aead, dir: dirToClient}
	log = log.With(zap.Int("owner", owner), zap.Uint64("stream", stream))
	for {
		// a live peer sends at least a keepalive every second
		conn.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := fr.read(conn)
		if err != nil {
			if errors.Is(err, ErrFrame) {
				fail(err)
			}
			return
		}
		m, err := DecodeMessage(b)
		switch {
		case err != nil:
		case int(m.Owner) != owner:
			err = fmt.Errorf("%w: node %d sent flows of node %d", ErrBadMessage, owner, m.Owner)
		case m.Kind.version() > version:
			err = fmt.Errorf("%w: %s on a version %d stream", ErrBadMessage, m.Kind, version)
		case m.Kind == KindResync || m.Kind == KindNotReady:
			err = fmt.Errorf("%w: node %d sent a %s, which only answers its digests", ErrBadMessage, owner, m.Kind)
		}
		if err != nil {
			r.badMessages.Add(1)
			log.Warn("replication message rejected", zap.Error(err))
			continue
		}
		st.mu.Lock()
		if stream < st.newest {
			st.mu.Unlock()
			r.staleMessages.Add(1)
			log.Info("message on a replaced stream dropped, closing that stream", zap.Stringer("kind", m.Kind))
			return
		}
		st.newest = stream
		reply := r.apply(owner, st, m)
		st.mu.Unlock()
		if reply != nil {
			conn.SetWriteDeadline(time.Now().Add(ioTimeout))
			if err := back.write(conn, mustEncode(reply)); err != nil {
				log.Debug("answer a digest", zap.Error(err))
				return
			}
		}
	}
}

// apply writes one message of owner's to the store, with st.mu held. It
// returns the answer to a digest.
func (r *Replicator) apply(owner int, st *ownerState, m *Message) *Message {
	bad := func(format string, args ...any) *Message {
		r.badMessages.Add(1)
		r.log.Warn("replication message rejected", zap.Int("owner", owner),
			zap.Error(fmt.Errorf("%w: "+format, append([]any{ErrBadMessage}, args...)...)))
		return nil
	}
	switch m.Kind {
	case KindDigest:
		return r.compare(owner, m)
	case KindSnapBegin:
		st.gen, st.snap = m.Gen, snapState{active: true, all: true, gen: m.Gen}
		return nil
	case KindVIPSnapBegin:
		st.gen, st.snap = m.Gen, snapState{active: true, vip: m.VIPs[0], gen: m.Gen}
		return nil
	case KindSnapChunk:
		if !st.snap.active || m.Gen != st.snap.gen {
			return bad("snapshot part of an unknown generation %d", m.Gen)
		}
		if !st.snap.all {
			for i := range m.Records {
				if m.Records[i].VIP != st.snap.vip {
					return bad("a flow to %s in a snapshot of %s", m.Records[i].VIP, st.snap.vip)
				}
			}
		}
	case KindSnapEnd:
		if !st.snap.active || !st.snap.all || m.Gen != st.snap.gen {
			return bad("end of a snapshot of an unknown generation %d", m.Gen)
		}
		st.snap = snapState{}
		r.sweep(owner, netip.Addr{}, m.Gen)
		return nil
	case KindVIPSnapEnd:
		if !st.snap.active || st.snap.all || m.VIPs[0] != st.snap.vip || m.Gen != st.snap.gen {
			return bad("end of a snapshot of %s of an unknown generation %d", m.VIPs[0], m.Gen)
		}
		st.snap = snapState{}
		r.sweep(owner, m.VIPs[0], m.Gen)
		return nil
	}

	var opens, closes []dataplane.PeerFlow
	var (
		steerVIP netip.Addr
		steer    bool
	)
	for _, rec := range m.Records {
		pf := dataplane.PeerFlow{VIP: rec.VIP, VIPPort: rec.VIPPort, Client: rec.Client, ClientPort: rec.ClientPort,
			Owner: owner, Gen: st.gen, LastSeen: time.Unix(0, rec.LastSeen)}
		if rec.Op == OpClose {
			closes = append(closes, pf)
			continue
		}
		if rec.VIP != steerVIP || !steerVIP.IsValid() {
			steerVIP, steer = rec.VIP, r.cfg.Steer(rec.VIP, owner)
		}
		pf.Steer = steer
		opens = append(opens, pf)
	}
	r.recordsReceived.Add(uint64(len(m.Records)))
	if err := r.store.UpsertPeerFlows(opens); err != nil {
		r.storeErrors.Add(1)
		r.log.Error("store peer flows", zap.Int("owner", owner), zap.Error(err))
	}
	if err := r.store.DeletePeerFlows(closes); err != nil {
		r.storeErrors.Add(1)
		r.log.Error("delete peer flows", zap.Int("owner", owner), zap.Error(err))
	}
	return nil
}

// sweep drops owner's flows (to vip, or all of them) that the snapshot of
// generation gen did not renew.
func (r *Replicator) sweep(owner int, vip netip.Addr, gen uint32) {
	var (
		n   int
		err error
	)
	if r.peerIdx != nil {
		n, err = r.peerIdx.SweepPeerFlows(owner, vip, gen)
	} else {
		n, err = r.store.DeletePeerFlowsWhere(func(f dataplane.PeerFlow) bool {
			return f.Owner == owner && f.Gen != gen && (!vip.IsValid() || f.VIP == vip)
		})
	}
	if err != nil {
		r.storeErrors.Add(1)
		r.log.Error("sweep peer flows", zap.Int("owner", owner), zap.Error(err))
	} else if n > 0 {
		r.log.Info("dropped stale peer flows after a snapshot", zap.Int("owner", owner), zap.Stringer("vip", vip), zap.Int("flows", n))
	}
}

// compare answers owner's digest with the VIPs whose flows here differ
// from the owner's: those in the digest with another digest here, and
// those held here that the digest lacks.
func (r *Replicator) compare(owner int, m *Message) *Message {
	r.digestsCompared.Add(1)
	held, ok := r.peerIdx.PeerDigests(owner)
	if !ok {
		return &Message{Kind: KindNotReady, Owner: uint16(owner), Gen: m.Gen}
	}
	var differ []netip.Addr
	for _, d := range m.Digests {
		if held[d.VIP] != d.Digest {
			differ = append(differ, d.VIP)
		}
		delete(held, d.VIP)
	}
	for vip, d := range held {
		if d.Count > 0 {
			differ = append(differ, vip)
		}
	}
	if len(differ) > MaxDigests {
		differ = differ[:MaxDigests] // the next round asks for the rest
	}
	if len(differ) > 0 {
		r.vipsDiffering.Add(uint64(len(differ)))
		r.log.Info("replicated connections differ from their owner's, asking for them again",
			zap.Int("owner", owner), zap.Stringers("vips", differ))
	}
	return &Message{Kind: KindResync, Owner: uint16(owner), Gen: m.Gen, VIPs: differ}
}
