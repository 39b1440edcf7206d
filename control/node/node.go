// Package node runs this node's part of the cluster: from the membership
// view, its health and quorum it computes the VIP assignment every node
// computes, then releases and takes over its own VIPs through the data
// plane, renewing the data plane's fencing lease only while all is well.
// It decides; the data plane acts.
package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/quorum"
	"github.com/fsha/fsha/dataplane"
)

// DataPlane is what the node asks of the data plane.
type DataPlane interface {
	AddVIP(iface string, p netip.Prefix) error
	RemoveVIP(iface string, p netip.Prefix) error
	// Announce sends the first gratuitous ARP / unsolicited NA at once and
	// returns when it left; repeats go on until ctx ends.
	Announce(ctx context.Context, iface string, addr netip.Addr) (time.Time, error)
	RenewLease(d time.Duration) error
	ExpireLease() error
	// TickleVIP makes the clients of the replicated connections to vip of
	// owners (every owner: nil) reconnect now (tickle ACKs), and with
	// forget removes them afterwards; it returns after the repeats.
	TickleVIP(ctx context.Context, iface string, vip netip.Addr, owners []int, forget bool) (dataplane.TickleResult, error)
	// DropPeerFlows forgets owner's replicated connections (to vip only,
	// when vip is valid).
	DropPeerFlows(owner int, vip netip.Addr) (int, error)
	// KillVIP ends this node's own connections to vip at once.
	KillVIP(vip netip.Addr) (dataplane.KillStats, error)
	// CountFlows counts this node's own connections to vip.
	CountFlows(vip netip.Addr) (int, error)
	// Steer makes XDP send the packets of owner's connections to vip on to
	// owner at mac (on), or stops it; active is the number of (VIP, owner)
	// pairs steered, 0 turns the lookup off.
	Steer(vip netip.Addr, owner int, mac [6]byte, on bool, active int) error
}

// Health is the node's own fitness.
type Health interface {
	Healthy() bool
	LinkUp(iface string) bool
	Changed() <-chan struct{}
}

// Hooks runs the operator's event scripts (takeip, releaseip).
type Hooks interface {
	Run(ctx context.Context, event string, env map[string]string) error
}

// Gossip is the membership as the node uses it.
type Gossip interface {
	Members() []membership.Member
	Changed() <-chan struct{}
	Join(peers []netip.Addr) (int, error)
	UpdateMeta(timeout time.Duration) error
	Broadcast(msg []byte)
	// SendAll sends msg to every live member over TCP: for what must not
	// be lost (an operator's move).
	SendAll(msg []byte)
	Leave(timeout time.Duration) error
}

// Observer is told of every finished takeover or release (metrics).
type Observer interface {
	ObserveTakeover(kind string, d time.Duration)
}

// Timing of the control loop.
type Timing struct {
	// Tick is the period of the control loop when nothing happens.
	Tick time.Duration
	// Lease is how long the data plane answers for VIPs after the last
	// renewal. It must be shorter than the time the cluster needs to
	// declare this node dead, so that a hung daemon is fenced before
	// another node takes its VIPs.
	Lease time.Duration
	// Stall is the gap between two loop runs taken as a freeze (SIGSTOP,
	// VM pause): the node then releases everything at once. It is the
	// lease: past it the data plane was fenced and the others may be
	// taking the VIPs over.
	Stall time.Duration
	// HoldDown is how long the node stays out after a freeze or a start,
	// until its view of the cluster is fresh again.
	HoldDown time.Duration
	// Rejoin is how often unreachable nodes are contacted again.
	Rejoin time.Duration
	// Settle is how long the set of eligible nodes must stay the same
	// before VIPs that nobody held are placed, so that a cluster starting
	// up spreads them instead of giving them all to the first node up.
	// Takeovers from a node that died do not wait.
	Settle time.Duration
}

// DefaultTiming matches membership.FastTiming (about half a second to
// declare a node dead).
func DefaultTiming() Timing {
	return Timing{
		Tick: 50 * time.Millisecond, Lease: 300 * time.Millisecond, Stall: 300 * time.Millisecond,
		HoldDown: 2 * time.Second, Rejoin: time.Second, Settle: 300 * time.Millisecond,
	}
}

// Config configures a Node.
type Config struct {
	Nodes  []config.Node
	Self   int // this node's PNN
	VIPs   []config.PublicAddress
	Policy allocation.Policy
	Lock   *quorum.Lock // nil: majority only
	Timing Timing
	// StateFile keeps what must survive a restart (maintenance mode).
	StateFile string
	// DrainTimeout is how long a VIP moved away in a planned move (move,
	// disable, failback, rebalance) keeps serving its old connections here
	// before they are reset; 0 turns draining off (planned moves reset
	// the connections at once).
	DrainTimeout time.Duration
	// MAC is this node's public interface address, announced so that the
	// new owner of a VIP draining from here can steer packets back.
	MAC [6]byte
}

// Node is the control loop of one node.
type Node struct {
	log      *zap.Logger
	cfg      Config
	gossip   Gossip
	dp       DataPlane
	health   Health
	hooks    Hooks
	observer Observer
	hash     uint64
	wake     chan struct{}

	mu            sync.Mutex
	held          []bool
	cancelAnnoun  []context.CancelFunc
	disabled      bool
	bannedUntil   time.Time
	holdDownUntil time.Time
	lastRun       time.Time
	pins          map[int]pin
	pinClock      uint64
	badMessages   uint64
	view          view
	settledSince  time.Time // when the eligible set last changed
	lockSince     time.Time // when this node took the cluster lock
	wasHealthy    bool      // healthy at least once since the start
	handedOver    bool      // a VIP was released or drained since the last state push
	timeline      []admin.Takeover
	metaDirty     bool
	onAlive       func(map[int]netip.Addr)
	counters      func() map[string]uint64
	deadSince     map[int]time.Time
	// draining[i]: VIP i was moved away but still serves its old
	// connections here from loopback.
	draining []drain
	// steered: (VIP, owner) pairs whose old connections this node steers.
	steered map[steerKey]bool
}

