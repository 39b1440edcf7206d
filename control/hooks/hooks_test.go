package hooks

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

func writeHook(t *testing.T, dir, name string, mode os.FileMode, body string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func names(res Result) []string {
	var out []string
	for _, s := range res.Scripts {
		out = append(out, s.Name)
	}
	return out
}

func TestRunPassesEnvironmentAndArguments(t *testing.T) {
	dir := t.TempDir()
	writeHook(t, dir, "10.print", 0o755, `echo "args=$*"
echo "event=$FSHA_EVENT vip=$FSHA_VIP prefix=$FSHA_PREFIX bits=$FSHA_MASKBITS iface=$FSHA_IFACE node=$FSHA_NODE epoch=$FSHA_EPOCH extra=$FSHA_EXTRA"
echo "path=${PATH:+set}"
`)
	t.Setenv("FSHA_VIP", "stale") // inherited from the daemon: must not leak
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, Node: "node1"})
	res := r.Run(context.Background(), TakeIP, Vars{
		VIP:   netip.MustParsePrefix("198.18.0.10/24"),
		Iface: "eth0",
		Epoch: 42,
		Env:   map[string]string{"FSHA_EXTRA": "x", EnvVIP: "cannot override"},
	})
	if !res.OK() || len(res.Scripts) != 1 {
		t.Fatalf("result %+v", res)
	}
	want := "args=takeip eth0 198.18.0.10 24\n" +
		"event=takeip vip=198.18.0.10 prefix=198.18.0.10/24 bits=24 iface=eth0 node=node1 epoch=42 extra=x\n" +
		"path=set\n"
	if got := res.Scripts[0].Output; got != want {
		t.Errorf("output\n%s\nwant\n%s", got, want)
	}

	// an event without an address: no address variables at all
	writeHook(t, dir, "10.print", 0o755, `echo "args=$* vip=${FSHA_VIP-unset} iface=${FSHA_IFACE-unset} epoch=${FSHA_EPOCH-unset}"`)
	res = r.Run(context.Background(), Monitor, Vars{Epoch: 7})
	if got, want := res.Scripts[0].Output, "args=monitor vip=unset iface=unset epoch=unset\n"; got != want {
		t.Errorf("monitor output %q, want %q", got, want)
	}
}

func TestRunOrderAndSkips(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(t.TempDir(), "ran")
	body := `echo "$(basename "$0")" >> "$FSHA_TEST_LOG"` + "\n"
	writeHook(t, dir, "20.second", 0o755, body)
	writeHook(t, dir, "10.first", 0o755, body)
	writeHook(t, dir, "30.disabled", 0o644, body)
	for _, skip := range []string{"15.first~", ".hidden", "25.x.bak", "#26.x#", "27.x.dpkg-old", "28.x.rpmsave", "29.x.swp"} {
		writeHook(t, dir, skip, 0o755, body)
	}
	if err := os.Mkdir(filepath.Join(dir, "40.dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(dir, "10.first"), filepath.Join(dir, "50.link")); err != nil {
		t.Fatal(err)
	}
	extra := writeHook(t, t.TempDir(), "00.command", 0o755, body)

	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, Commands: []string{extra}})
	res := r.Run(context.Background(), Startup, Vars{Env: map[string]string{"FSHA_TEST_LOG": log}})
	if !res.OK() {
		t.Fatalf("result %+v", res)
	}
	want := []string{"10.first", "20.second", "50.link", "00.command"}
	if got := names(res); !slices.Equal(got, want) {
		t.Errorf("ran %v, want %v", got, want)
	}
	b, err := os.ReadFile(log)
	if err != nil {
		t.Fatal(err)
	}
	// the symlink runs as itself ($0 is the link)
	if got := strings.Fields(string(b)); !slices.Equal(got, want) {
		t.Errorf("hooks logged %v, want %v", got, want)
	}
}

