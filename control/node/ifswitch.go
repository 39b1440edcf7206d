package node

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
)

// A VIP's interfaces (public_addresses' eth0,eth1) are a preference
// order. When the interface a held VIP is on loses link (or disappears)
// and another of its interfaces has link, the VIP moves there on this
// node: the address moves, the connections stay (their sockets are
// here, and the address stays local throughout: it is added on the new
// interface before it leaves the old one), and the VIP is announced
// from the new interface's MAC so that clients and switches follow. The
// updateip hooks run, as CTDB's do. The VIP stays where it went when the
// first interface comes back: moving it back buys nothing and would make
// a flapping link move it twice.

// relocateAll asks every worker to check its VIP's interface (health
// changed: a link may have gone or come).
func (n *Node) relocateAll() {
	for _, w := range n.workers {
		w.enqueue(job{relocate: true})
	}
}

// nextInterface decides where a held VIP on from goes: "" to stay. It
// moves only when from has no link and another of its interfaces has.
func nextInterface(from string, ifaces []string, linkUp func(string) bool) string {
	if from == "" || linkUp(from) {
		return ""
	}
	for _, i := range ifaces {
		if i != from && linkUp(i) {
			return i
		}
	}
	return ""
}

// relocate moves the held VIP to another of its interfaces if the one it
// is on lost link (see above).
func (w *worker) relocate(ctx context.Context) {
	w.mu.Lock()
	held, down, from, epoch := w.state == vipHeld, w.down, w.iface, w.epoch
	w.mu.Unlock()
	if !held || down {
		return
	}
	to := nextInterface(from, w.vip.Interfaces, w.n.health.LinkUp)
	if to == "" {
		return
	}
	t0 := time.Now()
	rec := admin.Takeover{VIP: w.vip.Prefix.String(), Iface: to, Kind: "interface",
		Reason: fmt.Sprintf("%s lost link: moved to %s on this node, connections kept", from, to),
		Steps:  []admin.TimelineStep{{Step: "decision", At: t0}}}
	step := func(name string) {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: name, At: now, Took: now.Sub(t0)})
	}
	log := w.log().With(zap.String("from", from), zap.String("to", to))
	if err := w.addVerified(to, w.vip.Prefix); err != nil {
		rec.Error = err.Error()
		w.n.record(rec)
		log.Error("move a VIP to another of its interfaces", zap.Error(err))
		return
	}
	step("address up on " + to)
	actx, cancel := context.WithCancel(ctx)
	w.mu.Lock()
	if w.state != vipHeld || w.down {
		// released or lapsed meanwhile (a drop waits for this job, so
		// only a lapse): the address goes with it
		w.mu.Unlock()
		cancel()
		_ = w.removeVerified(to, w.vip.Prefix)
		return
	}
	if w.announce != nil {
		w.announce()
	}
	w.iface, w.announce = to, cancel
	w.mu.Unlock()
	if _, err := w.n.dp.Announce(actx, to, w.vip.VIP()); err != nil {
		log.Warn("announce", zap.Error(err))
	} else {
		step("first announcement")
	}
	if err := w.removeVerified(from, w.vip.Prefix); err != nil {
		// reconcile removes it later; the VIP is local either way
		log.Warn("remove the VIP from the interface it left", zap.Error(err))
	} else {
		step("address removed from " + from)
	}
	log.Info("VIP moved to another of its interfaces", zap.String("why", rec.Reason))
	w.n.record(rec)
	go w.n.runHooksEnv(context.Background(), "updateip", w.vip, to, epoch, t0, map[string]string{"FSHA_OLD_IFACE": from})
}