type drain struct {
	active    bool
	since     time.Time
	lastCheck time.Time
	t0        time.Time // of its timeline record
}

type steerKey struct{ vip, owner int }

// view is the last computed picture of the cluster.
type view struct {
	alive    map[int]membership.Member // by PNN, peers only
	eligible []int
	current  []int // holder per VIP
	target   []int
	quorum   bool
	aliveN   int
	selfOK   bool
	healthy  bool
}

// New builds a node; Run starts it.
func New(log *zap.Logger, cfg Config, g Gossip, dp DataPlane, h Health, hooks Hooks, obs Observer) (*Node, error) {
	if cfg.Self < 0 || cfg.Self >= len(cfg.Nodes) || cfg.Nodes[cfg.Self].Deleted {
		return nil, fmt.Errorf("this node's number %d is not a node of the nodes file", cfg.Self)
	}
	if len(cfg.VIPs) > membership.MaxVIPs {
		return nil, fmt.Errorf("%d public addresses, at most %d supported", len(cfg.VIPs), membership.MaxVIPs)
	}
	if cfg.Timing == (Timing{}) {
		cfg.Timing = DefaultTiming()
	}
	n := &Node{
		log: log.Named("node"), cfg: cfg, gossip: g, dp: dp, health: h, hooks: hooks, observer: obs,
		hash: configHash(cfg.VIPs), wake: make(chan struct{}, 1),
		held: make([]bool, len(cfg.VIPs)), cancelAnnoun: make([]context.CancelFunc, len(cfg.VIPs)),
		pins: map[int]pin{}, draining: make([]drain, len(cfg.VIPs)), steered: map[steerKey]bool{},
	}
	n.loadState()
	return n, nil
}

// SetCounters adds fn's counters (e.g. replication's) to Status.
func (n *Node) SetCounters(fn func() map[string]uint64) { n.counters = fn }

// OnAlive registers fn, called with the live peers (PNN -> address)
// whenever that set changes; replication follows it.
func (n *Node) OnAlive(fn func(map[int]netip.Addr)) { n.onAlive = fn }

// SetGossip gives the node its membership. The two refer to each other
// (the membership asks the node for its metadata), so the node is built
// first and handed the membership before Run.
func (n *Node) SetGossip(g Gossip) { n.gossip = g }

// configHash identifies the VIP list: peers with another list are not
// trusted with VIP indexes.
func configHash(vips []config.PublicAddress) uint64 {
	h := fnv.New64a()
	for _, v := range vips {
		fmt.Fprintf(h, "%s\n", v.Prefix)
	}
	return h.Sum64()
}

// LocalMeta is this node's metadata for the membership.
func (n *Node) LocalMeta() membership.Meta {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.localMetaLocked()
}

func (n *Node) localMetaLocked() membership.Meta {
	m := membership.Meta{
		ConfigHash: n.hash, Held: membership.NewBitmap(len(n.held)), Draining: membership.NewBitmap(len(n.held)),
	}
	for i, h := range n.held {
		m.Held.Set(i, h)
		m.Draining.Set(i, n.draining[i].active)
	}
	m.MAC = n.cfg.MAC
	if n.health.Healthy() {
		m.Flags |= membership.FlagHealthy
	}
	if n.disabled {
		m.Flags |= membership.FlagDisabled
	}
	if time.Now().Before(n.bannedUntil) {
		m.Flags |= membership.FlagBanned
	}
	if n.view.quorum {
		m.Flags |= membership.FlagQuorum
	}
	if time.Now().Before(n.holdDownUntil) {
		m.Flags |= membership.FlagStarting
	}
	return m
}

// NotifyMsg applies a move broadcast by a peer.
func (n *Node) NotifyMsg(msg []byte) { n.mergePins(msg, "broadcast") }

// LocalState is every pin, for memberlist's push/pull.
func (n *Node) LocalState() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return encodePinState(n.pins)
}

// MergeRemoteState merges a peer's pins.
func (n *Node) MergeRemoteState(buf []byte) {
	if len(buf) == 0 {
		return
	}
	n.mergePins(buf, "push/pull")
}

func (n *Node) mergePins(msg []byte, via string) {
	pins, err := decodePins(msg, len(n.cfg.VIPs))
	n.mu.Lock()
	defer n.mu.Unlock()
	if err != nil {
		n.badMessages++
		n.log.Warn("cluster message rejected", zap.String("via", via), zap.Error(err))
		return
	}
	changed := false
	for vip, p := range pins {
		n.pinClock = max(n.pinClock, p.Version)
		if cur, ok := n.pins[vip]; !ok || p.newer(cur) {
			n.pins[vip] = p
			changed = true
		}
	}
	if changed {
		n.poke()
	}
}

