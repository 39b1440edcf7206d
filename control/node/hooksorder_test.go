package node

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
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

// epochHooks records the FSHA_EPOCH of every takeip and releaseip.
type epochHooks struct {
	node int
	mu   *sync.Mutex
	runs *[]hookEpoch
}

type hookEpoch struct {
	node  int
	event string
	vip   string
	epoch string
}

func (h *epochHooks) Run(_ context.Context, event string, env map[string]string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	*h.runs = append(*h.runs, hookEpoch{node: h.node, event: event, vip: env["FSHA_VIP"], epoch: env["FSHA_EPOCH"]})
	return nil
}

// TestHooksGetTheLeaseEpoch: takeip and releaseip hooks get the epoch of
// the VIP's lease, and a takeover's is above every earlier holder's, so
// that hooks keeping shared state per VIP (60.ganesha-grace) can order
// runs on different nodes.
func TestHooksGetTheLeaseEpoch(t *testing.T) {
	var mu sync.Mutex
	var runs []hookEpoch
	cl := startClusterHooks(t, 3, 3, allocation.Automatic, func(i int) Hooks {
		return &epochHooks{node: i, mu: &mu, runs: &runs}
	})
	cl.waitFor("3 VIPs on 3 nodes", func() bool { return balanced(cl.holders(), []int{0, 1, 2}, 3) })
	cl.waitFor("the first takeips' hooks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(runs) >= 3
	})
	mu.Lock()
	before := len(runs)
	mu.Unlock()
	cl.crash(2)
	cl.waitFor("node 2's VIP taken over", func() bool { return balanced(cl.holders(), []int{0, 1}, 3) })
	cl.waitFor("the takeover's hooks", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return slices.ContainsFunc(runs[before:], func(r hookEpoch) bool { return r.event == "takeip" })
	})
	mu.Lock()
	defer mu.Unlock()
	held := map[string]uint64{} // the highest epoch of each VIP's hooks before the crash
	for i, r := range runs {
		e, err := strconv.ParseUint(r.epoch, 10, 64)
		if err != nil || e == 0 {
			t.Errorf("node %d's %s of %s: FSHA_EPOCH %q", r.node, r.event, r.vip, r.epoch)
			continue
		}
		if i < before {
			held[r.vip] = max(held[r.vip], e)
			continue
		}
		if r.event == "takeip" && e <= held[r.vip] {
			t.Errorf("node %d's takeover of %s at epoch %d, its holders before the crash had %d", r.node, r.vip, e, held[r.vip])
		}
		t.Logf("after the crash: node %d's %s of %s at epoch %d (before: %d)", r.node, r.event, r.vip, e, held[r.vip])
	}
}
