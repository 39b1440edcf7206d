//go:build longlab

package cluster

import (
	"testing"
	"time"
)

// TestGlusterDeadNodeLocksWithoutKick is TestGlusterDeadNodeLocks's
// control run: without fsha's kick on GlusterFS's ports
// (--dead-peer-ports "") the dead node's lock must still be held
// deadLockRelease after the cut, or that bound proves nothing about the
// kick. It then waits, up to two minutes, to log when GlusterFS itself
// gives the lock up (its bricks' TCP keepalive), so it runs in make chaos
// (build tag longlab), not make test.
func TestGlusterDeadNodeLocksWithoutKick(t *testing.T) {
	if took := testGlusterDeadNodeLocks(t, []string{"--dead-peer-ports", ""}, 2*time.Minute); took >= 0 && took < deadLockRelease {
		t.Fatalf("without the kick the dead node's lock was free %v after its power cut: deadLockRelease proves nothing", took)
	}
}
