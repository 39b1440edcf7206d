package ownership

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// claimsPerMessage keeps a heartbeat within MaxMessage with IPv6 VIPs.
const claimsPerMessage = 32

func (e *Engine) localFlags() NodeFlags {
	var f NodeFlags
	if e.local.Healthy {
		f |= FlagHealthy
	}
	if e.local.Disabled {
		f |= FlagDisabled
	}
	if e.local.Banned {
		f |= FlagBanned
	}
	if e.now < e.startingUntil {
		f |= FlagStarting
	}
	if e.stopping && !e.restarting {
		f |= FlagStopping
	}
	if e.restarting {
		f |= FlagRestarting
	}
	if e.lock.Held {
		f |= FlagLockHeld
	}
	return f
}

// heartbeat sends this node's claims to every voter, its own voter first.
func (e *Engine) heartbeat(now Mono) {
	e.urgent = false
	e.nextHB = now.Add(e.cfg.Timing.Renew)
	lease := e.cfg.Timing.Lease
	if e.restarting || e.covering {
		lease = e.cfg.Timing.Grace
	}
	var claims []Claim
	var draining []netip.Addr
	for i := range e.slots {
		s := &e.slots[i]
		vip := e.cfg.VIPs[i].Addr
		switch s.state {
		case held:
			if !e.view.quorum && !e.restarting && e.view.current != nil {
				// Cut off: our renewals could not be answered, and a
				// voter that hears them would keep promising to us what
				// the others may need (a one-way partition).
				continue
			}
			if s.pending != 0 {
				// a newer epoch of ours, not granted yet: not "held"
				claims = append(claims, Claim{VIP: vip, Epoch: s.pending, State: ClaimTaking})
				break
			}
			st := ClaimHeld
			if s.deadline < now {
				st = ClaimLapsed
			}
			claims = append(claims, Claim{VIP: vip, Epoch: s.epoch, State: st})
		case claiming:
			if !e.restarting {
				claims = append(claims, Claim{VIP: vip, Epoch: s.epoch, State: ClaimTaking})
				s.retryAt = 0
			}
		}
		if s.draining {
			draining = append(draining, vip)
		}
	}
	hears := []int{}
	for _, p := range e.cfg.Nodes {
		if e.alive(now, p) {
			hears = append(hears, p)
		}
	}
	for first := true; first || len(claims) > 0; first = false {
		chunk := claims[:min(len(claims), claimsPerMessage)]
		claims = claims[len(chunk):]
		e.seq++
		hb := &Heartbeat{From: e.cfg.Self, Incarnation: e.cfg.Incarnation, Seq: e.seq, Proto: ProtoVersion, Flags: e.localFlags(),
			Fingerprint: e.cfg.Fingerprint, Lease: lease, Hears: hears, MAC: e.mac(), Claims: chunk, Ifaces: e.ifaces()}
		if e.shortLeases(now, chunk) {
			hb.Flags |= FlagShortLeases
		}
		if first {
			hb.Draining = draining[:min(len(draining), claimsPerMessage)]
		}
		hb.fitIfaces()
		r := &round{seq: e.seq, sent: now, lease: lease, claims: map[int]uint64{},
			grants: map[int]map[int]time.Duration{}, busy: map[int]map[int]time.Duration{}}
		for _, c := range chunk {
			r.claims[e.index[c.VIP]] = c.Epoch
		}
		e.rounds = append(e.rounds, r)
		e.broadcast(hb)
		// this node's own vote, as any voter's
		for _, c := range chunk {
			e.applyAnswer(r, e.cfg.Self, e.voter.Answer(now, e.cfg.Self, c, lease, hb.Flags&FlagShortLeases != 0))
		}
	}
	// A round older than the promises it asked for can extend nothing.
	e.rounds = slices.DeleteFunc(e.rounds, func(r *round) bool { return r.sent.Add(r.lease) < now })
	if len(e.rounds) > 4096 {
		e.rounds = e.rounds[len(e.rounds)-4096:]
	}
}

