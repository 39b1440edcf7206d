package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
)

// deadLockRelease bounds, from a node's power cut, the wait for a lock
// its client held on the volume to be free through a survivor. fsha
// judges the node dead within a lease or two and ends the survivors'
// GlusterFS connections with it (--dead-peer-ports); the volume's ping
// timeout (3 s here) may hold the first probe. Without the kick the
// surviving bricks keep the lock until their TCP keepalive gives the
// dead client up, about 40 s (TestGlusterDeadNodeLocksWithoutKick).
const deadLockRelease = 12 * time.Second

// TestGlusterDeadNodeLocks: a dead node's locks on the volume go with it.
// Through n3's mount (n3's FUSE client takes the lock on every brick) the
// test holds an fcntl lock, as a CTDB leader holds CTDB's cluster lock;
// n3's power is cut (link first: the survivors get no FIN). The surviving
// bricks would keep the lock for n3's client until their TCP keepalive
// gives it up; fsha's kick ends their connections with n3 once it judges
// n3 dead, and a probe through a survivor's mount takes the lock within
// deadLockRelease. Oracles: the volume (the probes) and the survivors'
// kernels (no established connection of a GlusterFS process with n3).
func TestGlusterDeadNodeLocks(t *testing.T) {
	took := testGlusterDeadNodeLocks(t, nil, deadLockRelease)
	if took < 0 {
		t.Fatalf("the dead node's lock was still held %v after its power cut", deadLockRelease)
	}
}

// testGlusterDeadNodeLocks runs the cut with fsha's extra args and
// returns when, after the cut, a survivor took the dead node's lock (-1:
// not within wait).
func testGlusterDeadNodeLocks(t *testing.T, args []string, wait time.Duration) time.Duration {
	requireGluster(t)
	began := time.Now()
	e := newEnvWithin(t, lab.ClusterOptions{Gluster: true, FshaArgs: args}, glusterBudget)
	e.waitConverged(e.c.Nodes...)
	t.Logf("cluster of 3 with the gluster volume up and converged after %v", time.Since(began).Round(time.Millisecond))
	victim, survivor := e.c.Node(3), e.c.Node(1)

	name := "dead-node.lock"
	f, err := os.OpenFile(filepath.Join(victim.GlusterMount(), name), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	// closed once n3's client is dead: the close fails, nothing waits
	t.Cleanup(func() { _ = f.Close() })
	lk := unix.Flock_t{Type: unix.F_WRLCK}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk); err != nil {
		t.Fatalf("lock %s through %s's mount: %v", name, victim.Role, err)
	}
	through := filepath.Join(survivor.GlusterMount(), name)
	if err := lockProbe(through, 10*time.Second); !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
		t.Fatalf("lock probe through %s's mount before the cut: %v, want EAGAIN (%s's client holds it)", survivor.Role, err, victim.Role)
	}
	before := glusterConnsWith(t, e, victim)
	if len(before) == 0 {
		t.Fatalf("no established GlusterFS connection with %s on the survivors before the cut: the oracle proves nothing", victim.Role)
	}

	cut := time.Now()
	e.powerDown(victim)
	var last error
	probes := 0
	for time.Since(cut) < wait {
		probes++
		if last = lockProbe(through, 4*time.Second); last == nil {
			took := time.Since(cut)
			t.Logf("%s's lock taken through %s's mount %v after its power cut (%d probes)", victim.Role, survivor.Role, took.Round(time.Millisecond), probes)
			if left := glusterConnsWith(t, e, victim); len(left) != 0 {
				t.Errorf("established GlusterFS connections with the dead %s left on the survivors: %v", victim.Role, left)
			}
			t.Logf("GlusterFS connections with %s on the survivors before the cut: %v; none once the lock was free", victim.Role, before)
			return took
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%s's lock still held through %s's mount %v after its power cut (%d probes, last: %v); GlusterFS connections with it on the survivors: %v before, %v now",
		victim.Role, survivor.Role, wait, probes, last, before, glusterConnsWith(t, e, victim))
	return -1
}

// glusterConnsWith lists the established TCP connections that the
// survivors' GlusterFS processes (glusterd, bricks, clients, self-heal)
// have with dead's address, from the survivors' kernels: the sockets of
// each namespace's TCP tables whose inode a process named gluster* of
// that namespace holds open.
func glusterConnsWith(t *testing.T, e *env, dead *lab.ClusterNode) []string {
	t.Helper()
	var all []string
	for _, s := range e.c.Others(dead) {
		var ns string
		err := s.Do(func() error {
			var err error
			ns, err = os.Readlink("/proc/thread-self/ns/net")
			return err
		})
		if err != nil {
			t.Fatalf("%s's namespace: %v", s.Role, err)
		}
		socks, err := s.TCPSockets()
		if err != nil {
			t.Fatalf("%s's TCP sockets: %v", s.Role, err)
		}
		gluster := glusterSockets(ns)
		for _, c := range socks {
			if c.State == lab.TCPEstablished && gluster[c.Inode] && c.Remote.Addr() == dead.IP() {
				all = append(all, fmt.Sprintf("%s:%d-%s", s.Role, c.Local.Port(), c.Remote))
			}
		}
	}
	return all
}

// glusterSockets is the socket inodes that processes named gluster* in
// network namespace ns (as /proc/PID/ns/net reads) hold open.
func glusterSockets(ns string) map[string]bool {
	inodes := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		dir := filepath.Join("/proc", p.Name())
		comm, err := os.ReadFile(filepath.Join(dir, "comm"))
		if err != nil || !strings.HasPrefix(string(comm), "gluster") {
			continue
		}
		if got, err := os.Readlink(filepath.Join(dir, "ns", "net")); err != nil || got != ns {
			continue
		}
		fds, _ := os.ReadDir(filepath.Join(dir, "fd"))
		for _, fd := range fds {
			l, err := os.Readlink(filepath.Join(dir, "fd", fd.Name()))
			if inode, ok := strings.CutPrefix(l, "socket:["); err == nil && ok {
				inodes[strings.TrimSuffix(inode, "]")] = true
			}
		}
	}
	return inodes
}
