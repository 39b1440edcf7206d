package node

import (
	"fmt"
	"strings"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
)

// Why a node is in its state, for `fsha status` and the log: what an
// operator asks first when a node is not OK or the cluster has no quorum.
// Pure functions of what the node knows.

// localReason says why this node is in state (not OK): health's reasons
// (each failing link or check with what it said), the operator's disable,
// the ban's end.
func localReason(state string, healthWhy []string, bannedFor time.Duration) string {
	switch state {
	case admin.StateUnhealthy:
		if len(healthWhy) == 0 {
			return "health checks failing"
		}
		return strings.Join(healthWhy, "; ")
	case admin.StateDisabled:
		return "disabled by the operator (fsha enable undoes it; it survives restarts and reboots)"
	case admin.StateStopped:
		return "stopped by the operator (fsha continue, or a restart of fsha, undoes it)"
	case admin.StateBanned:
		return fmt.Sprintf("banned by the operator for %v more (fsha unban ends it)", bannedFor.Round(time.Second))
	case admin.StateStarting:
		return "just started: keeps what it holds, takes nothing new until its view of the cluster is fresh"
	case admin.StateStopping:
		return "stopping: hands its VIPs over"
	case admin.StateRestarting:
		return "restarting: keeps its VIPs for the restart grace"
	}
	return ""
}

// peerReason says why another node is in state (not OK), from what its
// heartbeats said; its own `fsha status` says more.
func peerReason(state string, nv ownership.NodeView, lease time.Duration) string {
	switch state {
	case admin.StateDisconnected:
		if nv.Flags&ownership.FlagStopping != 0 {
			return "stopped: it handed its VIPs over and left"
		}
		return fmt.Sprintf("no heartbeat from it for more than a lease (%v): down, cut off, or its fsha is not running", lease)
	case admin.StateRestarting:
		if !nv.Alive {
			return "its fsha restarts: it keeps its VIPs for the restart grace"
		}
		return "its fsha restarts"
	case admin.StateUnhealthy:
		return "its links or health checks fail (its fsha status says which)"
	case admin.StateDisabled:
		return "disabled by the operator"
	case admin.StateBanned:
		return "banned by the operator"
	case admin.StateStarting:
		return "just started"
	case admin.StateStopping:
		return "stopping: hands its VIPs over"
	}
	return ""
}

// quorumReason says what is missing for quorum ("" with quorum): how
// many nodes this node hears against the majority, which it does not, and
// the lock when there is one (half the nodes and the lock make quorum).
func quorumReason(sn ownership.Snapshot, nodes []config.Node, lock bool, lockHeld bool) string {
	if sn.Quorum {
		return ""
	}
	var missing []string
	total, heard := 0, 0
	byPNN := map[int]ownership.NodeView{}
	for _, nv := range sn.Nodes {
		byPNN[nv.PNN] = nv
	}
	for _, nd := range nodes {
		if nd.Deleted {
			continue
		}
		total++
		if nv, ok := byPNN[nd.PNN]; ok && (nv.Alive || nv.This) {
			heard++
		} else {
			missing = append(missing, nd.Addr.String())
		}
	}
	majority := total/2 + 1
	s := fmt.Sprintf("hears %d of %d nodes, a majority is %d", heard, total, majority)
	if len(missing) > 0 {
		s += "; not heard: " + strings.Join(missing, ", ")
	}
	if lock {
		half := (total + 1) / 2
		switch {
		case heard < half:
			s += fmt.Sprintf("; the cluster lock stands in for the others only with %d nodes heard", half)
		case !lockHeld:
			s += "; the cluster lock is held by another node or cannot be taken"
		default:
			s += "; the cluster lock is held, quorum through it comes once it has been held for two leases"
		}
	}
	return s
}

// lapseReason says, at a lease's lapse, when this node last heard each
// other node, from snapshot sn, at now: a lapse with every peer heard
// a moment ago points at this node (its loop or its CPU late), one with
// every peer long silent at the network or the peers.
func lapseReason(sn ownership.Snapshot, now ownership.Mono) string {
	var heard []string
	for _, nv := range sn.Nodes {
		if nv.This {
			continue
		}
		h := fmt.Sprintf("node %d never", nv.PNN)
		if nv.Heard != 0 {
			h = fmt.Sprintf("node %d %v ago", nv.PNN, time.Duration(now-nv.Heard).Round(time.Millisecond))
		}
		if nv.Flags&ownership.FlagRestarting != 0 {
			h += " (restarting)"
		}
		heard = append(heard, h)
	}
	why := "no renewal from a majority: the data plane stopped answering"
	if len(heard) > 0 {
		why += "; last heard: " + strings.Join(heard, ", ")
	}
	return why
}
