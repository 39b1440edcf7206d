package failover

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// Planned moves drain: the old owner keeps the VIP on loopback and serves
// its connections, the new owner announces the VIP, takes the new
// connections and steers the old ones' packets back to the old owner
// until they end. No client may notice. On the default lab (plain veth
// and bridge, as container networks are) the auto steering mode takes the
// tc path; TestPlannedMoveTunedXDP covers the XDP_TX path.

const (
	// pingEvery is the raw sessions' pace: a stall of the data path
	// longer than a few of these shows in their longest gap.
	pingEvery = 50 * time.Millisecond
	// maxSteerStall is the longest a planned move may stall a session:
	// the steering transition (the new holder steers before its address
	// is up) takes a few renewals at most
	maxSteerStall = 500 * time.Millisecond
	// stallSlack: a session's gap that a machine stall overlaps is the
	// lab's when it ends within this of the stall: a segment lost in the
	// stall (a full veth ring) waits for TCP's retransmission (200 ms at
	// least) and the next ping
	stallSlack = 400 * time.Millisecond
	// transferSize and transferRate make each real client's transfer
	// last about 4 s: it is in flight when the VIP moves.
	transferSize = 12 << 20
	transferRate = 3 << 20
	// drainTimeout is far above what the transfers need: the drains of
	// these tests must end because their last connection closed.
	drainTimeout = "60s"
)

// TestPlannedMoves moves a VIP with `fsha move` while a real smbclient
// and a real nfs-cat read through it and two raw sessions (SMB2 ECHO to
// smbd, RPC NULL to nfs-ganesha) talk every 50 ms; then it puts the new
// owner in maintenance (`fsha disable`) under the same load. Each time:
// every session and transfer completes on its one TCP connection (the
// new owner lists them as steered to the old one meanwhile), new
// connections go to the new owner, and the drain ends when the last old
// connection closes.
func TestPlannedMoves(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	vip := e.c.VIPs[0]
	e.move(vip)
	e.waitConverged(e.c.Nodes...)

	holder := e.owner(vip)
	e.drain("disable", vip, func() {
		if out, err := holder.Admin(e.ctx, "disable"); err != nil {
			t.Fatalf("fsha disable on %s: %v: %s", holder.Role, err, out)
		}
	}, nil)
}

// TestPlannedMoveTunedXDP is TestPlannedMoves's move on the lab tuned
// for XDP_TX out of a veth (lab.Options.Tuned: XDP_PASS on the bridge
// side, transmit checksum offload off) with --steer-mode xdp: the path
// fsha takes on NICs whose native XDP_TX works.
func TestPlannedMoveTunedXDP(t *testing.T) {
	e := newEnvWith(t, lab.Options{Tuned: true}, lab.ClusterOptions{Nodes: 3,
		FshaArgs: []string{"--drain-timeout", drainTimeout, "--steer-mode", "xdp"}})
	e.move(e.c.VIPs[0])
}

// move moves vip from its owner to another node with `fsha move`, under
// load (drain).
func (e *env) move(vip netip.Prefix) {
	e.t.Helper()
	old := e.owner(vip)
	to := e.c.Others(old)[0]
	e.drain("move", vip, func() {
		if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
			e.t.Fatalf("fsha move %s %s: %v: %s", vip.Addr(), to.IP(), err, out)
		}
	}, to)
}

