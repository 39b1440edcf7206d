// Package node runs this node's part of the cluster. The decisions (who
// answers for which VIP, renewals, takeovers, releases) are the ownership
// engine's; this package feeds it (peer messages, health, operator
// commands, the lock, the clock) from one goroutine, the loop, and
// executes what it asks for: promises persisted in the data plane, data
// plane deadlines, takeovers and releases run by one worker per VIP, each
// verified, and messages to the peers. Nothing slow runs in the loop.
package node

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/logs"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/quorum"
	"github.com/fsha/fsha/control/remote"
	"github.com/fsha/fsha/dataplane"
)

// DataPlane is what the node asks of the data plane.
type DataPlane interface {
	AddVIP(iface string, p netip.Prefix) error
	RemoveVIP(iface string, p netip.Prefix) error
	HasVIP(iface string, addr netip.Addr) (bool, error)
	// SetDrainRoute adds (on) or removes the route a drain keeps to p's
	// subnet through iface, behind any other: the VIP on loopback took
	// its prefix route along, and a node without an address of its own
	// there would have no way back to the drained clients.
	SetDrainRoute(iface string, p netip.Prefix, on bool) error
	// Announce sends the first gratuitous ARP / unsolicited NA at once and
	// returns when it left; repeats go on until ctx ends.
	Announce(ctx context.Context, iface string, addr netip.Addr) (time.Time, error)
	SetFencingMode(nodeWide, perVIP bool) error
	SetVIPLease(vip netip.Addr, l dataplane.VIPLease) error
	VIPLeases() (map[netip.Addr]dataplane.VIPLease, error)
	SetVIPGrant(vip netip.Addr, g dataplane.VIPGrant) error
	VIPGrants() (map[netip.Addr]dataplane.VIPGrant, error)
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
	// ProbeVIP reads the ingress packet count of this node's own
	// connections to vip and, with send, sends each client a keepalive
	// probe (a drain's return path check: drainwatch.go).
	ProbeVIP(vip netip.Addr, send bool) (dataplane.DrainProbe, error)
	// LocalVIPs says on which interfaces (every one: ifaces nil) the
	// addresses of candidates are up, with their prefixes.
	LocalVIPs(ifaces []string, candidates []netip.Prefix) ([]dataplane.LocalVIP, error)
	// SetVIPs makes addrs the VIPs the data plane tracks and fences.
	SetVIPs(addrs []netip.Addr) error
	// Steer makes XDP send the packets of owner's connections to vip on to
	// owner at mac (on), or stops it; active is the number of (VIP, owner)
	// pairs steered, 0 turns the lookup off.
	Steer(vip netip.Addr, owner int, mac [6]byte, on bool, active int) error
	// SetPeerMACs records owner's MACs by interface name (its heartbeats'
	// Ifaces): a packet steered to owner out of this node's interface of
	// that name goes to that MAC, else to the MAC given to Steer. nil
	// forgets them.
	SetPeerMACs(owner int, byName map[string][6]byte) error
}

// Health is the node's own fitness.
type Health interface {
	Healthy() bool
	// State is Healthy with, when unhealthy, why (each failing link or
	// check with what it said).
	State() (bool, []string)
	// Judged: the first round of checks is over (see health.Checker).
	Judged() bool
	LinkUp(iface string) bool
	Changed() <-chan struct{}
}

// Hooks runs the operator's event scripts (takeip, releaseip).
type Hooks interface {
	Run(ctx context.Context, event string, env map[string]string) error
}

// Gossip is the membership as the node uses it: the transport of the
// ownership messages (SendTo), operator moves (Broadcast, SendAll, and the
// state exchange) and joining.
type Gossip interface {
	Members() []membership.Member
	Join(peers []netip.Addr) (int, error)
	UpdateMeta(timeout time.Duration) error
	Broadcast(msg []byte)
	// SendAll sends msg to every live member over TCP: for what must not
	// be lost (an operator's move).
	SendAll(msg []byte)
	// SendTo sends msg to one node's gossip address, as one datagram.
	SendTo(addr netip.Addr, msg []byte) error
	Leave(timeout time.Duration) error
}

// Observer is told of every finished takeover or release (metrics).
type Observer interface {
	ObserveTakeover(kind string, d time.Duration)
}