// fitIfaces drops interface MACs from the end of h until it fits in a
// message: they only refine where drains are steered (the node MAC stays),
// and give way to claims.
func (h *Heartbeat) fitIfaces() {
	for len(h.Ifaces) > 0 && h.size() > MaxMessage {
		h.Ifaces = h.Ifaces[:len(h.Ifaces)-1]
	}
}

// shortLeases tells whether every VIP the claims renew has a data-plane
// deadline no later than now plus a lease, confirmed (FlagShortLeases). A
// restarting node asks for its grace, not for short promises.
func (e *Engine) shortLeases(now Mono, claims []Claim) bool {
	if e.restarting || e.covering {
		return false
	}
	for _, c := range claims {
		if c.State != ClaimHeld {
			continue
		}
		s := &e.slots[e.index[c.VIP]]
		if s.shortTo != 0 || s.dpMax > now.Add(e.cfg.Timing.usable(e.cfg.Timing.Lease)) {
			return false
		}
	}
	return true
}

// onHeartbeat records a peer's state and answers its claims as a voter.
func (e *Engine) onHeartbeat(now Mono, hb *Heartbeat) {
	if hb.From == e.cfg.Self || !slices.Contains(e.cfg.Nodes, hb.From) {
		return
	}
	p := e.peers[hb.From]
	if p == nil {
		p = &peer{}
		e.peers[hb.From] = p
	}
	if now.Sub(p.heard) > e.cfg.Timing.Lease || p.claimOf == nil {
		e.dirty = true // it comes back
	}
	e.hear(p, now)
	fresh := p.claimOf == nil || hb.Incarnation > p.hb.Incarnation || (hb.Incarnation == p.hb.Incarnation && hb.Seq > p.hb.Seq)
	if fresh {
		// Not an older heartbeat overtaking a newer one. A heartbeat
		// carries all of the sender's claims, or the first of several
		// chunks (Draining set) starts them over.
		oldClaims, oldDraining := p.claimOf, p.draining
		if p.claimOf == nil || hb.Incarnation != p.hb.Incarnation || hb.Draining != nil || len(hb.Claims) < claimsPerMessage {
			p.claimOf = map[netip.Addr]Claim{}
			p.draining = map[netip.Addr]bool{}
		}
		before := p.hb
		prevClaims, prevDraining := len(oldClaims), len(oldDraining)
		p.hb, p.hbAt = *hb, now
		changed := before.Flags != hb.Flags || before.Fingerprint != hb.Fingerprint || !slices.Equal(before.Hears, hb.Hears)
		for _, c := range hb.Claims {
			if _, ok := e.index[c.VIP.Unmap()]; ok {
				if old, ok := oldClaims[c.VIP.Unmap()]; !ok || old != c {
					changed = true
				}
				p.claimOf[c.VIP.Unmap()] = c
			}
		}
		for _, a := range hb.Draining {
			if !oldDraining[a.Unmap()] {
				changed = true
			}
			p.draining[a.Unmap()] = true
		}
		if changed || len(p.claimOf) != prevClaims || len(p.draining) != prevDraining {
			e.dirty = true
		}
	}
	if len(hb.Claims) == 0 {
		return
	}
	reply := &Reply{From: e.cfg.Self, Seq: hb.Seq}
	for _, c := range hb.Claims {
		before, _ := e.voter.Promise(c.VIP)
		// short leases from a heartbeat older than one heard before may
		// predate the restart that asked for longer promises
		a := e.voter.Answer(now, hb.From, c, hb.Lease, fresh && hb.Flags&FlagShortLeases != 0)
		if after, _ := e.voter.Promise(c.VIP); after.Epoch != before.Epoch || after.Holder != before.Holder || (before.Until <= now) != (after.Until <= now) {
			e.dirty = true
		}
		reply.Answers = append(reply.Answers, a)
		i, ok := e.index[a.VIP]
		if !ok {
			continue
		}
		s := &e.slots[i]
		s.maxEpoch = max(s.maxEpoch, c.Epoch)
		// A peer that held a newer epoch had a majority for it: ours is
		// over (any majority we had shared a voter that refused us since).
		if c.State != ClaimTaking && c.Epoch > s.epoch && s.state == held {
			e.beginRelease(i, Drop{Lost: true, To: hb.From, Reason: fmt.Sprintf("node %d holds a newer epoch", hb.From)})
		}
		// The same epoch held by another node: the voters that granted
		// ours forgot it (rebooted, or restarted without it) and granted
		// it again. Both cannot be answering (the majorities met); ours,
		// lapsed, is the one that is over.
		if c.State == ClaimHeld && c.Epoch == s.epoch && s.state == held && s.deadline < now && e.peerQuorum(*hb) {
			e.beginRelease(i, Drop{Lost: true, To: hb.From, Reason: fmt.Sprintf("node %d holds the same epoch, ours lapsed", hb.From)})
		}
	}
	e.out.Send = append(e.out.Send, Envelope{To: hb.From, Msg: reply})
}

