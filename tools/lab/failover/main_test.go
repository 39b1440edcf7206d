// Package failover runs fsha clusters in a netns lab and checks what the
// clients see when a node fails or a VIP moves: after a power cut the
// clients of the dead node are reset at once (tickle ACKs) and reconnect;
// a planned move, a maintenance (disable) and an automatic failback drain
// the old connections (steered by the new owner to the old one) without
// dropping a single session; and a peer sending garbage on the
// replication port is refused and counted.
package failover

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
	dir, err := os.MkdirTemp("", "fsha-failover-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "failover: temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	fshaBin = filepath.Join(dir, "fsha")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// go test puts its own go first in PATH.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", fshaBin, "github.com/fsha/fsha/cmd/fsha")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "failover: build fsha: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}