// poke wakes the control loop.
func (n *Node) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// Run runs the control loop until ctx ends, then releases the VIPs and
// leaves the cluster so that the others take over at once.
func (n *Node) Run(ctx context.Context) error {
	n.releaseStale()
	n.mu.Lock()
	n.holdDownUntil = time.Now().Add(n.cfg.Timing.Tick * 4)
	n.mu.Unlock()

	go n.rejoinLoop(ctx)
	tick := time.NewTicker(n.cfg.Timing.Tick)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			n.shutdown()
			return nil
		case <-tick.C:
		case <-n.gossip.Changed():
		case <-n.health.Changed():
		case <-n.wake:
		}
		n.reconcile(ctx)
	}
}

// releaseStale removes VIPs a previous run may have left on the interfaces:
// at start this node holds nothing, as CTDB releases all IPs at start-up.
func (n *Node) releaseStale() {
	if err := n.dp.ExpireLease(); err != nil {
		n.log.Error("fence at start", zap.Error(err))
	}
	for _, v := range n.cfg.VIPs {
		for _, iface := range v.Interfaces {
			if err := n.dp.RemoveVIP(iface, v.Prefix); err != nil {
				n.log.Warn("remove stale vip", zap.Stringer("vip", v.Prefix), zap.String("interface", iface), zap.Error(err))
			}
		}
	}
}

func (n *Node) shutdown() {
	n.mu.Lock()
	for i := range n.held {
		if n.held[i] {
			n.releaseLocked(i, "shutdown")
		}
	}
	n.view.quorum = false
	n.mu.Unlock()
	if err := n.dp.ExpireLease(); err != nil {
		n.log.Error("fence at shutdown", zap.Error(err))
	}
	// Tell the others we hold nothing, then leave.
	_ = n.gossip.UpdateMeta(500 * time.Millisecond)
	if err := n.gossip.Leave(time.Second); err != nil {
		n.log.Warn("leave cluster", zap.Error(err))
	}
}

