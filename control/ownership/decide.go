package ownership

import (
	"fmt"
)

// Per-VIP decisions: what to claim, release and give up, and why.

// decide acts on VIP i: release what this node must not hold, claim what
// it should hold and nobody does.
func (e *Engine) decide(i int, v *view) {
	s := &e.slots[i]
	self := e.cfg.Self
	target := v.target[i]
	switch s.state {
	case held:
		if e.restarting {
			return // keep everything through the restart
		}
		if !v.quorum && !e.stopping {
			// Cut off: the data plane stops answering at the deadline on
			// its own. Keep the address and the connections: if the
			// cluster comes back before anyone else took the VIP, they
			// go on; if another node took it, it tickled them and we
			// learn it from its newer epoch (and drop it then).
			return
		}
		if target == self {
			return
		}
		fit := (e.local.Healthy || e.local.HealthPending) && !e.local.Disabled && !e.local.Banned && !e.stopping && (v.selfAgrees || !v.hasAgreed)
		if target == None && fit {
			// Nobody may hold it right now (views still settling after
			// a partition): keeping it loses nothing, the data plane
			// stops answering by itself if renewals fail.
			return
		}
		if s.deadline < e.now {
			// Lapsed: the data plane no longer answers, and another node
			// may have taken the VIP. Renewal settles it (or a newer
			// holder's heartbeat, see onHeartbeat); only unfitness drops
			// it meanwhile, and then nothing is left to drain.
			if fit {
				return
			}
			e.beginRelease(i, Drop{To: target, Reason: e.releaseReason(i, v)})
			return
		}
		drain := e.planned(i, v)
		if drain && e.rejoining(target) {
			// A planned move to a peer just heard again after a silence (a
			// partition healed, a restart) waits a HoldDown: the move
			// steers the connections the peer has replicas of, and those
			// made while it was away may still be on their way (a
			// stream's retransmissions, a resync): one it lacks would get
			// a RST instead. It also keeps a flapping peer from pulling
			// VIPs back and forth. Nothing is lost meanwhile: we answer.
			return
		}
		if e.cfg.Debug {
			e.note("releases %s: alive %v eligible %v target %v current %v quorum %v starting %v", e.cfg.VIPs[i].Addr, v.alive, v.eligible, v.target, v.current, v.quorum, e.now < e.startingUntil)
		}
		e.beginRelease(i, Drop{Drain: drain, To: target, Reason: e.releaseReason(i, v)})
	case claiming:
		if target != self || !v.selfCanClaim || (v.current[i] != None && v.current[i] != self) {
			e.abortClaim(i, "no longer the target")
		}
	case idle:
		if target != self || !v.selfCanClaim || v.current[i] != None {
			return
		}
		if e.now < s.failedAt.Add(e.cfg.Timing.HoldDown) {
			return
		}
		if s.maxEpoch == 0 && e.now.Sub(e.settledSince) < e.cfg.Timing.Settle {
			return // never held: wait until the view settles
		}
		e.beginClaim(i, v)
	}
}

func (e *Engine) beginClaim(i int, v *view) {
	e.dirty = true
	s := &e.slots[i]
	s.state = claiming
	s.epoch = max(s.maxEpoch, e.voter.Epoch(e.cfg.VIPs[i].Addr)) + 1
	s.maxEpoch = s.epoch
	s.orphans, s.drainers, s.tickled = map[int]bool{}, map[int]bool{}, map[int]bool{}
	s.from = v.lastHolder[i]
	s.prevHolder, s.prevEpoch = None, 0
	s.reason = e.takeReason(i, v)
	s.retryAt = 0
	e.urgent = true
	if e.cfg.Debug {
		e.note("claims %s epoch %d: %s (alive %v eligible %v)", e.cfg.VIPs[i].Addr, s.epoch, s.reason, v.alive, v.eligible)
	}
}

// abortClaim gives a claim up and releases the promises it collected, so
// that another claimant gets them at once.
func (e *Engine) abortClaim(i int, why string) {
	s := &e.slots[i]
	if s.state != claiming {
		return
	}
	e.dirty = true
	s.state = idle
	vip := e.cfg.VIPs[i].Addr
	e.voter.Release(e.now, e.cfg.Self, vip, s.epoch, false)
	e.broadcast(&Release{From: e.cfg.Self, Items: []Released{{VIP: vip, Epoch: s.epoch}}})
	e.note("gave up claiming %s: %s", vip, why)
}

func (e *Engine) beginRelease(i int, r Drop) {
	s := &e.slots[i]
	if s.state != held {
		return
	}
	e.dirty = true
	r.VIP, r.Epoch = i, s.epoch
	if r.To == 0 && !r.Drain && r.Reason != "" {
		r.To = None
	}
	s.state = releasing
	s.release = r
	e.out.Drops = append(e.out.Drops, r)
}

// planned tells whether releasing VIP i is a planned move that drains: the
// VIP goes to a live node, and this node is fit to keep serving.
func (e *Engine) planned(i int, v *view) bool {
	if e.pinKill[i] && e.pins[i] == v.target[i] {
		return false // fsha move --kill
	}
	return v.target[i] != None && (e.local.Healthy || e.local.HealthPending)
}

func (e *Engine) releaseReason(i int, v *view) string {
	switch {
	case e.stopping:
		return "shutdown"
	case e.local.Disabled:
		return "disabled"
	case e.local.Banned:
		return "banned"
	case !e.local.Healthy:
		return "unhealthy"
	case !v.quorum:
		return "lost quorum"
	case !v.selfAgrees:
		return "configuration differs from the majority"
	case e.pins[i] != None && e.pins[i] == v.target[i]:
		return "move"
	case v.target[i] == None:
		return "no eligible node"
	}
	return "rebalance"
}

func (e *Engine) takeReason(i int, v *view) string {
	from := v.lastHolder[i]
	switch {
	case from == None || from == e.cfg.Self:
		return "unassigned"
	case !v.alive[from]:
		return fmt.Sprintf("node %d died", from)
	}
	return fmt.Sprintf("released by node %d", from)
}

func (e *Engine) checkStopped() {
	if e.restarting && !e.restartCovered() {
		return
	}
	for i := range e.slots {
		s := &e.slots[i]
		if e.restarting {
			if s.state == held && s.deadline < e.now.Add(e.cfg.Timing.usable(e.cfg.Timing.Grace)/2) {
				return
			}
			continue
		}
		if s.state != idle {
			return
		}
	}
	e.stopped = true
}

func (e *Engine) wantLock() bool {
	if !e.cfg.Lock {
		return false
	}
	// Not taken while starting (the peers are not heard yet, a majority
	// may well be there), but kept.
	return !e.view.majorityAlive && e.local.Healthy && !e.local.Disabled && !e.local.Banned && !e.stopping &&
		(e.now >= e.startingUntil || e.lock.Held)
}

// rejoining tells whether peer p was heard again after a silence less than
// a HoldDown ago.
func (e *Engine) rejoining(p int) bool {
	if p == None || p == e.cfg.Self {
		return false
	}
	pr := e.peers[p]
	return pr != nil && pr.back != 0 && e.now.Sub(pr.back) < e.cfg.Timing.HoldDown
}
