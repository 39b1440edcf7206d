package node

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
)

func threeNodes() []config.Node {
	var out []config.Node
	for i, a := range []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"} {
		out = append(out, config.Node{PNN: i, Addr: netip.MustParseAddr(a)})
	}
	return out
}

func TestQuorumReason(t *testing.T) {
	views := func(alive ...bool) []ownership.NodeView {
		out := []ownership.NodeView{{PNN: 0, This: true, Alive: true}}
		for i, a := range alive {
			out = append(out, ownership.NodeView{PNN: i + 1, Alive: a})
		}
		return out
	}
	for _, tc := range []struct {
		name           string
		sn             ownership.Snapshot
		lock, lockHeld bool
		want           string
	}{
		{"quorum: nothing to say", ownership.Snapshot{Quorum: true, Nodes: views(true, false)}, false, false, ""},
		{"alone of three", ownership.Snapshot{Nodes: views(false, false)}, false, false,
			"hears 1 of 3 nodes, a majority is 2; not heard: 198.18.0.2, 198.18.0.3"},
		{"alone of three, with a lock", ownership.Snapshot{Nodes: views(false, false)}, true, false,
			"hears 1 of 3 nodes, a majority is 2; not heard: 198.18.0.2, 198.18.0.3; the cluster lock stands in for the others only with 2 nodes heard"},
	} {
		if got := quorumReason(tc.sn, threeNodes(), tc.lock, tc.lockHeld); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	two := threeNodes()[:2]
	sn := ownership.Snapshot{Nodes: []ownership.NodeView{{PNN: 0, This: true, Alive: true}, {PNN: 1}}}
	if got := quorumReason(sn, two, true, false); !strings.HasSuffix(got, "the cluster lock is held by another node or cannot be taken") {
		t.Errorf("two nodes, lock not held: %q", got)
	}
	if got := quorumReason(sn, two, true, true); !strings.Contains(got, "the cluster lock is held, quorum through it comes once") {
		t.Errorf("two nodes, lock held: %q", got)
	}
}

func TestNodeReasons(t *testing.T) {
	if got := localReason(admin.StateUnhealthy, []string{"no link on eth0", "tcp:198.18.0.1:445 failing (2 runs in a row): connection refused"}, 0); got != "no link on eth0; tcp:198.18.0.1:445 failing (2 runs in a row): connection refused" {
		t.Errorf("unhealthy: %q", got)
	}
	if got := localReason(admin.StateBanned, nil, 90*time.Second+300*time.Millisecond); !strings.Contains(got, "for 1m30s more") {
		t.Errorf("banned: %q", got)
	}
	if got := localReason(admin.StateOK, nil, 0); got != "" {
		t.Errorf("OK: %q, want nothing", got)
	}
	gone := ownership.NodeView{PNN: 1}
	if got := peerReason(admin.StateDisconnected, gone, 250*time.Millisecond); !strings.Contains(got, "no heartbeat from it for more than a lease (250ms)") {
		t.Errorf("disconnected: %q", got)
	}
	gone.Flags = ownership.FlagStopping
	if got := peerReason(admin.StateDisconnected, gone, 250*time.Millisecond); !strings.HasPrefix(got, "stopped") {
		t.Errorf("stopped: %q", got)
	}
}

func TestLapseReason(t *testing.T) {
	now := ownership.Mono(10 * time.Second)
	sn := ownership.Snapshot{Nodes: []ownership.NodeView{
		{PNN: 0, This: true},
		{PNN: 1, Heard: now - ownership.Mono(32*time.Millisecond)},
		{PNN: 2, Heard: now - ownership.Mono(287*time.Millisecond), Flags: ownership.FlagRestarting},
		{PNN: 3},
	}}
	got := lapseReason(sn, now)
	want := "no renewal from a majority: the data plane stopped answering; last heard: node 1 32ms ago, node 2 287ms ago (restarting), node 3 never"
	if got != want {
		t.Errorf("lapseReason = %q\nwant %q", got, want)
	}
	if got := lapseReason(ownership.Snapshot{Nodes: []ownership.NodeView{{PNN: 0, This: true}}}, now); got != "no renewal from a majority: the data plane stopped answering" {
		t.Errorf("one node: %q", got)
	}
}
