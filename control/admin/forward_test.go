package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
)

// fakeForwarder is the cluster channel in-process: node PNN's requests go
// to targets[PNN].ServeForwarded, as the remote package would deliver
// them; a node missing from targets but listed in known never answers.
type fakeForwarder struct {
	targets map[int]*Server
	known   map[int]bool

	mu   sync.Mutex
	sent []ForwardRequest
}

func (f *fakeForwarder) Forward(ctx context.Context, pnn int, req ForwardRequest) (ForwardResponse, error) {
	f.mu.Lock()
	f.sent = append(f.sent, req)
	f.mu.Unlock()
	if t, ok := f.targets[pnn]; ok {
		return t.ServeForwarded(ctx, req), nil
	}
	if f.known[pnn] {
		<-ctx.Done()
		return ForwardResponse{}, fmt.Errorf("node %d (198.18.0.%d): no answer within 5s: %w", pnn, pnn+1, ctx.Err())
	}
	return ForwardResponse{}, fmt.Errorf("node %d: %w in the nodes file", pnn, ErrUnknownNode)
}

func (f *fakeForwarder) Sent() []ForwardRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.sent)
}

// loopForwarder fails the test if a node forwards what was forwarded to it.
type loopForwarder struct{ t *testing.T }

func (l loopForwarder) Forward(context.Context, int, ForwardRequest) (ForwardResponse, error) {
	l.t.Error("a forwarded request was forwarded again")
	return ForwardResponse{}, errors.New("loop")
}

// forwardCluster is node 0 (origin) with node 1 (target) behind a fake
// channel; node 2 is known but never answers.
func forwardCluster(t *testing.T) (origin *Server, fwd *fakeForwarder, local, target *fakeBackend) {
	local = &fakeBackend{status: Status{ThisPNN: 0}}
	target = &fakeBackend{status: Status{ThisPNN: 1}, ips: []IP{{VIP: "198.18.1.10/24", PNN: 1}}}
	targetSrv := NewServer(zap.NewNop(), target)
	targetSrv.SetForwarder(1, loopForwarder{t})
	fwd = &fakeForwarder{targets: map[int]*Server{1: targetSrv}, known: map[int]bool{2: true}}
	origin = NewServer(zap.NewNop(), local)
	origin.SetForwarder(0, fwd)
	return origin, fwd, local, target
}

// ask sends a request through the origin's socket handler (access check,
// forwarding, routes) as peer uid.
func ask(s *Server, uid uint32, method, path, body, node string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, "http://fsha"+path, strings.NewReader(body))
	if node != "" {
		req.Header.Set(NodeHeader, node)
	}
	req = req.WithContext(context.WithValue(req.Context(), peerKey{}, Peer{UID: uid}))
	rec := httptest.NewRecorder()
	s.authorized(s.forwarding(s.mux)).ServeHTTP(rec, req)
	return rec
}

func TestForward(t *testing.T) {
	const root, member = 0, 1000 // member: an --admin-group member, read-only
	for _, tc := range []struct {
		name           string
		uid            uint32
		method, path   string
		body, node     string
		wantCode       int
		wantIn         string // in the body
		wantLocal      []string
		wantTarget     []string
		wantForwarded  bool
		wantFullAccess bool
	}{
		{name: "read on another node", uid: root, method: "GET", path: "/v1/ip", node: "1",
			wantCode: 200, wantIn: "198.18.1.10/24", wantTarget: []string{"ips"}, wantForwarded: true, wantFullAccess: true},
		{name: "read-only caller reads another node", uid: member, method: "GET", path: "/v1/status", node: "1",
			wantCode: 200, wantIn: `"this_pnn":1`, wantTarget: []string{"status"}, wantForwarded: true},
		{name: "change on another node", uid: root, method: "POST", path: "/v1/disable", body: "{}", node: "1",
			wantCode: 204, wantTarget: []string{"disable"}, wantForwarded: true, wantFullAccess: true},
		{name: "read-only caller may not change another node", uid: member, method: "POST", path: "/v1/disable", body: "{}", node: "1",
			wantCode: 403, wantIn: "read-only"},
		{name: "this node's own number is served here", uid: root, method: "GET", path: "/v1/status", node: "0",
			wantCode: 200, wantIn: `"this_pnn":0`, wantLocal: []string{"status"}},
		{name: "no header is served here", uid: member, method: "GET", path: "/v1/ip",
			wantCode: 200, wantLocal: []string{"ips"}},
		{name: "unknown node", uid: root, method: "GET", path: "/v1/status", node: "7",
			wantCode: 404, wantIn: "node 7: no such node", wantForwarded: true, wantFullAccess: true},
		{name: "bad node", uid: root, method: "GET", path: "/v1/status", node: "two",
			wantCode: 400, wantIn: "want a node's number"},
		{name: "no such endpoint is not forwarded", uid: root, method: "GET", path: "/v1/nothing", node: "1",
			wantCode: 404, wantIn: "no such endpoint"},
		{name: "bad request is the target's to refuse", uid: root, method: "POST", path: "/v1/ban", body: `{"seconds":0}`, node: "1",
			wantCode: 400, wantIn: "out of range", wantForwarded: true, wantFullAccess: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			origin, fwd, local, target := forwardCluster(t)
			rec := ask(origin, tc.uid, tc.method, tc.path, tc.body, tc.node)
			if rec.Code != tc.wantCode || !strings.Contains(rec.Body.String(), tc.wantIn) {
				t.Errorf("answer %d %q, want %d with %q", rec.Code, rec.Body.String(), tc.wantCode, tc.wantIn)
			}
			if got := local.Calls(); !slices.Equal(got, tc.wantLocal) {
				t.Errorf("origin's backend called %q, want %q", got, tc.wantLocal)
			}
			if got := target.Calls(); !slices.Equal(got, tc.wantTarget) {
				t.Errorf("target's backend called %q, want %q", got, tc.wantTarget)
			}
			sent := fwd.Sent()
			if (len(sent) > 0) != tc.wantForwarded {
				t.Fatalf("forwarded %+v, want forwarded=%v", sent, tc.wantForwarded)
			}
			if len(sent) > 0 && sent[0].Full != tc.wantFullAccess {
				t.Errorf("forwarded with full access %v, want %v", sent[0].Full, tc.wantFullAccess)
			}
		})
	}
}

