// Package ownership decides which node answers for each VIP, with
// majority-granted per-VIP leases: every node is a voter; a node answers
// for a VIP only while a strict majority of the nodes file (or, where a
// majority cannot tell two halves apart, the cluster lock) has promised it
// that VIP's current epoch, and the data plane stops answering at a
// deadline derived from those promises, with no process involved. Lease
// renewals are the heartbeat: a holder that stops renewing (power cut,
// network cut, frozen process) loses its VIPs when the promises run out,
// whatever the cluster size.
//
// Engine is a pure state machine in the manner of etcd's raft package: its
// inputs are method calls carrying the time (Tick, Receive, SetLocal,
// Done...), its outputs are collected in Ready: what to persist, what to
// send, what the data plane must enforce, which VIPs to take or release.
// It does no I/O and reads no clock, so a deterministic simulator drives it
// (control/ownership/sim). The caller executes Ready's actions in order, persisting
// promises before sending anything.
package ownership

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/fsha/fsha/control/allocation"
)

// None marks no node.
const None = allocation.None

// Timing of the protocol.
type Timing struct {
	// Renew is the heartbeat period: each holder renews its promises this
	// often. Lease/Renew heartbeats may be lost in a row before a holder's
	// deadline passes.
	Renew time.Duration
	// Lease is how long voters promise a renewal. A dead holder's VIPs are
	// taken over at most Lease after its last renewal: the failover time.
	Lease time.Duration
	// Drift bounds how far any node's monotonic clock rate may be from
	// real time (0.01: 1%). Deadlines are shortened by it.
	Drift float64
	// Grace is how long a restarting daemon keeps its VIPs (the promises
	// it asks for before it exits).
	Grace time.Duration
	// Settle is how long the set of eligible nodes must stay the same
	// before VIPs that were never held are placed, so that a cluster
	// starting up spreads them instead of giving all to the first node.
	Settle time.Duration
	// HoldDown keeps a node that recovered (unhealthy to healthy), or a
	// peer heard again after a silence, from taking VIPs for a while, so
	// that a flapping node does not pull VIPs back and forth and a VIP
	// moved to a peer back from a partition finds its replicas complete.
	HoldDown time.Duration
}

// DefaultTiming: a dead holder's VIPs are answered by a survivor within
// about 0.26 s; a holder survives four lost heartbeats in a row.
func DefaultTiming() Timing {
	return Timing{Renew: 50 * time.Millisecond, Lease: 250 * time.Millisecond, Drift: 0.01,
		Grace: 10 * time.Second, Settle: 300 * time.Millisecond, HoldDown: 2 * time.Second}
}

// FastTiming: within about 0.07 s, for a quiet LAN and a daemon that is
// never starved of CPU for 40 ms.
func FastTiming() Timing {
	return Timing{Renew: 10 * time.Millisecond, Lease: 60 * time.Millisecond, Drift: 0.01,
		Grace: 10 * time.Second, Settle: 100 * time.Millisecond, HoldDown: 2 * time.Second}
}

// Validate checks that the timing can work.
func (t Timing) Validate() error {
	switch {
	case t.Renew <= 0 || t.Lease <= 0:
		return fmt.Errorf("lease %v and renew interval %v must be positive", t.Lease, t.Renew)
	case t.Lease < 3*t.Renew:
		return fmt.Errorf("lease %v must be at least three renew intervals (%v)", t.Lease, t.Renew)
	case t.Drift < 0 || t.Drift >= 0.5:
		return fmt.Errorf("clock drift bound %v out of [0, 0.5)", t.Drift)
	case t.Grace < t.Lease:
		return fmt.Errorf("restart grace %v shorter than the lease %v", t.Grace, t.Lease)
	}
	return nil
}

// MaxGrant is the longest promise a voter gives.
func (t Timing) MaxGrant() time.Duration { return max(t.Lease, t.Grace) }

// usable is how much of a promise of d a holder may count on: a voter's
// clock may run fast and the holder's slow by Drift each.
func (t Timing) usable(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (1 - t.Drift) / (1 + t.Drift))
}

// VIP is one public address and the nodes allowed to hold it (nil: any).
type VIP struct {
	Addr    netip.Addr
	Allowed []int
}

