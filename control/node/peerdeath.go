package node

import (
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// Telling the node's other cluster services that a peer died. CTDB, which
// the file servers keep for Samba's clustered databases, learns that a
// node died from its own keepalives (25 s by default) unless the TCP
// connection to it fails first; until it knows, it does not recover the
// databases, and smbd on the survivors waits: the share stays unreadable
// long after fsha moved the VIP (docs/ctdb-lab/RESULTS.md). So once fsha
// judges a peer dead, the node ends its connections to that peer's ctdbd
// (Config.PeerDead), and CTDB recovers at once.
//
// Dead means gone without a word: a restart announces itself (the peer's
// ctdbd goes on) and is dead only once the restart grace has passed
// without it; a stop announces itself too (the node hands its VIPs over;
// whether ctdbd stops with it is the operator's business, and its own
// keepalives see to it) and is never judged dead here. A peer this node
// never heard in this run is not judged either: nothing is known of it.
// A false judgement costs a CTDB recovery (a second or two of frozen
// databases), so the rule is the one fsha's takeover follows: the peer
// was unheard for a whole lease, by a node that has quorum. A node that
// hears no majority (nor holds the cluster lock) is more likely the one
// cut off, or stalled, than its peers all dead: it judges nobody until it
// has quorum again, and then judges the peers still gone. Its own VIPs
// lapse meanwhile; the CTDB connections between the others are not its
// to end.

// peerWatch is what peerDeaths remembers of one peer.
type peerWatch struct {
	heard     bool // seen alive in this run
	gone      bool // not alive since goneSince
	goneSince ownership.Mono
	judged    bool // declared dead; again only after it comes back
}

// peerDeaths judges, snapshot after snapshot, which peers died.
type peerDeaths struct {
	grace time.Duration // how long a restarting peer may be away
	peers map[int]*peerWatch
}

func newPeerDeaths(grace time.Duration) *peerDeaths {
	return &peerDeaths{grace: grace, peers: map[int]*peerWatch{}}
}

// update takes a snapshot and returns the peers (PNNs) that died since the
// last one, each once per death.
func (d *peerDeaths) update(sn ownership.Snapshot) []int {
	var dead []int
	for _, nv := range sn.Nodes {
		if nv.This {
			continue
		}
		w := d.peers[nv.PNN]
		if w == nil {
			w = &peerWatch{}
			d.peers[nv.PNN] = w
		}
		if nv.Alive {
			*w = peerWatch{heard: true}
			continue
		}
		if !w.heard || w.judged {
			continue
		}
		if !w.gone {
			w.gone, w.goneSince = true, sn.Now
		}
		if !sn.Quorum {
			continue // judged, if still gone, once this node has quorum
		}
		// nv.Flags are those of its last heartbeat
		switch {
		case nv.Flags&ownership.FlagStopping != 0:
			continue // handed its VIPs over and left
		case nv.Flags&ownership.FlagRestarting != 0 && sn.Now.Sub(w.goneSince) < d.grace:
			continue // may come back within the grace
		}
		w.judged = true
		dead = append(dead, nv.PNN)
	}
	return dead
}