// drain runs one planned move of vip away from its owner, triggered by
// trigger, under load, and checks that nothing was dropped. want is the
// expected new owner (nil: any other node).
func (e *env) drain(phase string, vip netip.Prefix, trigger func(), want *lab.ClusterNode) {
	t := e.t
	t.Helper()
	old := e.owner(vip)
	peers := slices.DeleteFunc(e.up(), func(n *lab.ClusterNode) bool { return n == old })
	t.Logf("%s: %s from %s", phase, vip, old.Role)

	smbFile, nfsFile := phase+"-smb.bin", phase+"-nfs.bin"
	smbData, nfsData := content(smbFile, transferSize), content(nfsFile, transferSize)
	e.writeShare(smbFile, smbData)
	e.writeShare(nfsFile, nfsData)

	smbRaw, nfsRaw := e.dialRaw(vip.Addr())
	sessions := []*session{startSession(smbRaw, pingEvery), startSession(nfsRaw, pingEvery)}
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	smbGet, err := startSMBGet(e.client, vip.Addr(), smbFile, smbData, transferRate)
	if err != nil {
		t.Fatal(err)
	}
	nfsCat, err := startNFSCat(e.client, vip.Addr(), nfsFile, nfsData, transferRate)
	if err != nil {
		t.Fatal(err)
	}
	transfers := []*transfer{smbGet, nfsCat}
	keys := []string{smbRaw.Key(), nfsRaw.Key()}
	for _, tr := range transfers {
		tr.key = e.socketOf(vip, tr.port, tr.process)
		keys = append(keys, tr.key)
	}
	// every peer knows the old owner's connections before the move
	for _, p := range peers {
		e.waitFlows(p, old, false, keys...)
	}
	steered0 := map[*lab.ClusterNode]steerCount{}
	for _, p := range peers {
		steered0[p] = e.steered(p)
	}

	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	trigger()
	var next *lab.ClusterNode
	e.eventuallyVIP(vip, phase+": "+vip.String()+" announced by another node, on "+old.Role+"'s loopback", func(ctx context.Context) error {
		o, err := e.c.Owner(vip)
		if err != nil {
			return err
		}
		if o == old {
			return fmt.Errorf("%s still on %s's eth0", vip, old.Role)
		}
		lo, err := loVIPs(old, e.c.VIPs)
		if err != nil {
			return err
		}
		if !slices.Contains(lo, vip.Addr()) {
			return fmt.Errorf("%s not on %s's loopback (%v)", vip.Addr(), old.Role, lo)
		}
		next = o
		return nil
	})
	moved := time.Since(start)
	if want != nil && next != want {
		t.Fatalf("%s: %s went to %s, want %s", phase, vip, next.Role, want.Role)
	}
	e.waitFlows(next, old, true, keys...)
	steering := time.Since(start)
	t.Logf("%s: %s on %s's eth0 %v after the request, its 4 connections steered back to %s after %v",
		phase, vip, next.Role, moved.Round(time.Millisecond), old.Role, steering.Round(time.Millisecond))
	for _, tr := range transfers {
		if tr.proc.Exited() {
			t.Fatalf("%s: %s ended before the drain began (%v): %s\nresets seen by the client: %v",
				phase, tr.name, tr.proc.ExitErr(), tr.proc.Tail(500), e.resetsTo(w, start, keys...))
		}
	}
	// both say so once each has heard the other (the old holder learns
	// the new owner from its heartbeats, a renewal or two after the
	// steering began on a loaded machine)
	for _, n := range []*lab.ClusterNode{old, next} {
		e.eventually(phase+": "+n.Role+" says "+vip.String()+" drains from "+old.Role+" to "+next.Role, func(ctx context.Context) error {
			ip, err := ipOf(ctx, n, vip)
			if err != nil {
				return err
			}
			if ip.State != "draining" || ip.DrainingFrom != old.IP().String() || ip.Owner != next.IP().String() {
				return fmt.Errorf("%s says %+v, want owner %s, state draining, draining_from %s", n.Role, ip, next.IP(), old.IP())
			}
			return nil
		})
	}

	// new connections go to the new owner, by SMB and by NFS
	e.newConnLandsOn(vip, next, old)
	if who, err := e.client.WhoAnswers(e.ctx, vip.Addr()); err != nil || who != next.Role {
		t.Errorf("%s: the smbd answering a new connection to %s is %q (%v), want %s's", phase, vip, who, err, next.Role)
	}

	// the real clients still run on the connections they started with
	for _, tr := range transfers {
		now, err := socketsOf(e.ctx, e.client, vip.Addr(), tr.port, tr.process)
		if err == nil && !tr.proc.Exited() && (len(now) != 1 || now[0] != tr.key) {
			t.Errorf("%s: %s reconnected: its connections are %v, it started on %s", phase, tr.name, now, tr.key)
		}
	}
	// the transfers complete, on their one connection
	for _, tr := range transfers {
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		err := tr.Wait(ctx)
		cancel()
		if err != nil {
			t.Errorf("%s: %v", phase, err)
		}
	}
	// the raw sessions go on through the steering a little longer
	time.Sleep(500 * time.Millisecond)
	total := time.Since(start)
	for _, r := range e.resetsTo(w, start, keys...) {
		t.Errorf("%s: %s: an old connection was reset during the drain", phase, r)
	}
	for _, s := range sessions {
		s.Close()
		t.Logf("%s: %s", phase, s)
		if err := s.Err(); err != nil {
			t.Errorf("%s: %s session through %s broke during the move: %v", phase, s.rc.proto, vip, err)
		}
		if min := int(total / pingEvery * 3 / 4); s.OK() < min {
			t.Errorf("%s: %s session answered %d pings in %v, want at least %d", phase, s.rc.proto, s.OK(), total.Round(time.Millisecond), min)
		}
		e.checkGaps(phase+": "+s.rc.proto+" session through "+vip.String(), s, w)
	}
	if t.Failed() {
		t.FailNow()
	}
	e.checkSteered(phase, next, old, steered0[next])

	// once the old connections are gone, the drain ends
	e.waitFlowsGone(next, keys...)
	e.eventually(phase+": the drain of "+vip.String()+" ends", func(ctx context.Context) error {
		lo, err := loVIPs(old, e.c.VIPs)
		if err != nil {
			return err
		}
		if slices.Contains(lo, vip.Addr()) {
			return fmt.Errorf("%s still on %s's loopback", vip.Addr(), old.Role)
		}
		for _, n := range e.up() {
			ip, err := ipOf(ctx, n, vip)
			if err != nil {
				return err
			}
			if ip.State == "draining" || ip.DrainingFrom != "" {
				return fmt.Errorf("%s says %+v", n.Role, ip)
			}
		}
		return nil
	})
	rec, ok := lastRecord(e.ctx, old, vip, "drain")
	if !ok {
		t.Fatalf("%s: no drain of %s in %s's timeline:\n%s", phase, vip, old.Role, timelineJSON(e.ctx, old))
	}
	last := rec.Steps[len(rec.Steps)-1]
	t.Logf("%s: %s's drain of %s (%s): %q after %v (all traffic over at +%v)", phase, old.Role, vip, rec.Reason,
		last.Step, last.Took.Round(time.Millisecond), total.Round(time.Millisecond))
	if last.Step != "drain ended: last connection closed" {
		t.Errorf("%s: %s's drain of %s ended with %q, want the last connection closed:\n%s", phase, old.Role, vip, last.Step, timelineJSON(e.ctx, old))
	}
	// the old holder probes the return path from a second after the new
	// holder took the VIP and, with sessions talking, finds it a second
	// later (control/node/drainwatch.go): a drain that lasted longer than
	// that, with margin, must say so
	verified := slices.ContainsFunc(rec.Steps, func(s admin.TimelineStep) bool {
		return strings.HasPrefix(s.Step, "client packets arrive through node ")
	})
	t.Logf("%s: %s's drain of %s verified its return path: %v", phase, old.Role, vip, verified)
	if !verified && last.Took > 4*time.Second {
		t.Errorf("%s: %s's drain of %s lasted %v without finding the steered packets arrive:\n%s", phase, old.Role, vip, last.Took, timelineJSON(e.ctx, old))
	}
	if tl, err := next.Timeline(e.ctx); err == nil {
		for _, r := range tl {
			if r.VIP == vip.String() && r.Kind == "takeover" && r.From == old.IP().String() && r.Tickled > 0 {
				t.Errorf("%s: %s tickled %d connections of a planned move: %+v", phase, next.Role, r.Tickled, r)
			}
		}
	}
}