// Config configures an Engine.
type Config struct {
	Self int
	// Nodes are the PNNs of the nodes file's live nodes: the voters.
	Nodes []int
	// VIPs in canonical order (sorted by address): indexes mean the same
	// on every node that agrees on the Fingerprint.
	VIPs        []VIP
	Policy      allocation.Policy
	Timing      Timing
	Lock        bool // a cluster lock is configured
	Fingerprint Fingerprint
	MAC         [6]byte
	// Incarnation tells this run from earlier ones (e.g. the wall-clock
	// start time in nanoseconds): peers order heartbeats by it.
	Incarnation uint64
	// Start is when the engine starts; QuietUntil is when its voter may
	// grant (later than Start when it lost its promises).
	Start      Mono
	QuietUntil Mono
	// Debug adds a note to Output.Notes for every decision (the
	// simulator's log).
	Debug bool
}

// Local is this node's own fitness.
type Local struct {
	Healthy bool
	// HealthPending: the checks have not all run yet since the start
	// (Healthy is false for want of an answer). Nothing is claimed
	// meanwhile, and nothing held is released for it.
	HealthPending bool
	Disabled      bool
	Banned        bool
	// MAC, when set, replaces Config.MAC in the heartbeats: the node's
	// public interface with link now (a VIP moved to its second
	// interface when the first lost link), where peers steer a drain.
	MAC [6]byte
	// Ifaces: the node's MAC on each public interface with link whose MAC
	// differs from MAC (VLANs on one bond share its MAC and need no
	// entry), in preference order; heartbeats carry the first MaxIfaces.
	Ifaces []IfaceMAC
}

// LockState is what the caller knows of the cluster lock.
type LockState struct {
	Held    bool
	Since   Mono // when it was taken
	Checked Mono // when it was last confirmed held
}

// Envelope is a message for node To.
type Envelope struct {
	To  int
	Msg any // *Heartbeat, *Reply or *Release
}

// Deadline extends the data-plane deadline of a VIP this node holds (and
// sets its epoch, which a holder may raise: see applyAnswer).
type Deadline struct {
	VIP   int
	Epoch uint64
	Until Mono
	// Shorten sets Until even if the data plane has a later deadline (the
	// grace a restart adopted); once written, the caller confirms with
	// DeadlineWritten, and only then does this node ask its voters to
	// give their longer promises back.
	Shorten bool
	// Orphans: nodes that held the VIP between our epochs (we lapsed,
	// they held it and let it go): tickle their connections.
	Orphans []int
}

// Take makes this node answer for a VIP: the data plane's lease first
// (held, Epoch, Until), then the address, announcements, hooks.
type Take struct {
	VIP   int
	Epoch uint64
	Until Mono
	// Orphans are the nodes whose epochs of this VIP are over and whose
	// connections to it the new holder tickles and forgets.
	Orphans []int
	// From is the previous holder, None when unknown.
	From int
	// FromDraining: the previous holder drains the VIP (a planned move):
	// steer its old connections to it instead of tickling them.
	FromDraining bool
	// Adopted: held before a restart of this daemon; nothing moves.
	Adopted bool
	Reason  string
}

// Drop makes this node stop answering for a VIP: the data plane's lease
// first (none, or draining), then the address. Done(Released) follows.
type Drop struct {
	VIP   int
	Epoch uint64
	// Drain keeps serving the VIP's existing connections from loopback
	// (a planned move); otherwise they are reset.
	Drain bool
	// Lost: another node holds a newer epoch; our epoch is over.
	Lost   bool
	To     int
	Reason string
}

// Output is what the caller must do, in this order: persist, data plane
// deadlines, takes then drops (in the background, one at a time per VIP in
// the order given, each reporting with Done), sends.
type Output struct {
	Persist   map[netip.Addr]Promise
	Deadlines []Deadline
	Drops     []Drop
	Takes     []Take
	Send      []Envelope
	// WantLock says whether this node should hold the cluster lock.
	WantLock bool
	// Stopped: Stop's work is done; the caller may exit.
	Stopped bool
	// Notes are things worth a log line.
	Notes []string
}

