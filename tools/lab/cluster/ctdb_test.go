package cluster

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// CTDB as its users run it under Samba: every node runs ctdbd for the
// clustered databases only and smbd with `clustering = yes`, fsha moves
// the VIPs (docs/ctdb-lab/RESULTS.md). With CTDB's defaults a dead node is
// noticed by its keepalives only, ~25-30 s after a power cut, and every
// survivor's smbd waits for the recovery that follows: the test logs how
// long, it does not judge it (speed is for benchmarks).

const (
	// ctdbBudget bounds the whole test: a cold CTDB start, a power cut
	// with CTDB's ~30 s detection, a rejoin.
	ctdbBudget = 6 * time.Minute
	// ctdbShareBack bounds the wait, from the power cut, for a read
	// through the dead node's VIP and for the survivors to see it dead.
	ctdbShareBack = 90 * time.Second
	// ctdbAttempt bounds one smbclient read: one that started during the
	// recovery completes when the databases thaw.
	ctdbAttempt = 10 * time.Second
	// ctdbPoll is how often the survivors' ctdbd are asked for the dead
	// node's state.
	ctdbPoll = 100 * time.Millisecond
	// ctdbOwnDetection is the earliest CTDB's defaults can find a dead
	// node by themselves: KeepaliveLimit (5) intervals of KeepaliveInterval
	// (5 s) without a word from it, the first of which may be under way
	// at the cut. A survivor's ctdbd that says "is dead" sooner was told
	// (its connection to the node ended): the kick worked.
	ctdbOwnDetection = 4 * 5 * time.Second
)

// TestCTDBClusteredSmbd: three nodes with CTDB's defaults. (a) A file
// written through one node's smbd reads back through another's: clustered
// smbd on the shared directory works. (b) A power cut of a node that is
// not the CTDB leader: its VIP moves, and a read through that VIP succeeds
// once CTDB has recovered; the times from the cut to the VIP's move, to
// the survivors' ctdbd marking the node DISCONNECTED and to the first good
// read are logged. The node comes back and the cluster converges.
//
// With fsha's CTDB kick (its default: a survivor that judges a peer dead
// ends its TCP connections with it on ctdbd's port, and CTDB sees the
// death at once). The control run without it (--ctdb-port 0: CTDB's
// keepalives, about 30 s) is TestCTDBKeepalivesWithoutKick, in make chaos:
// it shows that ctdbOwnDetection is a bound CTDB does not beat by itself.
//
// (c) Then it cuts the power of CTDB's leader: with fsha's election kick
// (its default) the survivors elect a new leader at once rather than
// after CTDB's leader timeout (cutCTDBLeader, ctdb_leader_test.go; the
// control run without it is TestCTDBLeaderDeath/no-election, in make
// chaos).
func TestCTDBClusteredSmbd(t *testing.T) {
	testCTDBClusteredSmbd(t, nil, true, true)
}

