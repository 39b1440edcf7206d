package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// brokenDrainBound is how soon after a move whose steering loses every
// packet the old connections must be reset: the old holder probes them
// from a second after the new holder took the VIP, three probes a second
// apart (control/node/drainwatch.go), plus a loaded machine's delays. The
// drain timeout of the test is far above it.
const brokenDrainBound = 10 * time.Second

// TestBrokenSteeringEndsDrain forces --steer-mode xdp on the default lab
// (plain veth and bridge, no XDP program on the bridge side), where XDP_TX
// out of a veth is dropped: the new holder's steering loses every packet
// of the old connections, as a NIC whose XDP_TX does not work would. The
// old holder's probes see no client packet arrive and it ends the drain
// with a kill: a talking SMB session and an idle NFS client are both reset
// (their own reads fail with ECONNRESET, and the RSTs are on the client's
// capture) within seconds, not at the drain timeout; a new connection
// then works through the new holder.
func TestBrokenSteeringEndsDrain(t *testing.T) {
	t.Setenv(lab.TunedEnv, "") // the tuned lab's XDP_TX works
	const drainTimeout = 60 * time.Second
	e := newEnvWith(t, lab.Options{}, lab.ClusterOptions{Nodes: 3,
		FshaArgs: []string{"--drain-timeout", drainTimeout.String(), "--steer-mode", "xdp"}})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	to := e.c.Others(old)[0]

	talking, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer talking.conn.Close()
	talkingDone := talkUntilError(talking, pingEvery, 2*brokenDrainBound)
	idle, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.conn.Close()
	idleDone := blockedRead(idle)
	keys := []string{talking.Key(), idle.Key()}
	e.waitFlows(to, old, false, keys...)
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	start := time.Now()
	if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	idleAfter := waitBrokenReset(t, "idle NFS client", idleDone, start)
	talkingAfter := waitBrokenReset(t, "SMB client echoing every 50 ms", talkingDone, start)
	t.Logf("broken steering: idle client reset after %v, talking client after %v",
		idleAfter.Round(time.Millisecond), talkingAfter.Round(time.Millisecond))
	rsts := e.resetsTo(w, start, keys...)
	for _, k := range keys {
		if !slices.ContainsFunc(rsts, func(r string) bool { return strings.Contains(r, k) }) {
			t.Errorf("no RST to %s on the client's capture (%d frames): %v", k, len(w.Frames()), rsts)
		}
	}
	t.Logf("RSTs on the client's capture: %v", rsts)

	// the old holder ends its drain for that reason (a stall of this
	// machine may have made the new holder tickle the clients first: the
	// drain still ends by the probes, as nothing else reaches it)
	var last admin.TimelineStep
	e.eventually(old.Role+"'s drain of "+vip.String()+" ends", func(ctx context.Context) error {
		rec, ok := lastRecord(ctx, old, vip, "drain")
		if !ok {
			return fmt.Errorf("no drain of %s in %s's timeline", vip, old.Role)
		}
		last = rec.Steps[len(rec.Steps)-1]
		if !strings.HasPrefix(last.Step, "drain ended: ") {
			return fmt.Errorf("drain's last step %q", last.Step)
		}
		return nil
	})
	t.Logf("%s's drain of %s: %q after %v", old.Role, vip, last.Step, last.Took.Round(time.Millisecond))
	if !strings.Contains(last.Step, "steering path broken") {
		t.Errorf("%s's drain of %s ended with %q, want the broken steering path:\n%s", old.Role, vip, last.Step, timelineJSON(e.ctx, old))
	}
	if last.Took > drainTimeout/2 {
		t.Errorf("%s's drain of %s ended %v after it began, want well before the drain timeout %v", old.Role, vip, last.Took, drainTimeout)
	}
	again, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatalf("reconnecting after the drain: %v", err)
	}
	defer again.conn.Close()
	e.waitFlows(to, to, false, again.Key())
}

// talkUntilError sends an SMB2 ECHO every interval and waits up to wait
// for each answer, in the background, until one fails: how a client with
// a request outstanding sees its connection break.
func talkUntilError(rc *rawConn, interval, wait time.Duration) <-chan readResult {
	done := make(chan readResult, 1)
	go func() {
		for end := time.Now().Add(testTimeout); time.Now().Before(end); time.Sleep(interval) {
			_ = rc.conn.SetDeadline(time.Now().Add(wait))
			if err := rc.ping(); err != nil {
				done <- readResult{err, time.Now()}
				return
			}
		}
		done <- readResult{errors.New("no error within the test's timeout"), time.Now()}
	}()
	return done
}

// waitBrokenReset waits, at most brokenDrainBound after from, for a
// client's connection to fail with ECONNRESET, and returns how long after
// from it did.
func waitBrokenReset(t *testing.T, what string, done <-chan readResult, from time.Time) time.Duration {
	t.Helper()
	select {
	case r := <-done:
		d := r.at.Sub(from)
		if !errors.Is(r.err, syscall.ECONNRESET) {
			t.Errorf("%s: %v after %v, want ECONNRESET", what, r.err, d.Round(time.Millisecond))
		}
		return d
	case <-time.After(time.Until(from.Add(brokenDrainBound))):
		t.Errorf("%s: no reset within %v of the move", what, brokenDrainBound)
		return brokenDrainBound
	}
}

// TestDrainProbeIdleClient: on the default lab (the tc path) a drain whose
// only connection is idle finds its return path by the probe alone: the
// client's answer to it comes back through the steering, the old holder
// records it, and the client is never reset; closing it ends the drain.
func TestDrainProbeIdleClient(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", "60s"}})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	to := e.c.Others(old)[0]
	idle, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.conn.Close()
	idleDone := blockedRead(idle)
	e.waitFlows(to, old, false, idle.Key())
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	var step admin.TimelineStep
	e.eventually(old.Role+" finds the drain's return path", func(ctx context.Context) error {
		rec, ok := lastRecord(ctx, old, vip, "drain")
		if !ok {
			return fmt.Errorf("no drain of %s in %s's timeline", vip, old.Role)
		}
		for _, s := range rec.Steps {
			if strings.HasPrefix(s.Step, "client packets arrive through node ") {
				step = s
				return nil
			}
			if strings.HasPrefix(s.Step, "drain ended: ") {
				return fmt.Errorf("drain ended first: %q", s.Step)
			}
		}
		return fmt.Errorf("steps %v", rec.Steps)
	})
	t.Logf("%s: %q %v after the drain began", old.Role, step.Step, step.Took.Round(time.Millisecond))
	// past the point where a broken path would have been judged
	time.Sleep(time.Until(start.Add(brokenDrainBound)))
	select {
	case r := <-idleDone:
		t.Fatalf("idle client's read ended during the drain: %v after %v", r.err, r.at.Sub(start).Round(time.Millisecond))
	default:
	}
	if rsts := e.resetsTo(w, start, idle.Key()); len(rsts) > 0 {
		t.Errorf("RSTs to the idle client during the drain: %v", rsts)
	}
	if len(w.Frames()) == 0 {
		t.Errorf("the client's capture saw no frame: the probes' answers went unseen")
	}
	idle.conn.Close()
	e.waitFlowsGone(to, idle.Key())
	e.eventually("the drain of "+vip.String()+" ends", func(ctx context.Context) error {
		rec, ok := lastRecord(ctx, old, vip, "drain")
		if !ok || rec.Steps[len(rec.Steps)-1].Step != "drain ended: last connection closed" {
			return fmt.Errorf("drain record %+v", rec.Steps)
		}
		return nil
	})
}
