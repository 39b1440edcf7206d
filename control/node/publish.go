package node

// What the loop tells the rest of the node after each step: the snapshot
// for the admin API, the live peers for replication and steering, quorum
// changes and dead peers for the log and CTDB; and the rejoin of missing
// nodes.

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/logs"
	"github.com/fsha/fsha/control/ownership"
)

// publish makes a snapshot the state the admin API shows, and tells
// replication and steering what changed.
func (n *Node) publish(sn ownership.Snapshot) {
	alive := map[int]bool{}
	for _, nv := range sn.Nodes {
		if nv.Alive && !nv.This {
			alive[nv.PNN] = true
		}
	}
	n.mu.Lock()
	n.snap = sn
	changed := !mapsEqual(alive, n.alive)
	joined := false
	for p := range alive {
		if !n.alive[p] {
			joined = true
		}
	}
	n.alive = alive
	n.mu.Unlock()
	if joined {
		// A node (re)joined, maybe across a healed partition: clients on
		// its side may still have our VIPs at another MAC. Announce again.
		for _, w := range n.workers {
			w.enqueue(job{announce: true})
		}
	}
	if changed && n.onAlive != nil {
		peers := map[int]netip.Addr{}
		for pnn := range alive {
			peers[pnn] = n.cfg.Nodes[pnn].Addr
		}
		go n.onAlive(peers)
	}
	n.steer.update(sn)
	n.logQuorum(sn)
	for _, pnn := range n.deaths.update(sn) {
		addr := n.cfg.Nodes[pnn].Addr
		n.count("peers_judged_dead")
		n.log.Warn("peer judged dead: unheard for a lease without a word of a stop, or not back from a restart within the grace",
			zap.Int("pnn", pnn), zap.Stringer("address", addr), logs.EveryTime())
		if n.cfg.PeerDead != nil {
			go n.cfg.PeerDead(pnn, addr)
		}
	}
}

// logQuorum logs each change of quorum with what is missing for it: a
// node without quorum holds nothing, and the operator must learn why.
func (n *Node) logQuorum(sn ownership.Snapshot) {
	if n.quorumSaid && sn.Quorum == n.quorum {
		return
	}
	if sn.Quorum {
		n.log.Info("quorum")
	} else {
		held := n.cfg.Lock != nil && n.cfg.Lock.Held()
		why := quorumReason(sn, n.cfg.Nodes, n.cfg.Lock != nil, held)
		if n.quorumSaid {
			n.log.Warn("quorum lost: the VIPs held here lapse at their deadlines", zap.String("why", why), logs.EveryTime())
		} else {
			n.log.Info("no quorum yet", zap.String("why", why))
		}
	}
	n.quorum, n.quorumSaid = sn.Quorum, true
}

func mapsEqual(a, b map[int]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func (n *Node) rejoinLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.Rejoin)
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

// lapseReason says why a lease lapsed, from the latest snapshot.
func (n *Node) lapseReason() string {
	n.mu.Lock()
	sn := n.snap
	n.mu.Unlock()
	return lapseReason(sn, monoNow())
}
