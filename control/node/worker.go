package node

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/logs"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/dataplane"
)

// A worker executes the takeovers, releases and drains of one VIP, one at
// a time and in the order the engine asked for them, and checks that the
// kernel holds what it should (reconcile). Its lease writes and the loop's
// deadline extensions go through one mutex, so that an extension never
// brings back a lease a release has just ended.
type worker struct {
	n    *Node
	i    int
	vip  config.PublicAddress
	jobs chan job

	mu    sync.Mutex
	state vipState
	epoch uint64
	until ownership.Mono
	iface string
	// down: held, but the lease lapsed (no renewal from a majority): the
	// data plane stopped answering on its own, and the address is off the
	// interface too, so that `ip addr` says what the wire does. The
	// connections are kept: if the renewals come back before another node
	// takes the VIP, they go on.
	down     bool
	announce context.CancelFunc
	// drain: when it began, and its timeline record
	drainSince time.Time
	drainT0    time.Time
	// takeHooks is closed when the last takeover's takeip hooks are done
	// (nil before any): tickles wait for it, see tickleAfterHooks
	takeHooks chan struct{}
	// watch probes the drain's return path (drainwatch.go); the
	// worker's goroutine alone uses it
	watch drainWatch
}

type vipState uint8

const (
	vipNone vipState = iota
	vipHeld
	vipDraining
)

func (s vipState) String() string { return [...]string{"none", "held", "draining"}[s] }

type job struct {
	take      *ownership.Take
	drop      *ownership.Drop
	reconcile *reconcileInput
	standUp   bool
	announce  bool
	// endDrain: reset the drain's connections now and end it, saying why
	endDrain string
	// relocate: the VIP's interface may have lost link (ifswitch.go)
	relocate bool
}

func newWorker(n *Node, i int) *worker {
	return &worker{n: n, i: i, vip: n.cfg.VIPs[i], jobs: make(chan job, 64)}
}

func (w *worker) enqueue(j job) {
	select {
	case w.jobs <- j:
	default:
		// never drop a take or a drop: wait for room, off the loop
		go func() { w.jobs <- j }()
	}
}

func (w *worker) host() netip.Prefix { return netip.PrefixFrom(w.vip.VIP(), w.vip.VIP().BitLen()) }

func (w *worker) log() *zap.Logger { return w.n.log.With(zap.Stringer("vip", w.vip.Prefix)) }

// adoptDrain notes at start that the VIP still drains here.
func (w *worker) adoptDrain() {
	w.mu.Lock()
	w.state, w.drainSince, w.drainT0 = vipDraining, time.Now(), time.Now()
	w.mu.Unlock()
}

func (w *worker) isDraining() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == vipDraining
}

func (w *worker) held() (bool, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == vipHeld, w.iface
}

// workerTick is how often a held VIP's lease and a drain are checked.
const workerTick = 50 * time.Millisecond

// watched says whether the worker has a lease or a drain to check on its
// tick: a VIP held (and up) or draining. The others' workers sleep, so that
// an idle node with many VIPs does not wake 20 times a second per VIP (64
// VIPs: 1,280 wake-ups a second, most of a small machine's CPU at 16 nodes).
func (w *worker) watched() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.state == vipHeld && !w.down || w.state == vipDraining
}