// onReply applies a voter's answers to the round they answer.
func (e *Engine) onReply(now Mono, rp *Reply) {
	if rp.From == e.cfg.Self || !slices.Contains(e.cfg.Nodes, rp.From) {
		return
	}
	if p := e.peers[rp.From]; p != nil {
		e.hear(p, now)
	}
	for i := len(e.rounds) - 1; i >= 0; i-- { // the latest first: replies come back in order
		if r := e.rounds[i]; r.seq == rp.Seq {
			for _, a := range rp.Answers {
				e.applyAnswer(r, rp.From, a)
			}
			return
		}
	}
}

// onRelease ends the promises a peer gives up.
func (e *Engine) onRelease(now Mono, rl *Release) {
	if rl.From == e.cfg.Self || !slices.Contains(e.cfg.Nodes, rl.From) {
		return
	}
	p := e.peers[rl.From]
	if p != nil {
		e.hear(p, now)
	}
	e.dirty = true
	for _, c := range rl.Items {
		e.voter.Release(now, rl.From, c.VIP, c.Epoch, c.Drain)
		if p != nil && p.claimOf != nil {
			if pc, ok := p.claimOf[c.VIP.Unmap()]; ok && pc.Epoch == c.Epoch {
				delete(p.claimOf, c.VIP.Unmap())
			}
			if c.Drain {
				p.draining[c.VIP.Unmap()] = true
			}
		}
	}
}