func (n *Node) rejoinLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.Timing.Rejoin)
	defer t.Stop()
	for {
		var missing []netip.Addr
		alive := map[netip.Addr]bool{}
		for _, m := range n.gossip.Members() {
			alive[m.Addr] = true
		}
		for _, nd := range n.cfg.Nodes {
			if !nd.Deleted && nd.PNN != n.cfg.Self && !alive[nd.Addr] {
				missing = append(missing, nd.Addr)
			}
		}
		if len(missing) > 0 {
			if got, err := n.gossip.Join(missing); got > 0 {
				n.log.Info("joined", zap.Int("nodes", got))
			} else if err != nil {
				n.log.Debug("join", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// reconcile is one run of the control loop.
func (n *Node) reconcile(ctx context.Context) {
	start := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()

	if !n.lastRun.IsZero() && start.Sub(n.lastRun) > n.cfg.Timing.Stall {
		// Frozen or starved: the others may have declared us dead and taken
		// our VIPs. Let go of everything before anything else, and stay out
		// until the view is fresh.
		n.log.Warn("control loop stalled: releasing all VIPs", zap.Duration("stall", start.Sub(n.lastRun)))
		if err := n.dp.ExpireLease(); err != nil {
			n.log.Error("fence", zap.Error(err))
		}
		for i := range n.held {
			if n.held[i] {
				n.releaseLocked(i, fmt.Sprintf("woke up after a %v stall", start.Sub(n.lastRun).Round(time.Millisecond)))
			}
		}
		n.holdDownUntil = start.Add(n.cfg.Timing.HoldDown)
		n.metaDirty = true
	}
	n.lastRun = start

	prev := n.view
	v := n.computeView(start)
	n.view = v
	if n.onAlive != nil && !sameKeys(v.alive, prev.alive) {
		alive := make(map[int]netip.Addr, len(v.alive))
		for pnn := range v.alive {
			alive[pnn] = n.cfg.Nodes[pnn].Addr
		}
		go n.onAlive(alive)
	}
	n.forgetDeadPeers(v, start)
	if !prev.lastRunZero() && joined(v.alive, prev.alive) {
		// A node (re)joined, maybe across a healed partition: clients on
		// its side may still have our VIPs at another MAC. Announce again.
		for i := range n.held {
			if n.held[i] {
				n.announceLocked(ctx, i, n.pickInterface(n.cfg.VIPs[i]))
			}
		}
	}
	if !slices.Equal(v.eligible, prev.eligible) {
		n.settledSince = start
	}
	if v.healthy && !prev.healthy && n.wasHealthy {
		// Back from a link or service failure: what the membership says
		// about the others may be stale (a peer "died" while we could not
		// see it). Stay out until the view is fresh.
		n.holdDownUntil = start.Add(n.cfg.Timing.HoldDown)
		n.metaDirty = true
	}
	n.wasHealthy = n.wasHealthy || v.healthy
	if v.quorum != prev.quorum || v.selfOK != prev.selfOK {
		n.log.Info("state", zap.Bool("quorum", v.quorum), zap.Int("alive", v.aliveN), zap.Bool("eligible", v.selfOK))
		n.metaDirty = true
	}

	if !v.quorum {
		if slices.Contains(n.held, true) {
			if err := n.dp.ExpireLease(); err != nil {
				n.log.Error("fence", zap.Error(err))
			}
		}
		for i := range n.held {
			if n.held[i] {
				n.releaseLocked(i, "lost quorum")
			}
		}
	} else {
		for i := range n.held {
			if n.held[i] && (v.target[i] != n.cfg.Self || v.current[i] != n.cfg.Self) {
				reason := n.releaseReason(v, i)
				if n.plannedLocked(v, i, reason) {
					n.startDrainLocked(i, reason, v.target[i])
				} else {
					n.releaseLocked(i, reason)
				}
			}
		}
		// Renew before taking anything, so that the first packets of a
		// VIP taken now are not dropped by an old expired lease; and only
		// if this run did not itself stall.
		if time.Since(start) < n.cfg.Timing.Lease/2 {
			if err := n.dp.RenewLease(n.cfg.Timing.Lease); err != nil {
				n.log.Error("renew lease", zap.Error(err))
			}
		}
		for i := range n.held {
			// Take a VIP only when no live peer still announces it: a
			// planned move waits for the old holder's release.
			if !n.held[i] && v.target[i] == n.cfg.Self && (v.current[i] == allocation.None || v.current[i] == n.cfg.Self) {
				reason, from := n.takeReason(prev, i)
				if from == "" && start.Sub(n.settledSince) < n.cfg.Timing.Settle {
					continue // nobody held it: wait until the view settles
				}
				prevOwner := allocation.None
				if prev.current != nil {
					prevOwner = prev.current[i]
				}
				n.takeLocked(ctx, i, reason, from, prevOwner)
			}
		}
		n.checkDrainsLocked(start)
	}
	n.updateSteeringLocked(ctx, v, prev)

	if n.metaDirty {
		n.metaDirty = false
		// A VIP let go is waited for by its next holder: besides the
		// gossip (UDP, may be lost), push our state to every peer over
		// TCP (memberlist's push/pull), so a handover never waits for
		// the next periodic push/pull.
		var peers []netip.Addr
		if n.handedOver {
			n.handedOver = false
			for pnn := range v.alive {
				peers = append(peers, n.cfg.Nodes[pnn].Addr)
			}
		}
		go func() {
			if err := n.gossip.UpdateMeta(time.Second); err != nil {
				n.log.Debug("announce state", zap.Error(err))
			}
			if len(peers) > 0 {
				if _, err := n.gossip.Join(peers); err != nil {
					n.log.Debug("push state", zap.Error(err))
				}
			}
		}()
	}
}

// lastRunZero tells a view never computed (the first run) from a real one.
func (v view) lastRunZero() bool { return v.alive == nil }

// joined tells whether now has a member that before had not.
func joined(now, before map[int]membership.Member) bool {
	for k := range now {
		if _, ok := before[k]; !ok {
			return true
		}
	}
	return false
}

// announceLocked (re)starts the announcements of held VIP i.
func (n *Node) announceLocked(ctx context.Context, i int, iface string) (time.Time, error) {
	if c := n.cancelAnnoun[i]; c != nil {
		c()
	}
	actx, cancel := context.WithCancel(ctx)
	n.cancelAnnoun[i] = cancel
	return n.dp.Announce(actx, iface, n.cfg.VIPs[i].VIP())
}

func sameKeys(a, b map[int]membership.Member) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if _, ok := b[k]; !ok {
			return false
		}
	}
	return true
}

// deadPeerGrace is how long the replicated connections of a node that died
// are kept: long enough for the takeovers of its VIPs to tickle them.
const deadPeerGrace = 30 * time.Second

// forgetDeadPeers drops the replicated connections of nodes dead for longer
// than deadPeerGrace. A takeover tickles and drops the connections of its
// VIP at once; this catches the rest (VIPs nobody could take).
func (n *Node) forgetDeadPeers(v view, now time.Time) {
	if n.deadSince == nil {
		n.deadSince = map[int]time.Time{}
	}
	for _, nd := range n.cfg.Nodes {
		if nd.Deleted || nd.PNN == n.cfg.Self {
			continue
		}
		if _, alive := v.alive[nd.PNN]; alive {
			delete(n.deadSince, nd.PNN)
			continue
		}
		since, ok := n.deadSince[nd.PNN]
		if !ok {
			n.deadSince[nd.PNN] = now
			continue
		}
		if !since.IsZero() && now.Sub(since) > deadPeerGrace {
			n.deadSince[nd.PNN] = time.Time{} // done until it comes back
			pnn := nd.PNN
			go func() {
				if k, err := n.dp.DropPeerFlows(pnn, netip.Addr{}); err != nil {
					n.log.Warn("forget dead node's connections", zap.Int("node", pnn), zap.Error(err))
				} else if k > 0 {
					n.log.Info("forgot dead node's connections", zap.Int("node", pnn), zap.Int("connections", k))
				}
			}()
		}
	}
}

// computeView reads membership, health and quorum into a view and the
// assignment all nodes compute from it.
func (n *Node) computeView(now time.Time) view {
	v := view{alive: map[int]membership.Member{}}
	byAddr := map[netip.Addr]membership.Member{}
	for _, m := range n.gossip.Members() {
		byAddr[m.Addr] = m
	}
	total := 0
	for _, nd := range n.cfg.Nodes {
		if nd.Deleted {
			continue
		}
		total++
		if nd.PNN == n.cfg.Self {
			v.aliveN++
			continue
		}
		if m, ok := byAddr[nd.Addr]; ok && (m.State == membership.Alive || m.State == membership.Suspect) {
			// A suspect still holds its VIPs, but does not make a
			// majority: a node cut off from the others lets go as soon
			// as it suspects them, before they declare it dead.
			v.alive[nd.PNN] = m
			if m.State == membership.Alive {
				v.aliveN++
			}
		}
	}

	qs := quorum.State{Alive: v.aliveN, Total: total, LockEnabled: n.cfg.Lock != nil}
	if lock := n.cfg.Lock; lock != nil {
		// Only a node fit to serve may win the lock: a node cut off by
		// its own link failure must leave it to the healthy one.
		fit := n.health.Healthy() && !n.disabled && !now.Before(n.bannedUntil)
		if qs.NeedsLock() && fit && !lock.Held() {
			if ok, err := lock.TryAcquire(); err != nil {
				n.log.Warn("cluster lock", zap.Error(err))
			} else if ok {
				n.lockSince = now
				n.log.Info("took the cluster lock", zap.String("lock", lock.Path()))
			}
		} else if (!qs.NeedsLock() || !fit) && lock.Held() {
			if err := lock.Release(); err != nil {
				n.log.Warn("release cluster lock", zap.Error(err))
			}
		}
		// The lock makes a quorum only after one lease: by then the other
		// side, which lost its majority when it began to suspect us, has
		// let go of its VIPs and its data plane is fenced.
		qs.LockHeld = lock.Held() && now.Sub(n.lockSince) >= n.cfg.Timing.Lease+n.cfg.Timing.Tick
	}
	v.quorum = qs.Has()
	v.healthy = n.health.Healthy()

	v.selfOK = v.quorum && n.health.Healthy() && !n.disabled && !now.Before(n.bannedUntil) && !now.Before(n.holdDownUntil)
	if v.selfOK {
		v.eligible = append(v.eligible, n.cfg.Self)
	}
	const notEligible = membership.FlagDisabled | membership.FlagBanned | membership.FlagStarting
	for pnn, m := range v.alive {
		f := m.Meta.Flags
		if m.MetaErr == nil && m.Meta.ConfigHash == n.hash && f&membership.FlagHealthy != 0 &&
			f&membership.FlagQuorum != 0 && f&notEligible == 0 {
			v.eligible = append(v.eligible, pnn)
		}
	}
	slices.Sort(v.eligible)

	// A VIP two nodes announce (after a partition heals, or a stale view)
	// counts as the lowest-numbered one's, on every node alike: the
	// allocation keeps it there and the other one lets it go.
	v.current = make([]int, len(n.cfg.VIPs))
	for i := range v.current {
		v.current[i] = allocation.None
		if n.held[i] {
			v.current[i] = n.cfg.Self
		}
		for pnn, m := range v.alive {
			if m.MetaErr == nil && m.Meta.ConfigHash == n.hash && m.Meta.Held.Has(i) &&
				(v.current[i] == allocation.None || pnn < v.current[i]) {
				v.current[i] = pnn
			}
		}
	}

	// Moves to nodes that cannot hold VIPs now are forgotten, the same way
	// on every node, so a VIP does not jump back when one returns.
	pins := make([]int, len(n.cfg.VIPs))
	for i := range pins {
		pins[i] = allocation.None
		if p, ok := n.pins[i]; ok && p.PNN != allocation.None {
			if slices.Contains(v.eligible, p.PNN) {
				pins[i] = p.PNN
			} else if _, alive := v.alive[p.PNN]; !alive && p.PNN != n.cfg.Self {
				delete(n.pins, i)
			}
		}
	}
	vips := make([]allocation.VIP, len(n.cfg.VIPs))
	for i, a := range n.cfg.VIPs {
		vips[i].Addr = a.VIP()
		if len(a.Nodes) > 0 {
			vips[i].Allowed = []int{}
			for _, ref := range a.Nodes {
				for _, nd := range n.cfg.Nodes {
					if ref.Matches(nd) {
						vips[i].Allowed = append(vips[i].Allowed, nd.PNN)
					}
				}
			}
		}
	}
	v.target = allocation.Assign(allocation.Input{
		VIPs: vips, Eligible: v.eligible, Current: v.current, Pins: pins, Policy: n.cfg.Policy,
	})
	return v
}

func (n *Node) releaseReason(v view, i int) string {
	switch {
	case v.current[i] != n.cfg.Self && v.current[i] != allocation.None:
		return "also held by " + n.cfg.Nodes[v.current[i]].Addr.String()
	case n.disabled:
		return "disabled"
	case time.Now().Before(n.bannedUntil):
		return "banned"
	case !n.health.Healthy():
		return "unhealthy"
	case n.pinnedTo(i, v.target[i]):
		return "move"
	}
	return "rebalance"
}

// pinnedTo tells whether an operator moved VIP i to pnn.
func (n *Node) pinnedTo(i, pnn int) bool {
	p, ok := n.pins[i]
	return ok && pnn != allocation.None && p.PNN == pnn
}

func (n *Node) takeReason(prev view, i int) (string, string) {
	if prev.current == nil || prev.current[i] == allocation.None || prev.current[i] == n.cfg.Self {
		return "unassigned", ""
	}
	from := n.cfg.Nodes[prev.current[i]].Addr.String()
	if _, alive := n.view.alive[prev.current[i]]; !alive {
		return "node " + from + " died", from
	}
	return "released by " + from, from
}

// takeLocked adds VIP i, announces it and runs the takeip hooks.
func (n *Node) takeLocked(ctx context.Context, i int, reason, from string, prevOwner int) {
	vip := n.cfg.VIPs[i]
	rec := admin.Takeover{VIP: vip.Prefix.String(), Kind: "takeover", Reason: reason, From: from}
	t0 := time.Now()
	step := func(name string) {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: name, At: now, Took: now.Sub(t0)})
	}
	rec.Steps = append(rec.Steps, admin.TimelineStep{Step: "decision", At: t0})
	iface := n.pickInterface(vip)
	if n.draining[i].active {
		// it comes back to us while draining: off loopback, on the interface
		n.endDrainLocked(i, "taken back")
	}
	if prevOwner != allocation.None && prevOwner != n.cfg.Self && n.peerDrains(prevOwner, i) {
		// Steer the old connections before the address is up and
		// announced: a packet of theirs reaching our stack first would be
		// answered with a RST.
		k := steerKey{i, prevOwner}
		n.steered[k] = true
		if err := n.dp.Steer(vip.VIP(), prevOwner, n.view.alive[prevOwner].Meta.MAC, true, len(n.steered)); err != nil {
			n.log.Warn("steer", zap.Error(err))
		}
		step("steering the old connections to " + n.cfg.Nodes[prevOwner].Addr.String())
	}
	rec.Iface = iface
	if err := n.dp.AddVIP(iface, vip.Prefix); err != nil {
		rec.Error = err.Error()
		n.log.Error("take over", zap.Stringer("vip", vip.Prefix), zap.String("interface", iface), zap.Error(err))
		n.recordLocked(rec)
		return
	}
	step("address up")
	n.held[i] = true
	n.metaDirty = true
	first, err := n.announceLocked(ctx, i, iface)
	if err != nil {
		n.log.Warn("announce", zap.Stringer("vip", vip.Prefix), zap.Error(err))
	} else {
		rec.Steps = append(rec.Steps, admin.TimelineStep{Step: "first announcement", At: first, Took: first.Sub(t0)})
	}
	n.log.Info("took over", zap.Stringer("vip", vip.Prefix), zap.String("interface", iface), zap.String("reason", reason),
		zap.Duration("took", time.Since(t0)))
	n.recordLocked(rec)
	// A previous holder that drains the VIP keeps its connections (they
	// are steered to it); any other lost its sockets or reset them.
	if prevOwner != allocation.None && prevOwner != n.cfg.Self && !n.peerDrains(prevOwner, i) {
		go n.tickle(ctx, vip, iface, []int{prevOwner}, t0)
	} else if prevOwner == allocation.None {
		// Nobody held it as far as the last view knew (a stall or a
		// hold-down hid the death): the connections of any node that is
		// not alive are just as orphaned.
		var dead []int
		for _, nd := range n.cfg.Nodes {
			if _, alive := n.view.alive[nd.PNN]; !alive && !nd.Deleted && nd.PNN != n.cfg.Self {
				dead = append(dead, nd.PNN)
			}
		}
		if len(dead) > 0 {
			go n.tickle(ctx, vip, iface, dead, t0)
		}
	}
	go n.runHooks(ctx, "takeip", vip, iface, t0)
}

