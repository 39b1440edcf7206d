package sim

// A node's daemon in the simulator: its start (an Engine that adopts what
// the data plane holds and restores the persisted promises) and the model
// of its executor (data-plane leases, takes and drops run with a delay,
// drains), checked against the invariants as it goes.

import (
	"net/netip"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// startDaemon starts (or restarts) node n's daemon: a new engine that
// adopts what the data plane still holds and restores persisted promises.
func (w *simWorld) startDaemon(n *simNode) {
	n.run++
	n.running, n.paused, n.stopping, n.inbox = true, false, false, nil
	now := n.local2(w.now)
	quiet := now
	if n.persisted == nil {
		// no promises survived (a power cut): give none until any we gave
		// before has run out
		n.persisted = map[netip.Addr]ownership.Promise{}
		quiet = now.Add(w.timing.MaxGrant())
	}
	nodes := make([]int, len(w.nodes))
	for i := range w.nodes {
		nodes[i] = i
	}
	eng, err := ownership.New(ownership.Config{Self: n.pnn, Nodes: nodes, VIPs: n.vips, Policy: w.policy, Timing: w.timing,
		Lock: w.lock, Fingerprint: n.fp, MAC: [6]byte{2, 0, 0, 0, 0, byte(n.pnn)},
		Incarnation: uint64(n.run), Start: now, QuietUntil: quiet, Debug: w.keepLog})
	if err != nil {
		panic(err)
	}
	n.eng = eng
	for vip, p := range n.persisted {
		eng.Voter().Restore(vip, p)
	}
	for _, v := range n.vips { // in order: the run must be replayable
		if d := n.dp[v.Addr]; d != nil && d.held {
			eng.Adopt(v.Addr, d.epoch, d.until)
		}
	}
	n.lockHeld = false
	if w.lockBy == n.pnn {
		w.lockBy = -1 // the lock died with the process
	}
	eng.SetLocal(now, n.local)
	w.logf("n%d daemon starts (run %d)", n.pnn, n.run)
	w.drain(n)
}

// drain executes what n's engine asks for, until it asks nothing more.
func (w *simWorld) drain(n *simNode) {
	for range 16 {
		out := n.eng.Ready()
		if !w.execute(n, out) {
			break
		}
	}
	w.scheduleWake(n)
}

// execute carries out one Output; it reports whether it fed the engine
// again (lock changes), so that drain asks for the next Output.
func (w *simWorld) execute(n *simNode, out ownership.Output) bool {
	now := n.local2(w.now)
	for vip, p := range out.Persist {
		n.persisted[vip] = p
	}
	for _, d := range out.Deadlines {
		vip := n.vips[d.VIP].Addr
		if e := n.dp[vip]; e != nil && e.held {
			switch {
			case !d.Shorten:
				e.until, e.epoch = max(e.until, d.Until), d.Epoch
			case w.rng.Intn(4) > 0:
				// written and confirmed; otherwise the write failed and
				// the longer deadline stays, unconfirmed
				e.until, e.epoch = d.Until, d.Epoch
				n.eng.DeadlineWritten(d.VIP, d.Epoch, d.Until)
			}
		}
		for _, o := range d.Orphans {
			w.tickled[o]++
			w.tickleOnce(n, vip, d.Epoch, o)
			if w.answering(w.nodes[o], vip, w.now) {
				w.violate("n%d (renewing) tickles node %d's connections to %s, but n%d still answers for it", n.pnn, o, vip, o)
			}
			w.checkNotDraining(n, o, vip)
		}
	}
	for _, note := range out.Notes {
		w.logf("n%d: %s", n.pnn, note)
	}
	run := n.run
	for _, tk := range out.Takes {
		tk := tk
		vip := n.vips[tk.VIP].Addr
		if tk.Adopted {
			continue
		}
		w.takes++
		for _, o := range tk.Orphans {
			w.tickled[o]++
			w.tickleOnce(n, vip, tk.Epoch, o)
		}
		if tk.From != ownership.None {
			w.moves++
		}
		w.logf("n%d takes %s epoch %d until +%v orphans %v from %d (%s)", n.pnn, vip, tk.Epoch,
			tk.Until.Sub(now), tk.Orphans, tk.From, tk.Reason)
		// A daemon that dies meanwhile may or may not have written the
		// data plane's lease (its first step).
		written := w.rng.Intn(2) == 0
		decided, heard := w.now, map[int]int64{}
		for _, o := range tk.Orphans {
			heard[o] = n.heardAt[o]
		}
		w.push(&simEvent{at: w.execTime(n, tk.VIP), kind: evExec, node: n.pnn, exec: func() {
			if n.run != run || !n.running {
				if n.powered && written {
					n.dp[vip] = &dpEntry{held: true, epoch: tk.Epoch, until: tk.Until}
				}
				return
			}
			n.dp[vip] = &dpEntry{held: true, epoch: tk.Epoch, until: tk.Until}
			if n.draining[vip] { // taken back: the old connections are local again
				n.draining[vip] = false
				n.eng.SetDraining(n.local2(w.now), tk.VIP, false)
			}
			for _, o := range tk.Orphans {
				if w.answering(w.nodes[o], vip, w.now) {
					w.violate("n%d tickles node %d's connections to %s, but n%d still answers for it (epoch %d)",
						n.pnn, o, vip, o, w.nodes[o].dp[vip].epoch)
				}
				w.checkNotDrainingAt(n, o, vip, decided, heard[o])
			}
			n.eng.Done(n.local2(w.now), ownership.Result{VIP: tk.VIP, Epoch: tk.Epoch, Take: true})
			w.drain(n)
		}})
	}
	for _, dr := range out.Drops {
		dr := dr
		w.drops++
		if !dr.Drain {
			w.resets[n.pnn]++
		}
		w.logf("n%d drops %s epoch %d (drain %v lost %v: %s)", n.pnn, n.vips[dr.VIP].Addr, dr.Epoch, dr.Drain, dr.Lost, dr.Reason)
		w.push(&simEvent{at: w.execTime(n, dr.VIP), kind: evExec, node: n.pnn, exec: func() {
			if n.run != run || !n.running {
				return
			}
			// a drop ends whatever the data plane has for the VIP: the
			// executor runs a VIP's actions in order
			vip := n.vips[dr.VIP].Addr
			if e := n.dp[vip]; e != nil {
				e.held = false
			}
			n.eng.Done(n.local2(w.now), ownership.Result{VIP: dr.VIP, Epoch: dr.Epoch})
			if dr.Drain {
				w.beginDrain(n, dr.VIP)
			}
			w.drain(n)
		}})
	}
	for _, env := range out.Send {
		w.send(n.pnn, env.To, env.Msg)
	}
	fed := false
	if w.lock {
		switch {
		case out.WantLock && !n.lockHeld && w.lockBy < 0:
			n.lockHeld, n.lockSince, w.lockBy = true, now, n.pnn
			w.logf("n%d takes the cluster lock", n.pnn)
			fed = true
		case !out.WantLock && n.lockHeld:
			n.lockHeld, w.lockBy = false, -1
			w.logf("n%d lets the cluster lock go", n.pnn)
			fed = true
		}
		if fed {
			n.eng.SetLock(now, ownership.LockState{Held: n.lockHeld, Since: n.lockSince, Checked: now})
		}
	}
	if out.Stopped && n.stopping {
		n.stopping = false
		w.logf("n%d daemon stopped (restart in %v)", n.pnn, n.restartIn)
		w.crashDaemon(n)
		if n.restartIn > 0 {
			w.push(&simEvent{at: w.now + int64(n.restartIn), kind: evFault, fault: func() {
				if n.powered && !n.running {
					w.startDaemon(n)
				}
			}})
		}
		return false
	}
	return fed
}

// beginDrain models the node layer after a planned release: the daemon
// serves the VIP's old connections (steered to it by the new holder) until
// the last one closes, here 0.2 to 2 s later, and tells its engine.
func (w *simWorld) beginDrain(n *simNode, i int) {
	vip, run := n.vips[i].Addr, n.run
	n.draining[vip], n.drainSince[vip] = true, w.now
	n.eng.SetDraining(n.local2(w.now), i, true)
	w.push(&simEvent{at: w.now + int64(200*time.Millisecond) + w.rng.Int63n(int64(1800*time.Millisecond)), kind: evExec, node: n.pnn, exec: func() {
		if n.run != run || !n.running || !n.draining[vip] {
			return
		}
		n.draining[vip] = false
		n.eng.SetDraining(n.local2(w.now), i, false)
		w.drain(n)
	}})
}

// checkNotDraining: a node whose daemon runs and drains vip serves its
// old connections; n must steer them to it, never tickle them, once n has
// a heartbeat of it that says so (one sent since the drain began, and
// recent). A drainer n has not heard since may be cut off from the clients
// as well: n cannot tell.
func (w *simWorld) checkNotDraining(n *simNode, o int, vip netip.Addr) {
	w.checkNotDrainingAt(n, o, vip, w.now, n.heardAt[o])
}

// checkNotDrainingAt judges what node n knew when it decided (at, having
// last heard o at heard): a takeover is decided on what the node heard,
// and a heartbeat arriving between the decision and its execution (the
// executor's few milliseconds) cannot change it.
func (w *simWorld) checkNotDrainingAt(n *simNode, o int, vip netip.Addr, at, heard int64) {
	d := w.nodes[o]
	audible := heard > d.drainSince[vip] && at-heard <= int64(2*w.timing.Renew)
	if d.running && !d.paused && d.draining[vip] && audible {
		w.violate("n%d tickles node %d's connections to %s, but n%d drains them (alive)", n.pnn, o, vip, o)
	}
}

// execTime is when an action on VIP i of node n, decided now, is done:
// after a random delay, and after the node's earlier actions on that VIP
// (the executor runs them one at a time per VIP).
func (w *simWorld) execTime(n *simNode, i int) int64 {
	at := w.now + int64(w.rng.Intn(3000))*int64(time.Microsecond)
	if n.execAt == nil {
		n.execAt = map[int]int64{}
	}
	at = max(at, n.execAt[i]+1)
	n.execAt[i] = at
	return at
}
