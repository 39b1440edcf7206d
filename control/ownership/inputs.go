package ownership

// The engine's inputs: what the caller feeds it (a restart's adoptions,
// local health and operator state, the lock, pins, drains, stops, the
// clock, executed actions, confirmed deadlines, peer messages). Each
// advances the clock, records the input and takes a step.

import "net/netip"

// Adopt takes back a VIP the data plane still holds for this node after a
// restart of the daemon: epoch and deadline as the data plane has them.
func (e *Engine) Adopt(vip netip.Addr, epoch uint64, until Mono) bool {
	i, ok := e.index[vip.Unmap()]
	if !ok || until <= e.now {
		return false
	}
	s := &e.slots[i]
	s.state, s.epoch, s.deadline, s.pending = held, epoch, until, 0
	s.dpMax, s.shortTo, s.long = until, 0, until > e.now.Add(e.cfg.Timing.usable(e.cfg.Timing.Lease))
	s.maxEpoch = max(s.maxEpoch, epoch)
	e.dirty = true
	e.out.Takes = append(e.out.Takes, Take{VIP: i, Epoch: epoch, Until: until, From: None, Adopted: true,
		Reason: "held before the restart"})
	e.urgent = true
	return true
}

// AdoptDraining notes a VIP this node still drains after a restart.
func (e *Engine) AdoptDraining(vip netip.Addr) {
	if i, ok := e.index[vip.Unmap()]; ok {
		e.slots[i].draining = true
	}
}

// SetLocal updates this node's fitness.
func (e *Engine) SetLocal(now Mono, l Local) {
	e.advance(now)
	e.dirty = true
	if l.Healthy && !e.local.Healthy && e.wasHealthy {
		// Back from a failure: stay out of new claims for a while so that
		// a flapping node does not pull VIPs back and forth.
		e.startingUntil = max(e.startingUntil, now.Add(e.cfg.Timing.HoldDown))
	}
	e.wasHealthy = e.wasHealthy || l.Healthy
	e.local = l
	e.step()
}

// SetLock updates what the caller knows of the cluster lock.
func (e *Engine) SetLock(now Mono, l LockState) {
	e.advance(now)
	e.dirty = true
	e.lock = l
	e.step()
}

// SetPins sets the operators' moves: pins[i] is the node VIP i was moved
// to, or None; kill[i] says the move resets the VIP's connections instead
// of draining them (fsha move --kill).
func (e *Engine) SetPins(now Mono, pins []int, kill []bool) {
	e.advance(now)
	e.dirty = true
	for i := range e.pins {
		e.pins[i], e.pinKill[i] = None, false
		if i < len(pins) {
			e.pins[i] = pins[i]
		}
		if i < len(kill) {
			e.pinKill[i] = kill[i]
		}
	}
	e.step()
}

// SetDraining records whether this node still drains VIP i.
func (e *Engine) SetDraining(now Mono, i int, on bool) {
	e.advance(now)
	e.dirty = true
	if i >= 0 && i < len(e.slots) {
		e.slots[i].draining = on
	}
	e.step()
}

// Stop begins a stop: with restart, the node keeps its VIPs for the grace
// (its voters promise them that long) and Stopped comes once they have;
// without, it hands every VIP over (planned moves: connections drain) and
// Stopped comes once it holds none.
func (e *Engine) Stop(now Mono, restart bool) {
	e.advance(now)
	e.dirty = true
	if !e.stopping {
		e.stopSince = now
	}
	e.stopping, e.restarting = true, restart
	e.urgent = true
	e.step()
}

// DeadlineWritten confirms that the data plane has a Deadline with
// Shorten: from now on this node's deadline for the VIP is no longer than
// its renewals say, and its heartbeats may say so (FlagShortLeases). A
// shortening never confirmed (the write failed) keeps the longer bound.
func (e *Engine) DeadlineWritten(vip int, epoch uint64, until Mono) {
	if vip < 0 || vip >= len(e.slots) {
		return
	}
	s := &e.slots[vip]
	if s.state == held && s.shortTo != 0 && s.shortTo == until && s.epoch == epoch {
		s.dpMax, s.shortTo = s.deadline, 0
	}
}

// Tick advances the engine to now.
func (e *Engine) Tick(now Mono) {
	e.advance(now)
	e.step()
}

// Done reports an executed Take or Drop.
func (e *Engine) Done(now Mono, r Result) {
	e.advance(now)
	e.dirty = true
	if r.VIP < 0 || r.VIP >= len(e.slots) {
		return
	}
	s := &e.slots[r.VIP]
	switch {
	case r.Take && r.Err == nil && s.state == held:
		// The address is on the interface again: whatever drained here
		// is local again (the executor ends the drain with the take; its
		// own word of it may arrive before the release's result, which
		// would leave the VIP held and "draining" here for good).
		s.draining = false
	case r.Take && r.Err != nil && s.state == held && s.epoch == r.Epoch:
		// The address did not come up: let the VIP go, and do not claim
		// it again for a while.
		e.note("take over %s failed: %v", e.cfg.VIPs[r.VIP].Addr, r.Err)
		s.failedAt = now
		e.beginRelease(r.VIP, Drop{Reason: "take over failed: " + r.Err.Error()})
	case !r.Take && s.state == releasing && s.epoch == r.Epoch:
		rel := s.release
		s.state = idle
		s.draining = rel.Drain
		if !rel.Lost {
			// The data plane no longer answers: the voters may promise the
			// VIP to the next holder at once.
			vip := e.cfg.VIPs[r.VIP].Addr
			items := []Released{{VIP: vip, Epoch: r.Epoch, Drain: rel.Drain}}
			if s.pending != 0 {
				items = append(items, Released{VIP: vip, Epoch: s.pending, Drain: rel.Drain})
			}
			for _, it := range items {
				e.voter.Release(now, e.cfg.Self, vip, it.Epoch, it.Drain)
			}
			e.broadcast(&Release{From: e.cfg.Self, Items: items})
		}
		s.pending = 0
	}
	e.step()
}

// Receive handles a message from another node.
func (e *Engine) Receive(now Mono, msg any) {
	e.advance(now)
	switch m := msg.(type) {
	case *Heartbeat:
		e.onHeartbeat(now, m)
	case *Reply:
		e.onReply(now, m)
	case *Release:
		e.onRelease(now, m)
	}
	e.step()
}
