package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// The death of CTDB's leader. fsha's kick makes the survivors' ctdbd see
// it disconnected at once, but their recovery daemons elect a new leader
// only once the dead one's broadcasts have stopped for CTDB's `leader
// timeout` (5 s by default), and only the leader recovers the databases
// smbd waits on. With fsha's election kick (--ctdb-election, the default)
// a survivor that judges the leader dead sends CTDB's own "unknown
// leader" broadcast, and with a cluster lock (the lab's) the survivors
// contend for it at once.
//
// What the cut is judged by is outside fsha: the survivors' `ctdb
// leader` must name one survivor, a read through a VIP must succeed, and
// the survivors' ctdbd logs must tell how the new leader came: with the
// election kick no survivor logs "Leader broadcast timeout" before the
// new leader took the cluster lock; without it one must (CTDB elected by
// itself). The times are logged, not judged.

// Lines of ctdbd's log (ctdb_recoverd.c, Samba 4.17).
const (
	ctdbLogLeaderTimeout = "Leader broadcast timeout"
	ctdbLogTookLock      = "Took cluster lock, leader="
)

// ctdbLeaderAsk bounds one `ctdb leader`: it waits for the next leader
// broadcast (one a second from a live leader).
const ctdbLeaderAsk = 3 * time.Second

// fshaLogElection is fsha's log line when it sent the broadcast.
const fshaLogElection = "the dead peer was CTDB's leader: asked the survivors' CTDB to elect a new one now"

// leaderCut is what one power cut of CTDB's leader showed, since the cut.
type leaderCut struct {
	victim, winner *lab.ClusterNode
	vip            netip.Prefix
	cutTook        time.Duration
	// moved: the VIP answered on a survivor; read: the first good read
	// through it; reported: every survivor's `ctdb leader` named the
	// winner; tookLock: the winner's ctdbd logged taking the cluster lock
	moved, read, reported, tookLock time.Duration
	// thawed: the winner's ctdbd logged its recovery done (0: not seen)
	thawed   time.Duration
	attempts int
	// timeouts: the survivors whose ctdbd logged a leader broadcast
	// timeout before tookLock
	timeouts []string
	// asked: the survivors whose fsha logged sending the broadcast
	asked []string
}

func (c leaderCut) String() string {
	return fmt.Sprintf("cut of the CTDB leader %s took %s; %s moved after %s; new leader %s took the cluster lock after %s and logged \"Recovery mode set to NORMAL\" after %s, every survivor's `ctdb leader` named it after %s; first good read through %s after %s (%d attempts); leader broadcast timeouts logged by %v; fsha asked for the election on %v",
		c.victim.Role, ms(c.cutTook), c.vip, ms(c.moved), c.winner.Role, ms(c.tookLock), ms(c.thawed), ms(c.reported), c.vip, ms(c.read), c.attempts, c.timeouts, c.asked)
}

func ms(d time.Duration) string { return d.Round(time.Millisecond).String() }

// cutCTDBLeader cuts the power of CTDB's leader and waits until a read
// through a VIP works and every survivor's ctdbd names the same new
// leader, then judges how that leader came (election: fsha's election
// kick runs). The victim stays down.
func (e *env) cutCTDBLeader(election bool) leaderCut {
	e.t.Helper()
	var victim *lab.ClusterNode
	e.eventually("the ctdbd agree on a leader", func(ctx context.Context) error {
		var err error
		victim, err = e.c.CTDBLeader(ctx)
		return err
	})
	survivors := e.c.Others(append([]*lab.ClusterNode{victim}, e.out...)...)
	// the leader's VIP: it moves and its new holder's smbd waits for
	// the recovery; any VIP otherwise (every smbd waits)
	vip := e.c.VIPs[0]
	if len(e.held(victim)) > 0 {
		vip = e.vipOf(victim)
	}
	name := "ctdb-leader-" + victim.Role + ".txt"
	data := content(name)
	e.retry("create "+name+" through "+vip.Addr().String(), func(ctx context.Context) error {
		return e.client.PutSMB(ctx, vip.Addr(), name, data)
	})
	e.files[name] = data
	offsets := map[*lab.ClusterNode]int64{}
	for _, n := range survivors {
		offsets[n] = fileSize(n.CTDBLog())
	}
	asked := map[*lab.ClusterNode]int{}
	for _, n := range survivors {
		lines, err := n.FshaLog(fshaLogElection)
		if err != nil {
			e.t.Fatal(err)
		}
		asked[n] = len(lines)
	}

	r := leaderCut{victim: victim, vip: vip}
	cut := time.Now()
	e.powerDown(victim)
	r.cutTook = time.Since(cut)
	leaders := watchCTDBLeader(e.ctx, survivors, cut)

	e.eventually(vip.String()+" on a survivor", func(context.Context) error {
		_, err := e.c.Owner(vip, survivors...)
		return err
	})
	r.moved = time.Since(cut)
	r.read, r.attempts = e.readThrough(vip, name, data, cut)

	w := leaders.wait()
	if w.err != nil {
		e.t.Fatalf("the survivors' ctdbd did not name one new leader within %v of the cut: %v", ctdbShareBack, w.err)
	}
	r.winner, r.reported = w.leader, w.at
	at, ok := lab.CTDBLogged(r.winner.CTDBLog(), offsets[r.winner], fmt.Sprintf("%s%d", ctdbLogTookLock, r.winner.PNN), cut)
	if !ok {
		e.t.Errorf("the new leader %s's ctdbd did not log %q: not elected through the cluster lock?", r.winner.Role, ctdbLogTookLock)
		at = cut.Add(r.reported)
	}
	r.tookLock = at.Sub(cut)
	if th, ok := lab.CTDBLogged(r.winner.CTDBLog(), offsets[r.winner], "Recovery mode set to NORMAL", at); ok {
		r.thawed = th.Sub(cut)
	}
	for _, n := range survivors {
		if to, ok := lab.CTDBLogged(n.CTDBLog(), offsets[n], ctdbLogLeaderTimeout, cut); ok && !to.After(at) {
			r.timeouts = append(r.timeouts, n.Role)
		}
		lines, err := n.FshaLog(fshaLogElection)
		if err != nil {
			e.t.Fatal(err)
		}
		if len(lines) > asked[n] {
			r.asked = append(r.asked, n.Role)
		}
		e.logCTDBKick(n, cut)
	}
	e.t.Logf("election kick %v: %s", election, r)
	switch {
	case election && len(r.timeouts) > 0:
		e.t.Errorf("with fsha's election kick, the ctdbd of %v still waited for the dead leader's broadcasts (%q logged before %s took the cluster lock): the kick did not reach CTDB",
			r.timeouts, ctdbLogLeaderTimeout, r.winner.Role)
	case !election && len(r.timeouts) == 0:
		e.t.Errorf("without fsha's election kick no survivor's ctdbd logged %q before %s took the cluster lock: something else called the election, so the with-kick check proves nothing",
			ctdbLogLeaderTimeout, r.winner.Role)
	}
	return r
}

