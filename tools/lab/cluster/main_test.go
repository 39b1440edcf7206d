// Package cluster runs fsha clusters in a netns lab with real smbd,
// nfs-ganesha, smbclient and libnfs: the OVD guide's failover test matrix
// on two nodes with a cluster lock, partitions, frozen and crashed nodes,
// a crashed daemon on a live node, and gossip keys.
package cluster

import (
	"os"
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// fshaBin is the fsha binary TestMain builds once for every test.
var fshaBin string

func TestMain(m *testing.M) {
	os.Exit(lab.RunWithFsha(m, "cluster", &fshaBin))
}
