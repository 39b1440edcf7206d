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
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultRunDir is where the daemon keeps its socket.
const DefaultRunDir = "/run/fsha"

// SocketPath is the admin socket inside a run directory.
func SocketPath(runDir string) string { return filepath.Join(runDir, "fsha.sock") }

const (
	// maxBody bounds request bodies: every request fits in a few hundred bytes.
	maxBody = 64 << 10
	// shutdownTimeout is how long running requests get once ctx is done.
	shutdownTimeout = 5 * time.Second
	// probeTimeout is how long an existing socket gets to answer before it
	// counts as stale.
	probeTimeout = time.Second
)

// MaxBanSeconds bounds a ban to a day, as the CLI and the node do: longer
// is maintenance (fsha disable), which survives restarts.
const MaxBanSeconds = 24 * 3600

// ErrAlreadyRunning is returned by Serve when another daemon serves the
// socket.
var ErrAlreadyRunning = errors.New("another fsha is already running")

// Server serves a Backend over HTTP/JSON on a unix socket.
type Server struct {
	log      *zap.Logger
	backend  Backend
	mux      *http.ServeMux
	readOnly map[string]bool // "METHOD /path" of the requests that change nothing
	gid      int             // the group the socket is shared with; -1: none
	// forwarder carries requests for other nodes (forward.go); self is
	// this node's PNN.
	forwarder Forwarder
	self      int
}

// NewServer returns a server for b; Serve starts it.
func NewServer(log *zap.Logger, b Backend) *Server {
	s := &Server{log: log.Named("admin"), backend: b, mux: http.NewServeMux(), readOnly: map[string]bool{}, gid: -1}
	const reads, changes = true, false
	routes := []struct {
		method, path string
		readOnly     bool // an --admin-group member may ask
		h            func(*http.Request) (any, error)
	}{
		{http.MethodGet, "/v1/status", reads, s.status},
		{http.MethodGet, "/v1/ip", reads, s.ips},
		{http.MethodGet, "/v1/timeline", reads, s.timeline},
		{http.MethodGet, "/v1/checks", reads, s.checks},
		{http.MethodPost, "/v1/move", changes, s.move},
		{http.MethodPost, "/v1/disable", changes, s.disable},
		{http.MethodPost, "/v1/enable", changes, s.enable},
		{http.MethodPost, "/v1/stop", changes, s.stop},
		{http.MethodPost, "/v1/continue", changes, s.cont},
		{http.MethodPost, "/v1/ban", changes, s.ban},
		{http.MethodPost, "/v1/unban", changes, s.unban},
		{http.MethodPost, "/v1/reload", changes, s.reload},
		// a tickle resets clients' connections
		{http.MethodPost, "/v1/tickle", changes, s.tickle},
	}
	for _, rt := range routes {
		s.mux.HandleFunc(rt.path, s.handle(rt.method, rt.h))
		s.readOnly[rt.method+" "+rt.path] = rt.readOnly
	}
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no such endpoint %s", r.URL.Path))
	})
	return s
}

// Handler is the HTTP handler, for tests and other transports; Serve adds
// the access policy (Authorize) on the unix socket and the forwarding to
// other nodes (NodeHeader).
func (s *Server) Handler() http.Handler { return s.mux }

// ShareReadOnly makes Serve's socket reachable by the members of group
// gid (--admin-group), who may then read but not change anything.
func (s *Server) ShareReadOnly(gid int) { s.gid = gid }

// Serve listens on socketPath (creating its directory, mode 0700) and
// serves until ctx is done, then shuts down gracefully and removes the
// socket. A socket left by a dead daemon is replaced; one that a live
// daemon answers on is not, and Serve returns ErrAlreadyRunning.
func (s *Server) Serve(ctx context.Context, socketPath string) (err error) {
	unlock, err := lockRunDir(socketPath)
	if err != nil {
		return err
	}
	defer unlock()
	ln, err := listen(socketPath)
	if err != nil {
		return err
	}
	if err := shareWithGroup(socketPath, s.gid); err != nil {
		ln.Close()
		return err
	}
	defer func() {
		// Close removes the socket (unlink on close); make sure anyway, but
		// only if it is still ours.
		if rmErr := removeIfSocket(socketPath); rmErr != nil && err == nil {
			err = rmErr
		}
	}()
	s.log.Info("admin api listening", zap.String("socket", socketPath))

	srv := &http.Server{
		Handler:           s.authorized(s.forwarding(s.mux)),
		ConnContext:       peerContext,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		IdleTimeout:       time.Minute,
		// Requests running at shutdown finish (within shutdownTimeout)
		// rather than see their context cancelled with ctx.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
		ErrorLog:    zap.NewStdLog(s.log),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()

	select {
	case err := <-errc:
		return fmt.Errorf("serve admin api on %s: %w", socketPath, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		s.log.Warn("admin api did not shut down in time", zap.Error(err))
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve admin api on %s: %w", socketPath, err)
	}
	s.log.Info("admin api stopped", zap.String("socket", socketPath))
	return nil
}

// lockRunDir takes an exclusive lock next to the socket for as long as
// the server runs, so two daemons starting at once cannot both decide the
// socket is stale and remove each other's. The lock file stays: removing it
// would race with the next daemon's lock.
func lockRunDir(socketPath string) (unlock func(), err error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o700); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	lockPath := socketPath + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open admin lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is locked by another process", ErrAlreadyRunning, lockPath)
		}
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	return func() { f.Close() }, nil
}

