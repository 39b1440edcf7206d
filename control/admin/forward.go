package admin

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// NodeHeader names the node (its PNN) a request is for: `fsha -n 2 ip`.
// Without it, or with this node's own PNN, the request is served here;
// with another node's, the daemon forwards it over the cluster's
// authenticated channel (the gossip key) and relays the answer.
const NodeHeader = "X-Fsha-Node"

// ForwardTimeout is how long a forwarded request may take, its way to the
// other node and back included.
const ForwardTimeout = 5 * time.Second

// MaxForwardBody bounds what a forwarded request or answer carries; the
// largest answer (a long timeline) is far smaller.
const MaxForwardBody = 4 << 20

// ErrUnknownNode is returned for a PNN that is not a node of the nodes
// file.
var ErrUnknownNode = errors.New("no such node")

// ForwardRequest is an admin request as it travels to another node.
type ForwardRequest struct {
	Method string
	Path   string // "/v1/ip"
	Body   []byte
	// Full says the caller on the origin may change things (root or the
	// daemon's user); without it the target serves reads only, whatever
	// the origin asked: a read-only caller cannot gain rights by hopping.
	Full bool
}

// ForwardResponse is the target's answer, relayed as it is.
type ForwardResponse struct {
	Code int
	Body []byte
}

// Forwarder carries a request to another node and brings its answer back.
// Its errors say which node failed and how (unknown, unreachable, no
// answer in time); ErrUnknownNode when pnn is no node at all.
type Forwarder interface {
	Forward(ctx context.Context, pnn int, req ForwardRequest) (ForwardResponse, error)
}

// SetForwarder lets the server forward requests whose NodeHeader names
// another node than self (this node's PNN). Without one, such requests
// are refused.
func (s *Server) SetForwarder(self int, f Forwarder) {
	s.self, s.forwarder = self, f
}

// IsReadOnly reports whether method and path name a request that changes
// nothing (what an --admin-group member may ask).
func (s *Server) IsReadOnly(method, path string) bool { return s.readOnly[method+" "+path] }

// ServeForwarded runs a request that another node forwarded here against
// this node's own routes, in-process, and returns the answer. A change is
// served only when the origin marked its caller as full-access: the
// origin checked its socket peer, this node checks the mark. The request
// never goes on from here (no NodeHeader is looked at), so forwarding
// cannot loop.
func (s *Server) ServeForwarded(ctx context.Context, fr ForwardRequest) ForwardResponse {
	rec := httptest.NewRecorder()
	if !fr.Full && !s.IsReadOnly(fr.Method, fr.Path) {
		s.log.Info("forwarded request refused: the caller may only read", zap.String("method", fr.Method), zap.String("path", fr.Path))
		writeError(rec, http.StatusForbidden, fmt.Sprintf("%s: %s %s changes this node, and the caller may only read", ErrReadOnly, fr.Method, fr.Path))
		return response(rec)
	}
	req, err := http.NewRequestWithContext(ctx, fr.Method, "http://fsha"+fr.Path, bytes.NewReader(fr.Body))
	if err != nil {
		writeError(rec, http.StatusBadRequest, fmt.Sprintf("forwarded request: %v", err))
		return response(rec)
	}
	if len(fr.Body) > 0 {
		req.Header.Set("Content-Type", "application/json")
	}
	s.mux.ServeHTTP(rec, req)
	return response(rec)
}

func response(rec *httptest.ResponseRecorder) ForwardResponse {
	return ForwardResponse{Code: rec.Code, Body: rec.Body.Bytes()}
}

// forwarding serves requests for another node (NodeHeader) through the
// forwarder; the others go on to next. It runs after the access check, so
// full reflects what the local caller may do.
func (s *Server) forwarding(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := strings.TrimSpace(r.Header.Get(NodeHeader))
		if h == "" {
			next.ServeHTTP(w, r)
			return
		}
		pnn, err := strconv.Atoi(h)
		if err != nil || pnn < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s %q: want a node's number (PNN)", NodeHeader, h))
			return
		}
		// The answer says whose it is: a client that asked for another
		// node tells an answer from a daemon that ignored the header (a
		// release before -n) from that node's.
		w.Header().Set(NodeHeader, strconv.Itoa(pnn))
		if s.forwarder != nil && pnn == s.self {
			next.ServeHTTP(w, r)
			return
		}
		full, _ := r.Context().Value(fullAccessKey{}).(bool)
		code, body := s.forward(r, pnn, full)
		if len(body) > 0 {
			w.Header().Set("Content-Type", "application/json")
		}
		w.WriteHeader(code)
		_, _ = w.Write(body) // the client went away: nothing to do
	})
}

// forward sends r to node pnn and returns the answer to relay; failures
// become error answers naming the node.
func (s *Server) forward(r *http.Request, pnn int, full bool) (int, []byte) {
	fail := func(code int, msg string) (int, []byte) {
		rec := httptest.NewRecorder()
		writeError(rec, code, msg)
		return code, rec.Body.Bytes()
	}
	if s.forwarder == nil {
		return fail(http.StatusNotImplemented, fmt.Sprintf("node %d: this daemon cannot forward requests to other nodes", pnn))
	}
	if _, known := s.readOnly[r.Method+" "+r.URL.Path]; !known {
		return fail(http.StatusNotFound, fmt.Sprintf("no such endpoint %s %s", r.Method, r.URL.Path))
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBody))
	if err != nil {
		return fail(http.StatusBadRequest, fmt.Sprintf("read request body: %v", err))
	}
	ctx, cancel := context.WithTimeout(r.Context(), ForwardTimeout)
	defer cancel()
	started := time.Now()
	resp, err := s.forwarder.Forward(ctx, pnn, ForwardRequest{Method: r.Method, Path: r.URL.Path, Body: body, Full: full})
	if err != nil {
		code := http.StatusBadGateway
		if errors.Is(err, ErrUnknownNode) {
			code = http.StatusNotFound
		} else if errors.Is(err, context.DeadlineExceeded) {
			code = http.StatusGatewayTimeout
		}
		s.log.Warn("forwarded request failed", zap.Int("node", pnn), zap.String("path", r.URL.Path), zap.Error(err))
		return fail(code, err.Error())
	}
	s.log.Debug("forwarded request", zap.Int("node", pnn), zap.String("method", r.Method), zap.String("path", r.URL.Path),
		zap.Int("code", resp.Code), zap.Duration("took", time.Since(started)))
	if resp.Code == http.StatusNoContent {
		// nothing to relay: a 204 has no body
		return resp.Code, nil
	}
	return resp.Code, resp.Body
}

type fullAccessKey struct{}
