package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
)

// fakeBackend is a three-node cluster seen from node 0.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string
	// refuse: the configuration Reload refuses, if any
	refuse string
	// order, if set, gets "name call" of every call, across backends
	order *callOrder
	name  string
}

// callOrder is the order of calls across several fake nodes.
type callOrder struct {
	mu    sync.Mutex
	calls []string
}

func (o *callOrder) add(s string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.calls = append(o.calls, s)
}

func (o *callOrder) get() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.calls...)
}

func (f *fakeBackend) record(s string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, s)
	if f.order != nil {
		f.order.add(f.name + " " + s)
	}
}

func (f *fakeBackend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

var nodes = []string{"198.18.0.1", "198.18.0.2", "198.18.0.3"}

func (f *fakeBackend) Status(context.Context) (admin.Status, error) {
	return admin.Status{
		ThisPNN: 0, Quorum: true, Policy: "automatic",
		Nodes: []admin.NodeStatus{
			{PNN: 0, Address: nodes[0], State: admin.StateOK, This: true, Quorum: true, VIPs: 2},
			{PNN: 1, Address: nodes[1], State: admin.StateUnhealthy, Quorum: true, Skew: "public addresses differ (4 VIPs, the majority has 3)"},
			{PNN: 2, Address: nodes[2], State: admin.StateDisconnected, Reason: "no heartbeat from it for more than a lease (250ms)"},
		},
	}, nil
}

func (f *fakeBackend) IPs(context.Context) ([]admin.IP, error) {
	return []admin.IP{
		{VIP: "198.18.1.12/24", Iface: "eth0", PNN: -1, State: "unassigned"},
		{VIP: "198.18.1.10/24", Iface: "eth0", Owner: nodes[0], PNN: 0, Target: nodes[0], State: "held", Epoch: 3, LeaseLeft: 212 * time.Millisecond},
		{VIP: "198.18.1.11/24", Iface: "eth0,eth1", Owner: nodes[0], PNN: 0, Target: nodes[1], State: "moving", Epoch: 1, LeaseLeft: 240400 * time.Microsecond},
	}, nil
}

var decision = time.Date(2026, 3, 1, 12, 30, 0, 0, time.UTC)

func (f *fakeBackend) Timeline(context.Context) ([]admin.Takeover, error) {
	return []admin.Takeover{
		{
			VIP: "198.18.1.10/24", Iface: "eth0", Kind: "takeover", Reason: "node 198.18.0.2 died", From: nodes[1],
			Steps: []admin.TimelineStep{
				{Step: "decision", At: decision},
				{Step: "address up", At: decision.Add(2 * time.Millisecond), Took: 2 * time.Millisecond},
				{Step: "first announcement (gratuitous ARP)", At: decision.Add(3400 * time.Microsecond), Took: 3400 * time.Microsecond},
				{Step: "hooks done", At: decision.Add(41 * time.Millisecond), Took: 41 * time.Millisecond},
			},
		},
		{
			VIP: "198.18.1.11/24", Iface: "eth0", Kind: "release", Reason: "move", From: "",
			Steps: []admin.TimelineStep{
				{Step: "decision", At: decision.Add(time.Minute)},
				{Step: "address down", At: decision.Add(time.Minute + 1500*time.Millisecond), Took: 1500 * time.Millisecond},
			},
			Error: "hook nfs-release: exit status 1",
		},
	}, nil
}

func (f *fakeBackend) Move(_ context.Context, vip netip.Addr, node string, kill bool) error {
	if node != "0" && node != "1" && node != nodes[1] {
		return fmt.Errorf("%w: unknown node %q", admin.ErrBadRequest, node)
	}
	f.record(fmt.Sprintf("move %s %s %t", vip, node, kill))
	return nil
}

func (f *fakeBackend) Disable(context.Context) error { f.record("disable"); return nil }
func (f *fakeBackend) Enable(context.Context) error  { f.record("enable"); return nil }
func (f *fakeBackend) Ban(_ context.Context, d time.Duration) error {
	f.record("ban " + d.String())
	return nil
}
func (f *fakeBackend) Unban(context.Context) error        { f.record("unban"); return nil }
func (f *fakeBackend) OperatorStop(context.Context) error { f.record("stop"); return nil }
func (f *fakeBackend) Reload(context.Context) error {
	if f.refuse != "" {
		return errors.New(f.refuse)
	}
	f.record("reload")
	return nil
}
func (f *fakeBackend) OperatorContinue(context.Context) error { f.record("continue"); return nil }

func (f *fakeBackend) Tickle(_ context.Context, vip netip.Addr) (admin.TickleResult, error) {
	f.record("tickle " + vip.String())
	return admin.TickleResult{VIP: vip.String(), Conns: 3, Sent: 9, Resets: 3}, nil
}

// serve runs an admin server for b in a fresh run directory until the test
// ends and returns the directory.
func serve(t *testing.T, b admin.Backend) string {
	t.Helper()
	return serveServer(t, admin.NewServer(zap.NewNop(), b))
}

// serveServer runs srv in a fresh run directory until the test ends and
// returns the directory.
func serveServer(t *testing.T, srv *admin.Server) string {
	t.Helper()
	runDir := shortTempDir(t) + "/run"
	sock := admin.SocketPath(runDir)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("admin server did not stop")
		}
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return runDir
		}
		select {
		case err := <-done:
			t.Fatalf("admin server stopped: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("no admin socket at %s after 5s", sock)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// shortTempDir is short enough for a unix socket path.
func shortTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fsha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// runAdmin runs an app made of the admin commands, as main would.
func runAdmin(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	e := env{stdout: &stdout, stderr: &stderr}
	app := &cli.App{
		Name: "fsha", Writer: e.stdout, ErrWriter: e.stderr,
		Flags:          []cli.Flag{nodeFlag()},
		Commands:       adminCommands(e),
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.Run(append([]string{"fsha"}, args...))
	return stdout.String(), err
}

func TestStatusCommand(t *testing.T) {
	dir := serve(t, &fakeBackend{})
	out, err := runAdmin(t, "status", "--run-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	want := `Number of nodes:3
pnn:0 198.18.0.1       OK (THIS NODE)
pnn:1 198.18.0.2       UNHEALTHY config differs: public addresses differ (4 VIPs, the majority has 3)
pnn:2 198.18.0.3       DISCONNECTED
       why: no heartbeat from it for more than a lease (250ms)
Quorum: yes (2 of 3 nodes)   Failback: automatic   Lock: none
`
	if out != want {
		t.Errorf("status:\n%s\nwant:\n%s", out, want)
	}

	out, err = runAdmin(t, "status", "--run-dir", dir, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Nodes []struct {
			PNN     int    `json:"pnn"`
			Address string `json:"address"`
			State   string `json:"state"`
			This    bool   `json:"this"`
		} `json:"nodes"`
		Quorum bool `json:"quorum"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if !st.Quorum || len(st.Nodes) != 3 || st.Nodes[0].Address != nodes[0] || !st.Nodes[0].This ||
		st.Nodes[1].State != "UNHEALTHY" || st.Nodes[2].This || st.Nodes[2].PNN != 2 {
		t.Errorf("status --json = %+v", st)
	}
}

func TestPrintStatusLock(t *testing.T) {
	for _, tc := range []struct {
		held bool
		want string
	}{
		{true, "Quorum: no (0 of 0 nodes)   Failback: sticky   Lock: /srv/lock (held)\n"},
		{false, "Quorum: no (0 of 0 nodes)   Failback: sticky   Lock: /srv/lock (not held)\n"},
	} {
		var b bytes.Buffer
		if err := printStatus(&b, admin.Status{Policy: "sticky", Lock: "/srv/lock", LockHeld: tc.held}); err != nil {
			t.Fatal(err)
		}
		if got := strings.SplitN(b.String(), "\n", 2)[1]; got != tc.want {
			t.Errorf("held=%t: %q, want %q", tc.held, got, tc.want)
		}
	}
}

func TestIPCommand(t *testing.T) {
	dir := serve(t, &fakeBackend{})
	t.Setenv("FSHA_RUN_DIR", dir) // the environment works as well as the flag
	out, err := runAdmin(t, "ip")
	if err != nil {
		t.Fatal(err)
	}
	want := `Public IPs on node 0
VIP             PNN  OWNER       IFACE      EPOCH  LEASE  STATE
198.18.1.10/24  0    198.18.0.1  eth0       3      212ms  held
198.18.1.11/24  0    198.18.0.1  eth0,eth1  1      240ms  moving to pnn:1 198.18.0.2
198.18.1.12/24  -1   -           eth0       -      -      unassigned
`
	if out != want {
		t.Errorf("ip:\n%s\nwant:\n%s", out, want)
	}

	out, err = runAdmin(t, "ip", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var ips []map[string]any
	if err := json.Unmarshal([]byte(out), &ips); err != nil {
		t.Fatalf("ip --json: %v\n%s", err, out)
	}
	if len(ips) != 3 {
		t.Fatalf("ip --json: %d entries, want 3", len(ips))
	}
	for k, v := range map[string]any{"vip": "198.18.1.12/24", "iface": "eth0", "owner": "", "pnn": float64(-1), "state": "unassigned"} {
		if ips[0][k] != v {
			t.Errorf("ip --json [0].%s = %v, want %v", k, ips[0][k], v)
		}
	}
}

func TestTimelineCommand(t *testing.T) {
	dir := serve(t, &fakeBackend{})
	out, err := runAdmin(t, "timeline", "--run-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	// Times print in the local zone.
	local := func(d time.Duration) string { return decision.Add(d).Local().Format("2006-01-02 15:04:05.000") }
	want := `takeover 198.18.1.10/24 on eth0 at ` + local(0) + ` (node 198.18.0.2 died)
  +0ms     decision
  +2ms     address up
  +3.4ms   first announcement (gratuitous ARP)
  +41ms    hooks done

release 198.18.1.11/24 on eth0 at ` + local(time.Minute) + ` (move)
  +0ms     decision
  +1.500s  address down
  FAILED: hook nfs-release: exit status 1
`
	if out != want {
		t.Errorf("timeline:\n%s\nwant:\n%s", out, want)
	}

	out, err = runAdmin(t, "timeline", "--run-dir", dir, "--json", "--vip", "198.18.1.11")
	if err != nil {
		t.Fatal(err)
	}
	var tl []admin.Takeover
	if err := json.Unmarshal([]byte(out), &tl); err != nil {
		t.Fatalf("timeline --json: %v\n%s", err, out)
	}
	if len(tl) != 1 || tl[0].VIP != "198.18.1.11/24" || tl[0].Steps[1].Took != 1500*time.Millisecond {
		t.Errorf("timeline --json --vip = %+v", tl)
	}
}

func TestEmptyTimeline(t *testing.T) {
	var b bytes.Buffer
	if err := printTimeline(&b, nil); err != nil {
		t.Fatal(err)
	}
	if b.String() != "no takeovers or releases recorded yet\n" {
		t.Errorf("empty timeline: %q", b.String())
	}
}

func TestChangeCommands(t *testing.T) {
	b := &fakeBackend{}
	dir := serve(t, b)
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"move", "--run-dir", dir, "198.18.1.10/24", "1"}, "moving 198.18.1.10 to node 1 (draining its connections)\n"},
		{[]string{"move", "--run-dir", dir, "--kill", "198.18.1.11", "198.18.0.2"}, "moving 198.18.1.11 to node 198.18.0.2 (killing its connections)\n"},
		// the fake's other nodes are UNHEALTHY and DISCONNECTED
		{[]string{"disable", "--run-dir", dir}, "node disabled, but no other node is OK to take its VIPs: they stay here until one is\n"},
		{[]string{"enable", "--run-dir", dir}, "node enabled\n"},
		{[]string{"ban", "--run-dir", dir, "300"}, "node banned for 5m0s\n"},
		{[]string{"unban", "--run-dir", dir}, "node unbanned\n"},
		{[]string{"stop", "--run-dir", dir}, "node stopped: its VIPs move to other nodes until fsha continue\n"},
		{[]string{"continue", "--run-dir", dir}, "node continues\n"},
		{[]string{"reload", "--run-dir", dir}, "configuration checked: restarting in place with it\n"},
		// Flags after the arguments, as ctdb users type them.
		{[]string{"move", "198.18.1.12", "1", "--kill", "--run-dir", dir}, "moving 198.18.1.12 to node 1 (killing its connections)\n"},
		{[]string{"ban", "60", "--run-dir=" + dir}, "node banned for 1m0s\n"},
		{[]string{"move", "--run-dir", dir, "--", "198.18.1.13", "1"}, "moving 198.18.1.13 to node 1 (draining its connections)\n"},
		{[]string{"move", "--run-dir", dir, "198.18.1.10", "0"}, "198.18.1.10 is already on node 0: it stays there (nothing moves)\n"},
	} {
		out, err := runAdmin(t, tc.args...)
		if err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if out != tc.out {
			t.Errorf("%v: printed %q, want %q", tc.args, out, tc.out)
		}
	}
	want := "move 198.18.1.10 1 false|move 198.18.1.11 198.18.0.2 true|disable|enable|ban 5m0s|unban|stop|continue|reload|" +
		"move 198.18.1.12 1 true|ban 1m0s|move 198.18.1.13 1 false|move 198.18.1.10 0 false"
	if got := strings.Join(b.Calls(), "|"); got != want {
		t.Errorf("backend calls %q, want %q", got, want)
	}
}

func TestCommandErrors(t *testing.T) {
	b := &fakeBackend{}
	dir := serve(t, b)
	missing := shortTempDir(t) + "/nothing"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"move", "--run-dir", dir, "198.18.1.300", "1"}, `move: bad VIP "198.18.1.300": want an address such as 198.18.1.10`},
		{[]string{"move", "--run-dir", dir, "198.18.1.10", "7"}, `bad request: unknown node "7"`},
		{[]string{"move", "--run-dir", dir, "198.18.1.10"}, "move: want 2 argument(s) VIP NODE, got 1 (usage: fsha move VIP NODE)"},
		{[]string{"ban", "--run-dir", dir, "soon"}, `ban: bad SECONDS "soon": want a whole number of seconds from 1 to 86400`},
		{[]string{"ban", "--run-dir", dir, "0"}, `ban: bad SECONDS "0"`},
		{[]string{"ban", "--run-dir", dir, "100000"}, `ban: bad SECONDS "100000": want a whole number of seconds from 1 to 86400`},
		{[]string{"status", "--run-dir", dir, "extra"}, `status takes no arguments, got ["extra"]`},
		{[]string{"move", "--run-dir", dir, "198.18.1.10", "1", "--force"}, "move: unknown flag --force"},
		{[]string{"ban", "60", "--run-dir"}, "ban: flag --run-dir needs a value"},
		{[]string{"move", "--run-dir", dir, "198.18.1.10", "1", "--kill=maybe"}, "move: --kill=maybe:"},
		{[]string{"timeline", "--run-dir", dir, "--vip", "eth0"}, `--vip: bad VIP "eth0"`},
		{[]string{"status", "--run-dir", missing}, "fsha is not running here (no socket at " + missing + "/fsha.sock): start `fsha up` or pass --run-dir"},
		{[]string{"ip", "--run-dir", missing, "--json"}, "fsha is not running here (no socket at " + missing + "/fsha.sock)"},
		{[]string{"disable", "--run-dir", missing}, "fsha is not running here"},
	} {
		out, err := runAdmin(t, tc.args...)
		if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
			t.Errorf("%v: err = %v, want %q", tc.args, err, tc.want)
		}
		if out != "" {
			t.Errorf("%v: printed %q on error", tc.args, out)
		}
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("failed commands reached the backend: %q", calls)
	}
	_, err := runAdmin(t, "status", "--run-dir", missing)
	if !errors.Is(err, admin.ErrNotRunning) {
		t.Errorf("err %v is not ErrNotRunning", err)
	}
}