// listen prepares the run directory, clears a stale socket and listens,
// leaving the socket mode 0600.
func listen(socketPath string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o700); err != nil {
		return nil, fmt.Errorf("create run directory: %w", err)
	}
	fi, err := os.Lstat(socketPath)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("check admin socket: %w", err)
	case fi.Mode().Type() != os.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket: remove it or pass another --run-dir", socketPath)
	default:
		if answers(socketPath) {
			return nil, fmt.Errorf("%w: a daemon answers on %s", ErrAlreadyRunning, socketPath)
		}
		if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove stale admin socket: %w", err)
		}
	}
	ln, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", socketPath, err)
	}
	// The directory is 0700 already, and connecting needs write access to
	// the socket, which the default umask does not give anyone but root.
	if err := os.Chmod(socketPath, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("restrict admin socket: %w", err)
	}
	return ln, nil
}

// answers reports whether something accepts connections on the socket.
func answers(socketPath string) bool {
	c, err := net.DialTimeout("unix", socketPath, probeTimeout)
	if err != nil {
		// Refused (nobody listens) or gone: stale. Anything else (for
		// example EACCES) we cannot judge; treat it as alive rather than
		// delete another daemon's socket.
		return !errors.Is(err, syscall.ECONNREFUSED) && !errors.Is(err, os.ErrNotExist)
	}
	c.Close()
	return true
}

func removeIfSocket(path string) error {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode().Type() != os.ModeSocket {
		return nil
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove admin socket: %w", err)
	}
	return nil
}

// handle adapts a route: method check, the call, JSON out.
func (s *Server) handle(method string, h func(*http.Request) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, fmt.Sprintf("%s %s: use %s", r.Method, r.URL.Path, method))
			return
		}
		v, err := h(r)
		if err != nil {
			code := http.StatusInternalServerError
			if errors.Is(err, ErrBadRequest) {
				code = http.StatusBadRequest
			} else {
				s.log.Warn("admin request failed", zap.String("path", r.URL.Path), zap.Error(err))
			}
			writeError(w, code, err.Error())
			return
		}
		if v == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

// errorBody is the JSON body of every error answer.
type errorBody struct {
	Error string `json:"error"`
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// decode reads a bounded, strictly shaped JSON body into v. An empty body
// leaves v zero.
func decode(r *http.Request, v any) error {
	body := http.MaxBytesReader(nil, r.Body, maxBody)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		if errors.Is(err, io.EOF) {
			return nil
		}
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return fmt.Errorf("%w: body larger than %d bytes", ErrBadRequest, maxBody)
		}
		return fmt.Errorf("%w: decode body: %v", ErrBadRequest, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after the JSON body", ErrBadRequest)
	}
	return nil
}

func (s *Server) status(r *http.Request) (any, error) {
	st, err := s.backend.Status(r.Context())
	if err != nil {
		return nil, err
	}
	if st.Nodes == nil {
		st.Nodes = []NodeStatus{}
	}
	return st, nil
}

func (s *Server) ips(r *http.Request) (any, error) {
	ips, err := s.backend.IPs(r.Context())
	if ips == nil {
		ips = []IP{}
	}
	return ips, err
}

func (s *Server) timeline(r *http.Request) (any, error) {
	tl, err := s.backend.Timeline(r.Context())
	if tl == nil {
		tl = []Takeover{}
	}
	return tl, err
}

func (s *Server) checks(r *http.Request) (any, error) {
	cr, ok := s.backend.(CheckReporter)
	if !ok {
		return nil, errors.New("this daemon does not report its checks")
	}
	ch, err := cr.Checks(r.Context())
	if ch.Checks == nil {
		ch.Checks = []CheckStatus{}
	}
	if ch.Hooks == nil {
		ch.Hooks = []HookStatus{}
	}
	return ch, err
}

// ParseVIP accepts an address with or without its /prefix.
func ParseVIP(s string) (netip.Addr, error) {
	s = strings.TrimSpace(s)
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: bad VIP %q: not an IP address", ErrBadRequest, s)
	}
	return a.Unmap(), nil
}

func (s *Server) move(r *http.Request) (any, error) {
	var req MoveRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	vip, err := ParseVIP(req.VIP)
	if err != nil {
		return nil, err
	}
	node := strings.TrimSpace(req.Node)
	if node == "" {
		return nil, fmt.Errorf("%w: no node to move %s to", ErrBadRequest, vip)
	}
	return nil, s.backend.Move(r.Context(), vip, node, req.Kill)
}

func (s *Server) tickle(r *http.Request) (any, error) {
	var req TickleRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	vip, err := ParseVIP(req.VIP)
	if err != nil {
		return nil, err
	}
	return s.backend.Tickle(r.Context(), vip)
}

func (s *Server) disable(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	return nil, s.backend.Disable(r.Context())
}

func (s *Server) reload(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	rl, ok := s.backend.(Reloader)
	if !ok {
		return nil, errors.New("this daemon cannot reload its configuration")
	}
	return nil, rl.Reload(r.Context())
}

func (s *Server) stop(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	return nil, s.backend.OperatorStop(r.Context())
}

func (s *Server) cont(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	return nil, s.backend.OperatorContinue(r.Context())
}

func (s *Server) enable(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	return nil, s.backend.Enable(r.Context())
}

func (s *Server) unban(r *http.Request) (any, error) {
	if err := decode(r, &struct{}{}); err != nil {
		return nil, err
	}
	return nil, s.backend.Unban(r.Context())
}

func (s *Server) ban(r *http.Request) (any, error) {
	var req BanRequest
	if err := decode(r, &req); err != nil {
		return nil, err
	}
	if req.Seconds <= 0 || req.Seconds > MaxBanSeconds {
		return nil, fmt.Errorf("%w: ban seconds %d out of range 1..%d", ErrBadRequest, req.Seconds, MaxBanSeconds)
	}
	return nil, s.backend.Ban(r.Context(), time.Duration(req.Seconds)*time.Second)
}
