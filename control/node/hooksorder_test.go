package node

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/fsha/fsha/control/allocation"
)

// slowHooks is a takeip hook that takes its time (a grace call to a busy
// file server), or hangs until its context ends.
type slowHooks struct {
	node  int
	delay time.Duration // 0: hang
	mu    *sync.Mutex
	ends  map[int]map[netip.Addr]time.Time
}

func (h *slowHooks) Run(ctx context.Context, event string, env map[string]string) error {
	if event != "takeip" {
		return nil
	}
	if h.delay == 0 {
		<-ctx.Done()
		return ctx.Err()
	}
	time.Sleep(h.delay)
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.ends[h.node] == nil {
		h.ends[h.node] = map[netip.Addr]time.Time{}
	}
	h.ends[h.node][netip.MustParseAddr(env["FSHA_VIP"])] = time.Now()
	return nil
}

// TestTicklesAfterTakeipHooks: a takeover tickles the dead node's clients
// only once its takeip hooks are done (they put NFS servers in grace: a
// client reconnecting before that cannot reclaim), and not later than
// hookTickleWait when a hook hangs.
func TestTicklesAfterTakeipHooks(t *testing.T) {
	for _, c := range []struct {
		name  string
		delay time.Duration
	}{
		{"slow hook", 300 * time.Millisecond},
		{"hung hook", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			ends := map[int]map[netip.Addr]time.Time{}
			cl := startClusterHooks(t, 3, 3, allocation.Automatic, func(i int) Hooks {
				return &slowHooks{node: i, delay: c.delay, mu: &mu, ends: ends}
			})
			cl.waitFor("3 VIPs on 3 nodes", func() bool { return balanced(cl.holders(), []int{0, 1, 2}, 3) })
			cl.world.mu.Lock()
			before := len(cl.world.tickles)
			cl.world.mu.Unlock()
			crashed := time.Now()
			cl.crash(2)
			cl.waitFor("node 2's VIP taken over and tickled", func() bool {
				cl.world.mu.Lock()
				defer cl.world.mu.Unlock()
				return len(cl.world.tickles) > before
			})
			cl.world.mu.Lock()
			tk := cl.world.tickles[before]
			cl.world.mu.Unlock()
			mu.Lock()
			end, ok := ends[tk.node][tk.vip]
			mu.Unlock()
			switch {
			case c.delay > 0 && (!ok || tk.at.Before(end)):
				t.Errorf("node %d tickled %s's clients at +%v, before its takeip hook ended (%v, ended %v)",
					tk.node, tk.vip, tk.at.Sub(crashed), end.Sub(crashed), ok)
			case c.delay == 0 && tk.at.Sub(crashed) > 2*hookTickleWait:
				t.Errorf("with a hung hook node %d tickled %s's clients only at +%v", tk.node, tk.vip, tk.at.Sub(crashed))
			}
			t.Logf("node %d tickled %s's clients %v after the crash", tk.node, tk.vip, tk.at.Sub(crashed).Round(time.Millisecond))
		})
	}
}