// Config configures a Node.
type Config struct {
	Nodes  []config.Node
	Self   int // this node's PNN
	VIPs   []config.PublicAddress
	Policy allocation.Policy
	Lock   *quorum.Lock // nil: majority only
	Timing ownership.Timing
	// StateFile keeps what must survive a restart and a reboot
	// (maintenance mode). LegacyStateFile is where releases before
	// --state-dir kept it (in the run dir, which a reboot empties): read
	// when StateFile does not exist yet, so an upgrade keeps a disable.
	StateFile, LegacyStateFile string
	// DrainTimeout is how long a VIP moved away in a planned move (move,
	// disable, failback, rebalance, shutdown) keeps serving its old
	// connections here before they are reset; 0 resets them at once.
	DrainTimeout time.Duration
	// MAC is this node's public interface address, announced so that the
	// new owner of a VIP draining from here can steer packets back.
	MAC [6]byte
	// MACNow, if set, says this node's MAC now: the first public
	// interface with link (health changes re-read it). Zero: MAC.
	MACNow func() [6]byte
	// IfacesNow, if set, says this node's MAC on each public interface
	// with link, in preference order: peers steering a drain of this
	// node's connections address each packet to the MAC on the network
	// it came from (interfaces on separate networks, each its own MAC).
	IfacesNow func() []ownership.IfaceMAC
	// Rejoin is how often unreachable nodes are contacted again (gossip).
	Rejoin time.Duration
	// PeerDead, when set, is called (in a goroutine of its own) once a
	// peer is judged dead: unheard for a lease without announcing a stop,
	// or for the restart grace after announcing a restart (peerdeath.go).
	PeerDead func(pnn int, addr netip.Addr)
	// Retiring are VIPs the data plane held or drained for this node
	// before a reload and the configuration no longer lists
	// (RetiringVIPs): the caller keeps them tracked, Run drains them out
	// (retire.go).
	Retiring []netip.Addr
}

// StopMode says what a stop is for.
type StopMode int

const (
	// Restart keeps every VIP and connection: the data plane goes on
	// serving, the peers wait for the restart grace.
	Restart StopMode = iota
	// Shutdown hands every VIP over to the other nodes (connections
	// drain), then stops.
	Shutdown
	// EndDrains, during a Shutdown, resets the connections still
	// draining (the shutdown's bound, --shutdown-timeout, has passed):
	// their clients reconnect at once, to the VIPs' new holders, and the
	// shutdown completes.
	EndDrains
)

// Node is one node's control: the engine's loop and the executors.
type Node struct {
	log      *zap.Logger
	cfg      Config
	fp       ownership.Fingerprint
	gossip   Gossip
	dp       DataPlane
	health   Health
	hooks    Hooks
	observer Observer

	// inputs of the loop
	msgs    chan any
	results chan ownership.Result
	cmds    chan func(*ownership.Engine, ownership.Mono)
	stopReq chan StopMode

	workers []*worker
	steer   *steering
	lockMgr *lockManager
	// addrMu makes the workers' address changes one at a time.
	addrMu sync.Mutex

	// mu guards what the admin API and the gossip callbacks read.
	mu          sync.Mutex
	snap        ownership.Snapshot
	timeline    []admin.Takeover
	pins        map[int]pin
	pinClock    uint64
	disabled    bool
	stopped     bool // fsha stop: as disabled, forgotten by a restart
	bannedUntil time.Time
	counters    map[string]uint64
	extra       func() map[string]uint64
	onAlive     func(map[int]netip.Addr)
	alive       map[int]bool
	deaths      *peerDeaths // used by the loop only (publish)
	// quorum as last logged (the loop only); quorumSaid: logged once
	quorum, quorumSaid bool
	started            time.Time
	// remote receives forwarded admin requests (SetRemote)
	remote atomic.Pointer[func([]byte)]
	// retiring: the VIPs of Config.Retiring not retired yet; retireNow,
	// closed once (endRetiring), has them reset their connections now
	retiring    []netip.Addr
	retireNow   chan struct{}
	endRetiring sync.Once
}

