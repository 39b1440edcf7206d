package ownership

// Covering a voter's restart.
//
// A reload (SIGHUP) or a restart restarts a daemon in place, and with it
// its voter: for a second or so it answers nobody. Where the other nodes
// are a majority without it (three of three running, say) nothing
// happens. Where they are not (a node listed and not running: ctdb
// reloadnodes of a node to be added, or a two-node cluster), every other
// holder's renewals go unanswered, their VIPs lapse after a lease and come
// back only once the voter is back, and a lapse long enough has the view
// move them (a take that tickles the holder's live connections).
//
// So a restart is covered the way the restarting node covers its own VIPs:
// with promises of the restart's grace. The restarting node says so in its
// heartbeats (FlagRestarting). A holder that sees it, and is no majority
// without that node, renews for the grace instead of a lease (and without
// FlagShortLeases) until the node is gone; the restarting node waits, before
// it exits, until every live peer it promised anything has, since the
// restart began, asked for the grace and been promised it, or renewed for
// less (it does without this node); bounded by coverWait, for a peer that
// does not cover (an older release). Once the node is back, the first renewal with a majority
// shortens the deadline to a lease again (the path an adopted VIP takes).
// The promises given for the grace end only when they run out: a holder
// that dies meanwhile is failed over after them, not after a lease. That
// is why only a restart the others cannot do without is covered: with a
// majority left, a lapse cannot happen and a slower failover would be
// the only effect.

import "time"

// coverWait bounds how long a restarting node waits for its peers to ask
// for the grace before it exits anyway.
func (t Timing) coverWait() time.Duration { return 2*t.Lease + 2*t.Renew }

// restartCover tells whether this node must renew for the restart's grace:
// a peer it hears is restarting, and without it the nodes it hears are no
// majority, but with it they are.
func (e *Engine) restartCover(now Mono) bool {
	if e.stopping || e.restarting {
		return false
	}
	up, restarting := 1, 0
	for _, p := range e.cfg.Nodes {
		if p == e.cfg.Self || !e.alive(now, p) {
			continue
		}
		if e.peers[p].hb.Flags&FlagRestarting != 0 {
			restarting++
		} else {
			up++
		}
	}
	return restarting > 0 && up < e.majority && up+restarting >= e.majority
}

// updateCover notes a change of restartCover; a start asks for the grace
// at once (the restarting peer waits for it).
func (e *Engine) updateCover(now Mono) {
	c := e.restartCover(now)
	if c == e.covering {
		return
	}
	e.covering = c
	if c {
		e.urgent = true
		e.note("a peer restarts and the others are no majority without it: renewing for the restart's grace")
	} else {
		e.note("the restart is over: renewing for a lease again")
	}
}

// restartCovered tells whether a restarting node may exit as far as its
// peers are concerned: every live peer it promised a VIP has, since the
// restart began, asked for the grace and been promised it (it covers the
// restart), or renewed for less a while after (it is a majority without
// this node, by its own nodes file, which a reload may be changing); or
// this node waited long enough. How long the promise itself runs says
// nothing: one the grace left from an earlier restart may outlive a
// deadline its holder has shortened since.
func (e *Engine) restartCovered() bool {
	if e.now >= e.stopSince.Add(e.cfg.Timing.coverWait()) {
		return true
	}
	for _, p := range e.voter.promises {
		if p.Holder == e.cfg.Self || p.Until <= e.now || !e.alive(e.now, p.Holder) {
			continue
		}
		pr := e.peers[p.Holder]
		switch {
		case pr.hbAt > e.stopSince && pr.hb.Lease >= e.cfg.Timing.Grace && p.Until >= e.now.Add(e.cfg.Timing.Grace/2):
			continue // it covers the restart
		case pr.hbAt >= e.stopSince.Add(2*e.cfg.Timing.Renew) && pr.hb.Lease < e.cfg.Timing.Grace:
			continue // it renews for a lease: it does without this node
		}
		return false
	}
	return true
}
