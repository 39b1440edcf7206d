package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// RunWithFsha is the TestMain of the lab test packages: it builds the fsha
// binary once into a temporary directory, stores its path in *bin, runs
// the tests and removes the binary. name prefixes its messages.
func RunWithFsha(m *testing.M, name string, bin *string) int {
	dir, err := os.MkdirTemp("", "fsha-"+name+"-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, name+": temp dir:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	*bin = filepath.Join(dir, "fsha")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// go test puts its own go first in PATH.
	cmd := exec.CommandContext(ctx, "go", "build", "-o", *bin, "github.com/fsha/fsha/cmd/fsha")
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "%s: build fsha: %v\n%s", name, err, out)
		return 1
	}
	return m.Run()
}
