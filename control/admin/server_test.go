package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// fakeBackend records calls and answers with canned data.
type fakeBackend struct {
	mu    sync.Mutex
	calls []string
	err   error // returned by every call when set

	status   Status
	ips      []IP
	timeline []Takeover
}

func (f *fakeBackend) record(format string, args ...any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf(format, args...))
	return f.err
}

func (f *fakeBackend) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

func (f *fakeBackend) Status(context.Context) (Status, error) {
	return f.status, f.record("status")
}

func (f *fakeBackend) IPs(context.Context) ([]IP, error) { return f.ips, f.record("ips") }

func (f *fakeBackend) Timeline(context.Context) ([]Takeover, error) {
	return f.timeline, f.record("timeline")
}

func (f *fakeBackend) Move(_ context.Context, vip netip.Addr, node string, kill bool) error {
	if node == "9" {
		return fmt.Errorf("%w: unknown node %q", ErrBadRequest, node)
	}
	return f.record("move %s %s %t", vip, node, kill)
}

func (f *fakeBackend) Disable(context.Context) error { return f.record("disable") }
func (f *fakeBackend) Tickle(_ context.Context, vip netip.Addr) (TickleResult, error) {
	return TickleResult{VIP: vip.String(), Conns: 2, Sent: 6}, f.record("tickle %s", vip)
}
func (f *fakeBackend) Enable(context.Context) error { return f.record("enable") }
func (f *fakeBackend) Ban(_ context.Context, d time.Duration) error {
	return f.record("ban %s", d)
}
func (f *fakeBackend) Unban(context.Context) error            { return f.record("unban") }
func (f *fakeBackend) OperatorStop(context.Context) error     { return f.record("stop") }
func (f *fakeBackend) OperatorContinue(context.Context) error { return f.record("continue") }

// shortDir is a temporary directory with a path short enough for a unix
// socket (t.TempDir can exceed the 108-byte limit with long test names).
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "fsha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// startServer serves b on a fresh socket until the test ends.
func startServer(t *testing.T, b Backend) string {
	t.Helper()
	sock := SocketPath(filepath.Join(shortDir(t), "run"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(zap.NewNop(), b).Serve(ctx, sock) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("server did not stop")
		}
	})
	waitForSocket(t, sock, done)
	return sock
}

func waitForSocket(t *testing.T, sock string, done <-chan error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("server stopped early: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no socket at %s after 5s", sock)
}

func TestClientServerRoundTrip(t *testing.T) {
	b := &fakeBackend{
		status: Status{ThisPNN: 1, Quorum: true, Policy: "automatic", Nodes: []NodeStatus{
			{PNN: 0, Address: "198.18.0.1", State: StateOK},
			{PNN: 1, Address: "198.18.0.2", State: StateOK, This: true, Quorum: true, VIPs: 2},
		}},
		ips: []IP{{VIP: "198.18.1.10/24", Iface: "eth0", Owner: "198.18.0.2", PNN: 1, Target: "198.18.0.2", State: "held"}},
		timeline: []Takeover{{VIP: "198.18.1.10/24", Iface: "eth0", Kind: "takeover", Reason: "move",
			Steps: []TimelineStep{{Step: "decision", At: time.Unix(1700000000, 0).UTC()}, {Step: "address up", At: time.Unix(1700000000, 2e6).UTC(), Took: 2 * time.Millisecond}}}},
	}
	c := NewClient(startServer(t, b))
	ctx := context.Background()

	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Nodes) != 2 || !st.Nodes[1].This || st.ThisPNN != 1 || !st.Quorum || st.Policy != "automatic" {
		t.Errorf("status = %+v", st)
	}
	ips, err := c.IPs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ips) != 1 || ips[0] != b.ips[0] {
		t.Errorf("ips = %+v, want %+v", ips, b.ips)
	}
	tl, err := c.Timeline(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(tl) != 1 || len(tl[0].Steps) != 2 || tl[0].Steps[1].Took != 2*time.Millisecond || !tl[0].Steps[1].At.Equal(b.timeline[0].Steps[1].At) {
		t.Errorf("timeline = %+v", tl)
	}
	for _, err := range []error{
		c.Move(ctx, netip.MustParseAddr("198.18.1.10"), "198.18.0.1", true),
		c.Disable(ctx),
		c.Enable(ctx),
		c.Ban(ctx, 90*time.Second),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"status", "ips", "timeline", "move 198.18.1.10 198.18.0.1 true", "disable", "enable", "ban 1m30s"}
	if got := b.Calls(); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("calls = %q, want %q", got, want)
	}
}