// applyAnswer counts one voter's answer to a claim of round r.
func (e *Engine) applyAnswer(r *round, voter int, a Answer) {
	i, ok := e.index[a.VIP.Unmap()]
	if !ok {
		return
	}
	epoch, claimed := r.claims[i]
	if !claimed || a.Epoch != epoch {
		return
	}
	s := &e.slots[i]
	s.maxEpoch = max(s.maxEpoch, a.CurEpoch)
	mine := (s.epoch == epoch && (s.state == held || s.state == claiming)) || (s.state == held && s.pending == epoch && epoch != 0)
	switch a.Verdict {
	case Granted:
		g := r.grants[i]
		if g == nil {
			g = map[int]time.Duration{}
			r.grants[i] = g
		}
		g[voter] = a.Granted
		if mine && a.PrevHolder != None && a.PrevHolder != e.cfg.Self && a.PrevEpoch < epoch {
			if s.orphans == nil {
				s.orphans, s.drainers = map[int]bool{}, map[int]bool{}
			}
			if a.PrevDrains {
				s.drainers[a.PrevHolder] = true
			} else {
				s.orphans[a.PrevHolder] = true
			}
			if a.PrevEpoch >= s.prevEpoch {
				s.prevHolder, s.prevEpoch = a.PrevHolder, a.PrevEpoch
			}
		}
		if mine {
			e.evaluate(r, i)
		}
	case Stale, Taken:
		if !mine {
			return
		}
		if s.state == held {
			// One voter promised a newer epoch: not proof that another
			// node holds the VIP (a claim that was given up leaves such
			// promises behind). That proof is a holder's heartbeat with
			// the newer epoch (onHeartbeat). Once that voter's promise
			// has run out, move to a newer epoch of our own so that it
			// grants us again (same holder: nothing to fence).
			if epoch == s.pending && a.CurHolder != e.cfg.Self && a.Remaining > 0 {
				// Another node asks for a newer epoch than our pending
				// one: as long as both ask, each keeps the voters it has
				// and neither gets a majority. Ours gives way.
				e.dropPending(i)
				return
			}
			if a.Remaining == 0 {
				s.pending = max(s.maxEpoch, a.CurEpoch) + 1
				s.maxEpoch = s.pending
				e.urgent, e.dirty = true, true
			}
			return
		}
		if a.Verdict == Taken && a.CurEpoch == epoch && a.CurHolder > e.cfg.Self {
			// Two claimants of one epoch: the lower-numbered one goes on
			// with the next epoch (its voters grant it: same holder), the
			// other gives up when it sees it.
			s.epoch = max(s.maxEpoch, epoch) + 1
			s.maxEpoch = s.epoch
			e.urgent, e.dirty = true, true
			return
		}
		e.abortClaim(i, "another node claims a newer epoch")
	case Busy:
		if !mine || s.state != claiming {
			return
		}
		b := r.busy[i]
		if b == nil {
			b = map[int]time.Duration{}
			r.busy[i] = b
		}
		b[voter] = a.Remaining
		// Claim again when enough of the busy voters' promises have run
		// out to make a majority with the grants so far.
		need := e.majority - len(r.grants[i])
		if need <= 0 || len(b) < need {
			return
		}
		left := make([]time.Duration, 0, len(b))
		for _, d := range b {
			left = append(left, d)
		}
		slices.Sort(left)
		at := e.now.Add(left[need-1] + time.Millisecond)
		if s.retryAt == 0 || at < s.retryAt {
			s.retryAt = at
		}
	}
}

// dropPending stops asking for the newer epoch of a held VIP. Its
// promises are released once the data plane's lease has lapsed: until
// then they are what covers it (Voter.Answer keeps a holder's promise at
// least as long), and they run out on their own.
func (e *Engine) dropPending(i int) {
	s := &e.slots[i]
	if s.pending == 0 {
		return
	}
	if s.deadline <= e.now {
		vip := e.cfg.VIPs[i].Addr
		e.voter.Release(e.now, e.cfg.Self, vip, s.pending, false)
		e.broadcast(&Release{From: e.cfg.Self, Items: []Released{{VIP: vip, Epoch: s.pending}}})
	}
	s.pending = 0
	e.dirty = true
}

// drains says node o serves the old connections of the VIP of slot s (a
// planned release): they are steered to it, never orphaned. A voter that
// learnt of the release says so (drainers); a voter whose promise to o
// simply ran out does not, so o's own heartbeats count too: the holder
// asks both when it takes the VIP and at every renewal after (a late
// voter's answer adds o to the orphans then).
func (e *Engine) drains(s *slot, o int, vip netip.Addr) bool {
	p := e.peers[o]
	return s.drainers[o] || (p != nil && p.draining[vip])
}

