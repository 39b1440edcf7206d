package node

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

// reconcileInput is what the kernel's data plane says of one VIP.
type reconcileInput struct {
	lease    dataplane.VIPLease
	hasLease bool
}

// reconcileEvery is how often the kernel's state is compared with the
// wanted one.
const reconcileEvery = 2 * time.Second

// reconcileLoop compares, for every VIP, what the kernel has (the data
// plane's lease, the address on the public interfaces and on loopback)
// with what the node wants, at start and then periodically, and mends the
// difference: the leftovers of a crash mid-drain or mid-release, an
// address someone removed, a release whose removal failed.
func (n *Node) reconcileLoop(ctx context.Context) {
	for {
		leases, err := n.dp.VIPLeases()
		if err != nil {
			n.log.Warn("reconcile: read the data plane's leases", zap.Error(err))
		} else {
			for i, w := range n.workers {
				l, ok := leases[n.cfg.VIPs[i].VIP()]
				w.enqueue(job{reconcile: &reconcileInput{lease: l, hasLease: ok}})
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(reconcileEvery):
		}
	}
}

// reconcile mends one VIP (in the worker: never concurrent with a take or
// a drop of the same VIP).
func (w *worker) reconcile(_ context.Context, in reconcileInput) {
	w.mu.Lock()
	state, epoch, iface, down := w.state, w.epoch, w.iface, w.down
	w.mu.Unlock()
	mend := func(what string, err error) {
		w.n.count("reconcile_mends")
		if err != nil {
			w.log().Error("reconcile: "+what, zap.Error(err))
			return
		}
		w.log().Warn("reconcile: " + what)
	}
	switch state {
	case vipHeld:
		if !in.hasLease || in.lease.State != dataplane.VIPLeaseHeld || in.lease.Epoch != epoch {
			w.mu.Lock()
			var err error
			if w.state == vipHeld { // a renewal may have moved epoch and deadline on meanwhile
				err = w.n.dp.SetVIPLease(w.vip.VIP(), dataplane.VIPLease{Epoch: w.epoch, State: dataplane.VIPLeaseHeld,
					Holder: w.n.cfg.Self, Until: uint64(w.until)})
			}
			w.mu.Unlock()
			mend("the data plane had lost the lease of a held VIP: written again", err)
		}
		if ok, err := w.n.dp.HasVIP(iface, w.vip.VIP()); err == nil && !ok && !down {
			mend("a held VIP was missing on "+iface+": added again", w.addVerified(iface, w.vip.Prefix))
		} else if err == nil && ok && down {
			mend("a lapsed VIP was still on "+iface+": removed", w.removeVerified(iface, w.vip.Prefix))
		}
		if ok, err := w.n.dp.HasVIP("lo", w.vip.VIP()); err == nil && ok {
			mend("a held VIP was also on loopback: removed there", w.removeVerified("lo", w.host()))
		}
		for _, other := range w.vip.Interfaces {
			// left behind by a move to another of its interfaces whose
			// removal failed (ifswitch.go)
			if ok, err := w.n.dp.HasVIP(other, w.vip.VIP()); other != iface && err == nil && ok {
				mend("a held VIP was also on "+other+": removed there", w.removeVerified(other, w.vip.Prefix))
			}
		}
	case vipDraining:
		if !in.hasLease || in.lease.State != dataplane.VIPLeaseDraining {
			mend("the data plane had lost a drain: written again",
				w.n.dp.SetVIPLease(w.vip.VIP(), dataplane.VIPLease{State: dataplane.VIPLeaseDraining, Holder: w.n.cfg.Self}))
		}
		if ok, err := w.n.dp.HasVIP("lo", w.vip.VIP()); err == nil && !ok {
			mend("a draining VIP was missing on loopback: added again", w.addVerified("lo", w.host()))
		}
		w.removeStray(mend)
	default:
		if in.hasLease && in.lease.State != dataplane.VIPLeaseNone {
			mend("the data plane still had a lease ("+in.lease.State.String()+") for a VIP not held here: ended",
				w.n.dp.SetVIPLease(w.vip.VIP(), dataplane.VIPLease{State: dataplane.VIPLeaseNone, Holder: w.n.cfg.Self}))
		}
		if ok, err := w.n.dp.HasVIP("lo", w.vip.VIP()); err == nil && ok {
			mend("a VIP not held here was on loopback (a drain cut short): removed",
				errors.Join(w.removeVerified("lo", w.host()), w.removeDrainRoutes()))
		}
		w.removeStray(mend)
	}
}

// removeStray removes the VIP from the public interfaces.
func (w *worker) removeStray(mend func(string, error)) {
	for _, iface := range w.vip.Interfaces {
		if ok, err := w.n.dp.HasVIP(iface, w.vip.VIP()); err == nil && ok {
			mend("a VIP not held here was on "+iface+": removed", w.removeVerified(iface, w.vip.Prefix))
		}
	}
}
