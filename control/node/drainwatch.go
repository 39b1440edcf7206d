package node

// Watching a drain's return path. While a VIP drains from this node, its
// old connections' client packets come here only through the new holder's
// steering. Where that path is broken (a NIC whose XDP_TX loses or
// corrupts the frames, --steer-mode xdp where it does not work), those
// clients would hang until the drain timeout. So once another node holds
// the VIP, this node probes its old connections (dataplane.ProbeVIP: a
// keepalive probe each, which every live client answers through that
// steering) and watches their ingress packet count: one packet is proof
// enough; none after drainProbeRounds probes ends the drain with a kill,
// so that the clients reconnect to the new holder at once, and says why.

import (
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/ownership"
)

const (
	// drainProbeAfter is how long after another node is seen holding the
	// VIP the first probe goes: the holder's steering is up by then (it
	// steers before it adds the address) and the clients heard its
	// announcement.
	drainProbeAfter = time.Second
	// drainProbeEvery spaces the probes: above a Linux client's
	// tcp_invalid_ratelimit (500 ms), which may hold back its answer to a
	// second probe within that time.
	drainProbeEvery = time.Second
	// drainProbeRounds unanswered probes mean the path is broken: a few, so
	// that a lost answer or a stall of this machine is no verdict.
	drainProbeRounds = 3
)

// drainWatch is the probing of one drain; the worker's goroutine alone
// uses it, from the drop that starts the drain to the drain's end. Its
// methods decide; watchDrain reads the data plane and acts.
type drainWatch struct {
	heldAt    time.Time // when another node was first seen holding the VIP
	baseline  uint64    // the connections' ingress packets at the first probe
	rounds    int       // probes sent without an ingress packet since the first
	lastProbe time.Time
	done      bool // verified, or the drain ended
}

// drainVerdict is what one look at the connections' ingress count says.
type drainVerdict uint8

const (
	drainProbe    drainVerdict = iota // no packet yet: send (another) probe
	drainVerified                     // a packet arrived: the path works
	drainBroken                       // no packet after drainProbeRounds probes
)

// due says whether it is time to look (and maybe probe) now, given
// whether another node holds the VIP.
func (wd *drainWatch) due(now time.Time, heldElsewhere bool) bool {
	if wd.done {
		return false
	}
	if !heldElsewhere {
		wd.heldAt = time.Time{}
		return false
	}
	if wd.heldAt.IsZero() {
		wd.heldAt = now
	}
	return now.Sub(wd.heldAt) >= drainProbeAfter && now.Sub(wd.lastProbe) >= drainProbeEvery
}

// sends says whether the look now also sends probes.
func (wd *drainWatch) sends() bool { return wd.rounds < drainProbeRounds }

// observe takes the connections' ingress packet count at a look (taken
// before its probes left) and says what it means.
func (wd *drainWatch) observe(now time.Time, packetsIn uint64) drainVerdict {
	wd.lastProbe = now
	switch {
	case wd.rounds == 0:
		wd.baseline = packetsIn
	case packetsIn > wd.baseline:
		wd.done = true
		return drainVerified
	case wd.rounds >= drainProbeRounds:
		wd.done = true
		return drainBroken
	}
	wd.rounds++
	return drainProbe
}

// holderOf is the VIP's holder in the latest snapshot (ownership.None:
// none known).
func (n *Node) holderOf(i int) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if i < len(n.snap.VIPs) {
		return n.snap.VIPs[i].Holder
	}
	return ownership.None
}

// watchDrain runs one step of the drain's probing (checkDrain calls it
// while connections are left). It reports whether it ended the drain.
func (w *worker) watchDrain(now time.Time) bool {
	wd := &w.watch
	holder := w.n.holderOf(w.i)
	if !wd.due(now, holder != ownership.None && holder != w.n.cfg.Self) {
		return false
	}
	p, err := w.n.dp.ProbeVIP(w.vip.VIP(), wd.sends())
	if err != nil {
		w.log().Warn("probe the drain's connections", zap.Error(err))
		return false
	}
	switch wd.observe(now, p.PacketsIn) {
	case drainVerified:
		w.log().Info("drain: client packets arrive through the new holder's steering",
			zap.Int("holder", holder), zap.Int("conns", p.Conns), zap.Uint64("packets", p.PacketsIn-wd.baseline))
		w.drainStep(fmt.Sprintf("client packets arrive through node %d's steering", holder), now)
	case drainBroken:
		w.n.count("drain_path_broken")
		ks, err := w.n.dp.KillVIP(w.vip.VIP())
		if err != nil {
			w.log().Warn("reset drained connections", zap.Error(err))
		}
		why := fmt.Sprintf("no client packet arrived through node %d's steering in %d probes of %d connections over %v (steering path broken): %d connections reset",
			holder, wd.rounds, p.Conns, now.Sub(wd.heldAt).Round(time.Millisecond), ks.Destroyed+ks.Reset)
		w.log().Warn("drain: steered packets do not arrive, ending it with a kill", zap.String("why", why))
		w.endDrain(why)
		return true
	}
	return false
}

// drainStep adds a step to the drain's timeline record.
func (w *worker) drainStep(step string, now time.Time) {
	w.mu.Lock()
	t0 := w.drainT0
	w.mu.Unlock()
	w.n.updateRecord(w.vip, t0, "drain", func(r *admin.Takeover) {
		r.Steps = append(r.Steps, admin.TimelineStep{Step: step, At: now, Took: now.Sub(t0)})
	})
}
