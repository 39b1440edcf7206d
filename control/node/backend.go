package node

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
)

// Node implements the admin API.
var _ admin.Backend = (*Node)(nil)

// Status is `fsha status`.
func (n *Node) Status(context.Context) (admin.Status, error) {
	n.mu.Lock()
	sn := n.snap
	st := admin.Status{Quorum: sn.Quorum, ThisPNN: n.cfg.Self, Policy: n.cfg.Policy.String(), Counters: map[string]uint64{}}
	for k, v := range n.counters {
		st.Counters[k] = v
	}
	bannedFor := time.Until(n.bannedUntil)
	stoppedOnly := n.stopped && !n.disabled
	n.mu.Unlock()
	if n.cfg.Lock != nil {
		st.Lock, st.LockHeld = n.cfg.Lock.Path(), n.cfg.Lock.Held()
	}
	st.QuorumReason = quorumReason(sn, n.cfg.Nodes, n.cfg.Lock != nil, st.LockHeld)
	_, healthWhy := n.health.State()
	if n.extra != nil {
		for k, v := range n.extra() {
			st.Counters[k] = v
		}
	}
	byPNN := map[int]ownership.NodeView{}
	for _, nv := range sn.Nodes {
		byPNN[nv.PNN] = nv
	}
	for _, nd := range n.cfg.Nodes {
		if nd.Deleted {
			continue
		}
		nv := byPNN[nd.PNN]
		ns := admin.NodeStatus{PNN: nd.PNN, Address: nd.Addr.String(), This: nd.PNN == n.cfg.Self,
			Quorum: nv.Quorum, VIPs: nv.Holds, Protocol: int(nv.Proto), Skew: nv.Skew}
		switch {
		case !nv.Alive && !ns.This:
			ns.State = admin.StateDisconnected
			if nv.Flags&ownership.FlagRestarting != 0 {
				ns.State = admin.StateRestarting
			}
		default:
			ns.State = stateName(nv.Flags)
			if nv.Skew != "" {
				ns.State = admin.StateUnhealthy
			}
			if ns.This && ns.State == admin.StateDisabled && stoppedOnly {
				ns.State = admin.StateStopped
			}
		}
		switch {
		case nv.Skew != "":
			ns.Reason = "its configuration differs from the majority's: it holds nothing"
		case ns.This:
			ns.Reason = localReason(ns.State, healthWhy, bannedFor)
		default:
			ns.Reason = peerReason(ns.State, nv, n.cfg.Timing.Lease)
		}
		st.Nodes = append(st.Nodes, ns)
	}
	return st, nil
}

func stateName(f ownership.NodeFlags) string {
	switch {
	case f&ownership.FlagRestarting != 0:
		return admin.StateRestarting
	case f&ownership.FlagStopping != 0:
		return admin.StateStopping
	case f&ownership.FlagBanned != 0:
		return admin.StateBanned
	case f&ownership.FlagDisabled != 0:
		return admin.StateDisabled
	case f&ownership.FlagHealthy == 0:
		return admin.StateUnhealthy
	case f&ownership.FlagStarting != 0:
		return admin.StateStarting
	}
	return admin.StateOK
}