// plannedLocked tells whether releasing VIP i for reason is a planned move
// that drains: the VIP goes to a live node that takes it over, and this
// node is fit to keep serving.
func (n *Node) plannedLocked(v view, i int, reason string) bool {
	if n.cfg.DrainTimeout <= 0 || v.target[i] == allocation.None {
		return false
	}
	if p, ok := n.pins[i]; ok && p.Kill {
		return false
	}
	switch reason {
	case "move", "rebalance", "disabled":
		return true
	}
	return false
}

// peerDrains tells whether live peer pnn announces VIP i as draining.
func (n *Node) peerDrains(pnn, i int) bool {
	m, ok := n.view.alive[pnn]
	return ok && m.MetaErr == nil && m.Meta.ConfigHash == n.hash && m.Meta.Draining.Has(i)
}

// startDrainLocked hands VIP i over without dropping its connections: the
// address moves to loopback (no longer announced, still local), the next
// holder announces it and steers the old connections' packets back here.
func (n *Node) startDrainLocked(i int, reason string, to int) {
	vip := n.cfg.VIPs[i]
	t0 := time.Now()
	rec := admin.Takeover{VIP: vip.Prefix.String(), Kind: "drain", Reason: reason,
		From: n.cfg.Nodes[n.cfg.Self].Addr.String(), Steps: []admin.TimelineStep{{Step: "decision", At: t0}}}
	if c := n.cancelAnnoun[i]; c != nil {
		c()
		n.cancelAnnoun[i] = nil
	}
	host := netip.PrefixFrom(vip.VIP(), vip.VIP().BitLen())
	err := n.dp.AddVIP("lo", host)
	for _, iface := range vip.Interfaces {
		err = errors.Join(err, n.dp.RemoveVIP(iface, vip.Prefix))
	}
	rec.Iface = vip.Interfaces[0]
	now := time.Now()
	rec.Steps = append(rec.Steps, admin.TimelineStep{Step: "address moved to loopback, no longer announced", At: now, Took: now.Sub(t0)})
	if err != nil {
		rec.Error = err.Error()
	}
	n.held[i] = false
	n.draining[i] = drain{active: true, since: t0, t0: t0}
	n.metaDirty, n.handedOver = true, true
	n.log.Info("draining", zap.Stringer("vip", vip.Prefix), zap.String("reason", reason),
		zap.String("to", n.cfg.Nodes[to].Addr.String()), zap.Duration("timeout", n.cfg.DrainTimeout))
	n.recordLocked(rec)
	go n.runHooks(context.Background(), "releaseip", vip, rec.Iface, t0)
}

