package ownership

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/fsha/fsha/control/allocation"
)

// ColdStartWait bounds how long, after this node started, the placement
// of VIPs that were never held waits for peers that are still starting.
const ColdStartWait = 3 * time.Second

// view is the cluster as this node sees it at one instant.
type view struct {
	alive         map[int]bool // heard within a lease, this node included
	majorityAlive bool
	heardBy       int
	quorum        bool // may hold VIPs: majority alive, or the lock
	agreed        Fingerprint
	hasAgreed     bool
	selfAgrees    bool
	selfCanClaim  bool
	eligible      []int
	// current[i] is the node that holds (or is being promised) VIP i, as
	// far as this node knows; lastHolder the latest node known to have.
	current    []int
	lastHolder []int
	target     []int
}

func (e *Engine) alive(now Mono, pnn int) bool {
	if pnn == e.cfg.Self {
		return true
	}
	p, ok := e.peers[pnn]
	return ok && now.Sub(p.heard) <= e.cfg.Timing.Lease
}

// lockUsable tells whether the cluster lock may stand in for a majority at
// time t: confirmed within the last lease, and held long enough that any
// earlier holder's lock-based deadlines have passed: such a holder counted
// on the lock at most a lease after its last confirmation, for at most a
// lease (evaluate), so two leases and a heartbeat after we took it.
func (e *Engine) lockUsable(t Mono) bool {
	l := e.lock
	if !e.cfg.Lock || !l.Held {
		return false
	}
	return l.Since.Add(2*e.cfg.Timing.Lease+e.cfg.Timing.Renew) <= t && l.Checked.Add(e.cfg.Timing.Lease) >= t
}

