package sim

import (
	"container/heap"
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/ownership"
)

// The deterministic simulator: a fake clock (real time in ns, and a clock
// per node running at its own rate within the drift bound), a fake network
// (per-direction delay, loss, duplication, partitions), and per node an
// Engine, a model of its executor (data-plane leases per VIP, take and
// drop run with a delay) and of its process (running, paused, crashed,
// powered off). One seed reproduces a whole run.

type simEventKind uint8

const (
	evDeliver simEventKind = iota
	evWake
	evExec
	evFault
)

type simEvent struct {
	at   int64 // real time, ns
	seq  int
	kind simEventKind
	node int
	// evDeliver
	msg  any
	from int
	size int // encoded
	// evWake
	token int
	// evExec
	exec func()
	// evFault
	fault func()
	what  string
}

type eventQueue []*simEvent

func (q eventQueue) Len() int { return len(q) }
func (q eventQueue) Less(i, j int) bool {
	if q[i].at != q[j].at {
		return q[i].at < q[j].at
	}
	return q[i].seq < q[j].seq
}
func (q eventQueue) Swap(i, j int) { q[i], q[j] = q[j], q[i] }
func (q *eventQueue) Push(x any)   { *q = append(*q, x.(*simEvent)) }
func (q *eventQueue) Pop() any {
	old := *q
	e := old[len(old)-1]
	*q = old[:len(old)-1]
	return e
}

// dpEntry is one VIP in a node's data plane.
type dpEntry struct {
	held  bool
	epoch uint64
	until ownership.Mono // the node's clock
}

type simNode struct {
	pnn     int
	eng     *ownership.Engine
	offset  ownership.Mono
	rate    float64
	powered bool
	running bool // the daemon
	paused  bool
	inbox   []*simEvent // delivered while paused
	run     int         // daemon runs so far (incarnation)
	// persisted promises survive a daemon crash, not a power cut
	persisted map[netip.Addr]ownership.Promise
	dp        map[netip.Addr]*dpEntry
	local     ownership.Local
	vips      []ownership.VIP
	fp        ownership.Fingerprint
	wakeTok   int
	wakeAt    int64
	lockHeld  bool
	lockSince ownership.Mono
	bootedAt  int64
	stopping  bool
	restartIn time.Duration // after a graceful stop
	// execAt: the executor runs the takes and drops of one VIP in order
	execAt map[int]int64
	// draining: the VIPs whose old connections the daemon still serves
	// after a planned release (the node layer's drain, SetDraining)
	draining map[netip.Addr]bool
	// heardAt[o]: when the daemon last received a heartbeat of node o
	// (which lists what o drains); drainSince[vip]: when this node began
	// to drain vip
	heardAt    map[int]int64
	drainSince map[netip.Addr]int64
}

type simLink struct {
	blocked bool
	loss    float64
	dup     float64
	delay   [2]time.Duration // min, max
}

type simWorld struct {
	rng      *rand.Rand
	seed     int64
	now      int64
	seq      int
	q        eventQueue
	nodes    []*simNode
	vips     []ownership.VIP // the majority's configuration
	links    [][]simLink
	timing   ownership.Timing
	lock     bool
	lockBy   int
	policy   allocation.Policy
	violated []string
	log      []string
	keepLog  bool
	// counters
	takes, drops, moves int
	// resets[n]: drops by node n that reset its connections (not drained);
	// tickled[n]: takeovers that tickled node n's connections
	resets, tickled map[int]int
	// tickledBy: each (holder, VIP, epoch, orphan) tickle asked for
	tickledBy       map[tickleKey]bool
	delivered, lost int
	// traffic[n]: node n's ownership messages sent and received
	traffic []Traffic
	// answered: check's count of the data planes answering per address
	answered map[netip.Addr]int
}

func (w *simWorld) logf(format string, args ...any) {
	if w.keepLog {
		w.log = append(w.log, fmt.Sprintf("%8.3fms ", float64(w.now)/1e6)+fmt.Sprintf(format, args...))
	}
}

func (w *simWorld) violate(format string, args ...any) {
	msg := fmt.Sprintf("t=%.3fms: ", float64(w.now)/1e6) + fmt.Sprintf(format, args...)
	w.violated = append(w.violated, msg)
	w.logf("VIOLATION %s", msg)
}

func (w *simWorld) push(e *simEvent) {
	w.seq++
	e.seq = w.seq
	heap.Push(&w.q, e)
}

func (n *simNode) local2(rt int64) ownership.Mono {
	return n.offset + ownership.Mono(float64(rt)*n.rate)
}

func (n *simNode) real(m ownership.Mono) int64 { return int64(float64(m-n.offset) / n.rate) }

// answering tells whether node n's data plane answers for vip at real time rt.
func (w *simWorld) answering(n *simNode, vip netip.Addr, rt int64) bool {
	if !n.powered {
		return false
	}
	d := n.dp[vip]
	return d != nil && d.held && n.local2(rt) <= d.until
}

