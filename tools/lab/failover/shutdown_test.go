package failover

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// shutdownTimeout is TestShutdownTimeout's --shutdown-timeout, far below
// its drain timeout.
const shutdownTimeout = 3 * time.Second

// TestShutdownTimeout: a shutdown (SIGINT, systemctl stop) hands the
// node's VIPs over as planned moves and waits for their drains, but no
// longer than --shutdown-timeout: with a client still connected through
// a VIP of the node, fsha resets that connection once the timeout has
// passed (not before: the drain is live; not at the drain timeout) and
// exits. The client's own view: its session breaks with a reset (it does
// not hang), the RST comes from the node that drained it, and it
// reconnects through the VIP at once, to its new holder.
func TestShutdownTimeout(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{
		"--drain-timeout", drainTimeout, "--shutdown-timeout", shutdownTimeout.String()}})
	n := e.c.Node(2)
	vip := e.held(n)[0]
	rc, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	s := startSession(rc, pingEvery)
	defer s.Close()
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	for _, p := range e.c.Others(n) {
		e.waitFlows(p, n, false, rc.Key())
	}

	p := n.FshaProcess()
	began := time.Now()
	if err := p.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(e.ctx); err != nil {
		t.Fatalf("fsha after SIGINT: %v\n%s", err, p.Tail(20))
	}
	took := time.Since(began)
	e.c.Lab.NoteFault(n.Role+" shut down (SIGINT)", []*lab.Host{n.Host}, began, time.Now())
	t.Logf("%s's fsha exited %v after SIGINT (--shutdown-timeout %v, a client connected)", n.Role, took.Round(time.Millisecond), shutdownTimeout)
	if took < shutdownTimeout {
		t.Errorf("fsha exited %v after SIGINT, before --shutdown-timeout (%v), with a drain still live", took, shutdownTimeout)
	}
	if dt, _ := time.ParseDuration(drainTimeout); took >= dt {
		t.Errorf("fsha exited %v after SIGINT: at the drain timeout (%v), not the shutdown timeout (%v)", took, dt, shutdownTimeout)
	}
	taker := e.owner(vip, e.c.Others(n)...)
	if h := e.held(n); len(h) > 0 {
		t.Errorf("after the shutdown %s still has %v on %s", n.Role, h, lab.HostIface)
	}
	if lo, err := loVIPs(n, []netip.Prefix{vip}); err != nil || len(lo) > 0 {
		t.Errorf("%s's loopback after the shutdown: %v (%v), want no VIP: the drain ended", n.Role, lo, err)
	}

	// the client: reset, not left hanging, and served again at once
	e.eventually("the session ended by a reset", func(context.Context) error {
		if err := s.Err(); err == nil {
			return fmt.Errorf("still answering (%d answers)", s.OK())
		}
		return nil
	})
	if err := s.Err(); !strings.Contains(err.Error(), "reset") {
		t.Errorf("the session ended with %v, want a reset", err)
	}
	resets := e.resetsTo(w, began, rc.Key())
	if !slices.ContainsFunc(resets, func(r string) bool { return strings.HasPrefix(r, "RST from "+n.Role+" ") }) {
		t.Errorf("no RST from %s on the wire: %q", n.Role, resets)
	}
	t.Logf("%s; %q", s, resets)
	rc2, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatalf("reconnect through %s after the shutdown: %v", vip, err)
	}
	rc2.conn.Close()
	if o := e.owner(vip); o != taker {
		t.Errorf("%s is on %s, was handed to %s", vip, o.Role, taker.Role)
	}
}