// A node that does not answer: the caller learns which one, as a gateway
// timeout, once the forward's time is up.
func TestForwardTimeout(t *testing.T) {
	origin, _, _, _ := forwardCluster(t)
	req := httptest.NewRequest("GET", "http://fsha/v1/status", nil)
	req.Header.Set(NodeHeader, "2")
	ctx, cancel := context.WithCancel(context.WithValue(req.Context(), peerKey{}, Peer{UID: 0}))
	cancel() // the forward's time is up at once
	rec := httptest.NewRecorder()
	origin.authorized(origin.forwarding(origin.mux)).ServeHTTP(rec, req.WithContext(ctx))
	if rec.Code != http.StatusGatewayTimeout && rec.Code != http.StatusBadGateway {
		t.Errorf("answer %d, want a gateway error", rec.Code)
	}
	if !strings.Contains(rec.Body.String(), "node 2 (198.18.0.3): no answer") {
		t.Errorf("answer %q does not name the node", rec.Body.String())
	}
}

// The target decides for itself: a change that does not come marked as
// from a full-access caller is refused there, whatever the origin did.
func TestServeForwardedRefusesUnmarkedChanges(t *testing.T) {
	b := &fakeBackend{}
	s := NewServer(zap.NewNop(), b)
	s.SetForwarder(1, loopForwarder{t})
	for _, tc := range []struct {
		req  ForwardRequest
		code int
	}{
		{ForwardRequest{Method: "POST", Path: "/v1/enable", Body: []byte("{}")}, http.StatusForbidden},
		{ForwardRequest{Method: "POST", Path: "/v1/ban", Body: []byte(`{"seconds":5}`)}, http.StatusForbidden},
		{ForwardRequest{Method: "GET", Path: "/v1/timeline"}, http.StatusOK},
		{ForwardRequest{Method: "POST", Path: "/v1/enable", Body: []byte("{}"), Full: true}, http.StatusNoContent},
		{ForwardRequest{Method: "GET", Path: "/v1/none", Full: true}, http.StatusNotFound},
		{ForwardRequest{Method: "POST", Path: "/v1/status", Full: true}, http.StatusMethodNotAllowed},
	} {
		resp := s.ServeForwarded(context.Background(), tc.req)
		if resp.Code != tc.code {
			t.Errorf("%s %s full=%v: %d %s, want %d", tc.req.Method, tc.req.Path, tc.req.Full, resp.Code, resp.Body, tc.code)
		}
	}
	if got, want := b.Calls(), []string{"timeline", "enable"}; !slices.Equal(got, want) {
		t.Errorf("backend called %q, want %q", got, want)
	}
}

// A forwarded request carrying NodeHeader (a node asking on behalf of
// another) is served where it arrives: it never travels on.
func TestServeForwardedDoesNotLoop(t *testing.T) {
	b := &fakeBackend{}
	s := NewServer(zap.NewNop(), b)
	s.SetForwarder(1, loopForwarder{t})
	resp := s.ServeForwarded(context.Background(), ForwardRequest{Method: "GET", Path: "/v1/status"})
	if resp.Code != http.StatusOK {
		t.Errorf("answer %d %s", resp.Code, resp.Body)
	}
}

// A daemon without a forwarder (tests, other transports) says so.
func TestForwardWithoutForwarder(t *testing.T) {
	s := NewServer(zap.NewNop(), &fakeBackend{})
	rec := ask(s, 0, "GET", "/v1/status", "", "1")
	if rec.Code != http.StatusNotImplemented || !strings.Contains(rec.Body.String(), "node 1") {
		t.Errorf("answer %d %q, want 501 naming node 1", rec.Code, rec.Body.String())
	}
}

// A daemon that ignores NodeHeader (a release before -n) answers for
// itself: the client refuses that answer rather than show it as the other
// node's. A new daemon's answers name their node.
func TestClientNoticesDaemonThatDoesNotForward(t *testing.T) {
	sock := filepath.Join(shortDir(t), "old.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	old := &http.Server{Handler: NewServer(zap.NewNop(), &fakeBackend{}).Handler()} // routes only: no forwarding
	go func() { _ = old.Serve(ln) }()
	t.Cleanup(func() { old.Close() })
	cl := NewClient(sock)
	if _, err := cl.On(1).Status(context.Background()); err == nil || !strings.Contains(err.Error(), "answered for itself, not for node 1") {
		t.Errorf("old daemon: %v, want an error", err)
	}
	if _, err := cl.Status(context.Background()); err != nil {
		t.Errorf("without -n: %v", err)
	}

	origin, _, _, _ := forwardCluster(t)
	for _, node := range []string{"0", "1"} {
		rec := ask(origin, 0, "GET", "/v1/status", "", node)
		if got := rec.Header().Get(NodeHeader); got != node {
			t.Errorf("answer for node %s names node %q", node, got)
		}
	}
}
