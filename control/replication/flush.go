package replication

import (
	"context"
	"time"

	"go.uber.org/zap"
)

// epochCheck is how often the local index is asked whether it was rebuilt
// (and whether the ring buffer lost events).
const epochCheck = time.Second

// flushWhen is when the flush loop sends what is pending, told that there
// is something new to send: now if the last flush was at least an interval
// ago, else once it is (wait > 0). Deltas are batched at most one
// interval, as with a ticker, but an idle replicator does not wake up
// every interval to find nothing, and a record after a quiet spell goes
// out at once instead of waiting for the next tick.
func flushWhen(sinceLast, interval time.Duration) (now bool, wait time.Duration) {
	if sinceLast >= interval {
		return true, 0
	}
	return false, interval - sinceLast
}

// kick tells the flush loop that there is something to send (a record
// after an empty queue, a digest round asked for).
func (r *Replicator) kick() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// outstanding tells whether a flush left work behind: a digest waiting for
// its event (placed once the event is published, or asked again after a
// second), a round asked for meanwhile, or records published meanwhile.
func (r *Replicator) outstanding() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pending) > 0 || r.waiting != nil || r.digestAll || len(r.digestFor) > 0
}

func (r *Replicator) flushLoop(ctx context.Context) {
	interval := r.cfg.FlushInterval
	timer := time.NewTimer(interval)
	timer.Stop()
	defer timer.Stop()
	armed := false
	arm := func(d time.Duration) {
		if !armed {
			timer.Reset(d)
			armed = true
		}
	}
	var digestTick <-chan time.Time
	if r.cfg.DigestInterval > 0 && r.localIdx != nil {
		dt := time.NewTicker(r.cfg.DigestInterval)
		defer dt.Stop()
		digestTick = dt.C
	}
	var epochTick <-chan time.Time
	var epoch uint64
	if r.localIdx != nil {
		et := time.NewTicker(epochCheck)
		defer et.Stop()
		epochTick = et.C
	}
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.dirty:
			if now, wait := flushWhen(time.Since(last), interval); !now {
				arm(wait)
				continue
			}
		case <-timer.C:
			armed = false
		case <-r.wake:
		case <-digestTick:
			r.requestDigest(-1)
		case <-epochTick:
			e := r.localIdx.IndexEpoch()
			if e == epoch {
				continue
			}
			// rebuilt (at start, or after lost events): the peers may
			// lack what the events would have told them
			epoch = e
			r.requestDigest(-1)
		}
		r.flush()
		last = time.Now()
		if r.outstanding() {
			arm(interval)
		}
	}
}

// flush encodes the pending records once and queues them, and the digests
// placed among them, for every peer.
func (r *Replicator) flush() {
	r.mu.Lock()
	r.placeDigestLocked()
	recs, marks := r.pending, r.marks
	r.pending, r.marks = nil, nil
	peers := make([]*peerConn, 0, len(r.peers))
	for _, pc := range r.peers {
		peers = append(peers, pc)
	}
	r.mu.Unlock()
	queue := func(msg []byte, records int, to map[int]bool) {
		for _, pc := range peers {
			if to == nil || to[pc.peer.PNN] {
				pc.enqueue(msg, records, r)
			}
		}
	}
	deltas := func(recs []Record) {
		for len(recs) > 0 {
			n := min(len(recs), MaxRecords)
			msg, err := AppendMessage(nil, &Message{Kind: KindDelta, Owner: uint16(r.cfg.Self), Records: recs[:n]})
			if err != nil {
				r.log.Error("encode delta", zap.Error(err))
				return
			}
			queue(msg, n, nil)
			recs = recs[n:]
		}
	}
	pos := 0
	for _, mk := range marks {
		deltas(recs[pos:mk.pos])
		queue(mk.msg, 0, mk.to)
		pos = mk.pos
	}
	deltas(recs[pos:])
}