func (w *worker) run(ctx context.Context) {
	// the ticker runs only while watched(); every change of state is made
	// on this goroutine (a job or a tick), so it is re-armed after each
	var tick *time.Ticker
	var tickC <-chan time.Time
	defer func() {
		if tick != nil {
			tick.Stop()
		}
	}()
	arm := func() {
		switch need := w.watched(); {
		case need && tick == nil:
			tick = time.NewTicker(workerTick)
			tickC = tick.C
		case !need && tick != nil:
			tick.Stop()
			tick, tickC = nil, nil
		}
	}
	var lastDrainCheck time.Time
	for {
		arm()
		select {
		case <-ctx.Done():
			return
		case j := <-w.jobs:
			switch {
			case j.take != nil:
				w.take(ctx, *j.take)
			case j.drop != nil:
				w.drop(*j.drop)
			case j.reconcile != nil:
				w.reconcile(ctx, *j.reconcile)
			case j.standUp:
				w.standUp(ctx)
			case j.announce:
				w.reannounce(ctx)
			case j.endDrain != "":
				w.killDrain(j.endDrain)
			case j.relocate:
				w.relocate(ctx)
			}
		case now := <-tickC:
			if now.Sub(lastDrainCheck) >= time.Second/4 {
				lastDrainCheck = now
				w.checkDrain()
			}
			w.checkLapse()
		}
	}
}

// setLease writes the data plane's lease, retrying a failed write: a
// release must not be reported done while the data plane may answer.
func (w *worker) setLease(l dataplane.VIPLease) error {
	var err error
	for attempt := range 5 {
		if err = w.n.dp.SetVIPLease(w.vip.VIP(), l); err == nil {
			return nil
		}
		w.log().Warn("write the data plane's lease", zap.Int("attempt", attempt+1), zap.Error(err))
		time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
	}
	return err
}

// extend writes a renewal's deadline (from the loop).
func (w *worker) extend(d ownership.Deadline) (written bool) {
	w.mu.Lock()
	if w.state != vipHeld {
		w.mu.Unlock()
		return false
	}
	until := max(w.until, d.Until)
	if d.Shorten {
		until = d.Until // give a restart's grace back
	}
	err := w.n.dp.SetVIPLease(w.vip.VIP(), dataplane.VIPLease{Epoch: d.Epoch, State: dataplane.VIPLeaseHeld,
		Holder: w.n.cfg.Self, Until: uint64(until)})
	if err == nil {
		w.epoch, w.until = d.Epoch, until
	}
	iface, down := w.iface, w.down
	w.mu.Unlock()
	if down && err == nil {
		w.enqueue(job{standUp: true})
	}
	if err != nil {
		w.n.count("lease_write_errors")
		w.log().Error("extend the data plane's lease", zap.Error(err))
	}
	if len(d.Orphans) > 0 {
		t0 := time.Now()
		w.n.record(admin.Takeover{VIP: w.vip.Prefix.String(), Iface: iface, Kind: "takeover",
			Reason: "renewed after a late grant named another earlier holder: its connections tickled", Steps: []admin.TimelineStep{{Step: "decision", At: t0}}})
		go w.tickleAfterHooks(context.Background(), iface, d.Orphans, t0)
	}
	return err == nil
}

