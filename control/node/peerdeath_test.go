package node

import (
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/control/ownership"
)

// snap is a snapshot at now (ms) of node 0 with peers 1 and 2; node 0
// has quorum when it hears one of them.
func snap(nowMS int, alive1, alive2 bool, flags1, flags2 ownership.NodeFlags) ownership.Snapshot {
	return ownership.Snapshot{Now: ownership.Mono(time.Duration(nowMS) * time.Millisecond), Quorum: alive1 || alive2, Nodes: []ownership.NodeView{
		{PNN: 0, This: true, Alive: true},
		{PNN: 1, Alive: alive1, Flags: flags1},
		{PNN: 2, Alive: alive2, Flags: flags2},
	}}
}

func TestPeerDeaths(t *testing.T) {
	const (
		restarting = ownership.FlagRestarting | ownership.FlagHealthy
		stopping   = ownership.FlagStopping | ownership.FlagHealthy
		healthy    = ownership.FlagHealthy
	)
	type step struct {
		ms             int
		alive1, alive2 bool
		f1, f2         ownership.NodeFlags
		want           []int
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"a crash is judged at once, once", []step{
			{0, true, true, healthy, healthy, nil},
			{100, false, true, healthy, healthy, []int{1}},
			{200, false, true, healthy, healthy, nil},
			{5000, false, true, healthy, healthy, nil},
		}},
		// this node hears no majority: more likely cut off itself (seen
		// in the lab: a stalled node ended the CTDB connections between
		// two live ones while a third restarted)
		{"both at once: no quorum, nobody judged", []step{
			{0, true, true, healthy, healthy, nil},
			{100, false, false, healthy, 0, nil},
			{5000, false, false, healthy, 0, nil},
			{5100, true, true, healthy, healthy, nil},
		}},
		{"judged once quorum is back, if still gone", []step{
			{0, true, true, healthy, healthy, nil},
			{100, false, false, healthy, healthy, nil},
			{400, false, true, healthy, healthy, []int{1}},
			{500, false, true, healthy, healthy, nil},
		}},
		{"never heard in this run: not judged", []step{
			{0, true, false, healthy, 0, nil},
			{100, true, false, healthy, 0, nil},
			{20000, true, false, healthy, 0, nil},
		}},
		{"a stop is never judged", []step{
			{0, true, true, stopping, healthy, nil},
			{100, false, true, stopping, healthy, nil},
			{60000, false, true, stopping, healthy, nil},
		}},
		{"a restart back within the grace is not judged", []step{
			{0, true, true, restarting, healthy, nil},
			{100, false, true, restarting, healthy, nil},
			{9000, false, true, restarting, healthy, nil},
			{9500, true, true, healthy, healthy, nil},
			{30000, true, true, healthy, healthy, nil},
		}},
		{"a restart that does not come back is judged after the grace", []step{
			{0, true, true, restarting, healthy, nil},
			{100, false, true, restarting, healthy, nil},
			{10050, false, true, restarting, healthy, nil},
			{10100, false, true, restarting, healthy, []int{1}},
			{10200, false, true, restarting, healthy, nil},
		}},
		{"a peer that comes back can die again", []step{
			{0, true, true, healthy, healthy, nil},
			{100, false, true, healthy, healthy, []int{1}},
			{3000, true, true, healthy, healthy, nil},
			{3100, false, true, healthy, healthy, []int{1}},
		}},
		{"its last heartbeat said restarting, then a crash restart: judged after the grace", []step{
			{0, true, true, healthy, healthy, nil},
			{50, true, true, restarting, healthy, nil},
			{300, false, true, restarting, healthy, nil},
			{10299, false, true, restarting, healthy, nil},
			{10300, false, true, restarting, healthy, []int{1}},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newPeerDeaths(10 * time.Second)
			for _, s := range tc.steps {
				got := d.update(snap(s.ms, s.alive1, s.alive2, s.f1, s.f2))
				slices.Sort(got)
				if !slices.Equal(got, s.want) {
					t.Fatalf("at %d ms: judged dead %v, want %v", s.ms, got, s.want)
				}
			}
		})
	}
}
