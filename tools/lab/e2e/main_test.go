// Package e2e runs the real fsha binary in a netns lab: tracking of real
// TCP connections to a VIP, restarts, floods and real SMB and NFS clients.
package e2e

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
	dir, err := os.MkdirTemp("", "fsha-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	fshaBin = filepath.Join(dir, "fsha")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// go test puts its own go first in PATH.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", fshaBin, "github.com/fsha/fsha/cmd/fsha")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: build fsha: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