// take makes this node answer for the VIP: lease, (steering), address,
// announcements, then the hooks and, once they are done, the tickles.
func (w *worker) take(ctx context.Context, t ownership.Take) {
	t0 := time.Now()
	rec := admin.Takeover{VIP: w.vip.Prefix.String(), Kind: "takeover", Reason: t.Reason,
		Steps: []admin.TimelineStep{{Step: "decision", At: t0}}}
	if t.From != ownership.None {
		rec.From = w.n.cfg.Nodes[t.From].Addr.String()
	}
	step := func(name string) {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: name, At: now, Took: now.Sub(t0)})
	}
	iface := w.n.pickInterface(w.vip)
	rec.Iface = iface
	w.mu.Lock()
	wasDraining := w.state == vipDraining
	err := w.setLease(dataplane.VIPLease{Epoch: t.Epoch, State: dataplane.VIPLeaseHeld, Holder: w.n.cfg.Self, Until: uint64(t.Until)})
	if err == nil {
		w.state, w.epoch, w.until, w.iface, w.down = vipHeld, t.Epoch, t.Until, iface, false
	}
	w.mu.Unlock()
	if err != nil {
		w.fail(&rec, t, fmt.Errorf("data plane lease: %w", err))
		return
	}
	step(fmt.Sprintf("lease held (epoch %d)", t.Epoch))
	if t.FromDraining && t.From != ownership.None {
		// Steer the old connections before the address is up and
		// announced: a packet of theirs reaching our stack first would be
		// answered with a RST.
		if err := w.n.steer.ensure(w.i, t.From); err != nil {
			w.log().Warn("steer", zap.Error(err))
		} else {
			step("steering the old connections to " + w.n.cfg.Nodes[t.From].Addr.String())
		}
	}
	if err := w.addVerified(iface, w.vip.Prefix); err != nil {
		w.fail(&rec, t, err)
		return
	}
	step("address up")
	if wasDraining {
		w.endDrainAddress("taken back")
	}
	actx, cancel := context.WithCancel(ctx)
	w.mu.Lock()
	if w.announce != nil {
		w.announce()
	}
	w.announce = cancel
	w.mu.Unlock()
	first, aerr := w.n.dp.Announce(actx, iface, w.vip.VIP())
	if aerr != nil {
		w.log().Warn("announce", zap.Error(aerr))
	} else {
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: "first announcement", At: first, Took: first.Sub(t0)})
	}
	if t.Adopted {
		rec.Kind, rec.Reason = "adopted", t.Reason
		w.n.record(rec)
		w.n.done(ownership.Result{VIP: w.i, Epoch: t.Epoch, Take: true})
		return
	}
	w.log().Info("took over", zap.String("interface", iface), zap.String("reason", t.Reason),
		zap.Uint64("epoch", t.Epoch), zap.Ints("tickling", t.Orphans), zap.Duration("took", time.Since(t0)))
	w.n.record(rec)
	w.n.done(ownership.Result{VIP: w.i, Epoch: t.Epoch, Take: true})
	hooksDone := make(chan struct{})
	w.mu.Lock()
	w.takeHooks = hooksDone
	w.mu.Unlock()
	go func() {
		defer close(hooksDone)
		w.n.runHooks(ctx, "takeip", w.vip, iface, t.Epoch, t0)
	}()
	if len(t.Orphans) > 0 {
		go w.tickleAfterHooks(ctx, iface, t.Orphans, t0)
	}
}

// hookTickleWait bounds how long a takeover's tickles wait for its takeip
// hooks.
const hookTickleWait = 2 * time.Second

// tickleAfterHooks tickles the orphans' connections once the last
// takeover's takeip hooks are done. They put the file servers in grace
// for the VIP (60.ganesha-grace): an NFSv4 client tickled before that
// reconnects, reclaims and is refused (NFS4ERR_NO_GRACE), its locks lost.
// It waits at most hookTickleWait: a hung hook must not keep the clients
// hanging (CTDB too tickles after its takeip scripts). The orphans are
// often known only at the first renewal after the takeover, when the
// voters' grants name the nodes they superseded.
func (w *worker) tickleAfterHooks(ctx context.Context, iface string, orphans []int, t0 time.Time) {
	w.mu.Lock()
	done := w.takeHooks
	w.mu.Unlock()
	if done != nil && w.n.hooks != nil {
		select {
		case <-done:
		case <-time.After(hookTickleWait):
			w.log().Warn("takeip hooks still running: tickling without them", zap.Duration("waited", hookTickleWait))
		case <-ctx.Done():
		}
	}
	w.n.tickle(ctx, w.vip, iface, orphans, t0)
}

// checkLapse takes the address off the interface of a held VIP whose
// lease lapsed (see worker.down).
func (w *worker) checkLapse() {
	w.mu.Lock()
	lapsed := w.state == vipHeld && !w.down && w.until < monoNow()
	if lapsed {
		w.down = true
		if w.announce != nil {
			w.announce()
			w.announce = nil
		}
	}
	iface := w.iface
	w.mu.Unlock()
	if !lapsed {
		return
	}
	why := w.n.lapseReason()
	err := w.removeVerified(iface, w.vip.Prefix)
	w.log().Warn("lease lapsed (no renewal from a majority): the data plane stopped answering; address off "+iface+
		", connections kept in case the renewals come back", zap.String("why", why), zap.Error(err), logs.EveryTime())
	t0 := time.Now()
	w.n.record(admin.Takeover{VIP: w.vip.Prefix.String(), Iface: iface, Kind: "lapse",
		Reason: why, Steps: []admin.TimelineStep{{Step: "decision", At: t0}}})
}

