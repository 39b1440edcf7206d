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

// ctdbKick is what the node does when it judges a peer dead: end this
// node's TCP connections with that peer on port (ctdbd's), so that CTDB
// marks the peer disconnected and recovers its databases now instead of
// after its keepalives (KeepaliveInterval x KeepaliveLimit, 25 s by
// default), while smbd waits on them. When the peer was CTDB's leader,
// CTDB would still wait its `leader timeout` (5 s by default) for the
// dead leader's broadcasts before electing another: with watch, the
// node then sends CTDB's own "unknown leader" broadcast through the
// local ctdbd, and the survivors elect at once (ctdbclient.ElectIfLeader).
// Without ctdbd there is no connection to end and no leader known, and
// nothing is done.
type ctdbKick struct {
	log  *zap.Logger
	port uint16
	// watch follows CTDB's leader; nil: no election
	watch *ctdbclient.LeaderWatch
}

// newCTDBKick returns the kick; port 0: none (nil); elect: with the
// election, through ctdbd's client socket.
func newCTDBKick(log *zap.Logger, port uint16, elect bool, socket string) *ctdbKick {
	if port == 0 {
		return nil
	}
	k := &ctdbKick{log: log.Named("ctdb-kick"), port: port}
	if elect {
		k.watch = ctdbclient.NewLeaderWatch(k.log, socket)
	}
	return k
}

// run follows CTDB's leader until ctx ends (nothing to do without the
// election).
func (k *ctdbKick) run(ctx context.Context) {
	if k != nil && k.watch != nil {
		k.watch.Run(ctx)
	}
}

// peerDead is node.Config.PeerDead: nil without a kick.
func (k *ctdbKick) peerDead() func(pnn int, addr netip.Addr) {
	if k == nil {
		return nil
	}
	return k.kill
}

func (k *ctdbKick) kill(pnn int, addr netip.Addr) {
	log := k.log.With(zap.Int("pnn", pnn), zap.Stringer("peer", addr))
	st, err := dataplane.KillPeerPort(k.log, addr, k.port)
	if err != nil {
		log.Warn("ending the dead peer's ctdbd connections failed: CTDB finds out by its keepalives",
			zap.Uint16("port", k.port), zap.Error(err))
	} else {
		log.Info("ended the dead peer's ctdbd connections: CTDB sees it disconnected now",
			zap.Uint16("port", k.port), zap.Int("connections", st.Conns), zap.Int("destroyed", st.Destroyed),
			zap.Int("reset", st.Reset), zap.Int("errors", st.Errors))
	}
	// after the connections: the survivors' ctdbd should see the
	// leader gone before they elect
	if k.watch != nil {
		k.elect(log, pnn, addr)
	}
}

func (k *ctdbKick) elect(log *zap.Logger, pnn int, addr netip.Addr) {
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