// checkDrainsLocked ends the drains whose connections are all gone, and
// resets the connections of those past the drain timeout.
func (n *Node) checkDrainsLocked(now time.Time) {
	for i := range n.draining {
		d := &n.draining[i]
		if !d.active || now.Sub(d.lastCheck) < time.Second/4 {
			continue
		}
		d.lastCheck = now
		vip := n.cfg.VIPs[i].VIP()
		left, err := n.dp.CountFlows(vip)
		if err != nil {
			n.log.Warn("count draining connections", zap.Error(err))
			continue
		}
		switch {
		case left == 0:
			n.endDrainLocked(i, "last connection closed")
		case now.Sub(d.since) > n.cfg.DrainTimeout:
			ks, err := n.dp.KillVIP(vip)
			if err != nil {
				n.log.Warn("reset drained connections", zap.Error(err))
			}
			n.endDrainLocked(i, fmt.Sprintf("drain timeout: %d connections reset", ks.Destroyed+ks.Reset))
		}
	}
}

// endDrainLocked removes a draining VIP from loopback.
func (n *Node) endDrainLocked(i int, why string) {
	vip := n.cfg.VIPs[i]
	err := n.dp.RemoveVIP("lo", netip.PrefixFrom(vip.VIP(), vip.VIP().BitLen()))
	t0 := n.draining[i].t0
	n.draining[i] = drain{}
	n.metaDirty = true
	n.log.Info("drain ended", zap.Stringer("vip", vip.Prefix), zap.String("why", why), zap.Error(err))
	now := time.Now()
	for j := len(n.timeline) - 1; j >= 0; j-- {
		r := &n.timeline[j]
		if r.Kind == "drain" && len(r.Steps) > 0 && r.Steps[0].At.Equal(t0) && r.VIP == vip.Prefix.String() {
			r.Steps = append(r.Steps, admin.TimelineStep{Step: "drain ended: " + why, At: now, Took: now.Sub(t0)})
			break
		}
	}
}