// eventuallyVIP is eventually, with every node's view of vip in the
// failure message.
func (e *env) eventuallyVIP(vip netip.Prefix, what string, check func(ctx context.Context) error) {
	e.t.Helper()
	if err := lab.Eventually(e.ctx, failoverTimeout, what, check); err != nil {
		e.t.Fatalf("%v%s", err, e.vipViews(vip))
	}
}

// socketOf waits until the named client process has exactly one
// connection to vip:port and returns it.
func (e *env) socketOf(vip netip.Prefix, port uint16, process string) string {
	e.t.Helper()
	var key string
	e.eventually(process+" connected to "+vip.Addr().String(), func(ctx context.Context) error {
		keys, err := socketsOf(ctx, e.client, vip.Addr(), port, process)
		if err != nil {
			return err
		}
		if len(keys) != 1 {
			return fmt.Errorf("%s has connections %v", process, keys)
		}
		key = keys[0]
		return nil
	})
	return key
}

// newConnLandsOn opens a new NFS connection through vip: next serves it
// (its own flow), old does not.
func (e *env) newConnLandsOn(vip netip.Prefix, next, old *lab.ClusterNode) {
	e.t.Helper()
	rc, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		e.t.Fatalf("new connection to %s during the drain: %v", vip, err)
	}
	defer rc.conn.Close()
	e.waitFlows(next, next, false, rc.Key())
	fs, out, err := flowsAll(e.ctx, old)
	if err != nil {
		e.t.Fatal(err)
	}
	if f, ok := findFlow(fs, rc.Key()); ok && f.Owner == old.IP().String() {
		e.t.Errorf("new connection %s landed on the old owner %s:\n%s", rc.Key(), old.Role, out)
	}
}

