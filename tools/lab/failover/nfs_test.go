package failover

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// NFSv4 state across a failover (issue 10 item 3): every node's Ganesha
// keeps its client records on the shared storage, and fsha's takeip runs
// the shipped 60.ganesha-grace hook, which puts the taker's Ganesha in
// grace for the VIP and loads the records of the VIP's previous holder.
//
// The client is libnfs 4.0.0 (nfs4hold.c drives its API). Its NFSv4
// context never reconnects (lib/socket.c: rpc_connect_async sets
// auto_reconnect = 0, which only the NFSv3 mount turns back on), and it
// cannot reclaim: it never sends OPEN with CLAIM_PREVIOUS nor LOCK with
// reclaim set, nor RENEW, and turns any NFS4 error into the call's error
// (lib/nfs_v4.c: check_nfs4_error, nfs4_op_lock(..., reclaim = 0),
// oargs->claim.claim = CLAIM_NULL). So what is shown here is the server
// side: the hooks, the grace period on the taker with the old holder's
// client records loaded (Ganesha's own log and D-Bus replies), the window
// it keeps (a second client's open or lock fails with NFS4ERR_GRACE, and
// works once grace ends), and what the old client itself gets; and for
// NFSv3, the SM_NOTIFY that 61.nfs-sm-notify's sm-notify sends to a
// recorded client's (fake) statd.

// nfsRun is one run of TestNFSStateAcrossFailover: its cluster, the VIP
// it moves, the nodes that held it and the clients.
type nfsRun struct {
	*env
	hold string // the nfs4hold binary
	vip  netip.Prefix
	ip   string
	// old held the VIP until the cut, taker took it over, third gets it
	// by moves after
	old, taker, third *lab.ClusterNode
	cut               time.Time
	// a holds file open and locked through the VIP from before the cut;
	// record is old's record of it
	a      *lab.NFS4Hold
	record string
	statd  *lab.FakeStatd
	// notified are the SM_NOTIFY calls after the cut
	notified []lab.SMNotify
	// graceBy is when the taker's Ganesha was in grace (60.record)
	graceBy time.Time
	// marks are the lengths of the nodes' Ganesha logs before the step
	// under check: its checks read only what the step wrote (every node's
	// Ganesha logged takeovers and releases of its own at the start)
	marks map[*lab.ClusterNode]int
}

// the file the clients open and lock, and what the first one writes
const (
	heldFile     = "held.txt"
	beforeTheCut = "written-by-a-before-the-cut"
)

func TestNFSStateAcrossFailover(t *testing.T) {
	for _, cmd := range []string{"dbus-daemon", "dbus-send", "clang-19", "sm-notify"} {
		testenv.RequireCommand(t, cmd)
	}
	r := newNFSRun(t)
	r.holdOpenAndLocked()
	r.recordNFSv3Client()
	r.checkRecordsLink()

	r.marks = r.ganeshaLogMarks()
	r.cut = r.powerDown(r.old)
	r.waitConverged(r.up()...)
	r.taker = r.owner(r.vip, r.up()...)
	r.third = r.c.Others(r.old, r.taker)[0]
	r.checkTakeover()
	r.checkSMNotify()
	b3 := r.checkGraceWindow()
	r.checkMoveKill(b3)
	r.checkDrainedMove()
}

// newNFSRun starts an NFSState cluster of 3 nodes and 3 clients with the
// recording hooks around the shipped ones, and waits until no Ganesha is
// in grace.
func newNFSRun(t *testing.T) *nfsRun {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, Clients: 3, NFSState: true})
	hold, err := lab.BuildNFS4Hold(e.ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	installRecordHooks(t, e.c)
	// the takeips of the start put every Ganesha in grace; with no
	// records to wait for it lifts it by itself
	for _, n := range e.c.Nodes {
		e.eventually(n.Role+"'s ganesha out of its start's grace", func(ctx context.Context) error {
			in, err := n.GaneshaInGrace(ctx)
			if err == nil && in {
				err = fmt.Errorf("in grace")
			}
			return err
		})
	}
	vip := e.c.VIPs[0]
	return &nfsRun{env: e, hold: hold, vip: vip, ip: vip.Addr().String(), old: e.owner(vip)}
}