// New builds a node; SetGossip then Run start it.
func New(log *zap.Logger, cfg Config, g Gossip, dp DataPlane, h Health, hooks Hooks, obs Observer) (*Node, error) {
	if cfg.Self < 0 || cfg.Self >= len(cfg.Nodes) || cfg.Nodes[cfg.Self].Deleted {
		return nil, fmt.Errorf("this node's number %d is not a node of the nodes file", cfg.Self)
	}
	if cfg.Timing == (ownership.Timing{}) {
		cfg.Timing = ownership.DefaultTiming()
	}
	if err := cfg.Timing.Validate(); err != nil {
		return nil, err
	}
	if cfg.Rejoin == 0 {
		cfg.Rejoin = time.Second
	}
	// Every node orders the VIPs the same way, whatever the order of the
	// lines of its public_addresses: indexes then mean the same VIP on
	// every node that agrees on the fingerprint.
	cfg.VIPs = slices.Clone(cfg.VIPs)
	slices.SortFunc(cfg.VIPs, func(a, b config.PublicAddress) int { return a.VIP().Compare(b.VIP()) })
	n := &Node{
		log: log.Named("node"), cfg: cfg, fp: Fingerprint(cfg.Nodes, cfg.VIPs), gossip: g, dp: dp, health: h,
		hooks: hooks, observer: obs,
		msgs: make(chan any, 4096), results: make(chan ownership.Result, 256),
		cmds: make(chan func(*ownership.Engine, ownership.Mono), 64), stopReq: make(chan StopMode, 1),
		pins: map[int]pin{}, counters: map[string]uint64{}, alive: map[int]bool{},
		deaths: newPeerDeaths(cfg.Timing.Grace), retiring: slices.Clone(cfg.Retiring), retireNow: make(chan struct{}),
	}
	for i := range cfg.VIPs {
		n.workers = append(n.workers, newWorker(n, i))
	}
	n.steer = newSteering(n)
	if cfg.Lock != nil {
		n.lockMgr = newLockManager(n.log, cfg.Lock, cfg.Timing.Renew)
	}
	n.loadState()
	return n, nil
}

// SetGossip gives the node its membership. The two refer to each other
// (the membership asks the node for its metadata), so the node is built
// first and handed the membership before Run.
func (n *Node) SetGossip(g Gossip) { n.gossip = g }

// SetCounters adds fn's counters (e.g. replication's) to Status.
func (n *Node) SetCounters(fn func() map[string]uint64) { n.extra = fn }

// OnAlive registers fn, called with the live peers (PNN -> address)
// whenever that set changes; replication follows it.
func (n *Node) OnAlive(fn func(map[int]netip.Addr)) { n.onAlive = fn }

// Stop asks Run to stop: Restart keeps everything in place for the
// restart grace, Shutdown hands the VIPs over first.
func (n *Node) Stop(mode StopMode) {
	select {
	case n.stopReq <- mode:
	default:
	}
}

func (n *Node) count(name string) {
	n.mu.Lock()
	n.counters[name]++
	n.mu.Unlock()
}

// monoNow reads CLOCK_MONOTONIC: the clock of the data plane's deadlines.
func monoNow() ownership.Mono {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ownership.Mono(ts.Nano())
}

// NotifyMsg receives a gossip message: an ownership message goes to the
// loop (never blocking memberlist), a forwarded admin request or answer to
// the remote, an operator's move is merged.
func (n *Node) NotifyMsg(msg []byte) {
	switch ownership.MessageType(msg) {
	case ownership.TypeHeartbeat, ownership.TypeReply, ownership.TypeRelease:
		m, err := ownership.Decode(msg)
		if err != nil {
			n.count("ownership_bad_messages")
			n.log.Debug("ownership message rejected", zap.Error(err))
			return
		}
		select {
		case n.msgs <- m:
		default:
			n.count("ownership_messages_dropped")
		}
	case remote.TypeRequest, remote.TypeResponse:
		// forwarded admin requests (fsha -n) and their answers
		if fn := n.remote.Load(); fn != nil {
			(*fn)(msg)
		} else {
			n.count("remote_messages_dropped")
		}
	default:
		n.mergePins(msg, "broadcast")
	}
}

// SetRemote routes the remote package's messages to fn (remote.Receive),
// which must not block. It may be called while gossip runs.
func (n *Node) SetRemote(fn func(msg []byte)) { n.remote.Store(&fn) }