// IPs is `fsha ip`.
func (n *Node) IPs(context.Context) ([]admin.IP, error) {
	n.mu.Lock()
	sn := n.snap
	n.mu.Unlock()
	out := make([]admin.IP, 0, len(n.cfg.VIPs))
	for i, a := range n.cfg.VIPs {
		ip := admin.IP{VIP: a.Prefix.String(), Iface: strings.Join(a.Interfaces, ","), PNN: allocation.None, State: "unassigned"}
		if i >= len(sn.VIPs) {
			out = append(out, ip)
			continue
		}
		v := sn.VIPs[i]
		if v.Holder != allocation.None {
			ip.PNN, ip.Owner, ip.State, ip.Epoch = v.Holder, n.cfg.Nodes[v.Holder].Addr.String(), "held", v.Epoch
		}
		if v.Target != allocation.None {
			ip.Target = n.cfg.Nodes[v.Target].Addr.String()
			if ip.PNN != v.Target {
				ip.State = "moving"
			}
		}
		if v.Holder == n.cfg.Self && v.Deadline != 0 {
			ip.LeaseLeft = v.Deadline.Sub(sn.Now)
			if v.State == "lapsed" {
				ip.State = "lapsed"
			}
		}
		for _, d := range v.Drainers {
			ip.DrainingFrom = n.cfg.Nodes[d].Addr.String()
		}
		if ip.DrainingFrom != "" && ip.State == "held" {
			ip.State = "draining"
		}
		out = append(out, ip)
	}
	// VIPs a reload removed that drain out here (retire.go)
	n.mu.Lock()
	retiring := slices.Clone(n.retiring)
	n.mu.Unlock()
	for _, vip := range retiring {
		out = append(out, admin.IP{VIP: netip.PrefixFrom(vip, vip.BitLen()).String(), Iface: "lo", PNN: n.cfg.Self,
			Owner: n.cfg.Nodes[n.cfg.Self].Addr.String(), State: "retiring"})
	}
	return out, nil
}

// Move pins a VIP to a node and tells every node.
func (n *Node) Move(_ context.Context, vip netip.Addr, node string, kill bool) error {
	idx := slices.IndexFunc(n.cfg.VIPs, func(a config.PublicAddress) bool { return a.VIP() == vip.Unmap() })
	if idx < 0 {
		return fmt.Errorf("%w: %s is not a public address", admin.ErrBadRequest, vip)
	}
	pnn, err := n.resolveNode(node)
	if err != nil {
		return err
	}
	if a := n.cfg.VIPs[idx]; len(a.Nodes) > 0 && !slices.ContainsFunc(a.Nodes, func(r config.NodeRef) bool { return r.Matches(n.cfg.Nodes[pnn]) }) {
		return fmt.Errorf("%w: %s may not be held by node %d (its node list in public_addresses)", admin.ErrBadRequest, vip, pnn)
	}
	n.mu.Lock()
	eligible := false
	for _, nv := range n.snap.Nodes {
		if nv.PNN == pnn && nv.Eligible {
			eligible = true
		}
	}
	if !eligible {
		n.mu.Unlock()
		return fmt.Errorf("%w: node %d cannot hold VIPs now (down, unhealthy, disabled, banned, starting or without quorum)", admin.ErrBadRequest, pnn)
	}
	n.pinClock++
	p := pin{PNN: pnn, Version: n.pinClock, Origin: n.cfg.Self, Kill: kill}
	n.pins[idx] = p
	n.mu.Unlock()
	msg := encodePinMsg(idx, p)
	n.gossip.Broadcast(msg)
	go n.gossip.SendAll(msg)
	n.log.Info("move requested", zap.Stringer("vip", vip), zap.Int("to", pnn), zap.Bool("kill", kill))
	n.pushPins()
	return nil
}

// resolveNode reads a node given as PNN or address.
func (n *Node) resolveNode(s string) (int, error) {
	if pnn, err := strconv.Atoi(s); err == nil {
		if pnn < 0 || pnn >= len(n.cfg.Nodes) || n.cfg.Nodes[pnn].Deleted {
			return 0, fmt.Errorf("%w: no node %d", admin.ErrBadRequest, pnn)
		}
		return pnn, nil
	}
	addr, err := netip.ParseAddr(s)
	if err != nil {
		return 0, fmt.Errorf("%w: node %q is neither a number nor an address", admin.ErrBadRequest, s)
	}
	for _, nd := range n.cfg.Nodes {
		if !nd.Deleted && nd.Addr == addr.Unmap() {
			return nd.PNN, nil
		}
	}
	return 0, fmt.Errorf("%w: %s is not in the nodes file", admin.ErrBadRequest, addr)
}

// Disable puts the node in maintenance: it hands its VIPs over (they
// drain) and takes none until Enable. The state survives a restart.
func (n *Node) Disable(context.Context) error { return n.setDisabled(true) }

// Enable ends maintenance.
func (n *Node) Enable(context.Context) error { return n.setDisabled(false) }