// holdOpenAndLocked has the first client open, lock and write the file
// through the VIP, checks that a second client is refused the lock, and
// finds the old holder's record of the first client on the shared
// storage.
func (r *nfsRun) holdOpenAndLocked() {
	t := r.t
	if err := os.WriteFile(filepath.Join(r.c.Share, heldFile), []byte("initial\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	a, err := r.c.Clients[0].StartNFS4Hold(r.ctx, r.hold, r.vip.Addr(), heldFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Stop() })
	r.a = a
	for _, cmd := range []string{"open", "lock", "write " + beforeTheCut} {
		if _, err := a.MustOK(r.ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	// the lock is real: a second client is refused it (its own error)
	b, err := r.c.Clients[1].StartNFS4Hold(r.ctx, r.hold, r.vip.Addr(), heldFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.MustOK(r.ctx, "open"); err != nil {
		t.Fatal(err)
	}
	if ans, err := b.Do(r.ctx, "lock"); err != nil || !strings.Contains(ans, "NFS4ERR_DENIED") {
		t.Fatalf("second client's lock while the first holds it: %q %v, want NFS4ERR_DENIED", ans, err)
	}
	if err := b.Stop(); err != nil {
		t.Logf("stop the second client: %v", err)
	}
	// Ganesha recorded the client on the shared storage:
	// <client address>-(<len>:<libnfs's client name "Libnfs pid:PID TIME">),
	// the address IPv4-mapped (::ffff:a.b.c.d: Ganesha listens on IPv6)
	tag := fmt.Sprintf("::ffff:%s-(", r.c.Clients[0].IP())
	pidName := fmt.Sprintf("Libnfs pid:%d ", a.PID())
	recov := filepath.Join(r.old.GaneshaRecoveryRoot(), "v4recov")
	r.eventually("the first client's record in "+recov, func(context.Context) error {
		ents, err := os.ReadDir(recov)
		if err != nil {
			return err
		}
		for _, d := range ents {
			if strings.HasPrefix(d.Name(), tag) && strings.Contains(d.Name(), pidName) {
				r.record = d.Name()
				return nil
			}
		}
		return fmt.Errorf("none of %d entries is %s...%s", len(ents), tag, pidName)
	})
	t.Logf("%s recorded the client as %q in %s", r.old.Role, r.record, recov)
}

// checkRecordsLink checks, before the cut, that the VIP's newest link on
// the shared storage (60.ganesha-grace: STATE/vips/VIP/EPOCH) points at
// its holder's records: the taker reads them through it.
func (r *nfsRun) checkRecordsLink() {
	r.checkLastHolderLink("before the cut", r.old)
}

// checkLastHolderLink checks that the VIP's newest link points at n's
// records.
func (r *nfsRun) checkLastHolderLink(when string, n *lab.ClusterNode) {
	dir := filepath.Join(r.c.GaneshaStateDir(), "vips", r.ip)
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) == 0 {
		r.t.Errorf("%s: the VIP's links in %s: %d, %v", when, dir, len(ents), err)
		return
	}
	link := filepath.Join(dir, ents[len(ents)-1].Name()) // by name: by epoch
	if to, err := os.Readlink(link); err != nil || to != "../../nodes/"+n.IP().String() {
		r.t.Errorf("%s: %s -> %q (%v), want ../../nodes/%s (%s holds the VIP)", when, link, to, err, n.IP(), n.Role)
	}
}

// recordNFSv3Client writes the record rpc.statd keeps of an NFSv3 client
// holding NLM locks through the VIP (nfs-utils support/nsm/file.c: NLM's
// callback address, program, version, procedure, a 16-byte cookie, the
// client's mon_name, our name) and starts that client's statd (a fake
// that records what arrives) for 61.nfs-sm-notify to notify.
func (r *nfsRun) recordNFSv3Client() {
	var err error
	if r.statd, err = r.c.Clients[0].StartFakeStatd(); err != nil {
		r.t.Fatal(err)
	}
	client := r.c.Clients[0].IP().String()
	rec := fmt.Sprintf("%08x %08x %08x %08x %s %s %s\n", 0x0100007f, 100021, 4, 16,
		strings.Repeat("00", 16), client, lab.VIPName(1))
	if err := os.WriteFile(filepath.Join(r.c.StatdDir(), "sm", client), []byte(rec), 0o644); err != nil {
		r.t.Fatal(err)
	}
}

// checkTakeover checks the taker's takeip after the cut: (a) the hooks in
// order with CTDB's arguments, the VIP already on eth0; (b) Ganesha not in
// grace before 60.ganesha-grace ran and in grace after it (its own D-Bus
// answer), and by its log a takeover event for the VIP that read the old
// holder's records through the shared directory.
func (r *nfsRun) checkTakeover() {
	t, taker, ip := r.t, r.taker, r.ip
	runs := r.waitHookRuns(taker, "takeip", ip, r.cut)
	r.checkHookRuns(runs, "takeip", taker, ip, r.vip.String(), "yes")
	r.checkGraceFlip(runs, taker)
	t.Logf("%s took %s: takeip hooks %v and %v after the cut", taker.Role, ip,
		runs[0].At.Sub(r.cut).Round(time.Millisecond), runs[2].At.Sub(r.cut).Round(time.Millisecond))
	r.graceBy = runs[1].At
	r.logGraceWindow(runs)
	glog := r.ganeshaLogSince(taker)
	for _, want := range []string{
		"NFS Server recovery event 5 nodeid -1 ip " + ip,
		"Recovery for nodeid -1 dir (" + filepath.Join(taker.GaneshaRecoveryRoot(), ip, "v4recov") + ")",
		"added " + r.record + " to clid list",
	} {
		if !strings.Contains(glog, want) {
			t.Errorf("ganesha log of %s lacks %q", taker.Role, want)
		}
	}
	r.checkLastHolderLink("after the takeover", taker)
}

// logGraceWindow logs when, on the taker's own timeline, the VIP answered
// and its clients were tickled, beside when Ganesha entered grace (between
// the two recording hooks): a client that reconnects in between finds
// Ganesha out of grace, its reclaims refused (NFS4ERR_NO_GRACE) and new
// state granted. fsha runs the takeip hooks and the tickles at once,
// after the address is up.
func (r *nfsRun) logGraceWindow(runs []hookRun) {
	var rec admin.Takeover
	err := lab.Eventually(r.ctx, failoverTimeout, "the taker's timeline with its tickles", func(ctx context.Context) error {
		tl, err := r.taker.Timeline(ctx)
		if err != nil {
			return err
		}
		for _, x := range tl {
			if x.VIP == r.vip.String() && x.Kind == "takeover" && slices.ContainsFunc(x.Steps, func(s admin.TimelineStep) bool {
				return strings.HasPrefix(s.Step, "tickles sent")
			}) {
				rec = x
			}
		}
		if rec.VIP == "" {
			return fmt.Errorf("no takeover of %s with tickles in %+v", r.vip, tl)
		}
		return nil
	})
	if err != nil {
		r.t.Logf("grace window not measured: %v", err)
		return
	}
	var steps []string
	for _, s := range rec.Steps {
		steps = append(steps, fmt.Sprintf("%s +%v", s.Step, s.At.Sub(r.cut).Round(time.Millisecond)))
		// the client must not be told to reconnect before Ganesha can
		// take its reclaims: the tickles follow the grace hook
		if strings.HasPrefix(s.Step, "tickles sent") && s.At.Before(runs[1].At) {
			r.t.Errorf("the taker tickled the clients at +%v, before 60.ganesha-grace was done (+%v)",
				s.At.Sub(r.cut).Round(time.Millisecond), runs[1].At.Sub(r.cut).Round(time.Millisecond))
		}
	}
	r.t.Logf("after the cut: %s; Ganesha in grace between +%v and +%v (before and after 60.ganesha-grace)",
		strings.Join(steps, ", "), runs[0].At.Sub(r.cut).Round(time.Millisecond), runs[1].At.Sub(r.cut).Round(time.Millisecond))
}

// checkSMNotify checks that sm-notify, run by 61.nfs-sm-notify, told the
// client's statd that the server named by the VIP rebooted: from the VIP,
// under the VIP's name and its first label (sm-notify sends both since
// nfs-utils 1.2.2: clients may know the server by either), and that it
// then dropped the client's record.
func (r *nfsRun) checkSMNotify() {
	t, vip := r.t, r.vip.Addr()
	client := r.c.Clients[0].IP().String()
	fqdn := lab.VIPName(1)
	short, _, _ := strings.Cut(fqdn, ".")
	r.eventually("SM_NOTIFY at "+client+" as "+fqdn+" and "+short, func(context.Context) error {
		r.notified = r.statd.Notifies()
		names := map[string]bool{}
		for _, n := range r.notified {
			names[n.MonName] = true
		}
		if !names[fqdn] || !names[short] {
			return fmt.Errorf("got %+v (%d portmapper lookups, errors %v)", r.notified, r.statd.GetPorts(), r.statd.Errors())
		}
		return nil
	})
	first := r.notified[0]
	// NFSv3 clients reclaim their NLM locks as soon as notified: only
	// once Ganesha is in grace
	if first.At.Before(r.graceBy) {
		t.Errorf("SM_NOTIFY at %v, before Ganesha was seen in grace at %v", first.At, r.graceBy)
	}
	for _, n := range r.notified {
		if n.From.Addr() != vip || n.From.Port() >= 1024 || (n.MonName != fqdn && n.MonName != short) ||
			n.State%2 != 1 || n.State != first.State {
			t.Errorf("SM_NOTIFY %+v: want from %s with a reserved port, mon_name %s or %s, the odd state %d",
				n, vip, fqdn, short, first.State)
		}
	}
	t.Logf("SM_NOTIFY at the client %v after the cut: from %s, state %d, %d calls",
		first.At.Sub(r.cut).Round(time.Millisecond), first.From, first.State, len(r.notified))
	r.eventually("sm-notify's bookkeeping: the client notified, its record gone", func(context.Context) error {
		for _, sub := range []string{"sm", "sm.bak"} {
			if _, err := os.Stat(filepath.Join(r.c.StatdDir(), sub, client)); err == nil {
				return fmt.Errorf("%s/%s still there", sub, client)
			}
		}
		return nil
	})
}

// checkGraceWindow checks (c), the reclaim window on the taker: a new
// client gets NFS4ERR_GRACE from libnfs for its open or lock; the first
// client's old handle (libnfs cannot reclaim); once grace is over a new
// client opens and locks the file and reads the first client's write. It
// returns that client, holding the lock.
func (r *nfsRun) checkGraceWindow() *lab.NFS4Hold {
	t := r.t
	b2, err := r.c.Clients[1].StartNFS4Hold(r.ctx, r.hold, r.vip.Addr(), heldFile)
	if err != nil {
		t.Fatal(err)
	}
	ans, err := b2.Do(r.ctx, "open")
	if err == nil && strings.HasPrefix(ans, "ok") {
		ans, err = b2.Do(r.ctx, "lock")
	}
	if err != nil || !strings.Contains(ans, "NFS4ERR_GRACE") {
		t.Errorf("a new client's open/lock during the taker's grace: %q %v, want NFS4ERR_GRACE", ans, err)
	}
	graceErrAt := time.Since(r.cut)
	// idle, it sends nothing: its lease runs out during the grace
	if err := b2.Stop(); err != nil {
		t.Logf("stop the client refused in grace: %v", err)
	}

	// libnfs 4.0.0 does not even reconnect an NFSv4 context:
	// rpc_connect_async sets auto_reconnect = 0 and only the NFSv3 mount
	// turns it back on (lib/socket.c, lib/nfs_v3.c), so after the reset
	// every call fails in its own service loop ("nfs_service failed")
	aWrite, err := r.a.Do(r.ctx, "write written-by-a-after-the-cut")
	if err != nil {
		t.Fatalf("the first client after the cut: %v", err)
	}
	t.Logf("the first client's write through its old handle after the cut: %q", aWrite)
	if strings.HasPrefix(aWrite, "ok") {
		t.Errorf("libnfs's old open worked after the cut: this test's premise (libnfs 4.0.0 neither reconnects NFSv4 nor reclaims) no longer holds; assert the reclaim instead")
	}

	var graceEnd time.Duration
	if err := lab.Eventually(r.ctx, (lab.GaneshaGracePeriod+15)*time.Second, r.taker.Role+"'s grace over", func(ctx context.Context) error {
		in, err := r.taker.GaneshaInGrace(ctx)
		if err == nil && in {
			err = fmt.Errorf("in grace")
		}
		graceEnd = time.Since(r.cut)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b3, err := r.c.Clients[1].StartNFS4Hold(r.ctx, r.hold, r.vip.Addr(), heldFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b3.Stop() })
	for _, cmd := range []string{"open", "lock"} {
		if _, err := b3.MustOK(r.ctx, cmd); err != nil {
			t.Fatalf("after grace: %v", err)
		}
	}
	if got, err := b3.MustOK(r.ctx, "read"); err != nil || got != beforeTheCut {
		t.Errorf("read after grace: %q %v, want the first client's write %q", got, err, beforeTheCut)
	}
	t.Logf("NFS4ERR_GRACE for a new client %v after the cut; grace over by %v; then open, lock and read worked",
		graceErrAt.Round(time.Millisecond), graceEnd.Round(time.Millisecond))
	return b3
}

// checkMoveKill moves the VIP from the taker to the third node ending its
// connections (move --kill): releaseip on the taker runs with the VIP off
// eth0 and lo, its Ganesha releases the VIP's clients ("2:VIP") and keeps
// their records, and the next holder loads them, the client's (b3) among
// them. No SM_NOTIFY: no NFSv3 client is recorded any more.
func (r *nfsRun) checkMoveKill(b3 *lab.NFS4Hold) {
	t, taker, third, ip := r.t, r.taker, r.third, r.ip
	b3Record := fmt.Sprintf("::ffff:%s-(", r.c.Clients[1].IP())
	b3Name := fmt.Sprintf("Libnfs pid:%d ", b3.PID())
	r.marks = r.ganeshaLogMarks()
	moved := time.Now()
	if out, err := taker.Admin(r.ctx, "move", "--kill", ip, third.IP().String()); err != nil {
		t.Fatalf("fsha move --kill %s %s: %v: %s", ip, third.IP(), err, out)
	}
	rel := r.waitHookRuns(taker, "releaseip", ip, moved)
	r.checkHookRuns(rel, "releaseip", taker, ip, r.vip.String(), "no")
	r.checkOnLo(rel, taker, "no", "after move --kill (not draining)")
	take := r.waitHookRuns(third, "takeip", ip, moved)
	r.checkHookRuns(take, "takeip", third, ip, r.vip.String(), "yes")
	r.checkGraceFlip(take, third)
	glog := r.ganeshaLogSince(taker)
	for _, want := range []string{"NFS Server recovery event 2 nodeid -1 ip " + ip, "NFS Server V4 recovery release ip " + ip} {
		if !strings.Contains(glog, want) {
			t.Errorf("ganesha log of %s lacks %q", taker.Role, want)
		}
	}
	loaded := false
	for _, line := range strings.Split(r.ganeshaLogSince(third), "\n") {
		if strings.Contains(line, "added "+b3Record) && strings.Contains(line, b3Name) && strings.Contains(line, "to clid list") {
			loaded = true
		}
	}
	if !loaded {
		t.Errorf("ganesha log of %s: no \"added %s...%s... to clid list\": the records did not follow the VIP", third.Role, b3Record, b3Name)
	}
	if after := r.statd.Notifies(); len(after) != len(r.notified) {
		t.Errorf("SM_NOTIFY calls after the move %+v, before %+v: no client was left to notify", after, r.notified)
	}
	t.Logf("move --kill to %s: releaseip on %s %v, takeip on %s %v after the command; records loaded: %v",
		third.Role, taker.Role, rel[2].At.Sub(moved).Round(time.Millisecond), third.Role,
		take[2].At.Sub(moved).Round(time.Millisecond), loaded)
}

// checkDrainedMove moves the VIP back with a client connected through
// it: the drain keeps the VIP on lo, so releaseip runs with the VIP there,
// and 60.ganesha-grace leaves the clients served here alone (no release
// event in Ganesha's log).
func (r *nfsRun) checkDrainedMove() {
	t, third, ip := r.t, r.third, r.ip
	c3 := r.c.Clients[2]
	d, err := c3.StartNFS4Hold(r.ctx, r.hold, r.vip.Addr(), heldFile)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Stop() })
	var key string
	r.eventually("the draining client connected", func(ctx context.Context) error {
		keys, err := socketsOf(ctx, c3, r.vip.Addr(), lab.NFSPort, "nfs4hold")
		if err == nil && len(keys) != 1 {
			err = fmt.Errorf("connections %v", keys)
		}
		if err == nil {
			key = keys[0]
		}
		return err
	})
	r.waitFlows(third, third, false, key)
	r.marks = r.ganeshaLogMarks()
	drained := time.Now()
	if out, err := third.Admin(r.ctx, "move", ip, r.taker.IP().String()); err != nil {
		t.Fatalf("fsha move %s %s: %v: %s", ip, r.taker.IP(), err, out)
	}
	rel := r.waitHookRuns(third, "releaseip", ip, drained)
	r.checkHookRuns(rel, "releaseip", third, ip, r.vip.String(), "no")
	r.checkOnLo(rel, third, "yes", "of a drained move")
	if strings.Contains(r.ganeshaLogSince(third), "NFS Server recovery event 2 nodeid -1 ip "+ip) {
		t.Errorf("ganesha on %s released the VIP's clients while they drain", third.Role)
	}
}

// ganeshaLogMarks notes how long every running node's Ganesha log is now.
func (r *nfsRun) ganeshaLogMarks() map[*lab.ClusterNode]int {
	marks := map[*lab.ClusterNode]int{}
	for _, n := range r.c.Nodes {
		glog, err := n.GaneshaLog()
		if err != nil {
			r.t.Fatal(err)
		}
		marks[n] = len(glog)
	}
	return marks
}

// ganeshaLogSince returns what n's Ganesha logged since r.marks.
func (r *nfsRun) ganeshaLogSince(n *lab.ClusterNode) string {
	glog, err := n.GaneshaLog()
	if err != nil {
		r.t.Fatal(err)
	}
	mark, ok := r.marks[n]
	if !ok || mark > len(glog) {
		r.t.Fatalf("%s's Ganesha log is %d bytes, marked at %d (%v)", n.Role, len(glog), mark, ok)
	}
	return glog[mark:]
}
