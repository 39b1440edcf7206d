package node

// The end of a drain on the old holder: the last connection closed, the
// drain timeout, or a kill; the loopback address and the drain's route go
// with it. drainwatch.go checks meanwhile that the steering still works.

import (
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

// killDrain resets the connections of a drain and ends it, saying why.
func (w *worker) killDrain(why string) {
	if !w.isDraining() {
		return
	}
	ks, err := w.n.dp.KillVIP(w.vip.VIP())
	if err != nil {
		w.log().Warn("reset drained connections", zap.Error(err))
	}
	w.endDrain(fmt.Sprintf("%s: %d connections reset", why, ks.Destroyed+ks.Reset))
}

// checkDrain ends a drain whose connections are gone, or resets those
// left at the drain timeout.
func (w *worker) checkDrain() {
	w.mu.Lock()
	draining, since := w.state == vipDraining, w.drainSince
	w.mu.Unlock()
	if !draining {
		return
	}
	left, err := w.n.dp.CountFlows(w.vip.VIP())
	if err != nil {
		w.log().Warn("count draining connections", zap.Error(err))
		return
	}
	switch {
	case left == 0:
		w.endDrain("last connection closed")
	case time.Since(since) > w.n.cfg.DrainTimeout:
		ks, err := w.n.dp.KillVIP(w.vip.VIP())
		if err != nil {
			w.log().Warn("reset drained connections", zap.Error(err))
		}
		w.endDrain(fmt.Sprintf("drain timeout: %d connections reset", ks.Destroyed+ks.Reset))
	default:
		w.watchDrain(time.Now())
	}
}

// endDrain stops serving the VIP's old connections here.
func (w *worker) endDrain(why string) {
	w.mu.Lock()
	if w.state != vipDraining {
		w.mu.Unlock()
		return
	}
	err := w.setLease(dataplane.VIPLease{State: dataplane.VIPLeaseNone, Holder: w.n.cfg.Self})
	if err == nil {
		w.state = vipNone
	}
	w.mu.Unlock()
	if err != nil {
		w.log().Error("end drain", zap.Error(err))
		return
	}
	w.endDrainAddress(why)
}

// endDrainAddress removes the loopback address of a drain and tells the
// engine (and the timeline) it is over.
func (w *worker) endDrainAddress(why string) {
	err := errors.Join(w.removeVerified("lo", w.host()), w.removeDrainRoutes())
	w.log().Info("drain ended", zap.String("why", why), zap.Error(err))
	w.n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetDraining(now, w.i, false) })
	w.mu.Lock()
	t0 := w.drainT0
	w.mu.Unlock()
	now := time.Now()
	w.n.updateRecord(w.vip, t0, "drain", func(r *admin.Takeover) {
		r.Steps = append(r.Steps, admin.TimelineStep{Step: "drain ended: " + why, At: now, Took: now.Sub(t0)})
	})
}

// removeDrainRoutes removes the route a drain of the VIP kept through any
// of its interfaces.
func (w *worker) removeDrainRoutes() error {
	var errs []error
	for _, iface := range w.vip.Interfaces {
		errs = append(errs, w.n.dp.SetDrainRoute(iface, w.vip.Prefix, false))
	}
	return errors.Join(errs...)
}