// updateSteeringLocked steers the old connections of every VIP this node
// holds that a live peer still drains, and stops steering (and tickles)
// those whose drainer is done or dead.
func (n *Node) updateSteeringLocked(ctx context.Context, v view, prev view) {
	want := map[steerKey]bool{}
	for i := range n.held {
		if !n.held[i] {
			continue
		}
		for pnn := range v.alive {
			if n.peerDrains(pnn, i) {
				want[steerKey{i, pnn}] = true
			}
		}
	}
	changed := false
	for k := range want {
		if !n.steered[k] {
			n.steered[k] = true
			changed = true
		}
	}
	for k := range n.steered {
		if want[k] {
			continue
		}
		delete(n.steered, k)
		changed = true
		vip := n.cfg.VIPs[k.vip]
		if err := n.dp.Steer(vip.VIP(), k.owner, [6]byte{}, false, len(want)); err != nil {
			n.log.Warn("stop steering", zap.Error(err))
		}
		if _, alive := v.alive[k.owner]; !alive && n.held[k.vip] {
			// the old owner died mid-drain: its clients reconnect here now
			n.log.Info("draining node died: tickling its connections", zap.Stringer("vip", vip.Prefix), zap.Int("node", k.owner))
			t0 := time.Now()
			n.recordLocked(admin.Takeover{VIP: vip.Prefix.String(), Iface: n.pickInterface(vip), Kind: "takeover",
				Reason: "draining node " + n.cfg.Nodes[k.owner].Addr.String() + " died",
				From:   n.cfg.Nodes[k.owner].Addr.String(), Steps: []admin.TimelineStep{{Step: "decision", At: t0}}})
			go n.tickle(ctx, vip, n.pickInterface(vip), []int{k.owner}, t0)
		}
	}
	if !changed {
		return
	}
	for k := range want {
		m := v.alive[k.owner].Meta
		if err := n.dp.Steer(n.cfg.VIPs[k.vip].VIP(), k.owner, m.MAC, true, len(want)); err != nil {
			n.log.Warn("steer", zap.Error(err))
		}
	}
	if len(want) == 0 {
		if err := n.dp.Steer(netip.Addr{}, allocation.None, [6]byte{}, false, 0); err != nil {
			n.log.Warn("steering off", zap.Error(err))
		}
	}
}

// SteerFor tells replication whether a connection of owner's to vip must be
// steered: this node holds vip and owner drains it.
func (n *Node) SteerFor(vip netip.Addr, owner int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k := range n.steered {
		if k.owner == owner && n.cfg.VIPs[k.vip].VIP() == vip {
			return true
		}
	}
	return false
}

// tickle makes the clients of the previous holders' connections to the VIP
// reconnect to this node at once; the data plane then forgets them.
func (n *Node) tickle(ctx context.Context, vip config.PublicAddress, iface string, owners []int, t0 time.Time) {
	res, err := n.dp.TickleVIP(ctx, iface, vip.VIP(), owners, true)
	end := time.Now()
	if err != nil {
		n.log.Warn("tickle", zap.Stringer("vip", vip.Prefix), zap.Error(err))
	}
	if res.Conns > 0 {
		n.log.Info("tickled", zap.Stringer("vip", vip.Prefix), zap.Int("connections", res.Conns),
			zap.Duration("first_round", res.FirstRound), zap.Int64("resets", res.Resets))
	}
	n.updateRecord(vip, t0, func(r *admin.Takeover) {
		first := res.FirstRoundAt
		r.Tickled, r.Resets = res.Conns, res.Resets
		r.Steps = append(r.Steps,
			admin.TimelineStep{Step: fmt.Sprintf("tickles sent (%d connections)", res.Conns), At: first, Took: first.Sub(t0)},
			admin.TimelineStep{Step: fmt.Sprintf("tickle repeats done (%d resets from our stack)", res.Resets), At: end, Took: end.Sub(t0)})
		if err != nil && r.Error == "" {
			r.Error = "tickle: " + err.Error()
		}
	})
	if n.observer != nil {
		if o, ok := n.observer.(interface{ ObserveTickles(conns int, resets int64) }); ok {
			o.ObserveTickles(res.Conns, res.Resets)
		}
	}
}

