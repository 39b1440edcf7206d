package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// An fsha row passes only with the freeze under its target and nothing
// else wrong: no bad read, the data back on every trial, no cut-off node
// that kept the VIP or took CTDB's lock.
func TestIOFreezeReportVerdict(t *testing.T) {
	good := func() freezeTrial {
		return freezeTrial{
			fault:   lab.IOReport{Freeze: 500 * time.Millisecond},
			resumed: true,
			victim:  "n1",
			ctdb:    ctdbView{known: true},
			cutOff:  &cutOffView{fsha: true, locks: true},
			data:    &ovdCheck{via: "n2"},
		}
	}
	for _, tc := range []struct {
		name  string
		spoil func(*freezeTrial)
		want  string
	}{
		{"all good", func(*freezeTrial) {}, "PASS"},
		{"slow", func(tr *freezeTrial) { tr.fault.Freeze = 2 * time.Second }, "MISS"},
		{"bad read after the return", func(tr *freezeTrial) { tr.failback.Mismatches = 1 }, "MISS"},
		{"cut-off node kept the VIP", func(tr *freezeTrial) { tr.cutOff.heldVIP = true }, "MISS"},
		{"cut-off node took CTDB's lock", func(tr *freezeTrial) { tr.cutOff.tookLock = true }, "MISS"},
		{"cut-off node's link up again", func(tr *freezeTrial) { tr.cutOff.linkBack = true }, "MISS"},
		{"not healed", func(tr *freezeTrial) { tr.data.healErr = errors.New("no") }, "MISS"},
		{"read back differs", func(tr *freezeTrial) { tr.data.mismatch = true }, "MISS"},
		{"never written", func(tr *freezeTrial) { tr.data = nil }, "MISS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			trs := []freezeTrial{good(), good()}
			tc.spoil(&trs[1])
			b := &iofreezeBench{trials: 2, storage: "gluster", outage: 10 * time.Second, resume: time.Minute, victim: "holder"}
			var out strings.Builder
			err := b.report(&out, []string{"fsha"}, []string{"network"}, map[string]freezeSystemRun{
				"fsha": {trials: map[string][]freezeTrial{"network": trs}},
			})
			if err != nil {
				t.Fatal(err)
			}
			var row string
			for _, l := range strings.Split(out.String(), "\n") {
				if strings.HasPrefix(l, "fsha ") && strings.Contains(l, "p95 <=") {
					row = l
				}
			}
			if !strings.HasSuffix(strings.TrimSpace(row), tc.want) {
				t.Errorf("row %q, want %s\n%s", row, tc.want, out.String())
			}
		})
	}
}
