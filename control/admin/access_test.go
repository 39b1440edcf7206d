package admin

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/tools/testenv"
)

func TestAuthorize(t *testing.T) {
	const daemon = 998 // the daemon's own, non-root user
	for _, tc := range []struct {
		name     string
		uid      uint32
		readOnly bool
		allowed  bool
	}{
		{"root reads", 0, true, true},
		{"root changes", 0, false, true},
		{"the daemon's user changes", daemon, false, true},
		{"a group member reads", 1000, true, true},
		{"a group member changes", 1000, false, false},
		{"nobody changes", 65534, false, false},
		{"an unknown peer changes", ^uint32(0), false, false},
	} {
		err := Authorize(Peer{UID: tc.uid}, daemon, tc.readOnly)
		if (err == nil) != tc.allowed {
			t.Errorf("%s: %v, want allowed=%v", tc.name, err, tc.allowed)
		}
		if err != nil && (!errors.Is(err, ErrReadOnly) || !strings.HasPrefix(err.Error(), "permission denied: read-only")) {
			t.Errorf("%s: %q is not ErrReadOnly", tc.name, err)
		}
	}
}

// The requests a group member may make are exactly those that change
// nothing.
func TestReadOnlyRoutes(t *testing.T) {
	var got []string
	for r, ro := range NewServer(zap.NewNop(), &fakeBackend{}).readOnly {
		if ro {
			got = append(got, r)
		}
	}
	slices.Sort(got)
	want := []string{"GET /v1/checks", "GET /v1/ip", "GET /v1/status", "GET /v1/timeline"}
	if !slices.Equal(got, want) {
		t.Errorf("read-only requests %q, want %q", got, want)
	}
}

// A socket shared with a group: the kernel lets its members connect (and
// no one else but root), the daemon reads who they are from the socket
// and answers their reads but refuses their changes. The peers are curl
// processes run with other uids, so the client is not fsha's own.
func TestSharedSocketAsOtherUsers(t *testing.T) {
	testenv.RequireRoot(t)
	curl := testenv.RequireCommand(t, "curl")
	const nogroup, member, outsider = 65534, 65534, 65533 // nobody's group; nobody; no such user

	base := shortDir(t)
	if err := os.Chmod(base, 0o755); err != nil { // others may reach the run dir
		t.Fatal(err)
	}
	sock := SocketPath(filepath.Join(base, "run"))
	b := &fakeBackend{}
	srv := NewServer(zap.NewNop(), b)
	srv.ShareReadOnly(nogroup)
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
			t.Error("server did not stop")
		}
	})
	waitForSocket(t, sock, done)

	// what the kernel has: the directory and the socket in the group
	for path, mode := range map[string]os.FileMode{filepath.Dir(sock): 0o750, sock: 0o660} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode().Perm() != mode || st.Gid != nogroup {
			t.Errorf("%s: mode %v group %d, want %v group %d", path, fi.Mode().Perm(), st.Gid, mode, nogroup)
		}
	}

	// as uid, gid (no supplementary groups): curl's status code, or its
	// own exit status when it cannot connect
	as := func(uid, gid uint32, method, path string) (code string, body string, exit int) {
		t.Helper()
		cmd := exec.Command(curl, "-sS", "--max-time", "10", "--unix-socket", sock, "-X", method,
			"-w", "\n%{http_code}", "http://fsha"+path)
		if method == "POST" {
			cmd.Args = append(cmd.Args, "-H", "Content-Type: application/json", "-d", "{}")
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		cmd.Dir = "/"
		raw, err := cmd.Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", string(ee.Stderr), ee.ExitCode()
		} else if err != nil {
			t.Fatalf("run curl as %d: %v", uid, err)
		}
		s := string(raw)
		i := strings.LastIndexByte(s, '\n')
		return s[i+1:], s[:i], 0
	}

	if code, body, exit := as(member, nogroup, "GET", "/v1/status"); code != "200" || !strings.Contains(body, `"nodes"`) {
		t.Errorf("a member's status: code %q exit %d body %q, want 200 and the status", code, exit, body)
	}
	if code, body, exit := as(member, nogroup, "POST", "/v1/disable"); code != "403" || !strings.Contains(body, "permission denied: read-only") {
		t.Errorf("a member's disable: code %q exit %d body %q, want 403 permission denied: read-only", code, exit, body)
	}
	// curl exit 7: could not connect (EACCES on the directory)
	if code, body, exit := as(outsider, outsider, "GET", "/v1/status"); exit != 7 {
		t.Errorf("an outsider's status: code %q exit %d %q, want curl unable to connect (exit 7)", code, exit, body)
	}
	if got := b.Calls(); slices.Contains(got, "disable") {
		t.Fatalf("the backend was asked %q: a refused change reached it", got)
	}
	if code, _, exit := as(0, 0, "POST", "/v1/disable"); code != "204" {
		t.Errorf("root's disable: code %q exit %d, want 204", code, exit)
	}
	if got := b.Calls(); !slices.Contains(got, "disable") {
		t.Errorf("root's disable did not reach the backend: %q", got)
	}
}
