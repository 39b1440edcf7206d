package failover

import (
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
)

func TestRestartMoves(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 13, 52, 50, 0, time.UTC)
	rec := func(kind, vip, reason string, after time.Duration) admin.Takeover {
		return admin.Takeover{VIP: vip, Kind: kind, Reason: reason, Steps: []admin.TimelineStep{{Step: "decision", At: t0.Add(after)}}}
	}
	const a, b = "198.18.0.201/24", "198.18.0.202/24"
	lapse := "no renewal from a majority: the data plane stopped answering"
	for _, tc := range []struct {
		name           string
		tl             []admin.Takeover
		hiccups, moves int
	}{
		{"nothing", nil, 0, 0},
		{"before the start", []admin.Takeover{rec("lapse", a, lapse, -time.Second), rec("release", a, "moved", -time.Second)}, 0, 0},
		{"adopted", []admin.Takeover{rec("adopted", a, "held before the restart", time.Second)}, 0, 0},
		// ci13: lapsed and renewed 1 ms later, twice
		{"renewed at once", []admin.Takeover{
			rec("lapse", a, lapse, time.Second), rec("takeover", a, "renewed after a lapse", time.Second+time.Millisecond),
			rec("lapse", a, lapse, 2*time.Second), rec("takeover", a, "renewed after a lapse", 2*time.Second+time.Millisecond)}, 2, 0},
		{"renewed late", []admin.Takeover{
			rec("lapse", a, lapse, time.Second), rec("takeover", a, "renewed after a lapse", time.Second+300*time.Millisecond)}, 0, 2},
		{"never renewed", []admin.Takeover{rec("lapse", a, lapse, time.Second)}, 0, 1},
		{"another VIP renewed", []admin.Takeover{
			rec("lapse", a, lapse, time.Second), rec("takeover", b, "renewed after a lapse", time.Second+time.Millisecond)}, 0, 2},
		{"a takeover", []admin.Takeover{rec("takeover", b, "node 0 died", time.Second)}, 0, 1},
		{"a release", []admin.Takeover{rec("release", a, "moved to node 2", time.Second)}, 0, 1},
	} {
		hiccups, moves := restartMoves(tc.tl, t0)
		if len(hiccups) != tc.hiccups || len(moves) != tc.moves {
			t.Errorf("%s: hiccups %q, moves %q; want %d and %d", tc.name, hiccups, moves, tc.hiccups, tc.moves)
		}
		if slices.ContainsFunc(moves, func(m string) bool { return m == "" }) {
			t.Errorf("%s: an empty move", tc.name)
		}
	}
}
