package failover

import (
	"context"
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

// TestStartupShutdownHooks: CTDB's startup and shutdown events, as the
// hooks themselves record them. A failing startup hook keeps n1 UNHEALTHY
// with the hook's last line as the reason, and n1 takes no VIP (the
// kernel's addresses say so) while the others hold them all; once it
// succeeds n1 takes its share, after startup and never before. Every way
// out runs shutdown, told how: a restart (SIGTERM, the VIPs stay) and a
// shutdown (SIGINT, the VIPs go to the others).
func TestStartupShutdownHooks(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1, ManualFsha: []int{1}})
	n1 := e.c.Node(1)
	record, broken := filepath.Join(n1.Dir, "hooks.record"), filepath.Join(n1.Dir, "startup-broken")
	hook := fmt.Sprintf(`#!/bin/sh
echo "$1${FSHA_STOP:+ $FSHA_STOP}" >> %s
if [ "$1" = startup ] && [ -e %s ]; then echo starting smbd; echo "smbd would not start" >&2; exit 1; fi
exit 0
`, record, broken)
	if err := os.WriteFile(filepath.Join(n1.HooksDir, "50.svc"), []byte(hook), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(broken, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	events := func() []string {
		b, err := os.ReadFile(record)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		return strings.Fields(strings.ReplaceAll(strings.TrimSpace(string(b)), " ", "_"))
	}
	if _, err := n1.StartFsha(e.ctx, lab.FshaOptions{}); err != nil {
		t.Fatal(err)
	}

	e.eventually("n1 UNHEALTHY for its startup hook, holding nothing, the others holding every VIP", func(ctx context.Context) error {
		st, err := n1.Status(ctx)
		if err != nil {
			return err
		}
		self := st.Nodes[n1.PNN]
		if self.State != admin.StateUnhealthy || !strings.Contains(self.Reason, "hooks:startup failing") ||
			!strings.Contains(self.Reason, "startup hook 50.svc failed: exit status 1: smbd would not start") {
			return fmt.Errorf("n1 about itself: %s, why %q", self.State, self.Reason)
		}
		if h := e.held(n1); len(h) > 0 {
			return fmt.Errorf("n1 holds %v", h)
		}
		for _, vip := range e.c.VIPs {
			if hs, err := e.c.Holders(vip, e.c.Others(n1)...); err != nil || len(hs) != 1 {
				return fmt.Errorf("%s held by %d of n2, n3 (%v)", vip, len(hs), err)
			}
		}
		if n := strings.Count(strings.Join(events(), " "), "startup"); n < 2 {
			return fmt.Errorf("startup run %d times, want it retried", n)
		}
		return nil
	})
	if ev := events(); slices.ContainsFunc(ev, func(s string) bool { return s != "startup" }) {
		t.Fatalf("hooks run before startup succeeded: %q", ev)
	}
	out, err := n1.Admin(e.ctx, "status")
	if err != nil || !strings.Contains(string(out), "hooks:startup failing") {
		t.Errorf("fsha status on n1: %v\n%s", err, out)
	}
	t.Logf("fsha status on n1:\n%s", out)

	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	e.balanced()
	ev := events()
	lastStartup := slices.Index(ev, "monitor") // monitor only after startup succeeded
	firstTake := slices.Index(ev, "takeip")
	if lastStartup < 0 || firstTake < 0 || slices.Contains(ev[lastStartup:], "startup") || firstTake < lastStartup {
		t.Fatalf("events %q: want startup until it succeeds, then monitor and takeip", ev)
	}
	held := e.held(n1)
	t.Logf("n1 holds %v after %d startup runs", held, strings.Count(strings.Join(ev, " "), "startup"))

	// a restart: shutdown told so, the VIPs stay, startup again after it
	if err := n1.StopFsha(); err != nil {
		t.Fatal(err)
	}
	if ev := events(); ev[len(ev)-1] != "shutdown_restart" {
		t.Fatalf("last hook run after SIGTERM %q, want shutdown with FSHA_STOP=restart", ev[len(ev)-1])
	}
	if h := e.held(n1); !slices.Equal(h, held) {
		t.Fatalf("after a restart's stop n1 holds %v, want %v", h, held)
	}
	before := len(events())
	p, err := n1.StartFsha(e.ctx, lab.FshaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e.balanced()
	if ev := events()[before:]; len(ev) == 0 || ev[0] != "startup" {
		t.Fatalf("after the restart: %q, want startup first", ev)
	}

	// a shutdown: the VIPs go to the others, then shutdown runs, told so
	began := time.Now()
	if err := p.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(e.ctx); err != nil {
		t.Fatalf("fsha after SIGINT: %v\n%s", err, p.Tail(20))
	}
	e.c.Lab.NoteFault("n1 shut down (SIGINT)", []*lab.Host{n1.Host}, began, time.Now())
	if ev := events(); ev[len(ev)-1] != "shutdown_shutdown" {
		t.Fatalf("last hook run after SIGINT %q, want shutdown with FSHA_STOP=shutdown", ev[len(ev)-1])
	}
	if h := e.held(n1); len(h) > 0 {
		t.Errorf("after the shutdown n1 still has %v", h)
	}
	e.eventually("every VIP held by n2 or n3", func(ctx context.Context) error {
		for _, vip := range e.c.VIPs {
			if hs, err := e.c.Holders(vip, e.c.Others(n1)...); err != nil || len(hs) != 1 {
				return fmt.Errorf("%s held by %d of n2, n3 (%v)", vip, len(hs), err)
			}
		}
		return nil
	})
}