func TestEmptyListsAreArrays(t *testing.T) {
	sock := startServer(t, &fakeBackend{})
	for _, path := range []string{"ip", "timeline"} {
		code, body := raw(t, sock, http.MethodGet, path, "")
		if code != http.StatusOK || strings.TrimSpace(body) != "[]" {
			t.Errorf("GET %s = %d %q, want 200 []", path, code, body)
		}
	}
	if _, body := raw(t, sock, http.MethodGet, "status", ""); !strings.Contains(body, `"nodes":[]`) {
		t.Errorf("status body %q has no empty nodes array", body)
	}
}

func TestErrors(t *testing.T) {
	b := &fakeBackend{}
	sock := startServer(t, b)
	c := NewClient(sock)
	ctx := context.Background()

	// A backend's bad-request error is a 400 with its message.
	err := c.Move(ctx, netip.MustParseAddr("198.18.1.10"), "9", false)
	if !errors.Is(err, ErrBadRequest) || err.Error() != `bad request: unknown node "9"` {
		t.Errorf("move to unknown node: %v", err)
	}
	// Any other error is a 500 with its message, not a bad request.
	b.err = errors.New("controller stopped")
	err = c.Disable(ctx)
	var apiErr *Error
	if !errors.As(err, &apiErr) || apiErr.Code != http.StatusInternalServerError || err.Error() != "controller stopped" || errors.Is(err, ErrBadRequest) {
		t.Errorf("disable with failing backend: %#v", err)
	}
	b.err = nil
	// A daemon whose backend cannot reload says so.
	if err := c.Reload(ctx); err == nil || err.Error() != "this daemon cannot reload its configuration" {
		t.Errorf("reload without a Reloader: %v", err)
	}

	for _, tc := range []struct {
		name, method, path, body string
		code                     int
		msg                      string
	}{
		{"bad vip", "POST", "move", `{"vip":"198.18.1.300","node":"1"}`, 400, `bad VIP "198.18.1.300"`},
		{"vip with prefix", "POST", "move", `{"vip":"198.18.1.10/24","node":"1"}`, 204, ""},
		{"no node", "POST", "move", `{"vip":"198.18.1.10"}`, 400, "no node"},
		{"unknown field", "POST", "move", `{"vip":"198.18.1.10","node":"1","force":true}`, 400, `unknown field "force"`},
		{"trailing data", "POST", "move", `{"vip":"198.18.1.10","node":"1"} {}`, 400, "trailing data"},
		{"not json", "POST", "ban", `sixty`, 400, "decode body"},
		{"too big", "POST", "move", `{"vip":"` + strings.Repeat("1", maxBody) + `"}`, 400, "larger than"},
		{"ban zero", "POST", "ban", `{"seconds":0}`, 400, "out of range"},
		{"ban negative", "POST", "ban", `{"seconds":-5}`, 400, "out of range"},
		{"ban too long", "POST", "ban", `{"seconds":999999999}`, 400, "out of range"},
		{"disable with body", "POST", "disable", `{"now":true}`, 400, "unknown field"},
		{"disable empty body", "POST", "disable", ``, 204, ""},
		{"wrong method", "GET", "move", ``, 405, "use POST"},
		{"wrong method read", "POST", "status", `{}`, 405, "use GET"},
		{"unknown path", "GET", "nodes", ``, 404, "no such endpoint /v1/nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, body := raw(t, sock, tc.method, tc.path, tc.body)
			if code != tc.code {
				t.Errorf("code = %d, want %d (body %q)", code, tc.code, body)
			}
			var eb errorBody
			if tc.msg != "" && (json.Unmarshal([]byte(body), &eb) != nil || !strings.Contains(eb.Error, tc.msg)) {
				t.Errorf("body = %q, want an error containing %q", body, tc.msg)
			}
		})
	}
}

// raw sends a request by hand, for shapes the client never sends.
func raw(t *testing.T, sock, method, path, body string) (int, string) {
	t.Helper()
	c := NewClient(sock)
	defer c.CloseIdleConnections()
	req, err := http.NewRequest(method, "http://fsha/v1/"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestSocketModeAndCleanup(t *testing.T) {
	dir := filepath.Join(shortDir(t), "run")
	sock := SocketPath(dir)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- NewServer(zap.NewNop(), &fakeBackend{}).Serve(ctx, sock) }()
	waitForSocket(t, sock, done)

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Errorf("run dir mode = %v, want 0700", di.Mode().Perm())
	}

	// A second daemon on the same socket is refused and leaves it alone.
	err = NewServer(zap.NewNop(), &fakeBackend{}).Serve(ctx, sock)
	if !errors.Is(err, ErrAlreadyRunning) {
		t.Errorf("second serve: %v, want ErrAlreadyRunning", err)
	}
	if _, err := NewClient(sock).Status(ctx); err != nil {
		t.Errorf("first daemon unreachable after the second was refused: %v", err)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there after shutdown: %v", err)
	}
}