func TestSocketIsPrivate(t *testing.T) {
	dir := serve(t, &fakeBackend{})
	fi, err := os.Stat(admin.SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("admin socket mode %v, want socket 0600", fi.Mode())
	}
}

func TestAdminFlagsFollowStyle(t *testing.T) {
	for _, cmd := range adminCommands(env{}) {
		hasRunDir := false
		for _, f := range cmd.Flags {
			name := f.Names()[0]
			if name != strings.ToLower(name) || strings.Contains(name, "_") {
				t.Errorf("%s --%s: not kebab-case", cmd.Name, name)
			}
			hasRunDir = hasRunDir || name == "run-dir"
			if name == "json" {
				continue // output format, not a setting
			}
			ev, ok := f.(interface{ GetEnvVars() []string })
			if !ok || len(ev.GetEnvVars()) == 0 || !strings.HasPrefix(ev.GetEnvVars()[0], "FSHA_") {
				t.Errorf("%s --%s: no FSHA_ environment variable", cmd.Name, name)
			}
		}
		if !hasRunDir {
			t.Errorf("%s: no --run-dir", cmd.Name)
		}
	}
}

func TestTickleCommand(t *testing.T) {
	b := &fakeBackend{}
	dir := serve(t, b)
	out, err := runAdmin(t, "tickle", "--run-dir", dir, "198.18.1.10")
	if err != nil {
		t.Fatal(err)
	}
	if want := "tickled 3 connections of 198.18.1.10 (9 segments, first round in 0s, 3 resets from this node's stack)\n"; out != want {
		t.Errorf("printed %q, want %q", out, want)
	}
	out, err = runAdmin(t, "tickle", "--run-dir", dir, "--json", "198.18.1.11")
	if err != nil || !strings.Contains(out, `"connections": 3`) || !strings.Contains(out, `"vip": "198.18.1.11"`) {
		t.Errorf("json: %q %v", out, err)
	}
	if _, err := runAdmin(t, "tickle", "--run-dir", dir, "nonsense"); err == nil {
		t.Error("bad VIP accepted")
	}
	if got := strings.Join(b.Calls(), "|"); got != "tickle 198.18.1.10|tickle 198.18.1.11" {
		t.Errorf("backend calls %q", got)
	}
}

