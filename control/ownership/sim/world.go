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
