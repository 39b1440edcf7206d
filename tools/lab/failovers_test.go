package lab

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var testNames = map[string]string{"0": "n1", "1": "n2", "2": "n3", "198.18.0.12": "n2"}

func TestParseFailoverEvent(t *testing.T) {
	const ts = `"ts":"2026-12-05T21:53:37.734Z"`
	for _, tc := range []struct {
		name, line string
		kind, peer string // kind "": no event
	}{
		{"lapse", `{"level":"warn",` + ts + `,"logger":"node","msg":"lease lapsed (no renewal from a majority): the data plane stopped answering; address off eth0, connections kept in case the renewals come back","vip":"198.18.0.202/24"}`, "lapse", ""},
		{"takeover from a dead node", `{"level":"info",` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"node 1 died","epoch":2}`, "takeover", "n2"},
		{"takeover for an unknown reason", `{"level":"info",` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"something new"}`, "takeover", ""},
		{"takeover of an unassigned VIP", `{` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"unassigned"}`, "", ""},
		{"takeover handed over", `{` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"released by node 0"}`, "", ""},
		{"adopted", `{` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"held before the restart"}`, "", ""},
		{"renewed", `{` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"renewed after a lapse"}`, "", ""},
		{"lost quorum", `{` + ts + `,"msg":"released","vip":"198.18.0.201/24","reason":"lost quorum","drain":false,"lost":false}`, "release", ""},
		{"newer epoch", `{` + ts + `,"msg":"released","vip":"198.18.0.201/24","reason":"node 2 holds a newer epoch","drain":false,"lost":true}`, "release", "n3"},
		{"planned release", `{` + ts + `,"msg":"released","vip":"198.18.0.201/24","reason":"rebalance","drain":true}`, "", ""},
		{"disabled", `{` + ts + `,"msg":"released","vip":"198.18.0.201/24","reason":"disabled"}`, "", ""},
		{"draining node died", `{` + ts + `,"msg":"draining node died: tickling its connections","vip":"198.18.0.201/24","node":1}`, "draining node died", "n2"},
		{"by address", `{` + ts + `,"msg":"took over","vip":"198.18.0.201/24","reason":"draining node 198.18.0.12 died"}`, "takeover", "n2"},
		{"another line", `{` + ts + `,"msg":"vip removed","vip":"198.18.0.202/24"}`, "", ""},
		{"not JSON", `panic: lease lapsed`, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, ok := parseFailoverEvent([]byte(tc.line), "n1", testNames)
			if ok != (tc.kind != "") || e.Kind != tc.kind || e.Peer != tc.peer {
				t.Fatalf("got %v %+v, want kind %q peer %q", ok, e, tc.kind, tc.peer)
			}
			if !ok {
				return
			}
			want := time.Date(2026, 12, 5, 21, 53, 37, 734e6, time.UTC)
			if !e.At.Equal(want) || e.Node != "n1" || e.VIP == "" || e.Line != tc.line {
				t.Errorf("event %+v: want at %v on n1 with its VIP and line", e, want)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ev := func(node, peer string, d time.Duration) FailoverEvent {
		return FailoverEvent{At: at(d), Node: node, Peer: peer, Kind: "takeover"}
	}
	fault := func(what string, from, to time.Duration, hosts ...string) Fault {
		f := Fault{What: what, Hosts: hosts, Start: at(from)}
		if to >= 0 {
			f.End = at(to)
		}
		return f
	}
	isNode := map[string]bool{"n1": true, "n2": true, "n3": true, "n4": true, "n5": true}
	until := at(time.Minute)
	for _, tc := range []struct {
		name   string
		e      FailoverEvent
		faults []Fault
		nodes  int
		want   string // the explaining fault, "" for none
	}{
		{"no fault", ev("n1", "n2", 10*time.Second), nil, 3, ""},
		{"fault of the peer", ev("n1", "n2", 10*time.Second), []Fault{fault("freeze n2", 9*time.Second, 11*time.Second, "n2")}, 5, "freeze n2"},
		{"fault of the node", ev("n1", "", 10*time.Second), []Fault{fault("cut n1", 9*time.Second, 11*time.Second, "n1")}, 5, "cut n1"},
		{"within the grace", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n2", 5*time.Second, 7500*time.Millisecond, "n2")}, 5, "cut n2"},
		{"past the grace", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n2", 5*time.Second, 6*time.Second, "n2")}, 5, ""},
		{"before the fault", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n2", 11*time.Second, 12*time.Second, "n2")}, 5, ""},
		{"logged in the millisecond before", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n2", 10*time.Second+time.Millisecond, 12*time.Second, "n2")}, 5, "cut n2"},
		{"fault on another node, 5 nodes", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n4", 9*time.Second, 11*time.Second, "n4")}, 5, ""},
		{"fault on another node, 3 nodes", ev("n1", "n2", 10*time.Second), []Fault{fault("cut n3", 9*time.Second, 11*time.Second, "n3")}, 3, "cut n3"},
		{"fault on a client only", ev("n1", "n2", 10*time.Second), []Fault{fault("cut c1", 9*time.Second, 11*time.Second, "c1")}, 3, ""},
		{"lab-wide fault", ev("n1", "n2", 10*time.Second), []Fault{fault("partition", 9*time.Second, 11*time.Second)}, 7, "partition"},
		{"open fault", ev("n1", "", 50*time.Second), []Fault{fault("power down n1", 9*time.Second, -1, "n1")}, 5, "power down n1"},
		{"the node's own fault first", ev("n1", "", 10*time.Second),
			[]Fault{fault("cut n3", 9*time.Second, 11*time.Second, "n3"), fault("freeze n1", 9*time.Second, 11*time.Second, "n1")}, 3, "freeze n1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := explain(tc.e, tc.faults, tc.nodes, isNode, until)
			got := ""
			if f != nil {
				got = f.What
			}
			if got != tc.want {
				t.Errorf("explained by %q, want %q", got, tc.want)
			}
		})
	}
}

func TestReadFailoverEventsAndTally(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fsha-up.stderr")
	log := strings.Join([]string{
		`{"level":"info","ts":"2026-12-05T21:53:35.848Z","msg":"took over","vip":"198.18.0.203/24","reason":"unassigned"}`,
		`{"level":"warn","ts":"2026-12-05T21:53:36.500Z","logger":"node","msg":"control loop slow","took":0.300,"sends":2}`,
		`{"level":"warn","ts":"2026-12-05T21:53:37.642Z","logger":"node","msg":"control loop slow","took":0.156960201,"sends":2}`,
		`{"level":"warn","ts":"2026-12-05T21:53:37.734Z","msg":"lease lapsed (no renewal from a majority): the data plane stopped answering; address off eth0, connections kept in case the renewals come back","vip":"198.18.0.202/24"}`,
		`{"level":"info","ts":"2026-12-05T21:53:45.000Z","msg":"took over","vip":"198.18.0.201/24","reason":"node 1 died"}`,
		`not a json line`,
	}, "\n") + "\n"
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	evs, err := readFailoverEvents(path, "n3", testNames)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Kind != "lapse" || evs[1].Kind != "takeover" || evs[1].Peer != "n2" {
		t.Fatalf("events %+v, want the lapse and the takeover from n2", evs)
	}
	// the slow loop in the second before the lapse, not the one before
	if evs[0].SlowLoop != 156960201*time.Nanosecond || evs[1].SlowLoop != 0 {
		t.Errorf("slow loops before the events: %v, %v; want 157ms, none", evs[0].SlowLoop, evs[1].SlowLoop)
	}
	if _, err := readFailoverEvents(filepath.Join(t.TempDir(), "none"), "n3", testNames); err == nil {
		t.Error("a missing log read without error")
	}

	// the lapse explained by a fault of n3, the takeover (past the grace) not
	cut := Fault{What: "cut n3", Hosts: []string{"n3"}, Start: evs[0].At.Add(-time.Second), End: evs[0].At}
	isNode := map[string]bool{"n1": true, "n2": true, "n3": true}
	r := FailoverReport{Events: evs, Faults: []Fault{cut}, Daemons: 1}
	for i := range r.Events {
		r.Events[i].By = explain(r.Events[i], r.Faults, 5, isNode, evs[1].At.Add(time.Minute))
	}
	if bad := r.False(); len(bad) != 1 || bad[0].Kind != "takeover" {
		t.Fatalf("false failovers %v, want the takeover", bad)
	}
	var ft failoverTally
	ft.add("TestA", r)
	ft.add("TestB", FailoverReport{Daemons: 3})
	sum := ft.summary()
	if !strings.HasPrefix(sum, "false failovers: 1 in 2 tests (2 failover events, 1 explained by faults the tests injected)\n") || !strings.Contains(sum, "TestA: 21:53:45.000 n3: takeover of 198.18.0.201/24 (node 1 died)") {
		t.Errorf("summary:\n%s", sum)
	}
}