func (e *Engine) computeView(now Mono) view {
	v := view{alive: map[int]bool{}}
	n := 0
	for _, p := range e.cfg.Nodes {
		if e.alive(now, p) {
			v.alive[p] = true
			n++
		}
	}
	v.majorityAlive = n >= e.majority
	v.quorum = v.majorityAlive || (n >= e.half && e.lockUsable(now))

	// The configuration a strict majority of the nodes runs; nodes that
	// run another hold nothing.
	counts := map[Fingerprint]int{e.cfg.Fingerprint: 1}
	order := []Fingerprint{e.cfg.Fingerprint}
	for _, p := range e.cfg.Nodes {
		if p != e.cfg.Self && v.alive[p] {
			fp := e.peers[p].hb.Fingerprint
			if counts[fp] == 0 {
				order = append(order, fp)
			}
			counts[fp]++
		}
	}
	need := e.majority
	if !v.majorityAlive && e.lockUsable(now) {
		need = e.half
	}
	for _, fp := range order { // this node's first: deterministic on a tie
		if counts[fp] >= need {
			v.agreed, v.hasAgreed = fp, true
			break
		}
	}
	v.selfAgrees = v.hasAgreed && v.agreed == e.cfg.Fingerprint

	// Heard by a majority too: a node whose heartbeats do not get
	// through (a one-way partition) would never keep a promise.
	heardBy := 1
	for p := range v.alive {
		if p != e.cfg.Self && slices.Contains(e.peers[p].hb.Hears, e.cfg.Self) {
			heardBy++
		}
	}
	v.heardBy = heardBy
	heard := heardBy >= e.majority || (heardBy >= e.half && e.lockUsable(now))
	selfFit := v.quorum && heard && v.selfAgrees && e.local.Healthy && !e.local.Disabled && !e.local.Banned && !e.stopping
	starting := e.now < e.startingUntil
	// A claim needs a fresh majority: peers heard within a few
	// heartbeats, not merely within the lease, so that a node that is
	// being cut off (its peers time out one by one) does not claim the
	// VIPs of the first ones to time out.
	fresh := 1
	for p := range v.alive {
		if p != e.cfg.Self && now.Sub(e.peers[p].heard) <= 3*e.cfg.Timing.Renew {
			fresh++
		}
	}
	freshQuorum := fresh >= e.majority || (fresh >= e.half && e.lockUsable(now))
	v.selfCanClaim = selfFit && !starting && freshQuorum

	// current holders. An incumbent (a node that holds the VIP, is heard
	// and sees a quorum) comes first: a claimant gives way to it. Then
	// claims and this voter's live promise, by epoch.
	v.current = make([]int, len(e.slots))
	v.lastHolder = make([]int, len(e.slots))
	for i := range e.slots {
		s := &e.slots[i]
		vip := e.cfg.VIPs[i].Addr
		cur, curRank, curEpoch := None, 0, uint64(0)
		consider := func(p, rank int, epoch uint64) {
			if rank > curRank || (rank == curRank && epoch > curEpoch) {
				cur, curRank, curEpoch = p, rank, epoch
			}
		}
		switch s.state {
		case held, releasing:
			consider(e.cfg.Self, 2, s.epoch)
		case claiming:
			consider(e.cfg.Self, 1, s.epoch)
		}
		if h, ep := e.voter.Holder(now, vip); h != None {
			consider(h, 1, ep)
		}
		for _, p := range e.cfg.Nodes {
			if p == e.cfg.Self || !v.alive[p] {
				continue
			}
			c, ok := e.peers[p].claimOf[vip]
			if !ok {
				continue
			}
			if c.State != ClaimTaking && e.peerQuorum(e.peers[p].hb) {
				consider(p, 2, c.Epoch)
			} else {
				consider(p, 1, c.Epoch)
			}
		}
		v.current[i] = cur
		last := cur
		if last == None {
			if p, ok := e.voter.Promise(vip); ok {
				last = p.Holder
			}
		}
		v.lastHolder[i] = last
	}

	// eligible nodes; a node keeps what it holds while it starts.
	keep := map[int]bool{}
	for _, c := range v.current {
		if c != None {
			keep[c] = true
		}
	}
	// A node that has just started is not heard by the others yet (they
	// timed it out while it was away): it keeps what it adopted
	// meanwhile (and until its health checks have answered once), or a
	// restart would hand its VIPs over. A one-way
	// partition still costs it its VIPs: its renewals go unanswered.
	selfKeeps := (starting || e.local.HealthPending) && keep[e.cfg.Self] && v.quorum && v.selfAgrees && (e.local.Healthy || e.local.HealthPending) &&
		!e.local.Disabled && !e.local.Banned && !e.stopping
	if (selfFit && (!starting || keep[e.cfg.Self])) || selfKeeps {
		v.eligible = append(v.eligible, e.cfg.Self)
	}
	for _, p := range e.cfg.Nodes {
		if p == e.cfg.Self || !v.alive[p] {
			continue
		}
		hb := e.peers[p].hb
		f := hb.Flags
		fit := e.peerQuorum(hb) && v.hasAgreed && hb.Fingerprint == v.agreed && f&FlagHealthy != 0 &&
			f&(FlagDisabled|FlagBanned|FlagStopping|FlagRestarting) == 0
		if fit && (f&FlagStarting == 0 || keep[p]) {
			v.eligible = append(v.eligible, p)
		}
	}
	slices.Sort(v.eligible)
	// A cluster starting up places its VIPs once the nodes that are up
	// have all finished starting and the eligible set has stayed the same
	// for a while, so that they are spread instead of going to the first
	// nodes ready.
	// Waiting for starting peers is bounded: a node whose view flaps on a
	// loaded machine (and so keeps starting over) must not keep the
	// others from ever placing a VIP.
	startingPeer := starting
	for _, p := range e.cfg.Nodes {
		if p != e.cfg.Self && v.alive[p] && e.peers[p].hb.Flags&FlagStarting != 0 {
			startingPeer = true
		}
	}
	// A cluster that never placed a VIP (a cold start) also waits, as
	// long, for the configured nodes it has not heard yet: they are
	// usually starting too, a moment later, and a VIP placed without them
	// stays where it is under the sticky policy.
	cold := true
	for i := range e.slots {
		if e.slots[i].state != idle || e.slots[i].maxEpoch > 0 || e.voter.Epoch(e.cfg.VIPs[i].Addr) > 0 {
			cold = false
		}
	}
	for _, p := range e.cfg.Nodes {
		if cold && !v.alive[p] {
			startingPeer = true
		}
	}
	startingPeer = startingPeer && now.Sub(e.cfg.Start) < ColdStartWait
	if !slices.Equal(v.eligible, e.eligibleSet) || startingPeer {
		e.eligibleSet = v.eligible
		e.settledSince = now
	}

	vips := make([]allocation.VIP, len(e.cfg.VIPs))
	pins := make([]int, len(e.pins))
	for i, a := range e.cfg.VIPs {
		vips[i] = allocation.VIP{Addr: a.Addr, Allowed: a.Allowed}
		pins[i] = None
		if slices.Contains(v.eligible, e.pins[i]) {
			pins[i] = e.pins[i]
		}
	}
	v.target = allocation.Assign(allocation.Input{VIPs: vips, Eligible: v.eligible, Current: v.current,
		Pins: pins, Policy: e.cfg.Policy})
	return v
}

