package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
)

func TestParseTarget(t *testing.T) {
	for _, tc := range []struct {
		in       string
		want     target
		sections bool
		bad      bool
	}{
		{in: "", want: target{}},
		{in: "all", want: target{all: true}, sections: true},
		{in: "2", want: target{pnns: []int{2}}},
		{in: " 0 ", want: target{pnns: []int{0}}},
		{in: "1,2,1", want: target{pnns: []int{1, 2}}, sections: true},
		{in: "-1", bad: true},
		{in: "two", bad: true},
		{in: "1,", bad: true},
		{in: "ALL", bad: true},
	} {
		got, err := parseTarget(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("%q: %v, want bad=%v", tc.in, err, tc.bad)
			continue
		}
		if err == nil && (got.all != tc.want.all || !slices.Equal(got.pnns, tc.want.pnns) || got.sections() != tc.sections) {
			t.Errorf("%q: %+v (sections %v), want %+v (sections %v)", tc.in, got, got.sections(), tc.want, tc.sections)
		}
	}
}

func TestPickNodes(t *testing.T) {
	st := admin.Status{Nodes: []admin.NodeStatus{{PNN: 2, Address: "c"}, {PNN: 0, Address: "a"}, {PNN: 1, Address: "b"}}}
	got, err := pickNodes(st, target{all: true})
	if err != nil || len(got) != 3 || got[0].PNN != 0 || got[2].Address != "c" {
		t.Errorf("all: %+v, %v", got, err)
	}
	if _, err := pickNodes(st, target{pnns: []int{1, 7}}); !errors.Is(err, admin.ErrUnknownNode) || !strings.Contains(err.Error(), "node 7") {
		t.Errorf("unknown node: %v", err)
	}
}

func TestPrintSections(t *testing.T) {
	results := []nodeResult{
		{PNN: 0, Address: "198.18.0.1", Out: []byte("[\n  1\n]\n")},
		{PNN: 1, Address: "198.18.0.2", Out: []byte("{\"a\": 2}")},
		{PNN: 2, Address: "198.18.0.3", Err: errors.New("node 2 (198.18.0.3): no answer within 5s")},
	}
	var b strings.Builder
	err := printSections(&b, results, false)
	want := `PNN:0 198.18.0.1
[
  1
]

PNN:1 198.18.0.2
{"a": 2}

PNN:2 198.18.0.3
error: node 2 (198.18.0.3): no answer within 5s
`
	if b.String() != want {
		t.Errorf("sections:\n%s\nwant:\n%s", b.String(), want)
	}
	if err == nil || err.Error() != "1 of 3 nodes failed (PNN 2)" {
		t.Errorf("error %v, want one naming node 2", err)
	}

	b.Reset()
	err = printSections(&b, results, true)
	var obj map[string]json.RawMessage
	if jerr := json.Unmarshal([]byte(b.String()), &obj); jerr != nil {
		t.Fatalf("%v in %s", jerr, b.String())
	}
	if len(obj) != 3 || string(obj["0"]) == "" || !strings.Contains(string(obj["2"]), `"error": "node 2 (198.18.0.3): no answer within 5s"`) {
		t.Errorf("JSON sections %s", b.String())
	}
	if err == nil {
		t.Error("a failed node did not fail the command")
	}

	b.Reset()
	if err := printSections(&b, results[:2], false); err != nil {
		t.Errorf("all answered: %v", err)
	}
}

// peerNode is node pnn of fakeBackend's cluster, seen from itself.
type peerNode struct {
	*fakeBackend
	pnn int
}

func (p peerNode) Status(ctx context.Context) (admin.Status, error) {
	st, err := p.fakeBackend.Status(ctx)
	st.ThisPNN = p.pnn
	for i := range st.Nodes {
		st.Nodes[i].This = st.Nodes[i].PNN == p.pnn
	}
	return st, err
}

// fakeChannel is the cluster channel: node 1 answers through its own
// admin server, node 2 never does.
type fakeChannel struct {
	peers map[int]*admin.Server
	// delay: a forward's trip to the peer
	delay time.Duration
}

func (f fakeChannel) Forward(ctx context.Context, pnn int, req admin.ForwardRequest) (admin.ForwardResponse, error) {
	time.Sleep(f.delay)
	if s, ok := f.peers[pnn]; ok {
		return s.ServeForwarded(ctx, req), nil
	}
	if pnn == 2 {
		return admin.ForwardResponse{}, fmt.Errorf("node 2 (%s): no answer within 5s: %w", nodes[2], context.DeadlineExceeded)
	}
	return admin.ForwardResponse{}, fmt.Errorf("node %d: %w in the nodes file", pnn, admin.ErrUnknownNode)
}

// serveCluster serves node 0's admin API, forwarding to node 1 (and to a
// silent node 2); it returns node 0's run directory and both backends.
func serveCluster(t *testing.T) (dir string, here, peer *fakeBackend) {
	here, peer = &fakeBackend{}, &fakeBackend{}
	peerSrv := admin.NewServer(zap.NewNop(), peerNode{peer, 1})
	srv := admin.NewServer(zap.NewNop(), here)
	srv.SetForwarder(0, fakeChannel{peers: map[int]*admin.Server{1: peerSrv}})
	return serveServer(t, srv), here, peer
}

