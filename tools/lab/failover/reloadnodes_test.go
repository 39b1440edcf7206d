//go:build longlab

package failover

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestReloadNodes: ctdb reloadnodes. The operator adds a fourth node to
// the nodes file (not running yet) and reloads fsha on every node in
// turn, then marks it deleted ('#') and reloads again, while raw SMB
// sessions talk through every VIP. Three running nodes of four are a
// majority: every reload keeps quorum, and every node's status shows the
// new node (DISCONNECTED), then not. No session breaks and no connection
// is reset (the client's capture).
//
// In make chaos (build tag longlab), not make test: it fails about one
// run in four, an open design problem. With a fourth node in the nodes
// file and not running, a majority is 3 of 4: all three running nodes.
// A reload restarts the daemon in place, so while one node reloads its
// voter is away and the other two cannot renew their leases (lapses of
// every VIP, renewed once it is back); when a lapse lasts long enough,
// another node takes the VIP ("released by node 2", the holder lapsed)
// and tickles the holder's connections, which resets a live session.
// Fixes to weigh: a reload that keeps the daemon (and its voter) up, or
// a procedure that starts the new node first.
func TestReloadNodes(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	var sessions []*session
	var keys []string
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	var watches []*lab.Watch
	for _, v := range e.c.VIPs {
		w, err := e.client.WatchAddr(v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watches = append(watches, w)
		rc, err := dialSMB(e.ctx, e.client, v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, startSession(rc, pingEvery))
		keys = append(keys, rc.Key())
	}
	start := time.Now()
	orig, err := os.ReadFile(e.c.NodesFile)
	if err != nil {
		t.Fatal(err)
	}
	fourth := lab.NodeAddr(4).Addr()
	for _, step := range []struct {
		what  string
		nodes string
		count int // nodes in every status
	}{
		{"a fourth node added", string(orig) + fourth.String() + "\n", 4},
		{"the fourth node deleted", string(orig) + "#" + fourth.String() + "\n", 3},
	} {
		if err := os.WriteFile(e.c.NodesFile, []byte(step.nodes), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, n := range e.c.Nodes {
			if err := n.FshaProcess().Signal(syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
			e.eventually(n.Role+" reloaded with "+step.what, func(ctx context.Context) error {
				st, err := n.Status(ctx)
				if err != nil {
					return err
				}
				if len(st.Nodes) != step.count {
					return fmt.Errorf("%d nodes in its status", len(st.Nodes))
				}
				return nil
			})
		}
		for _, n := range e.c.Nodes {
			e.eventually(n.Role+" with quorum, "+step.what, func(ctx context.Context) error {
				st, err := n.Status(ctx)
				if err == nil && !st.Quorum {
					err = fmt.Errorf("no quorum: %s", st.QuorumReason)
				}
				return err
			})
		}
		e.eventually("every VIP on one node, "+step.what, func(ctx context.Context) error {
			for _, v := range e.c.VIPs {
				if _, err := e.c.Owner(v); err != nil {
					return err
				}
			}
			return nil
		})
		t.Logf("%s: every node reloaded, quorum, every VIP held", step.what)
	}
	for _, w := range watches {
		for _, r := range e.resetsTo(w, start, keys...) {
			t.Errorf("a connection was reset by a reload of the nodes: %s", r)
		}
	}
	for _, s := range sessions {
		s.Close()
	}
	e.checkSessions(sessions, "during the reloads", nil)
}