// fingerprint of a VIP list, as the node package computes it.
func simFingerprint(vips []ownership.VIP) ownership.Fingerprint {
	var h uint64 = 1469598103934665603
	for _, v := range vips {
		b, _ := v.Addr.MarshalBinary()
		for _, c := range b {
			h ^= uint64(c)
			h *= 1099511628211
		}
	}
	return ownership.Fingerprint{Nodes: 1, VIPs: h, NVIPs: uint16(len(vips))}
}

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

// send puts a message on the network, through the codec.
func (w *simWorld) send(from, to int, msg any) {
	b, err := ownership.Encode(msg)
	if err != nil {
		w.violate("n%d cannot encode %T: %v", from, msg, err)
		return
	}
	w.traffic[from].Sent.add(b)
	l := w.links[from][to]
	if l.blocked || w.rng.Float64() < l.loss {
		w.lost++
		return
	}
	copies := 1
	if w.rng.Float64() < l.dup {
		copies = 2
	}
	for range copies {
		d := l.delay[0] + time.Duration(w.rng.Int63n(int64(l.delay[1]-l.delay[0])+1))
		m, err := ownership.Decode(b)
		if err != nil {
			w.violate("decode own %T: %v", msg, err)
			return
		}
		w.push(&simEvent{at: w.now + int64(d), kind: evDeliver, node: to, from: from, msg: m, size: len(b)})
	}
}

func (w *simWorld) scheduleWake(n *simNode) {
	if !n.running || n.eng == nil {
		return
	}
	at := n.real(n.eng.NextWake())
	at = min(max(at, w.now+int64(time.Microsecond)), w.now+int64(w.timing.Renew))
	if n.wakeAt > w.now && n.wakeAt <= at {
		return // an earlier wake is due anyway
	}
	n.wakeTok++
	n.wakeAt = at
	w.push(&simEvent{at: at, kind: evWake, node: n.pnn, token: n.wakeTok})
}

func (w *simWorld) crashDaemon(n *simNode) {
	n.running, n.paused, n.inbox, n.eng = false, false, nil, nil
	n.wakeAt = 0
	clear(n.draining)
	if n.lockHeld {
		n.lockHeld = false
		w.lockBy = -1
	}
}

// handle processes one event.
func (w *simWorld) handle(e *simEvent) {
	switch e.kind {
	case evFault:
		if e.what != "" {
			w.logf("fault: %s", e.what)
		}
		e.fault()
		return
	case evExec:
		e.exec()
		return
	}
	n := w.nodes[e.node]
	if e.kind == evDeliver && n.powered {
		w.traffic[n.pnn].Received.count(e.msg, e.size)
	}
	if !n.powered || !n.running {
		return
	}
	if n.paused {
		if e.kind == evDeliver {
			n.inbox = append(n.inbox, e)
		}
		return
	}
	now := n.local2(w.now)
	switch e.kind {
	case evDeliver:
		w.delivered++
		if _, ok := e.msg.(*ownership.Heartbeat); ok {
			n.heardAt[e.from] = w.now
		}
		n.eng.Receive(now, e.msg)
	case evWake:
		if e.token != n.wakeTok {
			return
		}
		n.wakeAt = 0
		if n.lockHeld {
			n.eng.SetLock(now, ownership.LockState{Held: true, Since: n.lockSince, Checked: now})
		}
		n.eng.Tick(now)
	}
	w.drain(n)
}

// check verifies the invariants at the current instant. It runs after
// every event, so it first counts the answering entries of the nodes'
// data planes (a few each) and looks at every VIP of every node only
// when some address has two.
func (w *simWorld) check() {
	if w.answered == nil {
		w.answered = map[netip.Addr]int{}
	}
	clear(w.answered)
	twice := false
	for _, n := range w.nodes {
		if !n.powered {
			continue
		}
		for vip, d := range n.dp {
			if d.held && n.local2(w.now) <= d.until {
				w.answered[vip]++
				twice = twice || w.answered[vip] > 1
			}
		}
	}
	if !twice {
		return
	}
	for _, vip := range w.vips {
		var who []int
		for _, n := range w.nodes {
			if w.answering(n, vip.Addr, w.now) {
				who = append(who, n.pnn)
			}
		}
		if len(who) > 1 {
			var eps []string
			for _, p := range who {
				d := w.nodes[p].dp[vip.Addr]
				eps = append(eps, fmt.Sprintf("n%d epoch %d until +%v", p, d.epoch, d.until.Sub(w.nodes[p].local2(w.now))))
			}
			w.violate("%s answered by %d nodes: %s", vip.Addr, len(who), strings.Join(eps, ", "))
		}
	}
}

// runUntil processes events up to real time end, checking after each.
func (w *simWorld) runUntil(end int64) {
	for w.q.Len() > 0 && w.q[0].at <= end && len(w.violated) == 0 {
		e := heap.Pop(&w.q).(*simEvent)
		w.now = e.at
		w.handle(e)
		w.check()
	}
	if len(w.violated) == 0 {
		w.now = end
	}
}

// holders samples who answers for each VIP now.
func (w *simWorld) holders() map[netip.Addr][]int {
	out := map[netip.Addr][]int{}
	for _, vip := range w.vips {
		for _, n := range w.nodes {
			if w.answering(n, vip.Addr, w.now) {
				out[vip.Addr] = append(out[vip.Addr], n.pnn)
			}
		}
	}
	return out
}