// OperatorStop holds the node out of the VIPs, as Disable does, until
// OperatorContinue or a restart of the daemon (`fsha stop`, `ctdb stop`:
// nothing is persisted).
func (n *Node) OperatorStop(context.Context) error { return n.setStopped(true) }

// OperatorContinue ends an OperatorStop; it says so when the node was not
// stopped.
func (n *Node) OperatorContinue(context.Context) error { return n.setStopped(false) }

func (n *Node) setStopped(on bool) error {
	n.mu.Lock()
	was := n.stopped
	n.stopped = on
	n.mu.Unlock()
	if !on && !was {
		return fmt.Errorf("%w: this node is not stopped (fsha enable ends a disable)", admin.ErrBadRequest)
	}
	n.log.Info("stopped by the operator", zap.Bool("stopped", on))
	n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetLocal(now, n.local()) })
	return nil
}

func (n *Node) setDisabled(on bool) error {
	n.mu.Lock()
	n.disabled = on
	err := n.saveStateLocked()
	n.mu.Unlock()
	n.log.Info("maintenance", zap.Bool("disabled", on))
	n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetLocal(now, n.local()) })
	return err
}

// Ban keeps the node out for d.
func (n *Node) Ban(_ context.Context, d time.Duration) error {
	if d <= 0 || d > admin.MaxBanSeconds*time.Second {
		return fmt.Errorf("%w: ban between 1 s and 24 h, not %v", admin.ErrBadRequest, d)
	}
	n.mu.Lock()
	n.bannedUntil = time.Now().Add(d)
	n.mu.Unlock()
	n.log.Info("banned", zap.Duration("for", d))
	update := func(e *ownership.Engine, now ownership.Mono) { e.SetLocal(now, n.local()) }
	n.command(update)
	// come back on our own when the ban ends
	time.AfterFunc(d, func() { n.command(update) })
	return nil
}

// Unban ends a ban now (`fsha unban`, `ctdb unban`).
func (n *Node) Unban(context.Context) error {
	n.mu.Lock()
	was := time.Now().Before(n.bannedUntil)
	n.bannedUntil = time.Time{}
	n.mu.Unlock()
	if !was {
		return fmt.Errorf("%w: this node is not banned", admin.ErrBadRequest)
	}
	n.log.Info("unbanned by the operator")
	n.command(func(e *ownership.Engine, now ownership.Mono) { e.SetLocal(now, n.local()) })
	return nil
}

// Tickle tickles every replicated connection to vip, which this node must
// hold: its clients reset and reconnect here.
func (n *Node) Tickle(ctx context.Context, vip netip.Addr) (admin.TickleResult, error) {
	idx := slices.IndexFunc(n.cfg.VIPs, func(a config.PublicAddress) bool { return a.VIP() == vip.Unmap() })
	if idx < 0 {
		return admin.TickleResult{}, fmt.Errorf("%w: %s is not a public address", admin.ErrBadRequest, vip)
	}
	held, iface := n.workers[idx].held()
	if !held {
		return admin.TickleResult{}, fmt.Errorf("%w: this node does not hold %s: run fsha tickle on its owner (fsha ip)", admin.ErrBadRequest, vip)
	}
	a := n.cfg.VIPs[idx]
	res, err := n.dp.TickleVIP(ctx, iface, a.VIP(), nil, false)
	return admin.TickleResult{VIP: a.Prefix.String(), Conns: res.Conns, Sent: res.Sent, FirstRound: res.FirstRound, Resets: res.Resets}, err
}

// Timeline is `fsha timeline`: the latest takeovers and releases.
func (n *Node) Timeline(context.Context) ([]admin.Takeover, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.timeline), nil
}

// SteerFor tells replication whether a connection of owner's to vip must be
// steered: this node holds vip and owner drains it.
func (n *Node) SteerFor(vip netip.Addr, owner int) bool {
	idx := slices.IndexFunc(n.cfg.VIPs, func(a config.PublicAddress) bool { return a.VIP() == vip.Unmap() })
	return idx >= 0 && n.steer.steered(idx, owner)
}
