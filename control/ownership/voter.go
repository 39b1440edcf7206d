package ownership

import (
	"net/netip"
	"time"
)

// Voter is one node's vote on who may answer for each VIP. Every node of
// the nodes file is a voter, the claimant included. It promises a VIP's
// epoch to one node for a while and, until the promise runs out (or its
// holder releases it), grants no other node a newer epoch: a claimant that
// collects promises from a strict majority knows that no other node can
// collect a majority for that VIP before the earliest of them ends, since
// two majorities share a voter.
//
// The rules, for a claim of epoch e by node h against the current promise p:
//
//	p.Epoch > e                           refuse (Stale)
//	p.Epoch == e, p.Holder == h           grant: extend
//	p.Epoch == e, p.Holder != h           refuse (Taken)
//	p.Epoch < e, p.Holder == h or p over  grant: a new promise (for h,
//	                                      at least as long as p)
//	p.Epoch < e, another holder, p runs   refuse (Busy, with the time left)
//
// A promise never shortens except by its holder's release, or when its
// holder says its data plane no longer needs it (FlagShortLeases, in a
// heartbeat newer than every other this voter heard from it: an older
// one, delayed, may predate the restart that asked for the longer
// promise). A promise restored from an earlier run of this voter is never
// shortened: what ordered the heartbeats behind it is gone. Promises must
// outlive the process: the caller persists every change (Voter.Changed)
// before it sends the answers, and a voter that starts without its
// promises gives none for a while (quiet), so that whatever it promised
// before has run out.
type Voter struct {
	self     int
	known    map[netip.Addr]bool
	maxGrant time.Duration
	quiet    Mono
	promises map[netip.Addr]Promise
	changed  map[netip.Addr]bool
	// restored holds the end of each promise restored from an earlier
	// run: no short claim cuts a promise below it.
	restored map[netip.Addr]Mono
}

// NewVoter returns a voter for the VIPs of this node's configuration that
// grants at most maxGrant at a time and nothing before quietUntil.
func NewVoter(self int, vips []netip.Addr, maxGrant time.Duration, quietUntil Mono) *Voter {
	v := &Voter{self: self, known: map[netip.Addr]bool{}, maxGrant: maxGrant, quiet: quietUntil,
		promises: map[netip.Addr]Promise{}, changed: map[netip.Addr]bool{}, restored: map[netip.Addr]Mono{}}
	for _, a := range vips {
		v.known[a.Unmap()] = true
	}
	return v
}

// Restore loads a promise persisted by an earlier run of this node.
func (v *Voter) Restore(vip netip.Addr, p Promise) {
	v.promises[vip.Unmap()] = p
	v.restored[vip.Unmap()] = p.Until
}

// Promise returns the current promise for vip.
func (v *Voter) Promise(vip netip.Addr) (Promise, bool) {
	p, ok := v.promises[vip.Unmap()]
	return p, ok
}

// Promises returns every promise (a copy).
func (v *Voter) Promises() map[netip.Addr]Promise {
	out := make(map[netip.Addr]Promise, len(v.promises))
	for k, p := range v.promises {
		out[k] = p
	}
	return out
}

// Changed returns the promises changed since the last call: the caller
// persists them before it sends any answer.
func (v *Voter) Changed() map[netip.Addr]Promise {
	if len(v.changed) == 0 {
		return nil
	}
	out := make(map[netip.Addr]Promise, len(v.changed))
	for k := range v.changed {
		out[k] = v.promises[k]
	}
	clear(v.changed)
	return out
}

// Answer decides one claim of node from for lease, at now. short: the
// holder says its data plane's deadline for what it renews is no later
// than a lease from its sending (FlagShortLeases), in a heartbeat newer
// than any other the caller heard from it.
func (v *Voter) Answer(now Mono, from int, c Claim, lease time.Duration, short bool) Answer {
	vip := c.VIP.Unmap()
	a := Answer{VIP: vip, Epoch: c.Epoch, CurHolder: -1, PrevHolder: -1}
	p, ok := v.promises[vip]
	fill := func(verdict Verdict) Answer {
		a.Verdict = verdict
		if q, ok := v.promises[vip]; ok {
			a.CurEpoch, a.CurHolder = q.Epoch, q.Holder
			a.Remaining = max(0, q.Until.Sub(now))
		}
		return a
	}
	switch {
	case !v.known[vip]:
		return fill(Unknown)
	case now < v.quiet:
		return fill(Quiet)
	case ok && p.Epoch > c.Epoch:
		return fill(Stale)
	case ok && p.Epoch == c.Epoch && p.Holder != from:
		return fill(Taken)
	case ok && p.Epoch < c.Epoch && p.Holder != from && now < p.Until:
		return fill(Busy)
	}
	d := min(lease, v.maxGrant)
	if d <= 0 {
		return fill(Busy)
	}
	until := now.Add(d)
	if r, ok := v.restored[vip]; ok && r <= now {
		delete(v.restored, vip)
	}
	shortens := short && c.State == ClaimHeld && p.Epoch == c.Epoch && v.restored[vip] == 0
	if ok && p.Holder == from && !shortens {
		// never shorten a promise, not even by a newer epoch of the same
		// holder: its data plane may still run on the older one (a
		// restart's grace), unless the holder says it no longer does
		until = max(until, p.Until)
	}
	if ok && p.Epoch < c.Epoch {
		a.PrevEpoch, a.PrevHolder, a.PrevDrains = p.Epoch, p.Holder, p.Drained
	}
	np := Promise{Epoch: c.Epoch, Holder: from, Until: until}
	if np != p {
		v.promises[vip] = np
		v.changed[vip] = true
	}
	a.Granted = d
	return fill(Granted)
}

// Release ends node from's promise of epoch for vip at once: its holder
// says it no longer answers for it (drained: it still serves the old
// connections).
func (v *Voter) Release(now Mono, from int, vip netip.Addr, epoch uint64, drained bool) bool {
	vip = vip.Unmap()
	p, ok := v.promises[vip]
	if !ok || p.Epoch != epoch || p.Holder != from || p.Until <= now {
		return false
	}
	p.Until, p.Drained = now, drained
	v.promises[vip] = p
	v.changed[vip] = true
	return true
}

// Holder returns the node vip is promised to at now, or -1.
func (v *Voter) Holder(now Mono, vip netip.Addr) (int, uint64) {
	p, ok := v.promises[vip.Unmap()]
	if !ok || now >= p.Until {
		return -1, 0
	}
	return p.Holder, p.Epoch
}

// Epoch returns the highest epoch this voter knows for vip.
func (v *Voter) Epoch(vip netip.Addr) uint64 {
	return v.promises[vip.Unmap()].Epoch
}