// Without quorum, status says what is missing; a node that is not OK says
// why under its line.
func TestPrintStatusReasons(t *testing.T) {
	var b strings.Builder
	err := printStatus(&b, admin.Status{Policy: "automatic", QuorumReason: "hears 1 of 3 nodes, a majority is 2; not heard: 198.18.0.2, 198.18.0.3",
		Nodes: []admin.NodeStatus{
			{PNN: 0, Address: nodes[0], State: admin.StateUnhealthy, This: true, Reason: "tcp:198.18.0.1:445 failing (2 runs in a row): connection refused"},
			{PNN: 1, Address: nodes[1], State: admin.StateDisconnected, Reason: "no heartbeat"},
			{PNN: 2, Address: nodes[2], State: admin.StateDisconnected, Reason: "no heartbeat"},
		}})
	if err != nil {
		t.Fatal(err)
	}
	want := `Number of nodes:3
pnn:0 198.18.0.1       UNHEALTHY (THIS NODE)
       why: tcp:198.18.0.1:445 failing (2 runs in a row): connection refused
pnn:1 198.18.0.2       DISCONNECTED
       why: no heartbeat
pnn:2 198.18.0.3       DISCONNECTED
       why: no heartbeat
Quorum: no (1 of 3 nodes)   Failback: automatic   Lock: none
       why: hears 1 of 3 nodes, a majority is 2; not heard: 198.18.0.2, 198.18.0.3
`
	if b.String() != want {
		t.Errorf("status:\n%s\nwant:\n%s", b.String(), want)
	}
}

