//go:build longlab

package failover

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestRestartDuringDrain: `fsha move` hands a VIP over under raw SMB and
// NFS sessions, which the old holder goes on serving (drained, steered
// back to it by the new holder); then fsha restarts on the old holder
// (`systemctl restart`, a second between stop and start) while it drains.
// Its pinned programs and sockets serve the drained connections without
// the daemon, so the new holder must keep steering them to it through the
// restart: no session breaks or stalls past a steering transition, no
// connection is reset (the client's capture). Before the snapshot kept a
// restarting drainer, the new holder took it for dead once it had been
// silent a lease and tickled every drained connection (TestReloadVIPs
// failed so in a full run). In make chaos (build tag longlab).
func TestRestartDuringDrain(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	to := e.c.Others(old)[0]
	peers := slices.DeleteFunc(slices.Clone(e.c.Nodes), func(n *lab.ClusterNode) bool { return n == old })
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	sessions := e.rawSessions(vip.Addr())
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	var keys []string
	for _, s := range sessions {
		keys = append(keys, s.rc.Key())
	}
	for _, p := range peers {
		e.waitFlows(p, old, false, keys...)
	}
	start := time.Now()
	if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move %s %s: %v: %s", vip.Addr(), to.IP(), err, out)
	}
	e.eventually(vip.String()+" on "+to.Role+", drained by "+old.Role, func(ctx context.Context) error {
		if o, err := e.c.Owner(vip); err != nil || o != to {
			return fmt.Errorf("owner %v (%v)", o, err)
		}
		return nil
	})
	e.waitFlows(to, old, true, keys...)
	time.Sleep(500 * time.Millisecond) // the sessions talk through the steering
	if err := old.StopFsha(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if _, err := old.StartFsha(e.ctx, lab.FshaOptions{Bin: e.c.Lab.FshaBin()}); err != nil {
		t.Fatal(err)
	}
	e.eventually(old.Role+" back in the cluster", func(ctx context.Context) error {
		st, err := old.Status(ctx)
		if err != nil {
			return err
		}
		if !st.Quorum {
			return fmt.Errorf("no quorum: %s", st.QuorumReason)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // the drain goes on after the restart
	if o, err := e.c.Owner(vip); err != nil || o != to {
		t.Errorf("%s: owner %v (%v) after the restart, want %s", vip, o, err, to.Role)
	}
	e.checkUndisturbed("a restart of the draining node", start, sessions, []*lab.Watch{w, w}, keys)
}
