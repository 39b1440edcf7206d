package remote

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
)

// maxServing bounds the forwarded requests this node serves at once: each
// runs an admin call, and a burst of them (a script looping over -n all)
// must not pile up goroutines; more are refused with 503.
const maxServing = 16

// Sender sends a message to a node's gossip address over the reliable,
// authenticated channel (membership.SendReliableTo).
type Sender interface {
	SendReliableTo(addr netip.Addr, msg []byte) error
}

// ServeFunc runs a forwarded request against this node's admin routes
// (admin.Server.ServeForwarded).
type ServeFunc func(ctx context.Context, req admin.ForwardRequest) admin.ForwardResponse

// Remote is both ends of forwarded admin requests: Forward on the node
// asked by the CLI, Receive (from the gossip's message callback) on the
// node the request is for and, for the answer, back on the first one. It
// implements admin.Forwarder.
type Remote struct {
	log     *zap.Logger
	self    int
	nodes   map[int]netip.Addr
	serve   ServeFunc
	sender  atomic.Pointer[Sender]
	nextID  atomic.Uint64
	serving chan struct{}

	mu      sync.Mutex
	pending map[uint64]pending

	bad, served, busy, unmatched, sendFailed atomic.Uint64
}

type pending struct {
	pnn int
	ch  chan admin.ForwardResponse
}

var _ admin.Forwarder = (*Remote)(nil)

// New returns the remote for node self; nodes are the live nodes of the
// nodes file by PNN. SetSender must follow before anything is sent.
func New(log *zap.Logger, self int, nodes map[int]netip.Addr, serve ServeFunc) *Remote {
	r := &Remote{
		log: log.Named("remote"), self: self, nodes: nodes, serve: serve,
		serving: make(chan struct{}, maxServing), pending: map[uint64]pending{},
	}
	// Ids start at random: an answer still on its way to a daemon that
	// restarted must not match a new request.
	r.nextID.Store(rand.Uint64())
	return r
}

// SetSender gives the remote its channel. The membership and the node
// refer to each other, so it comes after New.
func (r *Remote) SetSender(s Sender) { r.sender.Store(&s) }

func (r *Remote) send(addr netip.Addr, msg []byte) error {
	s := r.sender.Load()
	if s == nil {
		return errors.New("cluster channel not started yet")
	}
	return (*s).SendReliableTo(addr, msg)
}

// Forward sends req to node pnn and waits for its answer until ctx ends.
func (r *Remote) Forward(ctx context.Context, pnn int, req admin.ForwardRequest) (admin.ForwardResponse, error) {
	addr, ok := r.nodes[pnn]
	if !ok {
		return admin.ForwardResponse{}, fmt.Errorf("node %d: %w in the nodes file (fsha status lists them)", pnn, admin.ErrUnknownNode)
	}
	if pnn == r.self {
		return r.serve(ctx, req), nil
	}
	id := r.nextID.Add(1)
	msg, err := Request{From: r.self, ID: id, ForwardRequest: req}.Encode()
	if err != nil {
		return admin.ForwardResponse{}, fmt.Errorf("node %d (%s): %w", pnn, addr, err)
	}
	ch := make(chan admin.ForwardResponse, 1)
	r.mu.Lock()
	r.pending[id] = pending{pnn: pnn, ch: ch}
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.pending, id)
		r.mu.Unlock()
	}()
	started := time.Now()
	if err := r.send(addr, msg); err != nil {
		return admin.ForwardResponse{}, fmt.Errorf("node %d (%s): send the request: %w", pnn, addr, err)
	}
	select {
	case resp := <-ch:
		return resp, nil
	case <-ctx.Done():
		return admin.ForwardResponse{}, fmt.Errorf("node %d (%s): no answer within %v: %w",
			pnn, addr, time.Since(started).Round(100*time.Millisecond), ctx.Err())
	}
}