// LocalMeta is this node's metadata for the membership: its flags and the
// fingerprint of its configuration (status tools read them).
func (n *Node) LocalMeta() membership.Meta {
	n.mu.Lock()
	defer n.mu.Unlock()
	m := membership.Meta{ConfigHash: n.fp.VIPs, MAC: n.cfg.MAC}
	if n.cfg.MACNow != nil {
		if now := n.cfg.MACNow(); now != ([6]byte{}) {
			m.MAC = now
		}
	}
	if n.health.Healthy() {
		m.Flags |= membership.FlagHealthy
	}
	if n.disabled || n.stopped {
		m.Flags |= membership.FlagDisabled
	}
	if time.Now().Before(n.bannedUntil) {
		m.Flags |= membership.FlagBanned
	}
	if n.snap.Quorum {
		m.Flags |= membership.FlagQuorum
	}
	return m
}

// LocalState is every pin, for memberlist's push/pull.
func (n *Node) LocalState() []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return encodePinState(n.pins)
}

// MergeRemoteState merges a peer's pins.
func (n *Node) MergeRemoteState(buf []byte) {
	if len(buf) > 0 {
		n.mergePins(buf, "push/pull")
	}
}

func (n *Node) mergePins(msg []byte, via string) {
	pins, err := decodePins(msg, len(n.cfg.VIPs))
	n.mu.Lock()
	if err != nil {
		n.counters["gossip_bad_messages"]++
		n.mu.Unlock()
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
	n.mu.Unlock()
	if changed {
		n.pushPins()
	}
}

// pushPins hands the current pins to the engine.
func (n *Node) pushPins() {
	n.mu.Lock()
	pins := make([]int, len(n.cfg.VIPs))
	kill := make([]bool, len(n.cfg.VIPs))
	for i := range pins {
		pins[i] = allocation.None
		if p, ok := n.pins[i]; ok {
			pins[i], kill[i] = p.PNN, p.Kill
		}
	}
	n.mu.Unlock()
	n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetPins(now, pins, kill) })
}

// command runs fn in the loop.
func (n *Node) command(fn func(*ownership.Engine, ownership.Mono)) {
	select {
	case n.cmds <- fn:
	default:
		go func() { n.cmds <- fn }()
	}
}

func (n *Node) local() ownership.Local {
	n.mu.Lock()
	defer n.mu.Unlock()
	l := ownership.Local{Healthy: n.health.Healthy(), HealthPending: !n.health.Judged(), Disabled: n.disabled || n.stopped,
		Banned: time.Now().Before(n.bannedUntil)}
	if n.cfg.MACNow != nil {
		l.MAC = n.cfg.MACNow()
	}
	if n.cfg.IfacesNow != nil {
		l.Ifaces = n.cfg.IfacesNow()
	}
	return l
}

// newEngine builds the engine, restores the promises this node made as a
// voter (kept in the data plane across restarts) and adopts the VIPs its
// data plane still holds.
func (n *Node) newEngine(now ownership.Mono) (*ownership.Engine, error) {
	var live []int
	for _, nd := range n.cfg.Nodes {
		if !nd.Deleted {
			live = append(live, nd.PNN)
		}
	}
	vips := make([]ownership.VIP, len(n.cfg.VIPs))
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
	grants, gerr := n.dp.VIPGrants()
	quiet := now
	if gerr != nil || len(grants) == 0 {
		// Started without the promises this node may have made before
		// (first start after a boot, or the data plane was unloaded):
		// promise nothing until any of them would have run out. A node
		// up for longer than that (the usual case) has nothing to wait.
		quiet = max(now, ownership.Mono(n.cfg.Timing.MaxGrant()))
	}
	e, err := ownership.New(ownership.Config{
		Self: n.cfg.Self, Nodes: live, VIPs: vips, Policy: n.cfg.Policy, Timing: n.cfg.Timing,
		Lock: n.cfg.Lock != nil, Fingerprint: n.fp, MAC: n.cfg.MAC,
		Incarnation: uint64(time.Now().UnixNano()), Start: now, QuietUntil: quiet,
	})
	if err != nil {
		return nil, err
	}
	for vip, g := range grants {
		e.Voter().Restore(vip, ownership.Promise{Epoch: g.Epoch, Holder: g.Holder, Until: ownership.Mono(g.Until)})
	}
	leases, err := n.dp.VIPLeases()
	if err != nil {
		n.log.Warn("read the data plane's leases: adopting nothing", zap.Error(err))
	}
	for i, w := range n.workers {
		l, ok := leases[n.cfg.VIPs[i].VIP()]
		switch {
		case ok && l.State == dataplane.VIPLeaseHeld && ownership.Mono(l.Until) > now:
			if e.Adopt(w.vip.VIP(), l.Epoch, ownership.Mono(l.Until)) {
				n.log.Info("adopted a VIP held before the restart", zap.Stringer("vip", w.vip.Prefix),
					zap.Uint64("epoch", l.Epoch), zap.Duration("deadline_in", ownership.Mono(l.Until).Sub(now)))
			}
		case ok && l.State == dataplane.VIPLeaseDraining:
			e.AdoptDraining(w.vip.VIP())
			w.adoptDrain()
		}
	}
	return e, nil
}

