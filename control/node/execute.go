package node

import (
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

// Carrying out the engine's output, and the end of a stop.

// stopDone tells whether a stop has done its work: a restart once the
// peers promised the grace (or after a bound), a shutdown once every VIP
// went to another node and its connections drained (or the drain timeout).
func (n *Node) stopDone(stopped bool, mode StopMode, by time.Time, drainUntil *time.Time) bool {
	if mode == Restart {
		if !stopped && time.Now().Before(by) {
			return false
		}
		if !stopped {
			n.log.Warn("restart: the peers did not all promise the grace in time; the VIPs stay until their deadlines")
		}
		return true
	}
	if !stopped && time.Now().Before(by) {
		return false
	}
	if drainUntil.IsZero() {
		*drainUntil = time.Now().Add(n.cfg.DrainTimeout)
	}
	for _, w := range n.workers {
		if w.isDraining() && time.Now().Before(*drainUntil) {
			return false
		}
	}
	// VIPs a reload removed drain here too: nobody takes them over
	n.mu.Lock()
	retiring := len(n.retiring)
	n.mu.Unlock()
	return retiring == 0 || !time.Now().Before(*drainUntil)
}

// endDrainsWithin bounds how long a shutdown waits for the resets that
// EndDrains asked for.
const endDrainsWithin = 2 * time.Second

// endDrainsNow has every worker that drains reset its drain's connections
// and end it.
func (n *Node) endDrainsNow(why string) {
	for _, w := range n.workers {
		if w.isDraining() {
			w.enqueue(job{endDrain: why})
		}
	}
	n.endRetiring.Do(func() { close(n.retireNow) })
}

func (n *Node) finishStop(mode StopMode) {
	if mode == Shutdown {
		if err := n.gossip.Leave(time.Second); err != nil {
			n.log.Warn("leave cluster", zap.Error(err))
		}
		n.log.Info("stopped: every VIP handed over")
		return
	}
	n.log.Info("stopped for a restart: VIPs and connections stay; the peers wait for the restart grace",
		zap.Duration("grace", n.cfg.Timing.Grace))
}

// execute carries out the engine's output, in its order. It returns the
// shortened deadlines the data plane took, for the engine to confirm
// (Engine.DeadlineWritten).
func (n *Node) execute(out ownership.Output) (shortened []ownership.Deadline) {
	for vip, p := range out.Persist {
		if err := n.dp.SetVIPGrant(vip, dataplane.VIPGrant{Epoch: p.Epoch, Until: uint64(max(p.Until, 0)), Holder: max(p.Holder, 0)}); err != nil {
			n.count("promise_persist_errors")
			n.log.Error("persist a promise", zap.Stringer("vip", vip), zap.Error(err))
		}
	}
	for _, d := range out.Deadlines {
		if n.workers[d.VIP].extend(d) && d.Shorten {
			shortened = append(shortened, d)
		}
	}
	for _, t := range out.Takes {
		n.workers[t.VIP].enqueue(job{take: &t})
	}
	for _, d := range out.Drops {
		n.workers[d.VIP].enqueue(job{drop: &d})
	}
	for _, env := range out.Send {
		if env.To < 0 || env.To >= len(n.cfg.Nodes) {
			continue
		}
		b, err := ownership.Encode(env.Msg)
		if err != nil {
			n.log.Error("encode ownership message", zap.Error(err))
			continue
		}
		if err := n.gossip.SendTo(n.cfg.Nodes[env.To].Addr, b); err != nil {
			n.count("ownership_send_errors")
		}
	}
	if n.lockMgr != nil {
		n.lockMgr.want(out.WantLock)
	}
	for _, note := range out.Notes {
		n.log.Info(note)
	}
	return shortened
}
