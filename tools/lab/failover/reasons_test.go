package failover

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestStatusSaysWhy: a node whose health check fails gives its VIP up
// (the kernel's addresses say where it went) and `fsha status` says why,
// on that node with what the check printed, on the others that its checks
// fail; once the check passes the VIP comes back. A node cut off from the
// others says what quorum lacks (which nodes it does not hear) and logs
// that it lost quorum.
func TestStatusSaysWhy(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1, ManualFsha: []int{1}})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	sick, script := filepath.Join(n1.Dir, "sick"), filepath.Join(n1.Dir, "check.sh")
	body := "#!/bin/sh\ntest ! -e " + sick + " || { echo smbd gone; exit 3; }\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	check := "cmd:" + script
	if _, err := n1.StartFsha(e.ctx, lab.FshaOptions{Args: []string{"--check", check}}); err != nil {
		t.Fatal(err)
	}
	e.balanced()
	vip := e.held(n1)
	if len(vip) != 1 {
		t.Fatalf("n1 holds %v, want one VIP", vip)
	}

	out, err := n2.Admin(e.ctx, "ipinfo", vip[0].Addr().String(), "--pin-path", n2.PinPath)
	if err != nil || !strings.Contains(string(out), "Owner:         "+n1.IP().String()+" (pnn 0)") ||
		!strings.Contains(string(out), "Connections:   0 tracked here") {
		t.Errorf("fsha ipinfo %s on n2: %v\n%s", vip[0].Addr(), err, out)
	}

	began := time.Now()
	if err := os.WriteFile(sick, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.eventually("n1's VIP on another node, and n1 says why", func(ctx context.Context) error {
		if h := e.held(n1); len(h) > 0 {
			return fmt.Errorf("n1 still has %v", h)
		}
		if !slices.Contains(e.held(n2), vip[0]) && !slices.Contains(e.held(n3), vip[0]) {
			return fmt.Errorf("%s on neither n2 nor n3", vip[0])
		}
		st, err := n1.Status(ctx)
		if err != nil {
			return err
		}
		self := st.Nodes[n1.PNN]
		if self.State != admin.StateUnhealthy || !strings.Contains(self.Reason, "failing (") ||
			!strings.Contains(self.Reason, "exit status 3: smbd gone") {
			return fmt.Errorf("n1 about itself: %s, why %q", self.State, self.Reason)
		}
		st, err = n2.Status(ctx)
		if err != nil {
			return err
		}
		if ns := st.Nodes[n1.PNN]; ns.State != admin.StateUnhealthy || !strings.Contains(ns.Reason, "health checks fail") {
			return fmt.Errorf("n2 about n1: %s, why %q", ns.State, ns.Reason)
		}
		return nil
	})
	out, err = n1.Admin(e.ctx, "status")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "why: "+check+" failing") {
		t.Errorf("fsha status on n1 does not say why:\n%s", out)
	}
	t.Logf("fsha status on n1:\n%s", out)
	out, err = n1.Admin(e.ctx, "checks")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), check+" said: exit status 3: smbd gone") || !strings.Contains(string(out), "FAILING") {
		t.Errorf("fsha checks on n1 does not show the failing check:\n%s", out)
	}
	t.Logf("fsha checks on n1:\n%s", out)
	if err := os.Remove(sick); err != nil {
		t.Fatal(err)
	}
	e.eventually("n1 healthy again, with its VIP back", func(ctx context.Context) error {
		if h := e.held(n1); !slices.Equal(h, vip) {
			return fmt.Errorf("n1 has %v, want %v", h, vip)
		}
		st, err := n1.Status(ctx)
		if err != nil {
			return err
		}
		if ns := st.Nodes[n1.PNN]; ns.State != admin.StateOK || ns.Reason != "" {
			return fmt.Errorf("n1 about itself: %s, why %q", ns.State, ns.Reason)
		}
		return nil
	})
	// the move was the test's doing: tell the failover accounting
	e.c.Lab.NoteFault("n1's health check fails", []*lab.Host{n1.Host}, began, time.Now())

	// a ban: n2's VIP moves, status says for how long; unban brings it back
	vip2 := e.held(n2)
	banned := time.Now()
	if out, err := n2.Admin(e.ctx, "ban", "600"); err != nil {
		t.Fatalf("fsha ban: %v\n%s", err, out)
	}
	e.eventually("n2 banned: its VIP elsewhere, and it says why", func(ctx context.Context) error {
		if h := e.held(n2); len(h) > 0 {
			return fmt.Errorf("n2 still has %v", h)
		}
		st, err := n2.Status(ctx)
		if err != nil {
			return err
		}
		if ns := st.Nodes[n2.PNN]; ns.State != admin.StateBanned || !strings.Contains(ns.Reason, "more (fsha unban ends it)") {
			return fmt.Errorf("n2 about itself: %s, why %q", ns.State, ns.Reason)
		}
		return nil
	})
	if out, err := n2.Admin(e.ctx, "unban"); err != nil {
		t.Fatalf("fsha unban: %v\n%s", err, out)
	}
	e.eventually("n2 unbanned, with its VIP back", func(ctx context.Context) error {
		if h := e.held(n2); !slices.Equal(h, vip2) {
			return fmt.Errorf("n2 has %v, want %v", h, vip2)
		}
		return nil
	})
	if out, err := n2.Admin(e.ctx, "unban"); err == nil || !strings.Contains(string(out)+err.Error(), "not banned") {
		t.Errorf("fsha unban of a node not banned: %v\n%s; want an error saying it is not banned", err, out)
	}
	// fsha stop / continue (ctdb stop): as the ban, undone by continue
	if out, err := n2.Admin(e.ctx, "stop"); err != nil {
		t.Fatalf("fsha stop: %v\n%s", err, out)
	}
	e.eventually("n2 stopped: its VIP elsewhere, and it says why", func(ctx context.Context) error {
		if h := e.held(n2); len(h) > 0 {
			return fmt.Errorf("n2 still has %v", h)
		}
		st, err := n2.Status(ctx)
		if err != nil {
			return err
		}
		if ns := st.Nodes[n2.PNN]; ns.State != admin.StateStopped || !strings.Contains(ns.Reason, "fsha continue") {
			return fmt.Errorf("n2 about itself: %s, why %q", ns.State, ns.Reason)
		}
		return nil
	})
	if out, err := n2.Admin(e.ctx, "continue"); err != nil {
		t.Fatalf("fsha continue: %v\n%s", err, out)
	}
	e.eventually("n2 continues, with its VIP back", func(ctx context.Context) error {
		if h := e.held(n2); !slices.Equal(h, vip2) {
			return fmt.Errorf("n2 has %v, want %v", h, vip2)
		}
		return nil
	})
	if out, err := n2.Admin(e.ctx, "continue"); err == nil || !strings.Contains(string(out)+err.Error(), "not stopped") {
		t.Errorf("fsha continue of a node not stopped: %v\n%s", err, out)
	}
	e.c.Lab.NoteFault("n2 banned and stopped by the test", []*lab.Host{n2.Host}, banned, time.Now())

	if err := e.c.Partition(e.ctx, []*lab.Host{n1.Host}); err != nil {
		t.Fatal(err)
	}
	e.down = append(e.down, n1) // its VIP moves away: not a node to converge
	e.eventually("n1, cut off, says what quorum lacks", func(ctx context.Context) error {
		st, err := n1.Status(ctx)
		if err != nil {
			return err
		}
		want := fmt.Sprintf("hears 1 of 3 nodes, a majority is 2; not heard: %s, %s", n2.IP(), n3.IP())
		if st.Quorum || st.QuorumReason != want {
			return fmt.Errorf("n1: quorum %v, why %q; want no quorum, why %q", st.Quorum, st.QuorumReason, want)
		}
		lost, err := n1.FshaLog("quorum lost: the VIPs held here lapse at their deadlines")
		if err != nil {
			return err
		}
		if len(lost) == 0 {
			return errors.New("n1 did not log that it lost quorum")
		}
		return nil
	})
	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.down = nil
	e.waitConverged(e.c.Nodes...)
}
