package main

import (
	"context"
	"net/netip"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/ctdbclient"
	"github.com/fsha/fsha/dataplane"
)

// ctdbPort is CTDB's default port: ctdbd on every node connects to every
// other node's ctdbd there.
const ctdbPort = 4379

// ctdbElectTimeout bounds the asks of the local ctdbd and the broadcast
// after a death (each a round trip on a unix socket).
const ctdbElectTimeout = 2 * time.Second

// glusterPorts is GlusterFS's: glusterd's 24007, and the bricks', which
// glusterd picks at random between its base-port and max-port (49152 and
// 60999 by default). The range overlaps Linux's ephemeral ports (32768 to
// 60999), which is why a connection counts by its service's end only
// (dataplane.KillPeerPorts): the peer's ssh session from its port 50000
// stays.
const glusterPorts = "24007,49152-60999"

// peerKick is what the node does when it judges a peer dead: end this
// node's TCP connections with that peer on ports, so that the cluster
// services on them see the peer gone now instead of after their own
// keepalives. ctdbd's (--ctdb-port): CTDB marks the peer disconnected
// and recovers its databases at once rather than after
// KeepaliveInterval x KeepaliveLimit (25 s by default), while smbd waits
// on them. GlusterFS's (--dead-peer-ports): a surviving brick drops the
// dead node's client and the locks it held (CTDB's cluster lock among
// them: no new CTDB leader can take it before) instead of keeping them
// until its TCP keepalive gives the client up (about 40 s on GlusterFS's
// defaults), and a surviving client stops waiting on the dead node's
// brick (the volume's ping timeout, 42 s by default).
//
// When the peer was CTDB's leader, CTDB would still wait its `leader
// timeout` (5 s by default) for the dead leader's broadcasts before
// electing another: with watch, the node then sends CTDB's own "unknown
// leader" broadcast through the local ctdbd, and the survivors elect at
// once (ctdbclient.ElectIfLeader). Without ctdbd there is no connection
// to end and no leader known, and nothing is done.
type peerKick struct {
	log   *zap.Logger
	ports dataplane.PortSet
	// watch follows CTDB's leader; nil: no election
	watch *ctdbclient.LeaderWatch
}

// newPeerKick returns the kick of ctdbPort (0: none) and the other
// services' ports, nil if there is neither; elect: with CTDB's election,
// through ctdbd's client socket.
func newPeerKick(log *zap.Logger, ctdbPort uint16, others dataplane.PortSet, elect bool, socket string) *peerKick {
	var ports dataplane.PortSet
	if ctdbPort != 0 {
		ports = append(ports, dataplane.PortRange{First: ctdbPort, Last: ctdbPort})
	}
	ports = append(ports, others...)
	if len(ports) == 0 {
		return nil
	}
	k := &peerKick{log: log.Named("peer-kick"), ports: ports}
	if elect && ctdbPort != 0 {
		k.watch = ctdbclient.NewLeaderWatch(k.log, socket)
	}
	return k
}

// run follows CTDB's leader until ctx ends (nothing to do without the
// election).
func (k *peerKick) run(ctx context.Context) {
	if k != nil && k.watch != nil {
		k.watch.Run(ctx)
	}
}

// peerDead is node.Config.PeerDead: nil without a kick.
func (k *peerKick) peerDead() func(pnn int, addr netip.Addr) {
	if k == nil {
		return nil
	}
	return k.kill
}

func (k *peerKick) kill(pnn int, addr netip.Addr) {
	log := k.log.With(zap.Int("pnn", pnn), zap.Stringer("peer", addr), zap.Stringer("ports", k.ports))
	st, err := dataplane.KillPeerPorts(k.log, addr, k.ports)
	if err != nil {
		log.Warn("ending the dead peer's connections failed: its cluster services (ctdbd, GlusterFS) find out by their keepalives",
			zap.Error(err))
	} else {
		log.Info("ended the dead peer's connections: its cluster services (ctdbd, GlusterFS) see it disconnected now",
			zap.Int("connections", st.Conns), zap.Int("destroyed", st.Destroyed),
			zap.Int("reset", st.Reset), zap.Int("errors", st.Errors))
	}
	// after the connections: the survivors' ctdbd should see the
	// leader gone before they elect
	if k.watch != nil {
		k.elect(log, pnn, addr)
	}
}

func (k *peerKick) elect(log *zap.Logger, pnn int, addr netip.Addr) {
	ctx, cancel := context.WithTimeout(context.Background(), ctdbElectTimeout)
	defer cancel()
	start := time.Now()
	e, err := k.watch.ElectIfLeader(ctx, addr)
	fields := []zap.Field{zap.String("socket", k.watch.Path()), zap.Duration("took", time.Since(start))}
	if e.LeaderKnown {
		fields = append(fields, zap.Uint32("ctdb_leader", e.Leader), zap.Duration("leader_heard_ago", start.Sub(e.Heard)))
	}
	if e.Mapped {
		fields = append(fields, zap.Uint32("ctdb_pnn", e.DeadPNN), zap.Uint32("ctdb_flags", e.DeadFlags))
		if int(e.DeadPNN) != pnn {
			log.Warn("fsha's nodes file and CTDB's number the dead peer differently: check that they are the same file",
				zap.Uint32("ctdb_pnn", e.DeadPNN))
		}
	}
	switch {
	case err != nil:
		log.Warn("could not ask CTDB to elect a new leader now: if the peer led CTDB, it elects after its leader timeout",
			append(fields, zap.Error(err))...)
	case e.Sent:
		log.Info("the dead peer was CTDB's leader: asked the survivors' CTDB to elect a new one now",
			append(fields, zap.String("cluster_lock", e.Lock))...)
	default:
		log.Info("no CTDB election asked", append(fields, zap.String("reason", e.Why))...)
	}
}