// evaluate extends a held VIP's deadline, or completes a claim, when round
// r has the promises of a majority (or of half the nodes and the lock) for
// VIP i.
func (e *Engine) evaluate(r *round, i int) {
	s := &e.slots[i]
	g := r.grants[i]
	durs := make([]time.Duration, 0, len(g))
	for _, d := range g {
		durs = append(durs, d)
	}
	slices.SortFunc(durs, func(a, b time.Duration) int { return int(b - a) })
	var d time.Duration
	switch {
	case len(durs) >= e.majority:
		d = durs[e.majority-1]
	case len(durs) >= e.half && e.lockUsable(r.sent) && g[e.cfg.Self] > 0:
		// The lock vouches for one lease at most: the next holder of the
		// lock waits that long before it counts on it (lockUsable), so a
		// longer promise (a restart's grace) needs a real majority.
		d = min(durs[e.half-1], e.cfg.Timing.Lease)
	default:
		return
	}
	until := r.sent.Add(e.cfg.Timing.usable(d))
	if until <= e.now {
		return // evidence too old to answer on
	}
	switch s.state {
	case held:
		if epoch := r.claims[i]; s.pending != 0 && epoch == s.pending {
			// our newer epoch is granted: it is the one we hold now
			s.epoch, s.pending = epoch, 0
			e.dirty = true
		} else if epoch != s.epoch {
			return
		}
		if (s.long || s.shortTo != 0) && !e.restarting && !e.stopping && !e.covering {
			// The first renewal since this daemon adopted the VIP from a
			// restart: give the restart's grace back, or a crash now
			// would leave the VIP unanswered for the rest of it. Until
			// the data plane has it (DeadlineWritten), every renewal
			// writes it again.
			if s.long || until > s.deadline {
				if s.long {
					e.note("%s: deadline shortened to a lease now that renewals come (adopted from a restart)", e.cfg.VIPs[i].Addr)
				}
				s.long, s.deadline, s.shortTo = false, until, until
				e.out.Deadlines = append(e.out.Deadlines, Deadline{VIP: i, Epoch: s.epoch, Until: until, Shorten: true})
			}
			return
		}
		if until > s.deadline {
			s.deadline = until
			s.dpMax = max(s.dpMax, until)
			// a restart's grace (covering a peer's): the first renewal
			// after it shortens the deadline again
			s.long = s.long || until > e.now.Add(e.cfg.Timing.usable(e.cfg.Timing.Lease))
			d := Deadline{VIP: i, Epoch: s.epoch, Until: until}
			vip := e.cfg.VIPs[i].Addr
			for o := range s.orphans {
				if !e.drains(s, o, vip) && !s.tickled[o] {
					d.Orphans = append(d.Orphans, o)
					if s.tickled == nil {
						s.tickled = map[int]bool{}
					}
					s.tickled[o] = true
				}
			}
			slices.Sort(d.Orphans)
			clear(s.orphans)
			e.out.Deadlines = append(e.out.Deadlines, d)
		}
	case claiming:
		e.dirty = true
		s.state, s.deadline = held, until
		s.dpMax, s.shortTo, s.long = until, 0, false
		orphans := make([]int, 0, len(s.orphans))
		for o := range s.orphans {
			orphans = append(orphans, o)
		}
		slices.Sort(orphans)
		clear(s.orphans)
		from := s.from
		if from == e.cfg.Self || from == None {
			from = s.prevHolder
		}
		vip := e.cfg.VIPs[i].Addr
		drains := func(o int) bool { return e.drains(s, o, vip) }
		orphans = slices.DeleteFunc(orphans, drains)
		// The take tickles these; a renewal tickles only the previous
		// holders that no grant named before (make demo's timeline
		// showed a second tickle of the same connections 50 ms after
		// every takeover: a late grant of the claim's other round).
		s.tickled = map[int]bool{}
		for _, o := range orphans {
			s.tickled[o] = true
		}
		fromDraining := from != None && drains(from)
		e.out.Takes = append(e.out.Takes, Take{VIP: i, Epoch: s.epoch, Until: until, Orphans: orphans,
			From: from, FromDraining: fromDraining, Reason: s.reason})
	}
}

// hear notes a message from peer p: it is alive, and back if it had been
// silent for more than a lease (see the rejoin hold-down in view.go).
func (e *Engine) hear(p *peer, now Mono) {
	if p.heard != 0 && now.Sub(p.heard) > e.cfg.Timing.Lease {
		p.back = now
	}
	p.heard = now
}
