//go:build longlab

package cluster

import (
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestCTDBKeepalivesWithoutKick is TestCTDBClusteredSmbd's control run:
// without fsha's kick (--ctdb-port 0) the survivors' ctdbd must find the
// dead node by their own keepalives, no sooner than ctdbOwnDetection, or
// that bound proves nothing about the kick. It waits for CTDB's ~30 s
// detection, so it runs in make chaos (build tag longlab), not make test.
func TestCTDBKeepalivesWithoutKick(t *testing.T) {
	testCTDBClusteredSmbd(t, []string{"--ctdb-port", "0"}, false, false)
}

// TestCTDBLeaderDeath cuts the power of CTDB's leader with fsha's
// election kick and without it (--ctdb-election=false: the survivors
// wait CTDB's leader timeout, 5 s by default, before they elect),
// FSHA_LAB_ITERATIONS times each (1 by default), a node coming back
// between cuts, and logs the times from the cut to the first good read
// through the leader's VIP and to the survivors' ctdbd naming a new
// leader (cutCTDBLeader judges how the leader came, not how fast).
func TestCTDBLeaderDeath(t *testing.T) {
	for _, tc := range []struct {
		name     string
		election bool
	}{{"election", true}, {"no-election", false}} {
		t.Run(tc.name, func(t *testing.T) {
			var args []string
			if !tc.election {
				args = []string{"--ctdb-election=false"}
			}
			n := iterations(1)
			e := newEnvWithin(t, lab.ClusterOptions{CTDB: true, FshaArgs: args}, ctdbBudget+time.Duration(n)*time.Minute)
			e.waitConverged(e.c.Nodes...)
			var cuts []leaderCut
			for i := range n {
				if i > 0 {
					victim := cuts[i-1].victim
					e.powerUp(victim)
					if err := e.c.WaitCTDB(e.ctx, lab.CTDBStartTimeout); err != nil {
						t.Fatal(err)
					}
					e.waitConverged(e.c.Nodes...)
				}
				cuts = append(cuts, e.cutCTDBLeader(tc.election))
			}
			for i, c := range cuts {
				t.Logf("cut %d: read after %s, new leader named after %s (took the lock after %s)", i+1, ms(c.read), ms(c.reported), ms(c.tookLock))
			}
		})
	}
}