// Result reports an executed Take or Drop.
type Result struct {
	VIP   int
	Epoch uint64
	Take  bool // a Take (else a Drop)
	Err   error
}

// slot is this node's state for one VIP.
type slot struct {
	state slotState
	// epoch is the epoch claimed (claiming) or granted by a majority
	// (held); pending, when held, a newer epoch of ours being asked for
	// (see applyAnswer), which replaces epoch once a majority grants it.
	epoch    uint64
	pending  uint64
	deadline Mono // what the data plane enforces (held)
	// dpMax bounds what the data plane may enforce: deadline, unless a
	// shortening (shortTo, not 0) has not been confirmed written yet
	// (DeadlineWritten). long: the deadline was adopted from a restart and
	// is longer than a lease; the first renewal shortens it.
	dpMax    Mono
	shortTo  Mono
	long     bool
	maxEpoch uint64
	// orphans collects the previous holders reported by grants;
	// tickled, those whose connections this holding already tickled
	// (late grants of a claim's other rounds name them again).
	orphans  map[int]bool
	drainers map[int]bool
	tickled  map[int]bool
	from     int
	// prevHolder: the holder of the latest epoch before ours, as grants
	// report it
	prevHolder int
	prevEpoch  uint64
	// retryAt: a busy voter's promise ends then; claim again.
	retryAt  Mono
	failedAt Mono
	draining bool
	reason   string
	release  Drop
}

type slotState uint8

const (
	idle slotState = iota
	claiming
	held
	releasing
)

func (s slotState) String() string {
	return [...]string{"idle", "claiming", "held", "releasing"}[s]
}

// round is one heartbeat's claims and the grants they collected.
type round struct {
	seq    uint64
	sent   Mono
	lease  time.Duration
	claims map[int]uint64 // VIP -> epoch
	grants map[int]map[int]time.Duration
	busy   map[int]map[int]time.Duration // VIP -> voter -> time left
}

// peer is what this node knows of another node.
type peer struct {
	heard Mono
	// back is when it was heard again after a silence longer than a
	// lease (zero if never silent): see the rejoin hold-down in view.go
	back     Mono
	hb       Heartbeat
	hbAt     Mono
	claimOf  map[netip.Addr]Claim
	draining map[netip.Addr]bool
}

// Engine is one node's ownership state machine.
type Engine struct {
	cfg      Config
	majority int
	half     int
	index    map[netip.Addr]int
	voter    *Voter
	slots    []slot
	peers    map[int]*peer
	local    Local
	lock     LockState
	pins     []int
	pinKill  []bool
	seq      uint64
	rounds   []*round
	nextHB   Mono
	urgent   bool
	out      Output
	now      Mono

	startingUntil Mono
	wasHealthy    bool
	hadQuorum     bool
	wasQuorate    bool
	eligibleSet   []int
	settledSince  Mono
	stopping      bool
	restarting    bool
	stopped       bool
	stopSince     Mono
	// covering: a peer restarts that the others need (restartcover.go)
	covering bool
	view     view
	// dirty: something the view depends on changed since it was computed;
	// viewUntil: when the passing of time alone changes it (a peer or a
	// promise times out, a hold-down ends)
	dirty     bool
	viewUntil Mono
}

// New returns an engine; it sends its first heartbeat at the first Tick.
func New(cfg Config) (*Engine, error) {
	if err := cfg.Timing.Validate(); err != nil {
		return nil, err
	}
	if !slices.Contains(cfg.Nodes, cfg.Self) {
		return nil, fmt.Errorf("node %d is not among the nodes %v", cfg.Self, cfg.Nodes)
	}
	e := &Engine{cfg: cfg, majority: len(cfg.Nodes)/2 + 1, half: (len(cfg.Nodes) + 1) / 2,
		index: map[netip.Addr]int{}, slots: make([]slot, len(cfg.VIPs)), peers: map[int]*peer{},
		pins: make([]int, len(cfg.VIPs)), pinKill: make([]bool, len(cfg.VIPs)), now: cfg.Start}
	addrs := make([]netip.Addr, len(cfg.VIPs))
	for i, v := range cfg.VIPs {
		a := v.Addr.Unmap()
		if _, dup := e.index[a]; dup {
			return nil, fmt.Errorf("VIP %s listed twice", a)
		}
		e.index[a], addrs[i] = i, a
		e.pins[i] = None
		e.slots[i].from = None
	}
	e.voter = NewVoter(cfg.Self, addrs, cfg.Timing.MaxGrant(), cfg.QuietUntil)
	e.startingUntil = cfg.Start.Add(cfg.Timing.Lease + cfg.Timing.Renew)
	e.settledSince = cfg.Start
	return e, nil
}