// kick: fsha ends the survivors' connections with the dead node's ctdbd,
// so each survivor's ctdbd must say it dead before CTDB's keepalives could
// have (ctdbOwnDetection); without, it must not (or that bound proves
// nothing). leaderCut: then (c), the leader's power cut, with fsha's
// election kick.
func testCTDBClusteredSmbd(t *testing.T, fshaArgs []string, kick, leaderCut bool) {
	e := newEnvWithin(t, lab.ClusterOptions{CTDB: true, FshaArgs: fshaArgs}, ctdbBudget)
	e.waitConverged(e.c.Nodes...)

	// (a) write through A's node, read through B's
	owners := map[netip.Prefix]*lab.ClusterNode{}
	for _, v := range e.c.VIPs {
		owners[v] = e.owner(v)
	}
	var vipA, vipB netip.Prefix
	for _, a := range e.c.VIPs {
		for _, b := range e.c.VIPs {
			if owners[a] != owners[b] && !vipA.IsValid() {
				vipA, vipB = a, b
			}
		}
	}
	if !vipA.IsValid() {
		t.Fatalf("every VIP on one node: %v", owners)
	}
	name := "ctdb-a.txt"
	data := content(name)
	e.retry("create "+name+" through "+vipA.Addr().String(), func(ctx context.Context) error {
		return e.client.PutSMB(ctx, vipA.Addr(), name, data)
	})
	e.files[name] = data
	e.retry("read "+name+" through "+vipB.Addr().String(), func(ctx context.Context) error {
		got, err := e.client.GetSMB(ctx, vipB.Addr(), name)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, data) {
			return permanent{fmt.Errorf("read %q through %s, want %q", got, vipB, data)}
		}
		return nil
	})
	// the smbd of the VIP's holder answered on each: two smbd, one share
	e.answering()
	t.Logf("%s written through %s (%s), read back through %s (%s)", name, vipA, owners[vipA].Role, vipB, owners[vipB].Role)

	// (b) power cut of a node that is not the CTDB leader
	var leader *lab.ClusterNode
	e.eventually("the ctdbd agree on a leader", func(ctx context.Context) error {
		var err error
		leader, err = e.c.CTDBLeader(ctx)
		return err
	})
	var victim *lab.ClusterNode
	for _, n := range e.c.Nodes {
		if n != leader && len(e.held(n)) > 0 {
			victim = n
			break
		}
	}
	if victim == nil {
		t.Fatalf("no node but the CTDB leader %s holds a VIP", leader.Role)
	}
	survivors := e.c.Others(victim)
	vip := e.vipOf(victim)
	name = "ctdb-b.txt"
	data = content(name)
	e.retry("create "+name+" through "+vip.Addr().String(), func(ctx context.Context) error {
		return e.client.PutSMB(ctx, vip.Addr(), name, data)
	})
	e.files[name] = data

	logOffsets := map[*lab.ClusterNode]int64{}
	for _, n := range survivors {
		logOffsets[n] = fileSize(n.CTDBLog())
	}
	cut := time.Now()
	watch := watchCTDBDead(e.ctx, victim, survivors, cut)
	e.powerDown(victim)
	cutTook := time.Since(cut)

	var newOwner *lab.ClusterNode
	e.eventually(vip.String()+" on a survivor", func(context.Context) error {
		var err error
		newOwner, err = e.c.Owner(vip, survivors...)
		return err
	})
	moved := time.Since(cut)

	// read through the VIP until it works: the survivor's smbd waits for
	// CTDB's recovery, which waits for CTDB to see the node dead
	readAt, attempts := e.readThrough(vip, name, data, cut)
	dead := watch.wait()
	t.Logf("fsha %q; power cut of %s (pnn %d; CTDB leader %s; CTDB defaults) took %s; %s on %s after %s",
		fshaArgs, victim.Role, victim.PNN, leader.Role, ms(cutTook), vip, newOwner.Role, ms(moved))
	for _, n := range survivors {
		seen := "never (within the bound)"
		if a, ok := dead.seen[n]; ok {
			seen = fmt.Sprintf("after %s (the ask was sent at %s)", ms(a.answered), ms(a.sent))
		}
		logged, thawed := "not logged", "not logged"
		at, ok := lab.CTDBLogged(n.CTDBLog(), logOffsets[n], fmt.Sprintf("node %s:%d is dead", victim.IP(), lab.CTDBPort), cut)
		switch {
		case !ok:
			t.Errorf("%s's ctdbd never logged %s dead", n.Role, victim.Role)
		case kick && at.Sub(cut) >= ctdbOwnDetection:
			t.Errorf("%s's ctdbd logged %s dead %s after the cut, as late as its own keepalives would: fsha's kick did not reach it", n.Role, victim.Role, ms(at.Sub(cut)))
		case !kick && at.Sub(cut) < ctdbOwnDetection:
			t.Errorf("%s's ctdbd logged %s dead %s after the cut without fsha's kick: CTDB finds a death faster than %v by itself, so that bound proves nothing", n.Role, victim.Role, ms(at.Sub(cut)), ctdbOwnDetection)
		}
		if ok {
			logged = ms(at.Sub(cut))
			if at, ok := lab.CTDBLogged(n.CTDBLog(), logOffsets[n], "Recovery mode set to NORMAL", at); ok {
				thawed = ms(at.Sub(cut))
			}
		}
		t.Logf("%s's ctdbd: %s DISCONNECTED in ctdb nodestatus %s; \"is dead\" logged after %s, then \"Recovery mode set to NORMAL\" after %s",
			n.Role, victim.Role, seen, logged, thawed)
	}
	t.Logf("first good read of %s through %s after %s (%d attempts); the slowest ctdb ask took %s",
		name, vip, ms(readAt), attempts, ms(dead.slowest))
	if dead.err != nil {
		t.Logf("%d asks of ctdb nodestatus failed meanwhile, the last: %v", dead.errs, dead.err)
	}
	for _, n := range survivors {
		if _, ok := dead.seen[n]; !ok {
			t.Errorf("%s's ctdbd did not mark %s DISCONNECTED within %v of the power cut", n.Role, victim.Role, ctdbShareBack)
		}
	}

	// back: ctdbd rejoins, smbd and fsha start, the VIPs settle
	up := time.Now()
	e.powerUp(victim)
	if err := e.c.WaitCTDB(e.ctx, lab.CTDBStartTimeout); err != nil {
		t.Fatal(err)
	}
	e.waitConverged(e.c.Nodes...)
	t.Logf("%s powered up, CTDB all OK and the cluster converged after %v", victim.Role, time.Since(up).Round(time.Millisecond))
	e.inSync()

	if leaderCut {
		// (c) power cut of CTDB's leader; it stays down
		e.cutCTDBLeader(true)
	}
}