// fsha status ends with this node's interfaces: the public ones with
// link (missing for one that does not exist), driver, XDP mode and
// steering path, then the reply ones (egress only).
func TestPrintStatusInterfaces(t *testing.T) {
	var b strings.Builder
	err := printStatus(&b, admin.Status{Policy: "automatic", Quorum: true, Interfaces: []admin.InterfaceStatus{
		{Name: "eth1", Role: admin.RolePublic, Link: true, Present: true, Driver: "veth", XDPMode: "native", Steer: "tc"},
		{Name: "eth2", Role: admin.RolePublic, Link: false, Present: true, Driver: "macvlan", XDPMode: "generic", Steer: "tc"},
		{Name: "eth3", Role: admin.RolePublic},
		{Name: "eth0", Role: admin.RoleReply, Link: true, Present: true},
	}})
	if err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"This node's interfaces:\n",
		"INTERFACE  ROLE    LINK     DRIVER   XDP      STEERING\n",
		"eth1       public  yes      veth     native   tc\n",
		"eth2       public  no       macvlan  generic  tc\n",
		"eth3       public  missing  -        -        -\n",
		"eth0       reply   yes      -        -        -\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
}

// TestReloadRefused: a configuration the daemon refuses is fsha reload's
// error, with the daemon's reason, and nothing restarts.
func TestReloadRefused(t *testing.T) {
	b := &fakeBackend{refuse: "configuration refused, the running one goes on: /etc/fsha/nodes line 3: bad address \"198.18.0.x\""}
	dir := serve(t, b)
	out, err := runAdmin(t, "reload", "--run-dir", dir)
	if err == nil || !strings.Contains(err.Error(), `line 3: bad address "198.18.0.x"`) {
		t.Errorf("fsha reload: %v (printed %q), want the daemon's reason", err, out)
	}
	if calls := b.Calls(); len(calls) != 0 {
		t.Errorf("backend calls %v, want none", calls)
	}
}
