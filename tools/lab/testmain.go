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
// the tests and removes the binary. name prefixes its messages. At the
// end it prints the package's false failovers ("false failovers: N in M
// tests", see Failovers) and writes them to
// $FSHA_LAB_REPORT_DIR/false-failovers-<name>.txt (by default in
// /run/fsha-lab), for `make test` to print: go test shows nothing of a
// package that passes.
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
	code := m.Run()
	sum := tally.summary()
	fmt.Printf("%s: %s", name, sum)
	if err := writeSummary(name, sum); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	return code
}

func writeSummary(name, sum string) error {
	dir := os.Getenv("FSHA_LAB_REPORT_DIR")
	if dir == "" {
		dir = ownersDir
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write the failover summary: %w", err)
	}
	path := filepath.Join(dir, "false-failovers-"+name+".txt")
	if err := os.WriteFile(path, []byte(name+": "+sum), 0o644); err != nil {
		return fmt.Errorf("write the failover summary: %w", err)
	}
	return nil
}
