package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/hooks"
)

// hookDir writes one hook that records every run (event, FSHA_STOP) in a
// file and fails startup or monitor while a flag file of that name exists,
// saying why on its last line, as a CTDB script would.
func hookDir(t *testing.T) (dir, record string) {
	t.Helper()
	dir = t.TempDir()
	record = filepath.Join(dir, "record")
	body := fmt.Sprintf(`#!/bin/sh
echo "$1 $FSHA_EVENT ${FSHA_STOP:-}" >> %[1]s
if [ -e %[2]s/fail-$1 ]; then echo starting smbd; echo "smbd would not start" >&2; exit 1; fi
exit 0
`, record, dir)
	if err := os.WriteFile(filepath.Join(dir, "50.samba"), []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, record
}

func runs(t *testing.T, record string) []string {
	t.Helper()
	b, err := os.ReadFile(record)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return lines
}

func TestHookChecksNeedHooks(t *testing.T) {
	if cs := newHookChecks(newHookRunner(zaptest.NewLogger(t), t.TempDir(), "198.18.0.1", time.Second)); cs != nil {
		t.Fatalf("checks %v without hooks", cs)
	}
}

// A failing startup hook keeps the node unhealthy, with the hook and what
// it said as the reason, and is tried again until it succeeds; monitor
// does not run before that; once startup passed it does not run again.
func TestStartupHookGatesHealth(t *testing.T) {
	dir, record := hookDir(t)
	flag := filepath.Join(dir, "fail-startup")
	if err := os.WriteFile(flag, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	log := zaptest.NewLogger(t)
	checks := newHookChecks(newHookRunner(log, dir, "198.18.0.1", 5*time.Second))
	if len(checks) != 2 || checks[0].Name() != "hooks:startup" || checks[1].Name() != "hooks:monitor" {
		t.Fatalf("checks %v, want hooks:startup then hooks:monitor", checks)
	}
	checker := health.New(log, health.Config{Checks: checks, Interval: 20 * time.Millisecond, Timeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- checker.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("checker: %v", err)
		}
	})
	waitFor := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			ok, state := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not after 10 s; last %s", what, state)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want := "hooks:startup failing (3 runs in a row): startup hook 50.samba failed: exit status 1: smbd would not start"
	waitFor("unhealthy, saying why", func() (bool, string) {
		ok, why := checker.State()
		return !ok && len(why) > 0 && why[0] == want, fmt.Sprintf("healthy=%v why=%q", ok, why)
	})
	for _, r := range runs(t, record) {
		if r != "startup startup" {
			t.Fatalf("runs %q before startup succeeded, want only startup", runs(t, record))
		}
	}

	if err := os.Remove(flag); err != nil {
		t.Fatal(err)
	}
	waitFor("healthy once startup succeeds", func() (bool, string) {
		ok, why := checker.State()
		return ok, fmt.Sprintf("why=%q", why)
	})
	waitFor("monitor running", func() (bool, string) {
		rs := runs(t, record)
		return strings.Count(strings.Join(rs, "\n"), "monitor monitor") >= 3, fmt.Sprintf("%q", rs)
	})
	rs := runs(t, record)
	last := strings.LastIndex(strings.Join(rs, "\n"), "startup startup")
	first := strings.Index(strings.Join(rs, "\n"), "monitor monitor")
	if last > first {
		t.Errorf("startup ran after monitor began: %q", rs)
	}
}

// The shutdown event runs with FSHA_STOP; a failure is logged and
// nothing more.
func TestShutdownHooks(t *testing.T) {
	dir, record := hookDir(t)
	r := newHookRunner(zaptest.NewLogger(t), dir, "198.18.0.1", 5*time.Second)
	runShutdownHooks(zaptest.NewLogger(t), r, hooks.StopRestart)
	if err := os.WriteFile(filepath.Join(dir, "fail-shutdown"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	runShutdownHooks(zaptest.NewLogger(t), r, hooks.StopShutdown)
	if got, want := runs(t, record), []string{"shutdown shutdown restart", "shutdown shutdown shutdown"}; strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("runs %q, want %q", got, want)
	}
	last := r.Last()
	if len(last) != 1 || last[0].Event != hooks.Shutdown || last[0].OK() {
		t.Errorf("fsha checks would show %+v, want the failed shutdown", last)
	}
}

func TestHookFailure(t *testing.T) {
	for _, tc := range []struct {
		res  hooks.Result
		want string
	}{
		{hooks.Result{Event: hooks.Monitor, Scripts: []hooks.ScriptResult{{Name: "10.a"}}}, ""},
		{hooks.Result{Event: hooks.Startup, Scripts: []hooks.ScriptResult{{Name: "10.a", ExitCode: 2, Output: "a\nb\n"}, {Name: "20.b", TimedOut: true, ExitCode: -1}}},
			"startup hook 10.a failed (and 1 more): exit status 2: b"},
		{hooks.Result{Event: hooks.Startup, Scripts: []hooks.ScriptResult{{Name: "20.b", TimedOut: true, ExitCode: -1, Signal: "killed"}}},
			"startup hook 20.b failed: timed out"},
	} {
		err := hookFailure(tc.res)
		if got := fmt.Sprint(err); (tc.want == "" && err != nil) || (tc.want != "" && got != tc.want) {
			t.Errorf("hookFailure = %v, want %q", err, tc.want)
		}
	}
}