// peerQuorum tells whether a peer's heartbeat says it sees a quorum.
func (e *Engine) peerQuorum(hb Heartbeat) bool {
	n := 0
	for _, p := range hb.Hears {
		if slices.Contains(e.cfg.Nodes, p) {
			n++
		}
	}
	return n >= e.majority || (hb.Flags&FlagLockHeld != 0 && n >= e.half)
}

// NodeView is one node as this node sees it.
type NodeView struct {
	PNN      int
	This     bool
	Alive    bool
	Flags    NodeFlags
	Quorum   bool
	Eligible bool
	Proto    uint16
	// Skew says how the node's configuration differs from the majority's,
	// "" when it does not.
	Skew  string
	Holds int
	// Heard is when this node last heard from the peer (any heartbeat,
	// reply or release); 0 if never, and for this node.
	Heard Mono
}

// VIPView is one VIP as this node sees it.
type VIPView struct {
	Addr   netip.Addr
	Holder int
	Epoch  uint64
	Target int
	// State is this node's: idle, claiming, held, lapsed, releasing.
	State string
	// Deadline is when this node's data plane stops answering (held).
	Deadline Mono
	// Drainers are the nodes that still serve its old connections.
	Drainers []int
}

// Snapshot is the engine's state for status commands.
type Snapshot struct {
	Now           Mono
	Quorum        bool
	MajorityAlive bool
	Agreed        bool
	Nodes         []NodeView
	VIPs          []VIPView
	MACs          map[int][6]byte
	// Ifaces: each node's MACs on its interfaces that differ from its
	// MAC in MACs (Heartbeat.Ifaces); none from a node of protocol 1.
	Ifaces map[int][]IfaceMAC
}

// drainsOn tells whether peer p still serves vip's old connections: it
// said so in its heartbeats and is alive, or it announced a restart and
// has been away less than the grace. A restarting drainer's programs and
// sockets go on serving them (its pinned data plane answers steered
// packets with no daemon), so the holder must keep steering them to it
// and must not take it for dead: that reset every drained connection of
// a node reloaded during its drain (TestReloadVIPs).
func (e *Engine) drainsOn(p int, vip netip.Addr, v view) bool {
	pr, ok := e.peers[p]
	if !ok || !pr.draining[vip] {
		return false
	}
	return v.alive[p] || (pr.hb.Flags&FlagRestarting != 0 && e.now.Sub(pr.heard) < e.cfg.Timing.Grace)
}

