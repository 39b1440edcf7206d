package main

import (
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
)

func TestPrintChecks(t *testing.T) {
	now := time.Date(2026, 12, 6, 6, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := printChecks(&b, admin.Checks{
		Checks: []admin.CheckStatus{
			{Name: "tcp:198.18.0.1:445", Passing: true, LastRun: now.Add(-time.Second), Took: 1200 * time.Microsecond},
			{Name: "cmd:/etc/fsha/smbd-alive", FailedRuns: 3, Error: "exit status 3: smbd gone", LastRun: now.Add(-2 * time.Second), Took: 5 * time.Millisecond},
			{Name: "hooks:monitor"},
		},
		Hooks: []admin.HookStatus{
			{Event: "takeip", Script: "50.samba", OK: true, Ended: now.Add(-time.Minute), Took: 30 * time.Millisecond},
			{Event: "monitor", Script: "60.nfs", ExitCode: 1, Output: "checking\nrpc.statd not running", Ended: now.Add(-time.Second), Took: 12 * time.Millisecond},
		},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := `CHECK                     STATE    FAILED RUNS  LAST RUN  TOOK
tcp:198.18.0.1:445        passing  0            1s ago    1ms
cmd:/etc/fsha/smbd-alive  FAILING  3            2s ago    5ms
hooks:monitor             FAILING  0            never     -
  cmd:/etc/fsha/smbd-alive said: exit status 3: smbd gone

HOOK      EVENT    RESULT  LAST RUN  TOOK
50.samba  takeip   OK      1m0s ago  30ms
60.nfs    monitor  exit 1  1s ago    12ms
  60.nfs (monitor) said: rpc.statd not running
`
	if got := b.String(); got != want {
		t.Errorf("checks:\n%s\nwant:\n%s", got, want)
	}
}
