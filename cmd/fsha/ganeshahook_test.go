package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// ganeshaHookRun is one run of the shipped 60.ganesha-grace against a fake
// dbus-send, which records what Ganesha would read at the grace request:
// the directory RecoveryRoot/VIP resolves to.
type ganeshaHookRun struct {
	t     *testing.T
	state string // GANESHA_STATE_DIR
	bin   string // the fake dbus-send's directory
	seen  string // where it writes what it saw
}

const ganeshaHookVIP = "198.18.0.201"

func newGaneshaHookRun(t *testing.T) *ganeshaHookRun {
	t.Helper()
	dir := t.TempDir()
	r := &ganeshaHookRun{t: t, state: filepath.Join(dir, "state"), bin: filepath.Join(dir, "bin"), seen: filepath.Join(dir, "seen")}
	if err := os.MkdirAll(r.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	// the last argument is string:EVENT:IP; Ganesha reads
	// RecoveryRoot/IP/v4recov, RecoveryRoot being STATE/nodes/NODE
	fake := `#!/bin/sh
for a; do last=$a; done
ip=${last#string:*:}
printf '%s %s\n' "${last#string:}" "$(readlink -e "$GANESHA_STATE_DIR/nodes/$FSHA_NODE/$ip" || echo none)" > "$SEEN"
`
	if err := os.WriteFile(filepath.Join(r.bin, "dbus-send"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	return r
}

// takeip runs the hook's takeip on node at epoch (empty: FSHA_EPOCH unset)
// and returns what the fake Ganesha saw: "5:VIP <records dir or none>".
func (r *ganeshaHookRun) takeip(node, epoch string) (string, error) {
	r.t.Helper()
	_ = os.Remove(r.seen)
	cmd := exec.Command("../../packaging/events.d/60.ganesha-grace", "takeip", "eth0", ganeshaHookVIP, "24")
	cmd.Env = []string{"PATH=" + r.bin + ":" + os.Getenv("PATH"), "GANESHA_HOOK_CONF=/nonexistent",
		"GANESHA_STATE_DIR=" + r.state, "FSHA_NODE=" + node, "FSHA_VIP=" + ganeshaHookVIP, "SEEN=" + r.seen}
	if epoch != "" {
		cmd.Env = append(cmd.Env, "FSHA_EPOCH="+epoch)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), err
	}
	seen, err := os.ReadFile(r.seen)
	return strings.TrimSpace(string(seen)), err
}

// records is where node n's Ganesha keeps its records.
func (r *ganeshaHookRun) records(n string) string { return filepath.Join(r.state, "nodes", n) }

// The takeip of 60.ganesha-grace hands the taker the records of the VIP's
// previous holder by epoch, not by which hook ran last: hooks on two nodes
// run at once, and an earlier holder's takeip may end after the later
// holder's (its Ganesha slow to answer the grace request). With one "last
// holder" link, rewritten by whoever ends last, the next taker then read
// the wrong node's records and none of the VIP's clients could reclaim
// (TestNFSStateAcrossFailover in a loaded full run: the taker loaded no
// client, and grace ended at 4.9 s instead of 20).
func TestGaneshaHookRecordsFollowEpochs(t *testing.T) {
	r := newGaneshaHookRun(t)
	const a, b, c = "198.18.0.11", "198.18.0.12", "198.18.0.13"
	steps := []struct {
		node, epoch string
		want        string // the records dir Ganesha reads, or "none"
	}{
		{a, "3", "none"}, // the first holder: nothing to load
		{b, "5", r.records(a)},
		// a's takeip of epoch 4 ends after b's of 5: it reads a's own
		// records (those of epoch 3) and must not hide b's
		{a, "4", r.records(a)},
		{c, "6", r.records(b)},
		{a, "12", r.records(c)}, // 12 after 6: by number, not by text
	}
	for _, s := range steps {
		got, err := r.takeip(s.node, s.epoch)
		if err != nil {
			t.Fatalf("takeip on %s at epoch %s: %v: %s", s.node, s.epoch, err, got)
		}
		if want := "5:" + ganeshaHookVIP + " " + s.want; got != want {
			t.Errorf("takeip on %s at epoch %s: Ganesha got %q, want %q", s.node, s.epoch, got, want)
		}
	}
	// what is left: the previous holder's link and the last one's
	ents, err := os.ReadDir(filepath.Join(r.state, "vips", ganeshaHookVIP))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if want := "00000000000000000006 00000000000000000012"; strings.Join(names, " ") != want {
		t.Errorf("left in vips/%s: %q, want %q", ganeshaHookVIP, names, want)
	}
}

// A state directory of the layout before epochs (STATE/vips/VIP a link to
// the last holder) is taken over; a takeip without FSHA_EPOCH is refused
// with the reason, before Ganesha is asked anything.
func TestGaneshaHookOldLayoutAndNoEpoch(t *testing.T) {
	r := newGaneshaHookRun(t)
	if err := os.MkdirAll(filepath.Join(r.state, "vips"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../nodes/198.18.0.11", filepath.Join(r.state, "vips", ganeshaHookVIP)); err != nil {
		t.Fatal(err)
	}
	out, err := r.takeip("198.18.0.12", "")
	if err == nil || !strings.Contains(out, "FSHA_EPOCH") {
		t.Errorf("takeip without FSHA_EPOCH: %v, %q: want a failure that names FSHA_EPOCH", err, out)
	}
	if _, err := os.Stat(r.seen); err == nil {
		t.Error("takeip without FSHA_EPOCH asked Ganesha for a grace period")
	}
	got, err := r.takeip("198.18.0.12", "7")
	if err != nil {
		t.Fatalf("takeip over the old layout: %v: %s", err, got)
	}
	if want := "5:" + ganeshaHookVIP + " none"; got != want {
		t.Errorf("takeip over the old layout: Ganesha got %q, want %q", got, want)
	}
	to, err := os.Readlink(filepath.Join(r.state, "vips", ganeshaHookVIP, "00000000000000000007"))
	if err != nil || to != "../../nodes/198.18.0.12" {
		t.Errorf("the taker's link: %q %v", to, err)
	}
}