// Snapshot returns the state for status commands.
func (e *Engine) Snapshot() Snapshot {
	v := e.view
	if v.current == nil {
		v = e.computeView(e.now)
	}
	sn := Snapshot{Now: e.now, Quorum: v.quorum, MajorityAlive: v.majorityAlive, Agreed: v.selfAgrees, MACs: map[int][6]byte{},
		Ifaces: map[int][]IfaceMAC{}}
	sn.MACs[e.cfg.Self], sn.Ifaces[e.cfg.Self] = e.mac(), e.ifaces()
	for _, p := range e.cfg.Nodes {
		nv := NodeView{PNN: p, This: p == e.cfg.Self, Alive: v.alive[p], Eligible: slices.Contains(v.eligible, p)}
		fp := e.cfg.Fingerprint
		if nv.This {
			nv.Flags, nv.Quorum, nv.Proto = e.localFlags(), v.quorum, ProtoVersion
		} else if pr, ok := e.peers[p]; ok {
			nv.Flags, nv.Quorum, nv.Proto = pr.hb.Flags, e.peerQuorum(pr.hb), pr.hb.Proto
			nv.Heard = pr.heard
			fp = pr.hb.Fingerprint
			sn.MACs[p], sn.Ifaces[p] = pr.hb.MAC, pr.hb.Ifaces
		}
		if (nv.Alive || nv.This) && v.hasAgreed && fp != v.agreed {
			nv.Skew = skew(fp, v.agreed)
		} else if nv.This && !v.hasAgreed && v.majorityAlive {
			nv.Skew = "no configuration is shared by a majority of the nodes"
		}
		for _, c := range v.current {
			if c == p {
				nv.Holds++
			}
		}
		sn.Nodes = append(sn.Nodes, nv)
	}
	for i, a := range e.cfg.VIPs {
		s := &e.slots[i]
		vv := VIPView{Addr: a.Addr, Holder: v.current[i], Target: v.target[i], State: s.state.String()}
		if vv.Holder == e.cfg.Self {
			vv.Epoch = s.epoch
		} else if p, ok := e.voter.Promise(a.Addr); ok && p.Holder == vv.Holder {
			vv.Epoch = p.Epoch
		}
		if s.state == held {
			vv.Deadline = s.deadline
			if s.deadline < e.now {
				vv.State = "lapsed"
			}
		}
		if s.draining {
			vv.Drainers = append(vv.Drainers, e.cfg.Self)
		}
		for _, p := range e.cfg.Nodes {
			if p != e.cfg.Self && e.drainsOn(p, a.Addr, v) {
				vv.Drainers = append(vv.Drainers, p)
			}
		}
		slices.Sort(vv.Drainers)
		sn.VIPs = append(sn.VIPs, vv)
	}
	slices.SortFunc(sn.Nodes, func(a, b NodeView) int { return cmp.Compare(a.PNN, b.PNN) })
	return sn
}

func skew(fp, agreed Fingerprint) string {
	var what []string
	if fp.Nodes != agreed.Nodes {
		what = append(what, "nodes file differs")
	}
	if fp.VIPs != agreed.VIPs {
		if fp.NVIPs != agreed.NVIPs {
			what = append(what, fmt.Sprintf("public addresses differ (%d VIPs, the majority has %d)", fp.NVIPs, agreed.NVIPs))
		} else {
			what = append(what, fmt.Sprintf("public addresses differ (same count, %d, other addresses or node lists)", fp.NVIPs))
		}
	}
	if len(what) == 0 {
		return ""
	}
	return strings.Join(what, "; ")
}

// ifaces is what heartbeats say of this node's interface MACs: the local
// inputs' entries with a valid name and a MAC of their own, at most
// MaxIfaces.
func (e *Engine) ifaces() []IfaceMAC {
	var out []IfaceMAC
	mac := e.mac()
	for _, f := range e.local.Ifaces {
		if len(out) == MaxIfaces {
			break
		}
		if f.Name == "" || len(f.Name) > maxIfaceName || f.MAC == mac || f.MAC == ([6]byte{}) {
			continue
		}
		out = append(out, f)
	}
	return out
}

// mac is where peers steer this node's drains: the local inputs' MAC, or
// the configured one.
func (e *Engine) mac() [6]byte {
	if e.local.MAC != ([6]byte{}) {
		return e.local.MAC
	}
	return e.cfg.MAC
}
