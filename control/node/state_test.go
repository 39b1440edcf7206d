package node

import (
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/zap/zaptest"
)

// A disable kept by a release before --state-dir (in the run dir, which a
// reboot empties) is read once and moved to the state dir; the state dir
// wins when both exist.
func TestStateFileLegacy(t *testing.T) {
	dir := t.TempDir()
	legacy := filepath.Join(dir, "run", "state.json")
	state := filepath.Join(dir, "lib", "state.json")
	if err := os.MkdirAll(filepath.Dir(legacy), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(legacy, []byte(`{"disabled":true}`), 0o600); err != nil {
		t.Fatal(err)
	}
	n := &Node{log: zaptest.NewLogger(t), cfg: Config{StateFile: state, LegacyStateFile: legacy}}
	n.loadState()
	if !n.disabled {
		t.Fatal("the disable kept in the run dir was lost")
	}
	if b, err := os.ReadFile(state); err != nil || string(b) != `{"disabled":true}` {
		t.Fatalf("state dir holds %q (%v), want the disable", b, err)
	}
	// the state dir says enabled: it wins over the old file
	if err := os.WriteFile(state, []byte(`{"disabled":false}`), 0o600); err != nil {
		t.Fatal(err)
	}
	n = &Node{log: zaptest.NewLogger(t), cfg: Config{StateFile: state, LegacyStateFile: legacy}}
	n.loadState()
	if n.disabled {
		t.Error("the run dir's old state won over the state dir's")
	}
}