// Receive handles a message of this package (IsRemote). It is called from
// memberlist's goroutines and never blocks: a request is served in a
// goroutine of its own, an answer handed to its waiting Forward.
func (r *Remote) Receive(msg []byte) {
	if len(msg) == 0 {
		r.reject(fmt.Errorf("%w: empty", ErrBadMessage))
		return
	}
	switch msg[0] {
	case TypeRequest:
		req, err := DecodeRequest(msg)
		if err == nil {
			if _, ok := r.nodes[req.From]; !ok || req.From == r.self {
				err = fmt.Errorf("%w: request from node %d", ErrBadMessage, req.From)
			}
		}
		if err != nil {
			r.reject(err)
			return
		}
		select {
		case r.serving <- struct{}{}:
			go func() {
				defer func() { <-r.serving }()
				r.answer(req)
			}()
		default:
			r.busy.Add(1)
			go r.reply(req, admin.ForwardResponse{Code: http.StatusServiceUnavailable,
				Body: errorJSON(fmt.Sprintf("node %d is busy with %d forwarded requests: try again", r.self, maxServing))})
		}
	case TypeResponse:
		resp, err := DecodeResponse(msg)
		if err != nil {
			r.reject(err)
			return
		}
		r.mu.Lock()
		p, ok := r.pending[resp.ID]
		r.mu.Unlock()
		if !ok || p.pnn != resp.From {
			// its Forward gave up (timeout), or garbage
			r.unmatched.Add(1)
			r.log.Debug("answer to no waiting request", zap.Int("from", resp.From), zap.Uint64("id", resp.ID))
			return
		}
		select {
		case p.ch <- resp.ForwardResponse:
		default: // a duplicate
		}
	default:
		r.reject(fmt.Errorf("%w: type %d", ErrBadMessage, msg[0]))
	}
}

func (r *Remote) reject(err error) {
	r.bad.Add(1)
	r.log.Warn("remote admin message rejected", zap.Error(err))
}

// answer serves req here and sends the answer back.
func (r *Remote) answer(req Request) {
	ctx, cancel := context.WithTimeout(context.Background(), admin.ForwardTimeout)
	defer cancel()
	resp := r.serve(ctx, req.ForwardRequest)
	r.served.Add(1)
	// Changes are logged for the record (who changed this node, from
	// where); reads at debug, or a monitor polling -n all fills the log.
	level := zap.DebugLevel
	if req.Method != http.MethodGet {
		level = zap.InfoLevel
	}
	r.log.Log(level, "served a forwarded admin request", zap.Int("from", req.From), zap.String("method", req.Method),
		zap.String("path", req.Path), zap.Bool("full_access", req.Full), zap.Int("code", resp.Code))
	r.reply(req, resp)
}

func (r *Remote) reply(req Request, resp admin.ForwardResponse) {
	if len(resp.Body) > admin.MaxForwardBody {
		resp = admin.ForwardResponse{Code: http.StatusBadGateway,
			Body: errorJSON(fmt.Sprintf("node %d: answer of %d bytes is larger than %d", r.self, len(resp.Body), admin.MaxForwardBody))}
	}
	msg, err := Response{From: r.self, ID: req.ID, ForwardResponse: resp}.Encode()
	if err != nil {
		r.log.Error("encode a forwarded request's answer", zap.Error(err))
		return
	}
	if err := r.send(r.nodes[req.From], msg); err != nil {
		r.sendFailed.Add(1)
		r.log.Warn("send a forwarded request's answer", zap.Int("to", req.From), zap.Error(err))
	}
}

// errorJSON is an admin error body.
func errorJSON(msg string) []byte {
	b, _ := json.Marshal(struct {
		Error string `json:"error"`
	}{msg})
	return b
}

// Counters are the remote's counters, for fsha status.
func (r *Remote) Counters() map[string]uint64 {
	return map[string]uint64{
		"remote_bad_messages":      r.bad.Load(),
		"remote_requests_served":   r.served.Load(),
		"remote_requests_busy":     r.busy.Load(),
		"remote_answers_unmatched": r.unmatched.Load(),
		"remote_send_failed":       r.sendFailed.Load(),
	}
}
