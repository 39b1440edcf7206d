package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestMaintenanceSurvivesReboot: an operator puts n3 into maintenance
// (`fsha disable`) and reboots it (a power cut; at power-up /run is empty
// and the data plane gone, /var/lib stays; fsha starts again as systemd
// would start it). n3 must come back DISABLED, by its own account and the
// others', and take no VIP: judged from the kernel, no VIP on n3's eth0
// at any poll while it is back and disabled, every VIP on n1's or n2's.
// `fsha enable` gives it its share again (automatic failback). Then
// `fsha stop` on n2 (ctdb stop): forgotten by a restart of n2's fsha, as
// the CLI says, so n2 comes back OK and holds a VIP again.
func TestMaintenanceSurvivesReboot(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	e.waitConverged()

	if out, err := n3.Admin(e.ctx, "disable"); err != nil {
		t.Fatalf("fsha disable on n3: %v: %s", err, out)
	}
	e.eventually("n3 disabled and holding no VIP", func(ctx context.Context) error {
		if h := e.held(n3); len(h) > 0 {
			return fmt.Errorf("disabled n3 has %v on eth0", h)
		}
		return e.c.Converged(ctx, n1, n2)
	})

	if err := n3.PowerDown(); err != nil {
		t.Fatal(err)
	}
	if err := n3.PowerUp(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.eventually("n3 back from the reboot, DISABLED by every node's account", func(ctx context.Context) error {
		if err := e.allSee(ctx, n3, admin.StateDisabled); err != nil {
			return err
		}
		return e.c.Converged(ctx, n1, n2)
	})
	// A node that forgot its maintenance would take its share back within
	// a failback (a few leases): watch n3's eth0 well past that.
	watch := 5 * time.Second
	polls := 0
	for end := time.Now().Add(watch); time.Now().Before(end); polls++ {
		if h := e.held(n3); len(h) > 0 {
			t.Fatalf("n3 took %v after the reboot, in maintenance", h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := e.c.Converged(e.ctx, n1, n2); err != nil {
		t.Fatalf("after %v of n3 disabled: %v", watch, err)
	}
	t.Logf("n3 back from a reboot and disabled: no VIP on its eth0 in %d polls over %v", polls, watch)

	if out, err := n3.Admin(e.ctx, "enable"); err != nil {
		t.Fatalf("fsha enable on n3: %v: %s", err, out)
	}
	e.waitConverged()
	e.vipOf(n3)

	// fsha stop is not kept across a restart of fsha
	if out, err := n2.Admin(e.ctx, "stop"); err != nil {
		t.Fatalf("fsha stop on n2: %v: %s", err, out)
	}
	e.eventually("n2 stopped and holding no VIP", func(ctx context.Context) error {
		st, err := n2.Status(ctx)
		if err != nil {
			return err
		}
		if s := nodeState(st, n2); s != admin.StateStopped {
			return fmt.Errorf("n2 says it is %s, want %s", s, admin.StateStopped)
		}
		if h := e.held(n2); len(h) > 0 {
			return fmt.Errorf("stopped n2 has %v on eth0", h)
		}
		return e.c.Converged(ctx, n1, n3)
	})
	if err := n2.StopFsha(); err != nil {
		t.Fatal(err)
	}
	if _, err := n2.StartFsha(e.ctx, lab.FshaOptions{}); err != nil {
		t.Fatal(err)
	}
	e.waitConverged()
	e.vipOf(n2)
}