// ctdbLeaderWatch asks each survivor's ctdbd for the leader until all
// name the same survivor.
type ctdbLeaderWatch struct {
	done   chan struct{}
	leader *lab.ClusterNode
	// at: when the last survivor named it, since the cut
	at  time.Duration
	err error
}

func watchCTDBLeader(ctx context.Context, survivors []*lab.ClusterNode, cut time.Time) *ctdbLeaderWatch {
	w := &ctdbLeaderWatch{done: make(chan struct{})}
	ctx, cancel := context.WithDeadline(ctx, cut.Add(ctdbShareBack))
	type named struct {
		pnn int
		at  time.Duration
	}
	var (
		mu    sync.Mutex
		got   = map[*lab.ClusterNode]named{}
		lasts = map[*lab.ClusterNode]error{}
		wg    sync.WaitGroup
	)
	isSurvivor := func(pnn int) bool {
		for _, n := range survivors {
			if n.PNN == pnn {
				return true
			}
		}
		return false
	}
	for _, n := range survivors {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				qctx, qcancel := context.WithTimeout(ctx, ctdbLeaderAsk)
				pnn, err := n.CTDBLeader(qctx)
				qcancel()
				at := time.Since(cut)
				if err == nil && !isSurvivor(pnn) {
					err = fmt.Errorf("%s's ctdbd names pnn %d, not a survivor", n.Role, pnn)
				}
				if err == nil {
					mu.Lock()
					got[n] = named{pnn, at}
					mu.Unlock()
					return
				}
				mu.Lock()
				lasts[n] = err
				mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}()
	}
	go func() {
		defer close(w.done)
		defer cancel()
		wg.Wait()
		var pnns []string
		leader := -1
		for _, n := range survivors {
			g, ok := got[n]
			if !ok {
				w.err = fmt.Errorf("%s's ctdbd: %v", n.Role, lasts[n])
				return
			}
			pnns = append(pnns, fmt.Sprintf("%s: pnn %d", n.Role, g.pnn))
			if leader >= 0 && g.pnn != leader {
				w.err = fmt.Errorf("the survivors name different leaders: %s", strings.Join(pnns, ", "))
			}
			leader = g.pnn
			w.at = max(w.at, g.at)
		}
		if w.err != nil {
			return
		}
		for _, n := range survivors {
			if n.PNN == leader {
				w.leader = n
			}
		}
	}()
	return w
}

func (w *ctdbLeaderWatch) wait() *ctdbLeaderWatch {
	<-w.done
	return w
}

// logCTDBKick logs what n's fsha said of CTDB since since (its ctdb-kick
// logger's lines).
func (e *env) logCTDBKick(n *lab.ClusterNode, since time.Time) {
	lines, err := n.FshaLog("")
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range lines {
		if lg, _ := l.Fields["logger"].(string); !strings.HasSuffix(lg, "ctdb-kick") || l.At.Before(since) {
			continue
		}
		var f []string
		for _, k := range []string{"pnn", "peer", "connections", "ctdb_leader", "leader_heard_ago", "ctdb_pnn", "ctdb_flags", "took", "reason", "error"} {
			if v, ok := l.Fields[k]; ok {
				f = append(f, fmt.Sprintf("%s=%v", k, v))
			}
		}
		e.t.Logf("%s's fsha at +%s: %s %s", n.Role, ms(l.At.Sub(since)), l.Msg, strings.Join(f, " "))
	}
}