// releaseLocked removes VIP i and runs the releaseip hooks.
func (n *Node) releaseLocked(i int, reason string) {
	vip := n.cfg.VIPs[i]
	t0 := time.Now()
	rec := admin.Takeover{VIP: vip.Prefix.String(), Kind: "release", Reason: reason,
		Steps: []admin.TimelineStep{{Step: "decision", At: t0}}}
	if c := n.cancelAnnoun[i]; c != nil {
		c()
		n.cancelAnnoun[i] = nil
	}
	// End our connections to it while the address is still here, so that
	// their clients reconnect to the next holder at once instead of
	// waiting for a timeout.
	if ks, err := n.dp.KillVIP(vip.VIP()); err != nil {
		n.log.Warn("reset connections", zap.Stringer("vip", vip.Prefix), zap.Error(err))
	} else if ks.Conns > 0 {
		now := time.Now()
		rec.Steps = append(rec.Steps, admin.TimelineStep{
			Step: fmt.Sprintf("connections reset (%d of %d)", ks.Destroyed+ks.Reset, ks.Conns), At: now, Took: now.Sub(t0)})
	}
	var errs []error
	for _, iface := range vip.Interfaces {
		errs = append(errs, n.dp.RemoveVIP(iface, vip.Prefix))
	}
	rec.Iface = vip.Interfaces[0]
	if err := errors.Join(errs...); err != nil {
		rec.Error = err.Error()
		n.log.Error("release", zap.Stringer("vip", vip.Prefix), zap.Error(err))
	}
	now := time.Now()
	rec.Steps = append(rec.Steps, admin.TimelineStep{Step: "address down", At: now, Took: now.Sub(t0)})
	n.held[i] = false
	n.metaDirty, n.handedOver = true, true
	n.log.Info("released", zap.Stringer("vip", vip.Prefix), zap.String("reason", reason))
	n.recordLocked(rec)
	go n.runHooks(context.Background(), "releaseip", vip, rec.Iface, t0)
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

const timelineLen = 256

// recordLocked appends to the timeline.
func (n *Node) recordLocked(rec admin.Takeover) {
	n.timeline = append(n.timeline, rec)
	if len(n.timeline) > timelineLen {
		n.timeline = slices.Delete(n.timeline, 0, len(n.timeline)-timelineLen)
	}
}

func (n *Node) runHooks(ctx context.Context, event string, vip config.PublicAddress, iface string, t0 time.Time) {
	var herr error
	if n.hooks != nil {
		herr = n.hooks.Run(ctx, event, map[string]string{
			"FSHA_VIP": vip.VIP().String(), "FSHA_PREFIX": vip.Prefix.String(), "FSHA_IFACE": iface,
			"FSHA_NODE": n.cfg.Nodes[n.cfg.Self].Addr.String(),
		})
	}
	now := time.Now()
	n.updateRecord(vip, t0, func(r *admin.Takeover) {
		r.Steps = append(r.Steps, admin.TimelineStep{Step: "hooks done", At: now, Took: now.Sub(t0)})
		if herr != nil && r.Error == "" {
			r.Error = "hooks: " + herr.Error()
		}
		if n.observer != nil {
			n.observer.ObserveTakeover(r.Kind, now.Sub(t0))
		}
	})
}

// updateRecord changes the timeline record of vip that started at t0, if
// it is still in the timeline.
func (n *Node) updateRecord(vip config.PublicAddress, t0 time.Time, fn func(*admin.Takeover)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for j := len(n.timeline) - 1; j >= 0; j-- {
		r := &n.timeline[j]
		if len(r.Steps) > 0 && r.Steps[0].At.Equal(t0) && r.VIP == vip.Prefix.String() {
			fn(r)
			// steps of concurrent work (tickles, hooks) arrive in any order
			slices.SortStableFunc(r.Steps, func(a, b admin.TimelineStep) int { return a.At.Compare(b.At) })
			return
		}
	}
}

// persisted is the state kept in StateFile.
type persisted struct {
	Disabled bool `json:"disabled"`
}

func (n *Node) loadState() {
	if n.cfg.StateFile == "" {
		return
	}
	b, err := os.ReadFile(n.cfg.StateFile)
	if errors.Is(err, os.ErrNotExist) {
		return
	}
	var p persisted
	if err == nil {
		err = json.Unmarshal(b, &p)
	}
	if err != nil {
		n.log.Warn("state file unreadable, starting enabled", zap.String("file", n.cfg.StateFile), zap.Error(err))
		return
	}
	n.disabled = p.Disabled
	if p.Disabled {
		n.log.Info("node is disabled (maintenance); `fsha enable` to bring it back")
	}
}

func (n *Node) saveStateLocked() error {
	if n.cfg.StateFile == "" {
		return nil
	}
	b, _ := json.Marshal(persisted{Disabled: n.disabled})
	if err := os.MkdirAll(filepath.Dir(n.cfg.StateFile), 0o700); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	tmp := n.cfg.StateFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if err := os.Rename(tmp, n.cfg.StateFile); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}

// BadMessages counts cluster messages rejected as malformed.
func (n *Node) BadMessages() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.badMessages
}
