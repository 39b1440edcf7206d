//go:build longlab

package failover

import (
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// TestDrainOnSecondNetwork: a node's public interfaces on two networks,
// each at its own MAC: VIPs on eth0 (the nodes' own network) and one VIP
// on eth1, on a second bridge that only the nodes' and the clients' eth1
// join (a client VLAN beside the nodes' own). The node's MAC in its
// heartbeats is eth0's, which the second network does not have. A
// drained move of the eth1 VIP under a raw SMB and a raw NFS session: the
// new holder must steer the old connections to the old holder's eth1
// MAC, which the heartbeats carry per interface; to the node MAC they
// would be lost on the second bridge, the sessions would stall and the
// drain watch would reset them. Oracles: the sessions' own errors and
// gaps (after the move only the steering reaches the old holder, which
// holds their sockets), and no RST on a capture on the client's eth1 that
// lost no frame. (The old holder's receive counters cannot tell: the
// second bridge floods a frame for an unknown MAC to every port.)
//
// In make chaos only: TestDrainOnBareSecondNetwork, in make test, fails
// without the interface MACs as well (its node MAC is eth0's too).
func TestDrainOnSecondNetwork(t *testing.T) {
	drainOnSecondNetwork(t, lab.Options{}, lab.ClusterOptions{Nodes: 3, SecondNet: true})
}