func TestLiveSocketWithoutLockRefused(t *testing.T) {
	// Something else (not holding fsha's lock) answers on the socket.
	sock := SocketPath(shortDir(t))
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	err = NewServer(zap.NewNop(), &fakeBackend{}).Serve(context.Background(), sock)
	if !errors.Is(err, ErrAlreadyRunning) || !strings.Contains(err.Error(), "a daemon answers on "+sock) {
		t.Errorf("serve over a live socket: %v", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	sock := SocketPath(shortDir(t))
	// A socket whose listener is gone: bind without unlink-on-close.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("stale socket not left: %v", err)
	}
	_, err = NewClient(sock).Status(context.Background())
	if !errors.Is(err, ErrNotRunning) || !strings.Contains(err.Error(), "nothing answers on "+sock) {
		t.Errorf("client on a stale socket: %v", err)
	}

	b := &fakeBackend{status: Status{ThisPNN: 3}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- NewServer(zap.NewNop(), b).Serve(ctx, sock) }()
	waitForSocket(t, sock, done)
	st, err := NewClient(sock).Status(ctx)
	if err != nil || st.ThisPNN != 3 {
		t.Errorf("status over the replaced socket = %+v, %v", st, err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestNotASocketRefused(t *testing.T) {
	sock := SocketPath(shortDir(t))
	if err := os.WriteFile(sock, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := NewServer(zap.NewNop(), &fakeBackend{}).Serve(context.Background(), sock)
	if err == nil || !strings.Contains(err.Error(), "is not a socket") {
		t.Errorf("serve over a regular file: %v", err)
	}
	if b, err := os.ReadFile(sock); err != nil || string(b) != "keep me" {
		t.Errorf("regular file changed: %q, %v", b, err)
	}
}

func TestClientNotRunning(t *testing.T) {
	sock := SocketPath(filepath.Join(shortDir(t), "missing"))
	_, err := NewClient(sock).Status(context.Background())
	want := "fsha is not running here (no socket at " + sock + "): start `fsha up` or pass --run-dir"
	if !errors.Is(err, ErrNotRunning) || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestClientTimeout(t *testing.T) {
	sock := startServer(t, slowBackend{&fakeBackend{}})
	c := NewClient(sock)
	c.Timeout = 50 * time.Millisecond
	start := time.Now()
	_, err := c.Status(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("timed out after %v", took)
	}
}

// slowBackend's Status blocks until its request is cancelled.
type slowBackend struct{ *fakeBackend }

func (s slowBackend) Status(ctx context.Context) (Status, error) {
	<-ctx.Done()
	return Status{}, ctx.Err()
}

func TestParseVIP(t *testing.T) {
	for in, want := range map[string]string{
		"198.18.1.10":        "198.18.1.10",
		" 198.18.1.10/24 ":   "198.18.1.10",
		"2001:2::10/64":      "2001:2::10",
		"::ffff:198.18.1.10": "198.18.1.10",
	} {
		got, err := ParseVIP(in)
		if err != nil || got.String() != want {
			t.Errorf("ParseVIP(%q) = %v, %v, want %s", in, got, err, want)
		}
	}
	for _, in := range []string{"", "node1", "198.18.1", "198.18.1.10/33"} {
		if _, err := ParseVIP(in); !errors.Is(err, ErrBadRequest) {
			t.Errorf("ParseVIP(%q) err = %v, want ErrBadRequest", in, err)
		}
	}
}

// gateBackend's Disable waits for release (or its request's end).
type gateBackend struct {
	*fakeBackend
	entered, release chan struct{}
}

func (g gateBackend) Disable(ctx context.Context) error {
	close(g.entered)
	select {
	case <-g.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestGracefulShutdown(t *testing.T) {
	g := gateBackend{&fakeBackend{}, make(chan struct{}), make(chan struct{})}
	sock := SocketPath(shortDir(t))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- NewServer(zap.NewNop(), g).Serve(ctx, sock) }()
	waitForSocket(t, sock, done)

	reqErr := make(chan error, 1)
	go func() { reqErr <- NewClient(sock).Disable(context.Background()) }()
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("request never reached the backend")
	}
	cancel()
	select {
	case err := <-done:
		t.Fatalf("server stopped with a request running: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(g.release)
	select {
	case err := <-reqErr:
		if err != nil {
			t.Errorf("request running at shutdown: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("request did not finish")
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop")
	}
}