// standUp puts the address of a VIP whose lease was renewed again after a
// lapse back up, and announces it.
func (w *worker) standUp(ctx context.Context) {
	w.mu.Lock()
	up := w.state == vipHeld && w.down && w.until > monoNow()
	iface := w.iface
	w.mu.Unlock()
	if !up {
		return
	}
	if err := w.addVerified(iface, w.vip.Prefix); err != nil {
		w.log().Error("renewed after a lapse: address", zap.Error(err))
		return
	}
	actx, cancel := context.WithCancel(ctx)
	w.mu.Lock()
	w.down, w.announce = false, cancel
	w.mu.Unlock()
	if _, err := w.n.dp.Announce(actx, iface, w.vip.VIP()); err != nil {
		w.log().Warn("announce", zap.Error(err))
	}
	w.log().Info("renewed after a lapse: answering again", zap.String("interface", iface))
	t0 := time.Now()
	w.n.record(admin.Takeover{VIP: w.vip.Prefix.String(), Iface: iface, Kind: "takeover",
		Reason: "renewed after a lapse", Steps: []admin.TimelineStep{{Step: "decision", At: t0}}})
}

// reannounce announces a VIP this node answers for again.
func (w *worker) reannounce(ctx context.Context) {
	w.mu.Lock()
	if w.state != vipHeld || w.down {
		w.mu.Unlock()
		return
	}
	if w.announce != nil {
		w.announce()
	}
	actx, cancel := context.WithCancel(ctx)
	w.announce = cancel
	iface := w.iface
	w.mu.Unlock()
	if _, err := w.n.dp.Announce(actx, iface, w.vip.VIP()); err != nil {
		w.log().Warn("announce again", zap.Error(err))
	}
}

// fail records a takeover that could not complete and reports it: the
// engine lets the VIP go.
func (w *worker) fail(rec *admin.Takeover, t ownership.Take, err error) {
	rec.Error = err.Error()
	w.log().Error("take over", zap.Error(err))
	w.n.record(*rec)
	w.n.done(ownership.Result{VIP: w.i, Epoch: t.Epoch, Take: true, Err: err})
}

// addVerified adds the address and reads it back. Address changes of all
// VIPs go one at a time (Node.addrMu): removing an IPv4 primary address
// takes the kernel's secondaries with it, and RemoveVIP puts back the
// ones it lost; two VIPs changing at once would undo each other.
func (w *worker) addVerified(iface string, p netip.Prefix) error { return w.n.addVerified(iface, p) }

// addVerified adds p on iface and reads it back.
func (n *Node) addVerified(iface string, p netip.Prefix) error {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	if err := n.dp.AddVIP(iface, p); err != nil {
		return err
	}
	ok, err := n.dp.HasVIP(iface, p.Addr())
	switch {
	case err != nil:
		return fmt.Errorf("read back %s on %s: %w", p, iface, err)
	case !ok:
		return fmt.Errorf("%s is not on %s after adding it", p, iface)
	}
	return nil
}

func (w *worker) removeVerified(iface string, p netip.Prefix) error {
	return w.n.removeVerified(iface, p)
}

// removeVerified removes p from iface and reads it back.
func (n *Node) removeVerified(iface string, p netip.Prefix) error {
	n.addrMu.Lock()
	defer n.addrMu.Unlock()
	if err := n.dp.RemoveVIP(iface, p); err != nil {
		return err
	}
	ok, err := n.dp.HasVIP(iface, p.Addr())
	switch {
	case err != nil:
		return fmt.Errorf("read back %s on %s: %w", p, iface, err)
	case ok:
		return fmt.Errorf("%s is still on %s after removing it", p, iface)
	}
	return nil
}

