package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// The OVD guide's test matrix (Tests 1 to 5), on a two-node cluster with
// the cluster lock on the shared file system, end to end through the VIPs
// with real smbd, nfs-ganesha, smbclient and nfs-cat.

// newTwoNodes builds the two-node cluster with the lock; it returns the
// VIP each node holds at start (one each, or losing one proves nothing).
func newTwoNodes(t *testing.T) (*env, map[*lab.ClusterNode]netip.Prefix) {
	t.Helper()
	e := newEnv(t, lab.ClusterOptions{Nodes: 2, Lock: true})
	return e, e.both()
}

func (e *env) powerDown(n *lab.ClusterNode) {
	e.t.Helper()
	if err := n.PowerDown(); err != nil {
		e.t.Fatal(err)
	}
	e.out = append(e.out, n)
}

func (e *env) powerUp(n *lab.ClusterNode) {
	e.t.Helper()
	if err := n.PowerUp(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.out = slices.DeleteFunc(e.out, func(o *lab.ClusterNode) bool { return o == n })
}

// alone waits until the survivor holds every VIP, has quorum through the
// lock and sees the other node disconnected.
func (e *env) alone(survivor, gone *lab.ClusterNode) {
	e.t.Helper()
	e.eventually(survivor.Role+" alone holds every VIP", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, survivor); err != nil {
			return err
		}
		st, err := survivor.Status(ctx)
		if err != nil {
			return err
		}
		if !st.Quorum || !st.LockHeld {
			return fmt.Errorf("%s: quorum %v, lock held %v; want both", survivor.Role, st.Quorum, st.LockHeld)
		}
		if s := nodeState(st, gone); s != admin.StateDisconnected {
			return fmt.Errorf("%s sees %s %s, want %s", survivor.Role, gone.Role, s, admin.StateDisconnected)
		}
		return nil
	})
}

// both waits until the two nodes are back together, one VIP each, and
// returns the VIP each holds.
func (e *env) both() map[*lab.ClusterNode]netip.Prefix {
	e.t.Helper()
	got := map[*lab.ClusterNode]netip.Prefix{}
	e.eventually("both nodes back with one VIP each", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, e.c.Nodes...); err != nil {
			return err
		}
		for _, n := range e.c.Nodes {
			h := e.held(n)
			if len(h) != 1 {
				return fmt.Errorf("%s holds %v, want one VIP", n.Role, h)
			}
			got[n] = h[0]
		}
		return nil
	})
	return got
}

// Test 1: node 2 goes down (power cut): data still accessible through
// every VIP; new files work.
func TestOVD1NodeTwoDown(t *testing.T) {
	e, _ := newTwoNodes(t)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	e.works("state1")

	e.powerDown(n2)
	e.alone(n1, n2)
	e.inSync()
	e.works("state2")
}

// Test 2: node 1 goes down (its network cut from inside it: its daemons
// run on, cut off): data still accessible through every VIP, through node
// 2. When the network comes back, node 1 gets its VIP back (automatic
// failback) and the data is the same everywhere.
func TestOVD2NodeOneDown(t *testing.T) {
	e, _ := newTwoNodes(t)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	e.works("state1")

	if err := n1.NetworkDown(); err != nil {
		t.Fatal(err)
	}
	e.alone(n2, n1)
	// cut off, node 1 keeps no VIP: it has no link
	e.eventually("n1 without link lets its VIP go", func(context.Context) error {
		if h := e.held(n1); len(h) > 0 {
			return fmt.Errorf("n1 still has %v", h)
		}
		return nil
	})
	e.inSync()
	e.works("state2")

	if err := n1.NetworkUp(); err != nil {
		t.Fatal(err)
	}
	e.both()
	e.inSync()
	e.works("state3")
}

// Test 3: node 2 in maintenance (fsha disable): everything works through
// node 1; back online (fsha enable): it serves a VIP again, data in sync.
func TestOVD3Maintenance(t *testing.T) {
	e, _ := newTwoNodes(t)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	e.works("state1")

	if _, err := n2.Admin(e.ctx, "disable"); err != nil {
		t.Fatal(err)
	}
	e.eventually("n2 disabled, n1 holds every VIP", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, n1); err != nil {
			return err
		}
		if h := e.held(n2); len(h) > 0 {
			return fmt.Errorf("disabled n2 has %v", h)
		}
		return e.allSee(ctx, n2, admin.StateDisabled)
	})
	e.inSync()
	e.works("maintenance")

	if _, err := n2.Admin(e.ctx, "enable"); err != nil {
		t.Fatal(err)
	}
	e.both()
	e.inSync()
	e.works("online")
}

// Test 4: a session creates a file and disconnects; new sessions (through
// every VIP) read it: data in sync and accessible.
func TestOVD4Reconnect(t *testing.T) {
	e, _ := newTwoNodes(t)

	name := "session.txt"
	data := content(name)
	src := filepath.Join(e.client.Dir, "session-src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.session(e.c.VIPs[0].Addr(), fmt.Sprintf("put %q %q", src, name), name, data)
	e.files[name] = data
	// reconnect: a new session through each VIP
	for _, v := range e.c.VIPs {
		e.session(v.Addr(), "", name, data)
	}
	e.inSync()
	e.works("after-reconnect")
}

// session opens an interactive smbclient session to vip, runs first (if
// any), reads name back in the same session, disconnects and checks what
// it read.
func (e *env) session(vip netip.Addr, first, name string, want []byte) {
	e.t.Helper()
	back := filepath.Join(e.client.Dir, "session-back")
	e.retry("session to "+vip.String(), func(ctx context.Context) error {
		_ = os.Remove(back)
		s, err := e.client.StartSMBSession(vip)
		if err != nil {
			return permanent{err}
		}
		for _, cmd := range []string{first, fmt.Sprintf("get %q %q", name, back)} {
			if cmd == "" {
				continue
			}
			if err := s.Command(cmd); err != nil {
				return err
			}
		}
		if err := s.Close(ctx); err != nil {
			return fmt.Errorf("smbclient session: %w: %s", err, s.Tail(2000))
		}
		got, err := os.ReadFile(back)
		if err != nil {
			return fmt.Errorf("nothing read back: %w: %s", err, s.Tail(2000))
		}
		if !bytes.Equal(got, want) {
			return permanent{fmt.Errorf("session read %q, want %q", got, want)}
		}
		return nil
	})
}

// Test 5: a session creates a file and disconnects; node 2 goes down
// (power cut); the session reconnects through node 2's VIP, now on node 1,
// and writes more; node 2 recovers (reboot): it gets a VIP back
// (automatic failback) and serves the same data.
func TestOVD5Recovery(t *testing.T) {
	e, start := newTwoNodes(t)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	vip := start[n2]

	name := "before-the-cut.txt"
	data := content(name)
	src := filepath.Join(e.client.Dir, "session-src")
	if err := os.WriteFile(src, data, 0o644); err != nil {
		t.Fatal(err)
	}
	e.session(vip.Addr(), fmt.Sprintf("put %q %q", src, name), name, data)
	e.files[name] = data

	e.powerDown(n2)
	e.alone(n1, n2)
	e.session(vip.Addr(), "", name, data) // reconnect
	e.answering()
	e.inSync()
	e.works("n2-down")

	e.powerUp(n2)
	back := e.both()[n2]
	t.Logf("n2 held %s before its power cut and %s after recovery", vip, back)
	e.answering()
	e.inSync()
	e.works("recovered")
}