// Voter gives access to this node's voter (to restore persisted promises
// before the first Tick).
func (e *Engine) Voter() *Voter { return e.voter }

// Ready returns and clears what the caller must do.
func (e *Engine) Ready() Output {
	out := e.out
	if p := e.voter.Changed(); p != nil {
		out.Persist = p
	}
	out.WantLock = e.wantLock()
	out.Stopped = e.stopped
	e.out = Output{}
	return out
}

// timeChanges is the first instant after now when the view may change
// with nothing else happening.
func (e *Engine) timeChanges(now Mono) Mono {
	t := Forever
	at := func(m Mono) {
		if m > now && m < t {
			t = m
		}
	}
	for _, p := range e.peers {
		at(p.heard.Add(e.cfg.Timing.Lease + 1))
		if p.back != 0 {
			at(p.back.Add(e.cfg.Timing.HoldDown)) // a rejoined peer becomes eligible
		}
	}
	for _, p := range e.voter.promises {
		at(p.Until)
	}
	at(e.startingUntil)
	at(e.settledSince.Add(e.cfg.Timing.Settle))
	for i := range e.slots {
		at(e.slots[i].failedAt.Add(e.cfg.Timing.HoldDown))
	}
	if e.lock.Held {
		at(e.lock.Since.Add(2*e.cfg.Timing.Lease + e.cfg.Timing.Renew))
		at(e.lock.Checked.Add(e.cfg.Timing.Lease + 1))
	}
	return t
}

// NextWake is when the engine wants its next Tick at the latest: its next
// heartbeat, a retry, a deadline, or when a peer or a promise times out.
func (e *Engine) NextWake() Mono {
	w := min(e.nextHB, e.viewUntil)
	for i := range e.slots {
		s := &e.slots[i]
		if s.state == claiming && s.retryAt > e.now && s.retryAt < w {
			w = s.retryAt
		}
		if s.state == held && s.deadline > e.now && s.deadline < w {
			w = s.deadline
		}
	}
	return w
}

func (e *Engine) advance(now Mono) {
	if now > e.now {
		e.now = now
	}
}

func (e *Engine) note(format string, args ...any) {
	e.out.Notes = append(e.out.Notes, fmt.Sprintf(format, args...))
}

func (e *Engine) broadcast(msg any) {
	for _, n := range e.cfg.Nodes {
		if n != e.cfg.Self {
			e.out.Send = append(e.out.Send, Envelope{To: n, Msg: msg})
		}
	}
}

// step is one decision round at e.now: view, allocation, releases,
// claims, heartbeat.
func (e *Engine) step() {
	now := e.now
	if e.dirty || e.view.current == nil || now >= e.viewUntil {
		e.view = e.computeView(now)
		e.dirty = false
		if e.view.quorum && !e.hadQuorum && e.wasQuorate {
			// Back from a partition: what this node knows of the others
			// is a lease old. Take nothing new until it is fresh.
			e.startingUntil = max(e.startingUntil, now.Add(e.cfg.Timing.Lease+e.cfg.Timing.Renew))
			e.view = e.computeView(now)
		}
		e.hadQuorum = e.view.quorum
		e.wasQuorate = e.wasQuorate || e.view.quorum
		e.viewUntil = e.timeChanges(now)
	}
	v := &e.view
	for i := range e.slots {
		e.decide(i, v)
	}
	for i := range e.slots {
		if s := &e.slots[i]; s.state == claiming && s.retryAt != 0 && now >= s.retryAt {
			e.urgent = true // a busy voter's promise has run out
		}
	}
	e.updateCover(now)
	if e.stopping && !e.stopped {
		e.checkStopped()
	}
	if e.urgent || now >= e.nextHB {
		e.heartbeat(now)
	}
}