// drop makes this node stop answering for the VIP: connections reset (or
// kept, draining), lease, address, hooks.
func (w *worker) drop(d ownership.Drop) {
	t0 := time.Now()
	rec := admin.Takeover{VIP: w.vip.Prefix.String(), Kind: "release", Reason: d.Reason,
		Steps: []admin.TimelineStep{{Step: "decision", At: t0}}}
	step := func(name string) {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: name, At: now, Took: now.Sub(t0)})
	}
	w.mu.Lock()
	if w.announce != nil {
		w.announce()
		w.announce = nil
	}
	rec.Iface = w.iface
	w.mu.Unlock()
	if rec.Iface == "" {
		rec.Iface = w.vip.Interfaces[0]
	}
	if !d.Drain {
		// End our connections while the address and the lease are still
		// ours, so that their clients reconnect to the next holder at
		// once. (After a lost epoch the data plane drops these resets:
		// the new holder has tickled the clients.)
		if ks, err := w.n.dp.KillVIP(w.vip.VIP()); err != nil {
			w.log().Warn("reset connections", zap.Error(err))
		} else if ks.Conns > 0 {
			step(fmt.Sprintf("connections reset (%d of %d)", ks.Destroyed+ks.Reset, ks.Conns))
		}
	}
	l := dataplane.VIPLease{Epoch: d.Epoch, State: dataplane.VIPLeaseNone, Holder: w.n.cfg.Self}
	if d.Drain {
		l.State = dataplane.VIPLeaseDraining
		rec.Kind = "drain"
	}
	w.mu.Lock()
	err := w.setLease(l)
	if err == nil {
		w.state = vipNone
		if d.Drain {
			w.state, w.drainSince, w.drainT0 = vipDraining, t0, t0
			w.watch = drainWatch{}
		}
	}
	w.mu.Unlock()
	if err != nil {
		// Not reported done: the engine keeps the VIP as releasing, its
		// voters' promises run out, and reconcile tries again.
		rec.Error = "data plane lease: " + err.Error()
		w.n.count("release_errors")
		w.log().Error("release: the data plane still answers", zap.Error(err))
		w.n.record(rec)
		return
	}
	step("lease " + l.State.String())
	var errs []error
	if d.Drain {
		errs = append(errs, w.addVerified("lo", w.host()))
	}
	for _, iface := range w.vip.Interfaces {
		errs = append(errs, w.removeVerified(iface, w.vip.Prefix))
	}
	if d.Drain {
		// after the address: the last address of an interface leaving
		// takes every route through it along
		errs = append(errs, w.n.dp.SetDrainRoute(rec.Iface, w.vip.Prefix, true))
	}
	if err := errors.Join(errs...); err != nil {
		// The data plane no longer answers: the release is safe. The
		// address is mended by reconcile.
		rec.Error = err.Error()
		w.n.count("release_errors")
		w.log().Error("release", zap.Error(err))
	}
	if d.Drain {
		step("address moved to loopback, no longer announced")
	} else {
		step("address down")
	}
	w.log().Info("released", zap.String("reason", d.Reason), zap.Bool("drain", d.Drain), zap.Bool("lost", d.Lost))
	w.n.record(rec)
	w.n.done(ownership.Result{VIP: w.i, Epoch: d.Epoch})
	go w.n.runHooks(context.Background(), "releaseip", w.vip, rec.Iface, d.Epoch, t0)
}

// done reports a finished take or drop to the loop.
func (n *Node) done(r ownership.Result) {
	select {
	case n.results <- r:
	default:
		go func() { n.results <- r }()
	}
}

// pickInterface returns the first of the VIP's interfaces with link.
func (n *Node) pickInterface(vip config.PublicAddress) string {
	for _, i := range vip.Interfaces {
		if n.health.LinkUp(i) {
			return i
		}
	}
	return vip.Interfaces[0]
}
