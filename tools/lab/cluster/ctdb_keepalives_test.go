//go:build longlab

package cluster

import "testing"

// TestCTDBKeepalivesWithoutKick is TestCTDBClusteredSmbd's control run:
// without fsha's kick (--ctdb-port 0) the survivors' ctdbd must find the
// dead node by their own keepalives, no sooner than ctdbOwnDetection, or
// that bound proves nothing about the kick. It waits for CTDB's ~30 s
// detection, so it runs in make chaos (build tag longlab), not make test.
func TestCTDBKeepalivesWithoutKick(t *testing.T) {
	testCTDBClusteredSmbd(t, []string{"--ctdb-port", "0"}, false)
}