func TestRunReportsFailuresAndGoesOn(t *testing.T) {
	dir := t.TempDir()
	writeHook(t, dir, "10.fails", 0o755, "echo broken >&2\nexit 3\n")
	writeHook(t, dir, "20.works", 0o755, "exit 0\n")
	writeHook(t, dir, "30.killed", 0o755, "kill -TERM $$\n")
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir})
	res := r.Run(context.Background(), ReleaseIP, Vars{VIP: netip.MustParsePrefix("2001:2::10/64"), Iface: "eth1"})
	if res.OK() {
		t.Fatal("result OK with a failing hook")
	}
	if got, want := names(res), []string{"10.fails", "20.works", "30.killed"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	f, w, k := res.Scripts[0], res.Scripts[1], res.Scripts[2]
	if f.ExitCode != 3 || f.OK() || f.Output != "broken\n" || f.TimedOut {
		t.Errorf("failing hook: %+v", f)
	}
	if !w.OK() || w.ExitCode != 0 {
		t.Errorf("working hook: %+v", w)
	}
	if k.ExitCode != -1 || k.Signal != "terminated" || k.OK() {
		t.Errorf("killed hook: %+v", k)
	}
	if got := res.Failed(); len(got) != 2 || got[0].Name != "10.fails" || got[1].Name != "30.killed" {
		t.Errorf("Failed() = %+v", got)
	}
}

// alive reports whether pid is a live (not zombie) process.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i > 0 && i+2 < len(s) && s[i+2] != 'Z'
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.HasSuffix(string(b), "\n") {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatalf("pid file %q: %v", b, err)
			}
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("no pid in %s", path)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// killLeftover kills a test's own leftover process, by pid, at cleanup.
func killLeftover(t *testing.T, pid int) {
	t.Cleanup(func() {
		if alive(pid) {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	})
}

func TestRunTimeoutKillsProcessGroup(t *testing.T) {
	dir := t.TempDir()
	pids := t.TempDir()
	writeHook(t, dir, "10.hangs", 0o755, `sleep 30 &
echo $! > "$FSHA_TEST_PIDS/child"
echo $$ > "$FSHA_TEST_PIDS/script"
echo started
sleep 30
`)
	writeHook(t, dir, "20.after", 0o755, "echo after\n")
	const timeout = 300 * time.Millisecond
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, Timeout: timeout})
	start := time.Now()
	res := r.Run(context.Background(), TakeIP, Vars{Env: map[string]string{"FSHA_TEST_PIDS": pids}})
	took := time.Since(start)
	child, script := readPID(t, filepath.Join(pids, "child")), readPID(t, filepath.Join(pids, "script"))
	killLeftover(t, child)
	killLeftover(t, script)

	if took < timeout || took > timeout+2*time.Second {
		t.Errorf("Run took %v with a %v timeout", took, timeout)
	}
	h := res.Scripts[0]
	if !h.TimedOut || h.OK() || h.Signal != "killed" || h.Output != "started\n" {
		t.Errorf("hanging hook: %+v", h)
	}
	if h.Duration < timeout || h.Duration > timeout+time.Second {
		t.Errorf("hanging hook duration %v", h.Duration)
	}
	if a := res.Scripts[1]; !a.OK() || a.Output != "after\n" {
		t.Errorf("the next hook did not run after the timeout: %+v", a)
	}
	// the script and the child it left in its process group are gone
	deadline := time.Now().Add(2 * time.Second)
	for alive(child) || alive(script) {
		if time.Now().After(deadline) {
			t.Fatalf("after the timeout, script alive %v, child alive %v", alive(script), alive(child))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRunCancel(t *testing.T) {
	dir := t.TempDir()
	writeHook(t, dir, "10.hangs", 0o755, "echo $$ > \"$FSHA_TEST_PID\"\nsleep 30\n")
	writeHook(t, dir, "20.never", 0o755, "exit 0\n")
	pidFile := filepath.Join(t.TempDir(), "pid")
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, Timeout: 10 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() { done <- r.Run(ctx, Monitor, Vars{Env: map[string]string{"FSHA_TEST_PID": pidFile}}) }()
	pid := readPID(t, pidFile)
	killLeftover(t, pid)
	cancel()
	var res Result
	select {
	case res = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Run went on after cancel")
	}
	if h := res.Scripts[0]; !errors.Is(h.Err, context.Canceled) || h.TimedOut || h.Signal != "killed" {
		t.Errorf("cancelled hook: %+v", h)
	}
	if n := res.Scripts[1]; !errors.Is(n.Err, context.Canceled) || n.Duration != 0 {
		t.Errorf("hook after cancel: %+v", n)
	}
}

func TestRunExitedHookLeavingOutputOpen(t *testing.T) {
	// A hook that starts a daemon without closing its output: Run must
	// not wait for the daemon.
	dir := t.TempDir()
	pidFile := filepath.Join(t.TempDir(), "pid")
	writeHook(t, dir, "10.daemon", 0o755, "sleep 30 &\necho $! > \""+pidFile+"\"\necho ok\n")
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir})
	r.waitDelay = 200 * time.Millisecond
	start := time.Now()
	res := r.Run(context.Background(), TakeIP, Vars{})
	killLeftover(t, readPID(t, pidFile))
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Run took %v", took)
	}
	if h := res.Scripts[0]; !h.OK() || h.Output != "ok\n" {
		t.Errorf("hook: %+v", h)
	}
}