func newSimWorld(seed int64, nodes, vips int, timing ownership.Timing, lock bool) *simWorld {
	w := &simWorld{rng: rand.New(rand.NewSource(seed)), seed: seed, timing: timing, lock: lock, lockBy: -1,
		resets: map[int]int{}, tickled: map[int]int{}, tickledBy: map[tickleKey]bool{}}
	var list []ownership.VIP
	for i := range vips {
		list = append(list, ownership.VIP{Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(10 + i)})})
	}
	fp := simFingerprint(list)
	w.vips = list
	w.links = make([][]simLink, nodes)
	for i := range nodes {
		w.links[i] = make([]simLink, nodes)
		for j := range nodes {
			w.links[i][j] = simLink{delay: [2]time.Duration{50 * time.Microsecond, 500 * time.Microsecond}}
		}
		drift := timing.Drift * 0.95
		n := &simNode{pnn: i, offset: ownership.Mono(w.rng.Int63n(int64(time.Hour))) + ownership.Mono(time.Hour),
			rate: 1 - drift + 2*drift*w.rng.Float64(), powered: true,
			persisted: map[netip.Addr]ownership.Promise{}, dp: map[netip.Addr]*dpEntry{},
			local: ownership.Local{Healthy: true}, vips: slices.Clone(list), fp: fp, draining: map[netip.Addr]bool{}, heardAt: map[int]int64{}, drainSince: map[netip.Addr]int64{}}
		w.nodes = append(w.nodes, n)
	}
	w.traffic = make([]Traffic, nodes)
	return w
}

func (w *simWorld) at(t time.Duration, what string, fn func()) {
	w.push(&simEvent{at: int64(t), kind: evFault, fault: fn, what: what})
}

func (w *simWorld) startAll(spread time.Duration) {
	for _, n := range w.nodes {
		n := n
		w.at(time.Duration(w.rng.Int63n(int64(spread)+1)), fmt.Sprintf("n%d boots", n.pnn), func() {
			n.bootedAt = w.now
			w.startDaemon(n)
		})
	}
}

// tickleKey is one tickle of orphan's connections to vip by holder's
// daemon run at epoch.
type tickleKey struct {
	holder, run, orphan int
	vip                 netip.Addr
	epoch               uint64
}

// tickleOnce records a tickle: a holder's daemon tickles an orphan's
// connections to a VIP once per epoch (its take, or the renewal after a
// late grant named it), never again. A restarted daemon does not know what
// its previous run tickled; a grant naming the orphan then tickles again
// (harmless: the orphan's connections are over either way).
func (w *simWorld) tickleOnce(n *simNode, vip netip.Addr, epoch uint64, orphan int) {
	k := tickleKey{holder: n.pnn, run: n.run, orphan: orphan, vip: vip, epoch: epoch}
	if w.tickledBy[k] {
		w.violate("n%d tickles node %d's connections to %s again (epoch %d)", n.pnn, orphan, vip, epoch)
	}
	w.tickledBy[k] = true
}

// settled checks that, from now for span, every VIP is answered by
// exactly one node (sampled every 5 ms).
func (w *simWorld) settled(span time.Duration, skewed int) error {
	end := w.now + int64(span)
	for w.now < end && len(w.violated) == 0 {
		for vip, who := range w.holders() {
			if len(who) != 1 {
				return fmt.Errorf("at %.3f ms %s is answered by %v", float64(w.now)/1e6, vip, who)
			}
			if who[0] == skewed {
				return fmt.Errorf("%s is held by n%d, whose configuration differs", vip, skewed)
			}
		}
		if h := w.holders(); len(h) != len(w.vips) {
			return fmt.Errorf("at %.3f ms only %d of %d VIPs are answered: %v", float64(w.now)/1e6, len(h), len(w.vips), h)
		}
		w.runUntil(w.now + int64(5*time.Millisecond))
	}
	return nil
}

// holderOf returns the one node answering for vip, or -1.
func (w *simWorld) holderOf(vip netip.Addr) int {
	h := w.holders()[vip]
	if len(h) != 1 {
		return -1
	}
	return h[0]
}

// until runs in steps of 1 ms until cond holds or limit passes; it returns
// how long it took.
func (w *simWorld) until(limit time.Duration, cond func() bool) (time.Duration, bool) {
	start := w.now
	for w.now-start <= int64(limit) && len(w.violated) == 0 {
		if cond() {
			return time.Duration(w.now - start), true
		}
		w.runUntil(w.now + int64(time.Millisecond))
	}
	return time.Duration(w.now - start), false
}

func (w *simWorld) powerCut(n *simNode) {
	w.crashDaemon(n)
	n.powered = false
	n.dp = map[netip.Addr]*dpEntry{}
	n.persisted = nil
}

func (w *simWorld) isolate(pnn int, on bool) {
	for a := range w.links {
		for b := range w.links[a] {
			if a != b && (a == pnn || b == pnn) {
				w.links[a][b].blocked = on
			}
		}
	}
}