func TestAllNodesStatus(t *testing.T) {
	dir, _, _ := serveCluster(t)
	out, err := runAdmin(t, "-n", "all", "status", "--run-dir", dir)
	if err == nil || !strings.Contains(err.Error(), "1 of 3 nodes failed (PNN 2)") {
		t.Errorf("error %v, want node 2 failed", err)
	}
	for _, want := range []string{
		"PNN:0 198.18.0.1\nNumber of nodes:3\npnn:0 198.18.0.1       OK (THIS NODE)\n",
		"PNN:1 198.18.0.2\nNumber of nodes:3\npnn:0 198.18.0.1       OK\npnn:1 198.18.0.2       UNHEALTHY (THIS NODE)",
		"PNN:2 198.18.0.3\nerror: node 2 (198.18.0.3): no answer within 5s",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestAllNodesIPsJSON(t *testing.T) {
	dir, _, _ := serveCluster(t)
	out, err := runAdmin(t, "-n", "all", "ip", "--run-dir", dir, "--json")
	if err == nil {
		t.Error("node 2 failed but the command did not")
	}
	var got map[string]json.RawMessage
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("%v in %s", err, out)
	}
	for _, pnn := range []string{"0", "1"} {
		var ips []admin.IP
		if err := json.Unmarshal(got[pnn], &ips); err != nil || len(ips) != 3 {
			t.Errorf("node %s: %s (%v)", pnn, got[pnn], err)
		}
	}
	var failed struct{ Error string }
	if err := json.Unmarshal(got["2"], &failed); err != nil || !strings.Contains(failed.Error, "node 2") {
		t.Errorf("node 2: %s", got["2"])
	}
}

func TestOneNode(t *testing.T) {
	dir, here, peer := serveCluster(t)
	out, err := runAdmin(t, "-n", "1", "disable", "--run-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "node disabled") {
		t.Errorf("printed %q", out)
	}
	if got := peer.Calls(); !slices.Equal(got, []string{"disable"}) {
		t.Errorf("node 1 called %q, want disable", got)
	}
	if got := here.Calls(); len(got) != 0 {
		t.Errorf("node 0 called %q, want nothing", got)
	}
	out, err = runAdmin(t, "-n", "1", "ip", "--run-dir", dir)
	if err != nil || !strings.HasPrefix(out, "Public IPs on node 1\n") {
		t.Errorf("ip on node 1: %q, %v", out, err)
	}
	if _, err := runAdmin(t, "-n", "7", "status", "--run-dir", dir); err == nil || !strings.Contains(err.Error(), "node 7: no such node") {
		t.Errorf("unknown node: %v", err)
	}
	if _, err := runAdmin(t, "-n", "7,1", "status", "--run-dir", dir); err == nil || !strings.Contains(err.Error(), "node 7: no such node") {
		t.Errorf("unknown node in a list: %v", err)
	}
	if _, err := runAdmin(t, "-n", "x", "status", "--run-dir", dir); err == nil || !strings.Contains(err.Error(), "want a node's number") {
		t.Errorf("bad -n: %v", err)
	}
}

// Commands that work on this machine's maps refuse -n rather than
// silently answer for this node.
func TestNodeFlagRefusedByLocalCommands(t *testing.T) {
	var out strings.Builder
	app := newApp(env{stdout: &out, stderr: &out})
	app.ExitErrHandler = func(*cli.Context, error) {}
	err := app.Run([]string{"fsha", "-n", "2", "flows"})
	if err == nil || !strings.Contains(err.Error(), "fsha flows works on this machine only") {
		t.Errorf("fsha -n 2 flows: %v", err)
	}
}

// TestReloadThisNodeLast: fsha -n 0,1 reload reloads node 1 through this
// node's daemon before this node's: reloaded first, this daemon would be
// restarting while it forwards (TestReloadNodes in the lab: "fsha is not
// running here" for a node whose forward came late). The forward takes
// 100 ms, so that all at once would reach this node first.
func TestReloadThisNodeLast(t *testing.T) {
	order := &callOrder{}
	here := &fakeBackend{order: order, name: "node0"}
	peer := &fakeBackend{order: order, name: "node1"}
	peerSrv := admin.NewServer(zap.NewNop(), peerNode{peer, 1})
	srv := admin.NewServer(zap.NewNop(), here)
	srv.SetForwarder(0, fakeChannel{peers: map[int]*admin.Server{1: peerSrv}, delay: 100 * time.Millisecond})
	dir := serveServer(t, srv)
	out, err := runAdmin(t, "-n", "0,1", "reload", "--run-dir", dir)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got, want := order.get(), []string{"node1 reload", "node0 reload"}; !slices.Equal(got, want) {
		t.Errorf("reloads in the order %q, want %q", got, want)
	}
	want := "PNN:0 198.18.0.1\nconfiguration checked: restarting in place with it\n\nPNN:1 198.18.0.2\nconfiguration checked: restarting in place with it\n"
	if out != want {
		t.Errorf("printed %q, want %q", out, want)
	}
}
