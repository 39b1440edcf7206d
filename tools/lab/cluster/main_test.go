// Package cluster runs fsha clusters in a netns lab with real smbd,
// nfs-ganesha, smbclient and libnfs: the OVD guide's failover test matrix
// on two nodes with a cluster lock, partitions, frozen and crashed nodes,
// a crashed daemon on a live node, and gossip keys.
package cluster

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// fshaBin is the fsha binary TestMain builds once for every test.
var fshaBin string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "fsha-cluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	fshaBin = filepath.Join(dir, "fsha")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// go test puts its own go first in PATH.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", fshaBin, "github.com/fsha/fsha/cmd/fsha")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "cluster: build fsha: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