// Run runs the loop until a Stop has done its work (or ctx ends, which
// stops at once, like a crash: the data plane fences itself).
func (n *Node) Run(ctx context.Context) error {
	n.started = time.Now()
	if err := n.dp.SetFencingMode(false, true); err != nil {
		return fmt.Errorf("turn per-VIP fencing on: %w", err)
	}
	e, err := n.newEngine(monoNow())
	if err != nil {
		return err
	}
	wctx, cancelWorkers := context.WithCancel(context.Background())
	defer cancelWorkers()
	for _, w := range n.workers {
		go w.run(wctx)
	}
	go n.steer.run(wctx)
	if n.lockMgr != nil {
		go n.lockMgr.run(wctx, func(l ownership.LockState) {
			n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetLock(now, l) })
		})
	}
	go n.rejoinLoop(wctx)
	go n.reconcileLoop(wctx)
	n.startRetiring(wctx)
	n.pushPins()

	now := monoNow()
	e.SetLocal(now, n.local())
	timer := time.NewTimer(0)
	defer timer.Stop()
	var (
		stopping   bool
		mode       StopMode
		stopBy     time.Time
		drainUntil time.Time
		lastSnap   time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-n.stopReq:
			switch {
			case stopping && m == EndDrains && mode == Shutdown:
				// the kills end the drains at once; stopDone waits for them
				drainUntil = time.Now().Add(endDrainsWithin)
				n.endDrainsNow("shutdown timeout")
			case stopping || m == EndDrains:
			default:
				mode, stopping = m, true
				stopBy = time.Now().Add(2 * time.Second)
				if mode == Shutdown {
					stopBy = time.Now().Add(10 * time.Second)
				}
				n.log.Info("stopping", zap.Bool("restart", mode == Restart))
				e.Stop(monoNow(), mode == Restart)
			}
		case m := <-n.msgs:
			e.Receive(monoNow(), m)
		case r := <-n.results:
			e.Done(monoNow(), r)
		case fn := <-n.cmds:
			fn(e, monoNow())
		case <-n.health.Changed():
			e.SetLocal(monoNow(), n.local())
			n.relocateAll()
		case <-timer.C:
			e.Tick(monoNow())
		}
		began := time.Now()
		out := e.Ready()
		for _, d := range n.execute(out) {
			e.DeadlineWritten(d.VIP, d.Epoch, d.Until)
		}
		if len(out.Takes)+len(out.Drops)+len(out.Deadlines) > 0 || time.Since(lastSnap) > 100*time.Millisecond {
			n.publish(e.Snapshot())
			lastSnap = time.Now()
		}
		if stopping {
			if done := n.stopDone(out.Stopped, mode, stopBy, &drainUntil); done {
				n.finishStop(mode)
				return nil
			}
		}
		if took := time.Since(began); took > n.cfg.Timing.Renew/2 {
			// The loop must never stall: heartbeats and renewals wait.
			n.count("loop_slow")
			n.log.Warn("control loop slow", zap.Duration("took", took), zap.Int("sends", len(out.Send)),
				zap.Int("persisted", len(out.Persist)), zap.Int("deadlines", len(out.Deadlines)), logs.EveryTime())
		}
		wait := time.Duration(e.NextWake() - monoNow())
		timer.Reset(min(max(wait, 0), n.cfg.Timing.Renew))
	}
}

// BadMessages counts cluster messages rejected as malformed.
func (n *Node) BadMessages() uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.counters["gossip_bad_messages"] + n.counters["ownership_bad_messages"]
}