// ctdbDeadWatch polls the survivors' ctdbd until each marks the victim
// DISCONNECTED.
type ctdbDeadWatch struct {
	done chan struct{}
	mu   sync.Mutex
	// seen holds, per survivor, the first ask that saw the victim
	// DISCONNECTED; slowest is the longest ask.
	seen    map[*lab.ClusterNode]ctdbAsk
	slowest time.Duration
	// errs counts the asks that failed, err is the last failure
	errs int
	err  error
}

// watchCTDBDead starts polling now, for at most ctdbShareBack from cut;
// times count from cut.
func watchCTDBDead(ctx context.Context, victim *lab.ClusterNode, survivors []*lab.ClusterNode, cut time.Time) *ctdbDeadWatch {
	w := &ctdbDeadWatch{done: make(chan struct{}), seen: map[*lab.ClusterNode]ctdbAsk{}}
	ctx, cancel := context.WithDeadline(ctx, cut.Add(ctdbShareBack))
	go func() {
		defer close(w.done)
		defer cancel()
		for {
			for _, n := range survivors {
				if _, ok := w.seenBy(n); ok {
					continue
				}
				qctx, qcancel := context.WithTimeout(ctx, 5*time.Second)
				sent := time.Now()
				nodes, err := n.CTDBNodes(qctx)
				ask := ctdbAsk{sent: sent.Sub(cut), answered: time.Since(cut)}
				qcancel()
				w.mu.Lock()
				w.slowest = max(w.slowest, ask.answered-ask.sent)
				w.mu.Unlock()
				if err != nil {
					if ctx.Err() == nil {
						w.mu.Lock()
						w.errs++
						w.err = err
						w.mu.Unlock()
					}
					continue
				}
				if i := slices.IndexFunc(nodes, func(s lab.CTDBNode) bool { return s.PNN == victim.PNN }); i >= 0 && nodes[i].Has(lab.CTDBDisconnected) {
					w.mu.Lock()
					w.seen[n] = ask
					w.mu.Unlock()
				}
			}
			w.mu.Lock()
			all := len(w.seen) == len(survivors)
			w.mu.Unlock()
			if all {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(ctdbPoll):
			}
		}
	}()
	return w
}

// ctdbAsk is when an ask was sent and answered, since the cut.
type ctdbAsk struct{ sent, answered time.Duration }

func (w *ctdbDeadWatch) seenBy(n *lab.ClusterNode) (ctdbAsk, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	a, ok := w.seen[n]
	return a, ok
}

// wait waits for the watch to end (all seen, or its bound) and returns it.
func (w *ctdbDeadWatch) wait() *ctdbDeadWatch {
	<-w.done
	return w
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// readThrough reads name through vip until it works and returns when,
// since cut, and after how many attempts; not within ctdbShareBack of cut
// fails the test. Each attempt may wait for CTDB's recovery (ctdbAttempt).
func (e *env) readThrough(vip netip.Prefix, name string, data []byte, cut time.Time) (time.Duration, int) {
	e.t.Helper()
	return e.readThroughWithin(vip, name, data, cut, ctdbShareBack, ctdbAttempt)
}

// readThroughWithin is readThrough with its bound (within, from cut) and
// each attempt's time.
func (e *env) readThroughWithin(vip netip.Prefix, name string, data []byte, cut time.Time, within, attempt time.Duration) (time.Duration, int) {
	e.t.Helper()
	attempts := 0
	var lastErr error
	for {
		if time.Since(cut) > within {
			e.t.Fatalf("no read of %s through %s within %v of the power cut (%d attempts): %v", name, vip, within, attempts, lastErr)
		}
		attempts++
		ctx, cancel := context.WithTimeout(e.ctx, attempt)
		got, err := e.client.GetSMB(ctx, vip.Addr(), name)
		cancel()
		switch {
		case err != nil:
			lastErr = err
			if e.ctx.Err() != nil {
				e.t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		case !bytes.Equal(got, data):
			e.t.Fatalf("read %d bytes of %s through %s after the cut that differ from the %d written", len(got), name, vip, len(data))
		default:
			return time.Since(cut), attempts
		}
	}
}
