package remote

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
)

// wire delivers messages between in-process remotes by address, each
// delivery in a goroutine of its own as memberlist's stream handler
// would; a node that is down drops what is sent to it.
type wire struct {
	mu    sync.Mutex
	nodes map[netip.Addr]*Remote
	down  map[netip.Addr]bool
}

type port struct {
	w *wire
}

func (p port) SendReliableTo(addr netip.Addr, msg []byte) error {
	p.w.mu.Lock()
	r, down := p.w.nodes[addr], p.w.down[addr]
	p.w.mu.Unlock()
	if r == nil {
		return errors.New("connection refused")
	}
	if !down {
		msg = append([]byte(nil), msg...)
		go r.Receive(msg)
	}
	return nil
}

var addrs = map[int]netip.Addr{
	0: netip.MustParseAddr("198.18.0.1"),
	1: netip.MustParseAddr("198.18.0.2"),
	2: netip.MustParseAddr("198.18.0.3"),
}

// threeNodes builds the remotes of three nodes; node i serves with
// serve(i, request).
func threeNodes(serve func(pnn int, req admin.ForwardRequest) admin.ForwardResponse) (*wire, []*Remote) {
	w := &wire{nodes: map[netip.Addr]*Remote{}, down: map[netip.Addr]bool{}}
	var rs []*Remote
	for pnn := range 3 {
		r := New(zap.NewNop(), pnn, addrs, func(_ context.Context, req admin.ForwardRequest) admin.ForwardResponse {
			return serve(pnn, req)
		})
		r.SetSender(port{w})
		w.nodes[addrs[pnn]] = r
		rs = append(rs, r)
	}
	return w, rs
}

func echo(pnn int, req admin.ForwardRequest) admin.ForwardResponse {
	full := "read-only"
	if req.Full {
		full = "full"
	}
	return admin.ForwardResponse{Code: 200, Body: []byte(req.Method + " " + req.Path + " on " + string(rune('0'+pnn)) + " " + full + " " + string(req.Body))}
}

func TestForwardAnswered(t *testing.T) {
	_, rs := threeNodes(echo)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := rs[0].Forward(ctx, 2, admin.ForwardRequest{Method: "POST", Path: "/v1/ban", Body: []byte(`{"seconds":5}`), Full: true})
	if err != nil {
		t.Fatal(err)
	}
	if want := `POST /v1/ban on 2 full {"seconds":5}`; resp.Code != 200 || string(resp.Body) != want {
		t.Errorf("answer %d %q, want 200 %q", resp.Code, resp.Body, want)
	}
	resp, err = rs[1].Forward(ctx, 0, admin.ForwardRequest{Method: "GET", Path: "/v1/ip"})
	if err != nil || string(resp.Body) != "GET /v1/ip on 0 read-only " {
		t.Errorf("answer %q, %v", resp.Body, err)
	}
	if got := rs[2].Counters()["remote_requests_served"]; got != 1 {
		t.Errorf("node 2 served %d requests, want 1", got)
	}
}

func TestForwardUnknownNode(t *testing.T) {
	_, rs := threeNodes(echo)
	_, err := rs[0].Forward(context.Background(), 7, admin.ForwardRequest{Method: "GET", Path: "/v1/status"})
	if !errors.Is(err, admin.ErrUnknownNode) || !strings.Contains(err.Error(), "node 7") {
		t.Errorf("%v, want ErrUnknownNode naming node 7", err)
	}
}

func TestForwardTimeout(t *testing.T) {
	w, rs := threeNodes(echo)
	w.down[addrs[1]] = true
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := rs[0].Forward(ctx, 1, admin.ForwardRequest{Method: "GET", Path: "/v1/status"})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "node 1 (198.18.0.2): no answer within") {
		t.Errorf("%v, want a timeout naming node 1", err)
	}
	rs[0].mu.Lock()
	left := len(rs[0].pending)
	rs[0].mu.Unlock()
	if left != 0 {
		t.Errorf("%d requests still pending after the timeout", left)
	}
}

// An answer that comes after its request gave up, or from a node it was
// not asked of, is counted and dropped.
func TestUnmatchedAnswer(t *testing.T) {
	_, rs := threeNodes(echo)
	msg, _ := Response{From: 1, ID: 12345, ForwardResponse: admin.ForwardResponse{Code: 200}}.Encode()
	rs[0].Receive(msg)
	if got := rs[0].Counters()["remote_answers_unmatched"]; got != 1 {
		t.Errorf("unmatched answers %d, want 1", got)
	}
}

func TestGarbageCounted(t *testing.T) {
	_, rs := threeNodes(func(int, admin.ForwardRequest) admin.ForwardResponse {
		t.Error("garbage was served")
		return admin.ForwardResponse{Code: 500}
	})
	fromStranger, _ := Request{From: 9, ID: 1, ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/v1/status"}}.Encode()
	fromSelf, _ := Request{From: 0, ID: 1, ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/v1/status"}}.Encode()
	for _, msg := range [][]byte{nil, {TypeRequest}, {TypeResponse, 9}, {7, 1, 2}, fromStranger, fromSelf} {
		rs[0].Receive(msg)
	}
	if got := rs[0].Counters()["remote_bad_messages"]; got != 6 {
		t.Errorf("bad messages %d, want 6", got)
	}
}

// More requests at once than a node serves are refused with 503, not
// queued without bound.
func TestBusy(t *testing.T) {
	release := make(chan struct{})
	_, rs := threeNodes(func(pnn int, req admin.ForwardRequest) admin.ForwardResponse {
		<-release
		return echo(pnn, req)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for range maxServing {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = rs[0].Forward(ctx, 1, admin.ForwardRequest{Method: "GET", Path: "/v1/status"})
		}()
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(rs[1].serving) < maxServing && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	resp, err := rs[0].Forward(ctx, 1, admin.ForwardRequest{Method: "GET", Path: "/v1/status"})
	if err != nil || resp.Code != http.StatusServiceUnavailable || !strings.Contains(string(resp.Body), "busy") {
		t.Errorf("answer %d %q, %v; want 503 busy", resp.Code, resp.Body, err)
	}
	close(release)
	wg.Wait()
}
