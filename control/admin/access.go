package admin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ErrReadOnly refuses a request that changes something to a peer that may
// only read.
var ErrReadOnly = errors.New("permission denied: read-only")

// Peer is who is on the other end of an admin connection, as the kernel
// says (SO_PEERCRED: the credentials at connect time).
type Peer struct {
	UID, GID uint32
	PID      int32
}

// Authorize is the whole access policy of the admin socket. Root and the
// daemon's own user may do anything; anyone else who could connect (a
// member of the --admin-group the socket is shared with) may only read.
// Reading needs nothing more than connecting, which the socket's mode and
// group already decide.
func Authorize(peer Peer, daemonUID uint32, readOnly bool) error {
	if readOnly || peer.UID == 0 || peer.UID == daemonUID {
		return nil
	}
	return fmt.Errorf("%w: uid %d may read (status, ip, ipinfo, timeline, checks) but not change anything; run as root", ErrReadOnly, peer.UID)
}

type peerKey struct{}

// peerContext is the http.Server's ConnContext: it reads the peer's
// credentials once per connection.
func peerContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return ctx
	}
	var (
		cred *unix.Ucred
		gerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, gerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || gerr != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, Peer{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid})
}

// authorized wraps the routes with Authorize. A connection whose peer is
// unknown (its credentials could not be read) may only read too.
func (s *Server) authorized(next http.Handler) http.Handler {
	self := uint32(os.Geteuid())
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		readOnly := s.readOnly[r.Method+" "+r.URL.Path]
		peer, ok := r.Context().Value(peerKey{}).(Peer)
		if !ok {
			peer = Peer{UID: ^uint32(0), GID: ^uint32(0)}
		}
		if err := Authorize(peer, self, readOnly); err != nil {
			s.log.Info("admin request refused", zap.String("path", r.URL.Path), zap.Uint32("uid", peer.UID), zap.Int32("pid", peer.PID))
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		// Whether the caller could change things, whatever it asks now:
		// a request forwarded to another node carries it (forward.go).
		full := Authorize(peer, self, false) == nil
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), fullAccessKey{}, full)))
	})
}

// shareWithGroup lets the members of gid reach the socket: its directory
// 0750 and the socket 0660, both of group gid. Without a group (gid < 0)
// the socket stays 0600, the daemon's user's alone.
func shareWithGroup(socketPath string, gid int) error {
	if gid < 0 {
		return nil
	}
	dir := filepath.Dir(socketPath)
	for _, p := range []struct {
		path string
		mode os.FileMode
	}{{dir, 0o750}, {socketPath, 0o660}} {
		if err := os.Chown(p.path, -1, gid); err != nil {
			return fmt.Errorf("admin group: %w", err)
		}
		if err := os.Chmod(p.path, p.mode); err != nil {
			return fmt.Errorf("admin group: %w", err)
		}
	}
	return nil
}
