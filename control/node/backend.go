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
	"github.com/fsha/fsha/control/membership"
)

// Node implements the admin API.
var _ admin.Backend = (*Node)(nil)

// Status is `fsha status`.
func (n *Node) Status(context.Context) (admin.Status, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := n.view
	st := admin.Status{Quorum: v.quorum, ThisPNN: n.cfg.Self, Policy: n.cfg.Policy.String()}
	if n.cfg.Lock != nil {
		st.Lock, st.LockHeld = n.cfg.Lock.Path(), n.cfg.Lock.Held()
	}
	st.Counters = map[string]uint64{"gossip_bad_messages": n.badMessages}
	if n.counters != nil {
		for k, v := range n.counters() {
			st.Counters[k] = v
		}
	}
	for _, nd := range n.cfg.Nodes {
		if nd.Deleted {
			continue
		}
		ns := admin.NodeStatus{PNN: nd.PNN, Address: nd.Addr.String(), This: nd.PNN == n.cfg.Self}
		if ns.This {
			ns.State = n.stateName(n.localMetaLocked().Flags)
			ns.Quorum = v.quorum
		} else if m, ok := v.alive[nd.PNN]; ok {
			ns.State = n.stateName(m.Meta.Flags)
			ns.Quorum = m.Meta.Flags&membership.FlagQuorum != 0
			if m.MetaErr != nil || m.Meta.ConfigHash != n.hash {
				ns.State = admin.StateUnhealthy
			}
		} else {
			ns.State = admin.StateDisconnected
		}
		for _, holder := range v.current {
			if holder == nd.PNN {
				ns.VIPs++
			}
		}
		st.Nodes = append(st.Nodes, ns)
	}
	return st, nil
}

func (n *Node) stateName(f membership.Flags) string {
	switch {
	case f&membership.FlagBanned != 0:
		return admin.StateBanned
	case f&membership.FlagDisabled != 0:
		return admin.StateDisabled
	case f&membership.FlagHealthy == 0:
		return admin.StateUnhealthy
	}
	return admin.StateOK
}

// IPs is `fsha ip`.
func (n *Node) IPs(context.Context) ([]admin.IP, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	v := n.view
	out := make([]admin.IP, 0, len(n.cfg.VIPs))
	for i, a := range n.cfg.VIPs {
		ip := admin.IP{VIP: a.Prefix.String(), Iface: strings.Join(a.Interfaces, ","), PNN: allocation.None, State: "unassigned"}
		if v.current != nil && v.current[i] != allocation.None {
			ip.PNN = v.current[i]
			ip.Owner = n.cfg.Nodes[ip.PNN].Addr.String()
			ip.State = "held"
		}
		if v.target != nil && v.target[i] != allocation.None {
			ip.Target = n.cfg.Nodes[v.target[i]].Addr.String()
			if ip.PNN != v.target[i] {
				ip.State = "moving"
			}
		}
		if n.draining[i].active {
			ip.DrainingFrom = n.cfg.Nodes[n.cfg.Self].Addr.String()
		}
		for pnn := range v.alive {
			if n.peerDrains(pnn, i) {
				ip.DrainingFrom = n.cfg.Nodes[pnn].Addr.String()
			}
		}
		if ip.DrainingFrom != "" {
			ip.State = "draining"
		}
		out = append(out, ip)
	}
	return out, nil
}

// Move pins a VIP to a node and tells every node.
func (n *Node) Move(_ context.Context, vip netip.Addr, node string, kill bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
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
	if !slices.Contains(n.view.eligible, pnn) {
		return fmt.Errorf("%w: node %d cannot hold VIPs now (down, unhealthy, disabled, banned or without quorum)", admin.ErrBadRequest, pnn)
	}
	n.pinClock++
	p := pin{PNN: pnn, Version: n.pinClock, Origin: n.cfg.Self, Kill: kill}
	n.pins[idx] = p
	msg := encodePinMsg(idx, p)
	n.gossip.Broadcast(msg)
	go n.gossip.SendAll(msg)
	n.log.Info("move requested", zap.Stringer("vip", vip), zap.Int("to", pnn), zap.Bool("kill", kill))
	n.poke()
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

// Disable puts the node in maintenance: it releases its VIPs and takes none
// until Enable. The state survives a restart.
func (n *Node) Disable(context.Context) error { return n.setDisabled(true) }

// Enable ends maintenance.
func (n *Node) Enable(context.Context) error { return n.setDisabled(false) }

func (n *Node) setDisabled(on bool) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.disabled = on
	n.metaDirty = true
	n.poke()
	n.log.Info("maintenance", zap.Bool("disabled", on))
	return n.saveStateLocked()
}

// Ban keeps the node out for d.
func (n *Node) Ban(_ context.Context, d time.Duration) error {
	if d <= 0 || d > 24*time.Hour {
		return fmt.Errorf("%w: ban between 1 s and 24 h, not %v", admin.ErrBadRequest, d)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.bannedUntil = time.Now().Add(d)
	n.metaDirty = true
	n.poke()
	n.log.Info("banned", zap.Duration("for", d))
	// wake up when the ban ends, so the node comes back on its own
	time.AfterFunc(d, func() {
		n.mu.Lock()
		n.metaDirty = true
		n.mu.Unlock()
		n.poke()
	})
	return nil
}

// Tickle tickles every replicated connection to vip, which this node must
// hold: its clients reset and reconnect here.
func (n *Node) Tickle(ctx context.Context, vip netip.Addr) (admin.TickleResult, error) {
	n.mu.Lock()
	idx := slices.IndexFunc(n.cfg.VIPs, func(a config.PublicAddress) bool { return a.VIP() == vip.Unmap() })
	if idx < 0 {
		n.mu.Unlock()
		return admin.TickleResult{}, fmt.Errorf("%w: %s is not a public address", admin.ErrBadRequest, vip)
	}
	if !n.held[idx] {
		n.mu.Unlock()
		return admin.TickleResult{}, fmt.Errorf("%w: this node does not hold %s: run fsha tickle on its owner (fsha ip)", admin.ErrBadRequest, vip)
	}
	a := n.cfg.VIPs[idx]
	iface := n.pickInterface(a)
	n.mu.Unlock()
	res, err := n.dp.TickleVIP(ctx, iface, a.VIP(), nil, false)
	return admin.TickleResult{VIP: a.Prefix.String(), Conns: res.Conns, Sent: res.Sent, FirstRound: res.FirstRound, Resets: res.Resets}, err
}

// Timeline is `fsha timeline`: the latest takeovers and releases.
func (n *Node) Timeline(context.Context) ([]admin.Takeover, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.timeline), nil
}