func TestRunBoundsOutput(t *testing.T) {
	dir := t.TempDir()
	writeHook(t, dir, "10.chatty", 0o755, "i=0\nwhile [ $i -lt 2000 ]; do echo 0123456789012345678901234567890123456789; i=$((i+1)); done\n")
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, MaxOutput: 1000})
	res := r.Run(context.Background(), Monitor, Vars{})
	h := res.Scripts[0]
	if !h.OK() || len(h.Output) != 1000 || !h.OutputTruncated || !strings.HasPrefix(h.Output, "0123") {
		t.Errorf("hook: ok %v, output %d bytes, truncated %v", h.OK(), len(h.Output), h.OutputTruncated)
	}
}

func TestRunWithoutHooks(t *testing.T) {
	for _, cfg := range []Config{{}, {Dir: filepath.Join(t.TempDir(), "missing")}} {
		r := NewRunner(zaptest.NewLogger(t), cfg)
		res := r.Run(context.Background(), TakeIP, Vars{})
		if !res.OK() || len(res.Scripts) != 0 {
			t.Errorf("Dir %q: %+v", cfg.Dir, res)
		}
	}
}

func TestRunErrors(t *testing.T) {
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: t.TempDir()})
	if res := r.Run(context.Background(), "takeipp", Vars{}); res.Err == nil || res.OK() {
		t.Errorf("unknown event: %+v", res)
	}
	// a hooks "directory" that is a file cannot be read
	f := writeHook(t, t.TempDir(), "file", 0o644, "")
	r = NewRunner(zaptest.NewLogger(t), Config{Dir: f})
	if res := r.Run(context.Background(), Startup, Vars{}); res.Err == nil || !strings.Contains(res.Err.Error(), f) {
		t.Errorf("unreadable dir: %+v", res)
	}
	// a command that does not exist is a failed hook, not a crash
	r = NewRunner(zaptest.NewLogger(t), Config{Commands: []string{"/nonexistent/fsha-hook"}})
	res := r.Run(context.Background(), Startup, Vars{})
	if len(res.Scripts) != 1 || res.Scripts[0].Err == nil || res.Scripts[0].ExitCode != -1 || res.OK() {
		t.Errorf("missing command: %+v", res)
	}
}

// updateip gets CTDB's arguments (old interface, new interface, address,
// mask bits) and the old interface in FSHA_OLD_IFACE; an inherited one
// does not leak into other events.
func TestRunUpdateIP(t *testing.T) {
	dir := t.TempDir()
	writeHook(t, dir, "10.print", 0o755, `echo "args=$* iface=$FSHA_IFACE old=${FSHA_OLD_IFACE-unset}"`)
	t.Setenv(EnvOldIface, "stale")
	r := NewRunner(zaptest.NewLogger(t), Config{Dir: dir, Node: "node1"})
	res := r.Run(context.Background(), UpdateIP, Vars{VIP: netip.MustParsePrefix("2001:2::201/64"), Iface: "eth1", OldIface: "eth0", Epoch: 3})
	if got, want := res.Scripts[0].Output, "args=updateip eth0 eth1 2001:2::201 64 iface=eth1 old=eth0\n"; got != want {
		t.Errorf("updateip output %q, want %q", got, want)
	}
	res = r.Run(context.Background(), TakeIP, Vars{VIP: netip.MustParsePrefix("2001:2::201/64"), Iface: "eth1", Epoch: 3})
	if got, want := res.Scripts[0].Output, "args=takeip eth1 2001:2::201 64 iface=eth1 old=unset\n"; got != want {
		t.Errorf("takeip output %q, want %q", got, want)
	}
}
