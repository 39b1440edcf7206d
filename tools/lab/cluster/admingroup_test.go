package cluster

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// nobody and nogroup as Debian has them: the admin group of the test,
// and a user whose primary group it is.
const nobodyUID, nogroupGID = 65534, 65534

// TestCLIAsAdminGroupMember: fsha up --admin-group nogroup shares each
// node's admin socket, read-only, with that group, as ctdb's socket is
// shared with an operators' group. The fsha CLI itself, run as nobody
// (whose group it is), reads the status, the VIP table and every node's
// status through -n all; its disable, here and through -n, is refused
// with a clear message and changes nothing (the node's kernel keeps its
// VIPs, root's status says OK); a user outside the group cannot reach the
// socket at all and is told why.
func TestCLIAsAdminGroupMember(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1, FshaArgs: []string{"--admin-group", "nogroup"}})
	n1, n3 := e.c.Node(1), e.c.Node(3)
	e.waitConverged()
	held := e.held(n1)
	if len(held) == 0 {
		t.Fatalf("n1 holds no VIP: the test needs one")
	}
	bin := otherUsersCanRun(t, n1.RunDir)
	as := func(uid, gid uint32, args ...string) (stdout, stderr string, err error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(e.ctx, failoverTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, append(args, "--run-dir", n1.RunDir)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
		cmd.Dir = "/"
		var o, s bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &s
		err = cmd.Run()
		return o.String(), s.String(), err
	}

	out, errOut, err := as(nobodyUID, nogroupGID, "status")
	if err != nil || !strings.Contains(out, "pnn:0") || !strings.Contains(out, "Quorum: yes") {
		t.Errorf("fsha status as a member of the admin group: %v\n%s%s", err, out, errOut)
	}
	out, errOut, err = as(nobodyUID, nogroupGID, "ip")
	if err != nil || !strings.Contains(out, held[0].String()) {
		t.Errorf("fsha ip as a member: %v, want %s in it\n%s%s", err, held[0], out, errOut)
	}
	out, errOut, err = as(nobodyUID, nogroupGID, "-n", "all", "status")
	if err != nil || strings.Count(out, "Quorum: yes") != len(e.c.Nodes) {
		t.Errorf("fsha -n all status as a member: %v, want one status per node\n%s%s", err, out, errOut)
	}
	for _, args := range [][]string{{"disable"}, {"-n", "2", "disable"}} {
		out, errOut, err = as(nobodyUID, nogroupGID, args...)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(errOut, "permission denied: read-only") {
			t.Errorf("fsha %s as a member: %v, want a refusal that says read-only\n%s%s", strings.Join(args, " "), err, out, errOut)
		}
	}
	_, errOut, err = as(nobodyUID-1, nobodyUID-1, "status")
	if err == nil || !strings.Contains(errOut, "permission denied") {
		t.Errorf("fsha status as a user outside the group: %v, want permission denied\n%s", err, errOut)
	}

	// nothing changed: the kernel's addresses and the nodes' own word
	if got := e.held(n1); len(got) != len(held) {
		t.Errorf("n1 held %v, now %v: a refused disable changed something", held, got)
	}
	for _, n := range []*lab.ClusterNode{n1, n3} {
		st, err := n.Status(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, ns := range st.Nodes {
			if ns.This && ns.State != "OK" {
				t.Errorf("%s is %s after refused disables, want OK", n.Role, ns.State)
			}
		}
	}
}

// otherUsersCanRun lets other users reach runDir (whose own mode the
// daemon sets) through the test's directories, and returns a copy of the
// fsha binary they may run. Only directories under the system's temporary
// directory, the test's, are opened.
func otherUsersCanRun(t *testing.T, runDir string) string {
	t.Helper()
	tmp := filepath.Clean(os.TempDir())
	for dir := filepath.Dir(runDir); strings.HasPrefix(dir, tmp+"/"); dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, fi.Mode().Perm()|0o001); err != nil {
			t.Fatal(err)
		}
	}
	binDir, err := os.MkdirTemp("", "fsha-cli-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(binDir) })
	if err := os.Chmod(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(fshaBin)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin := filepath.Join(binDir, "fsha")
	dst, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}