// steerCount is what a node's data plane steered, by path.
type steerCount struct{ xdp, tc uint64 }

// steered reads the node's steering counters: ingress.steered (XDP_TX)
// and ingress.tc_steered (TC ingress redirect).
func (e *env) steered(n *lab.ClusterNode) steerCount {
	e.t.Helper()
	c, err := n.Counters(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return steerCount{c.Ingress.Steered, c.Ingress.TCSteered}
}

// checkSteered checks that n steered packets to `to` since before, all of
// them by the path its eth0 must have (e.wantSteer), which is what
// `fsha counters` says eth0 has.
func (e *env) checkSteered(phase string, n, to *lab.ClusterNode, before steerCount) {
	e.t.Helper()
	c, steer, err := n.CountersAndSteering(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	var eth0 dataplane.SteerState
	for _, s := range steer {
		if s.Interface == lab.HostIface {
			eth0 = s
		}
	}
	xdp, tc := c.Ingress.Steered-before.xdp, c.Ingress.TCSteered-before.tc
	e.t.Logf("%s: %s steered %d packets to %s by XDP_TX, %d by TC ingress (eth0: %+v)", phase, n.Role, xdp, to.Role, tc, eth0)
	if eth0.Steer != e.wantSteer || eth0.Driver != e.wantDriver || eth0.XDPMode != e.wantXDP {
		e.t.Errorf("%s: %s's eth0 steers %+v, want %s on %s xdp on %s", phase, n.Role, eth0, e.wantSteer, e.wantXDP, e.wantDriver)
	}
	mine, other := tc, xdp
	if e.wantSteer == "xdp" {
		mine, other = xdp, tc
	}
	if mine == 0 || other != 0 {
		e.t.Errorf("%s: %s steered %d packets by its path %s and %d by the other one, want some and none",
			phase, n.Role, mine, e.wantSteer, other)
	}
}

// lastRecord is the node's latest timeline record of vip of that kind.
func lastRecord(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix, kind string) (admin.Takeover, bool) {
	tl, err := n.Timeline(ctx)
	if err != nil {
		return admin.Takeover{}, false
	}
	for i := len(tl) - 1; i >= 0; i-- {
		if tl[i].VIP == vip.String() && tl[i].Kind == kind && len(tl[i].Steps) > 0 {
			return tl[i], true
		}
	}
	return admin.Takeover{}, false
}

// TestFailback powers a node down, lets its VIPs go to a survivor, opens
// raw sessions (SMB2 ECHO, RPC NULL, every 50 ms) through every VIP of
// that survivor, and powers the node back up: the automatic failback
// gives it a VIP back by draining it, and no session sees an error.
func TestFailback(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	// not node 1 (PNN 0): see TestFailbackReasonNodeZero
	gone := e.c.Node(2)
	vip := e.held(gone)[0]
	e.powerDown(gone)
	e.waitConverged(e.up()...)
	surv := e.owner(vip, e.up()...)
	held, err := surv.HeldVIPs()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s down, %s holds %v", gone.Role, surv.Role, held)

	type vipSessions struct {
		vip      netip.Prefix
		sessions []*session
	}
	var all []vipSessions
	for _, v := range held {
		all = append(all, vipSessions{v, e.rawSessions(v.Addr())})
	}
	// the control: a session through the third node, which the failback
	// does not involve; a stall it shares is the lab's (checkGaps)
	third := e.c.Others(gone, surv)[0]
	ctlConn, err := dialSMB(e.ctx, e.client, e.held(third)[0].Addr())
	if err != nil {
		t.Fatal(err)
	}
	control := startSession(ctlConn, pingEvery)
	defer func() {
		control.Close()
		for _, vs := range all {
			for _, s := range vs.sessions {
				s.Close()
			}
		}
	}()
	var keys []string
	var watches []*lab.Watch
	for _, vs := range all {
		for _, s := range vs.sessions {
			keys = append(keys, s.rc.Key())
		}
		w, err := e.client.WatchAddr(vs.vip.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watches = append(watches, w)
	}
	for _, p := range e.c.Others(gone, surv) {
		e.waitFlows(p, surv, false, keys...)
	}

	start := time.Now()
	e.powerUp(gone)
	t.Logf("%s powered up in %v", gone.Role, time.Since(start).Round(time.Millisecond))
	var back netip.Prefix
	e.eventuallyVIP(vip, gone.Role+" gets a VIP of "+surv.Role+" back, draining", func(ctx context.Context) error {
		h, err := gone.HeldVIPs()
		if err != nil {
			return err
		}
		if len(h) != 1 {
			return fmt.Errorf("%s holds %v", gone.Role, h)
		}
		if !slices.Contains(held, h[0]) {
			return fmt.Errorf("%s got %s, not one of %s's %v", gone.Role, h[0], surv.Role, held)
		}
		back = h[0]
		return nil
	})
	var backKeys []string
	for _, vs := range all {
		if vs.vip == back {
			for _, s := range vs.sessions {
				backKeys = append(backKeys, s.rc.Key())
			}
		}
	}
	e.waitFlows(gone, surv, true, backKeys...)
	t.Logf("failback: %s back on %s %v after power-up, its sessions steered to %s", back, gone.Role,
		time.Since(start).Round(time.Millisecond), surv.Role)
	rec, ok := lastRecord(e.ctx, surv, back, "drain")
	if !ok || !strings.Contains(rec.Reason, "rebalance") {
		t.Errorf("no rebalance drain of %s in %s's timeline:\n%s", back, surv.Role, timelineJSON(e.ctx, surv))
	}
	steered0 := e.steered(gone)

	// the sessions keep talking through the steering
	time.Sleep(2 * time.Second)
	for _, w := range watches {
		for _, r := range e.resetsTo(w, start, keys...) {
			t.Errorf("failback: %s: a session was reset instead of steered", r)
		}
	}
	for _, vs := range all {
		for _, s := range vs.sessions {
			if err := s.Err(); err != nil {
				t.Errorf("%s session through %s broke during the failback: %v", s.rc.proto, vs.vip, err)
			}
		}
	}
	e.checkSteered("failback", gone, surv, steered0)
	total := time.Since(start)
	for i, vs := range all {
		for _, s := range vs.sessions {
			s.Close()
			t.Logf("failback: %s", s)
			if err := s.Err(); err != nil {
				t.Errorf("%s session through %s broke: %v", s.rc.proto, vs.vip, err)
			}
			if min := int(total / pingEvery * 3 / 4); s.OK() < min {
				t.Errorf("%s session through %s answered %d pings in %v, want at least %d", s.rc.proto, vs.vip, s.OK(), total.Round(time.Millisecond), min)
			}
			e.checkGaps("failback: "+s.rc.proto+" session through "+vs.vip.String(), s, watches[i], control)
		}
	}
	control.Close()
	t.Logf("failback: control %s", control)
	e.waitFlowsGone(gone, backKeys...)
	e.eventually("the failback drain of "+back.String()+" ends", func(ctx context.Context) error {
		lo, err := loVIPs(surv, e.c.VIPs)
		if err != nil {
			return err
		}
		if len(lo) > 0 {
			return fmt.Errorf("%v still on %s's loopback", lo, surv.Role)
		}
		return e.c.Converged(ctx, e.c.Nodes...)
	})
	if rec, ok := lastRecord(e.ctx, surv, back, "drain"); ok {
		last := rec.Steps[len(rec.Steps)-1]
		t.Logf("failback: %s's drain of %s: %q after %v", surv.Role, back, last.Step, last.Took.Round(time.Millisecond))
		if last.Step != "drain ended: last connection closed" {
			t.Errorf("%s's drain of %s ended with %q, want the last connection closed", surv.Role, back, last.Step)
		}
	}
}

// TestDrainTimeoutAndKill moves a VIP with a short --drain-timeout while
// a raw SMB session talks through it: the session works on through the
// drain until the timeout, then the old owner resets it and the drain
// ends; the client reconnects to the new owner. Then `fsha move --kill`
// moves the VIP back without draining: an idle client of it is reset at
// once and the VIP never goes to loopback.
func TestDrainTimeoutAndKill(t *testing.T) {
	const timeout = 3 * time.Second
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", timeout.String()}})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	to := e.c.Others(old)[0]

	rc, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	s := startSession(rc, pingEvery)
	defer s.Close()
	e.waitFlows(to, old, false, rc.Key())
	start := time.Now()
	if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	e.waitFlows(to, old, true, rc.Key())
	e.eventually("the drain's timeout resets the session", func(context.Context) error {
		if s.Err() == nil {
			return fmt.Errorf("%s", s)
		}
		return nil
	})
	s.mu.Lock()
	resetAfter, serr := s.errAt.Sub(start), s.err
	s.mu.Unlock()
	t.Logf("drain timeout %v: %s", timeout, s)
	if !errors.Is(serr, syscall.ECONNRESET) {
		t.Errorf("session ended by %v, want a reset", serr)
	}
	// the drain is checked every 250 ms; a loaded machine may add some
	if resetAfter < timeout-300*time.Millisecond || resetAfter > timeout+resetBound {
		t.Errorf("session reset %v after the move, want about the drain timeout %v", resetAfter.Round(time.Millisecond), timeout)
	}
	if min := int(timeout / pingEvery / 4); s.OK() < min {
		t.Errorf("session answered %d pings before the reset, want at least %d", s.OK(), min)
	}
	e.eventually("the drain of "+vip.String()+" ends", func(ctx context.Context) error {
		lo, err := loVIPs(old, e.c.VIPs)
		if err != nil {
			return err
		}
		if len(lo) > 0 {
			return fmt.Errorf("%v on %s's loopback", lo, old.Role)
		}
		return e.c.Converged(ctx, e.c.Nodes...)
	})
	if rec, ok := lastRecord(e.ctx, old, vip, "drain"); !ok || rec.Steps[len(rec.Steps)-1].Step != "drain ended: drain timeout: 1 connections reset" {
		t.Errorf("%s's drain of %s did not end by its timeout resetting 1 connection:\n%s", old.Role, vip, timelineJSON(e.ctx, old))
	} else {
		last := rec.Steps[len(rec.Steps)-1]
		t.Logf("%s's drain of %s: %q after %v", old.Role, vip, last.Step, last.Took.Round(time.Millisecond))
	}
	again, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatalf("reconnecting after the drain: %v", err)
	}
	e.waitFlows(to, to, false, again.Key())
	again.conn.Close()

	// --kill: no drain, the connections are reset at once
	idle, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	done := blockedRead(idle)
	e.waitFlows(old, to, false, idle.Key())
	kill := time.Now()
	if out, err := to.Admin(e.ctx, "move", vip.Addr().String(), old.IP().String(), "--kill"); err != nil {
		t.Fatalf("fsha move --kill: %v: %s", err, out)
	}
	d := e.waitReset("idle NFS client of a VIP moved with --kill", done, kill)
	t.Logf("move --kill: idle client reset after %v", d.Round(time.Millisecond))
	e.waitConverged(e.c.Nodes...)
	if o := e.owner(vip); o != old {
		t.Fatalf("%s on %s after the move --kill, want %s", vip, o.Role, old.Role)
	}
	if rec, ok := lastRecord(e.ctx, to, vip, "drain"); ok && rec.Steps[0].At.After(kill) {
		t.Errorf("%s drained %s after a move --kill:\n%s", to.Role, vip, timelineJSON(e.ctx, to))
	}
	rel, ok := lastRecord(e.ctx, to, vip, "release")
	if !ok || rel.Steps[0].At.Before(kill) || !slices.ContainsFunc(rel.Steps, func(s admin.TimelineStep) bool {
		return strings.HasPrefix(s.Step, "connections reset (1 of 1)")
	}) {
		t.Errorf("%s's timeline has no release of %s resetting its connection:\n%s", to.Role, vip, timelineJSON(e.ctx, to))
	}
}

// checkGaps fails the test for each gap of the session longer than a
// steering transition, unless an oracle independent of fsha puts it
// elsewhere:
//   - a machine stall of the lab (its stall watch: the lab's one kernel
//     kept a real-time thread off its CPU) overlaps it and it ended within
//     stallSlack of the stall: every session of the lab stalls alike,
//     moved or not;
//   - the client's capture w shows the VIP's side answering the session
//     within a steering transition of the gap's start: the data path
//     worked, and the rest of the gap is the test process's own (its
//     session goroutines, not real-time, waited for a CPU).
//
// Either is logged with the evidence; a failure says what the capture saw.
func (e *env) checkGaps(what string, s *session, w *lab.Watch, controls ...*session) {
	faults := e.c.Lab.Faults()
	port := s.rc.local.Port()
	for _, g := range s.LongGaps() {
		head := fmt.Sprintf("%s stalled %v from %s", what, g.length().Round(time.Millisecond), g.from.Format("15:04:05.000"))
		i := slices.IndexFunc(faults, func(f lab.Fault) bool {
			return f.MachineStall() && f.Start.Before(g.to) && !f.End.Before(g.from) && g.to.Sub(f.End) <= stallSlack
		})
		if i >= 0 {
			e.t.Logf("%s, with the lab's %s from %s to %s: not counted", head, faults[i].What,
				faults[i].Start.Format("15:04:05.000"), faults[i].End.Format("15:04:05.000"))
			continue
		}
		if c, cg, ok := coincidingStall(g, controls); ok {
			e.t.Logf("%s, and so did the control session %s (through a node the move does not involve) from %s for %v: "+
				"the lab stalled, not the move: not counted", head, c.rc.Key(), cg.from.Format("15:04:05.000"),
				cg.length().Round(time.Millisecond))
			continue
		}
		// the VIP's frames to this session in the gap, as the client's
		// kernel received them
		var answers []lab.Frame
		for _, f := range w.Frames() {
			if !f.ARP && f.DstPort == port && f.At.After(g.from) && !f.At.After(g.to) {
				answers = append(answers, f)
			}
		}
		seen := "the capture saw no frame from the VIP to the session in it"
		if len(answers) > 0 {
			first := answers[0]
			seen = fmt.Sprintf("the capture saw %d frames from the VIP to the session in it, the first %v after its start (from %s, flags %#x)",
				len(answers), first.At.Sub(g.from).Round(time.Millisecond), first.Src, first.Flags)
			if first.At.Sub(g.from) <= maxSteerStall {
				e.t.Logf("%s; %s: the data path answered within a steering transition, the client noticed late: not counted", head, seen)
				continue
			}
		}
		e.t.Errorf("%s, longer than a steering transition (%v); %s", head, maxSteerStall, seen)
	}
}

// controlCoincide is how close the start and the end of a control
// session's stall must be to a session's for the two to be one stall.
const controlCoincide = 100 * time.Millisecond

// coincidingStall finds a stall of one of controls (sessions through a
// node that a move does not involve: the same client, bridge and machine,
// none of the move's nodes) that began and ended with g, within
// controlCoincide: then the lab stalled, whatever the move did.
func coincidingStall(g gap, controls []*session) (*session, gap, bool) {
	near := func(a, b time.Time) bool { return a.Sub(b).Abs() <= controlCoincide }
	for _, c := range controls {
		for _, cg := range c.GapsOver(recordedGap) {
			if near(cg.from, g.from) && near(cg.to, g.to) {
				return c, cg, true
			}
		}
	}
	return nil, gap{}, false
}
