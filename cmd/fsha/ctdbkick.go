package main

import (
	"net/netip"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

// ctdbPort is CTDB's default port: ctdbd on every node connects to every
// other node's ctdbd there.
const ctdbPort = 4379

// kickCTDB returns what the node does when it judges a peer dead: end
// this node's TCP connections with that peer on port (ctdbd's), so that
// CTDB marks the peer disconnected and recovers its databases now instead
// of after its keepalives (KeepaliveInterval x KeepaliveLimit, 25 s by
// default), while smbd waits on them. Port 0: nothing. Without ctdbd
// there is no such connection and nothing is ended.
func kickCTDB(log *zap.Logger, port uint16) func(pnn int, addr netip.Addr) {
	if port == 0 {
		return nil
	}
	log = log.Named("ctdb-kick")
	return func(pnn int, addr netip.Addr) {
		st, err := dataplane.KillPeerPort(log, addr, port)
		if err != nil {
			log.Warn("ending the dead peer's ctdbd connections failed: CTDB finds out by its keepalives",
				zap.Int("pnn", pnn), zap.Stringer("peer", addr), zap.Uint16("port", port), zap.Error(err))
			return
		}
		log.Info("ended the dead peer's ctdbd connections: CTDB sees it disconnected now",
			zap.Int("pnn", pnn), zap.Stringer("peer", addr), zap.Uint16("port", port), zap.Int("connections", st.Conns), zap.Int("destroyed", st.Destroyed),
			zap.Int("reset", st.Reset), zap.Int("errors", st.Errors))
	}
}
