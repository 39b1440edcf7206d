package failover

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// NFSv4 state across a failover (issue 10 item 3): every node's Ganesha
// keeps its client records on the shared storage, and fsha's takeip runs
// the shipped 61.ganesha-grace hook, which puts the taker's Ganesha in
// grace for the VIP and loads the records of the VIP's previous holder.
//
// The client is libnfs 4.0.0 (nfs4hold.c drives its API). It cannot
// reclaim: it never sends OPEN with CLAIM_PREVIOUS nor LOCK with reclaim
// set, nor RENEW, and turns any NFS4 error into the call's error
// (lib/nfs_v4.c: check_nfs4_error, nfs4_op_lock(..., reclaim = 0),
// oargs->claim.claim = CLAIM_NULL). So what is shown here is the server
// side: the hooks, the grace period on the taker with the old holder's
// client records loaded (Ganesha's own log and D-Bus replies), the window
// it keeps (a second client's open or lock fails with NFS4ERR_GRACE, and
// works once grace ends), and what the old client itself gets.

// hookRecord is a recording hook of the test, installed as 00.record and
// 99.record around the shipped ones (fsha runs hooks in name order). Each
// run appends one line: time, its name, its arguments, fsha's variables,
// whether the VIP is on eth0 and on lo at that moment, and (takeip) what
// Ganesha answers to get_grace. It skips monitor.
const hookRecord = `#!/bin/sh
[ "$1" = monitor ] && exit 0
on() { ip -o addr show dev "$1" | grep -qF " $FSHA_VIP/" && echo yes || echo no; }
grace=-
if [ "$1" = takeip ]; then
	grace=$(dbus-send --system --print-reply --dest=org.ganesha.nfsd --type=method_call \
		/org/ganesha/nfsd/admin org.ganesha.nfsd.admin.get_grace 2>&1 | grep -o -m1 'boolean [a-z]*' || echo error)
fi
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "${0##*/}" "$*" \
	"$FSHA_VIP" "$FSHA_PREFIX" "$FSHA_IFACE" "$FSHA_NODE" "$(on eth0)" "$(on lo)" "$grace" >>"$(dirname "$0")/../hook-record.tsv"
`

// hookRun is one line of hook-record.tsv.
type hookRun struct {
	At                         time.Time
	Hook, Args                 string
	VIP, Prefix, Iface, Node   string
	OnEth0, OnLo, GaneshaGrace string
}

func installRecordHooks(t *testing.T, c *lab.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		for _, name := range []string{"00.record", "99.record"} {
			if err := os.WriteFile(filepath.Join(n.HooksDir, name), []byte(hookRecord), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// hookRuns reads the node's record of hook runs since a time.
func hookRuns(n *lab.ClusterNode, since time.Time) ([]hookRun, error) {
	f, err := os.Open(filepath.Join(n.Dir, "hook-record.tsv"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []hookRun
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) != 10 {
			return nil, fmt.Errorf("hook record of %s: bad line %q", n.Role, sc.Text())
		}
		sec, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			return nil, fmt.Errorf("hook record of %s: %w", n.Role, err)
		}
		at := time.Unix(0, int64(sec*1e9))
		if at.Before(since) {
			continue
		}
		runs = append(runs, hookRun{At: at, Hook: fs[1], Args: fs[2], VIP: fs[3], Prefix: fs[4], Iface: fs[5],
			Node: fs[6], OnEth0: fs[7], OnLo: fs[8], GaneshaGrace: fs[9]})
	}
	return runs, sc.Err()
}

// waitHookRuns waits until the node has recorded both hooks of event for
// the VIP since a time, and returns them in file order.
func (e *env) waitHookRuns(n *lab.ClusterNode, event, vip string, since time.Time) []hookRun {
	e.t.Helper()
	var got []hookRun
	e.eventually(n.Role+" ran the "+event+" hooks of "+vip, func(context.Context) error {
		runs, err := hookRuns(n, since)
		if err != nil {
			return err
		}
		got = got[:0]
		for _, r := range runs {
			if strings.HasPrefix(r.Args, event+" ") && r.VIP == vip {
				got = append(got, r)
			}
		}
		if len(got) < 2 {
			return fmt.Errorf("%d of 2 recorded", len(got))
		}
		return nil
	})
	return got
}

// checkHookRuns checks both recording hooks of one event: the order (00
// before 99), CTDB's arguments and fsha's variables, and the address.
func (e *env) checkHookRuns(runs []hookRun, event string, n *lab.ClusterNode, vip string, prefix string, onEth0 string) {
	e.t.Helper()
	if len(runs) != 2 || runs[0].Hook != "00.record" || runs[1].Hook != "99.record" {
		e.t.Fatalf("%s hooks on %s: want one run of 00.record then one of 99.record, got %+v", event, n.Role, runs)
	}
	bits := prefix[strings.IndexByte(prefix, '/')+1:]
	wantArgs := strings.Join([]string{event, lab.HostIface, vip, bits}, " ")
	for _, r := range runs {
		if r.Args != wantArgs || r.Prefix != prefix || r.Iface != lab.HostIface || r.Node != n.IP().String() {
			e.t.Errorf("%s on %s: args %q FSHA_PREFIX %q FSHA_IFACE %q FSHA_NODE %q; want %q %q %q %q",
				r.Hook, n.Role, r.Args, r.Prefix, r.Iface, r.Node, wantArgs, prefix, lab.HostIface, n.IP())
		}
		if r.OnEth0 != onEth0 {
			e.t.Errorf("%s %s on %s: VIP on eth0 %s, want %s", r.Hook, event, n.Role, r.OnEth0, onEth0)
		}
	}
}

func TestNFSStateAcrossFailover(t *testing.T) {
	for _, cmd := range []string{"dbus-daemon", "dbus-send", "clang-19", "sm-notify"} {
		testenv.RequireCommand(t, cmd)
	}
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
	ip := vip.Addr().String()
	old := e.owner(vip)
	const file = "held.txt"
	if err := os.WriteFile(filepath.Join(e.c.Share, file), []byte("initial\n"), 0o666); err != nil {
		t.Fatal(err)
	}
	a, err := e.c.Clients[0].StartNFS4Hold(e.ctx, hold, vip.Addr(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	for _, cmd := range []string{"open", "lock", "write written-by-a-before-the-cut"} {
		if _, err := a.MustOK(e.ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	// the lock is real: a second client is refused it (its own error)
	b, err := e.c.Clients[1].StartNFS4Hold(e.ctx, hold, vip.Addr(), file)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.MustOK(e.ctx, "open"); err != nil {
		t.Fatal(err)
	}
	if ans, err := b.Do(e.ctx, "lock"); err != nil || !strings.Contains(ans, "NFS4ERR_DENIED") {
		t.Fatalf("second client's lock while the first holds it: %q %v, want NFS4ERR_DENIED", ans, err)
	}
	if err := b.Stop(); err != nil {
		t.Logf("stop the second client: %v", err)
	}
	// Ganesha recorded the client on the shared storage:
	// <client address>-(<len>:<libnfs's client name "Libnfs pid:PID TIME">),
	// the address IPv4-mapped (::ffff:a.b.c.d: Ganesha listens on IPv6)
	tag := fmt.Sprintf("::ffff:%s-(", e.c.Clients[0].IP())
	pidName := fmt.Sprintf("Libnfs pid:%d ", a.PID())
	recov := filepath.Join(old.GaneshaRecoveryRoot(), "v4recov")
	var record string
	e.eventually("the first client's record in "+recov, func(context.Context) error {
		ents, err := os.ReadDir(recov)
		if err != nil {
			return err
		}
		for _, d := range ents {
			if strings.HasPrefix(d.Name(), tag) && strings.Contains(d.Name(), pidName) {
				record = d.Name()
				return nil
			}
		}
		return fmt.Errorf("none of %d entries is %s...%s", len(ents), tag, pidName)
	})
	t.Logf("%s recorded the client as %q in %s", old.Role, record, recov)

	// NFSv3: the record rpc.statd keeps of a client holding NLM locks
	// through the VIP (nfs-utils support/nsm/file.c: NLM's callback
	// address, program, version, procedure, a 16-byte cookie, the
	// client's mon_name, our name), and the client's statd (a fake that
	// records what arrives) for 60.nfs-sm-notify to notify
	statd, err := e.c.Clients[0].StartFakeStatd()
	if err != nil {
		t.Fatal(err)
	}
	clientIP := e.c.Clients[0].IP().String()
	smRecord := fmt.Sprintf("%08x %08x %08x %08x %s %s %s\n", 0x0100007f, 100021, 4, 16,
		strings.Repeat("00", 16), clientIP, lab.VIPName(1))
	if err := os.WriteFile(filepath.Join(e.c.StatdDir(), "sm", clientIP), []byte(smRecord), 0o644); err != nil {
		t.Fatal(err)
	}

	cut := e.powerDown(old)
	e.waitConverged(e.up()...)
	taker := e.owner(vip, e.up()...)

	// (a) the hooks: in order, with CTDB's arguments, the VIP already on
	// eth0; (b) Ganesha was not in grace before 61.ganesha-grace ran and
	// is after it, by its own D-Bus answer
	runs := e.waitHookRuns(taker, "takeip", ip, cut)
	e.checkHookRuns(runs, "takeip", taker, ip, vip.String(), "yes")
	if runs[0].GaneshaGrace != "boolean false" || runs[1].GaneshaGrace != "boolean true" {
		t.Errorf("ganesha on %s before/after 61.ganesha-grace: get_grace %q / %q, want false / true",
			taker.Role, runs[0].GaneshaGrace, runs[1].GaneshaGrace)
	}
	t.Logf("%s took %s: takeip hooks %v and %v after the cut", taker.Role, ip,
		runs[0].At.Sub(cut).Round(time.Millisecond), runs[1].At.Sub(cut).Round(time.Millisecond))

	// NFSv3: sm-notify, run by 60.nfs-sm-notify, told the client's statd
	// that the server named by the VIP rebooted, from the VIP, under the
	// VIP's name and its first label (sm-notify sends both since
	// nfs-utils 1.2.2: clients may know the server by either)
	fqdn := lab.VIPName(1)
	short, _, _ := strings.Cut(fqdn, ".")
	var notified []lab.SMNotify
	e.eventually("SM_NOTIFY at "+clientIP+" as "+fqdn+" and "+short, func(context.Context) error {
		notified = statd.Notifies()
		names := map[string]bool{}
		for _, n := range notified {
			names[n.MonName] = true
		}
		if !names[fqdn] || !names[short] {
			return fmt.Errorf("got %+v (%d portmapper lookups, errors %v)", notified, statd.GetPorts(), statd.Errors())
		}
		return nil
	})
	checkNotifies := func(ns []lab.SMNotify) {
		t.Helper()
		for _, n := range ns {
			if n.From.Addr() != vip.Addr() || n.From.Port() >= 1024 || (n.MonName != fqdn && n.MonName != short) ||
				n.State%2 != 1 || n.State != notified[0].State {
				t.Errorf("SM_NOTIFY %+v: want from %s with a reserved port, mon_name %s or %s, the odd state %d",
					n, vip.Addr(), fqdn, short, notified[0].State)
			}
		}
	}
	checkNotifies(notified)
	t.Logf("SM_NOTIFY at the client %v after the cut: from %s, state %d, %d calls",
		notified[0].At.Sub(cut).Round(time.Millisecond), notified[0].From, notified[0].State, len(notified))
	e.eventually("sm-notify's bookkeeping: the client notified, its record gone", func(context.Context) error {
		for _, sub := range []string{"sm", "sm.bak"} {
			if _, err := os.Stat(filepath.Join(e.c.StatdDir(), sub, clientIP)); err == nil {
				return fmt.Errorf("%s/%s still there", sub, clientIP)
			}
		}
		return nil
	})

	// (b) what Ganesha says it did: a takeover event for the VIP, read
	// from the old holder's records through the shared directory
	glog, err := taker.GaneshaLog()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"NFS Server recovery event 5 nodeid -1 ip " + ip,
		"Recovery for nodeid -1 dir (" + filepath.Join(taker.GaneshaRecoveryRoot(), ip, "v4recov") + ")",
		"added " + record + " to clid list",
	} {
		if !strings.Contains(glog, want) {
			t.Errorf("ganesha log of %s lacks %q", taker.Role, want)
		}
	}
	link := filepath.Join(e.c.GaneshaStateDir(), "vips", ip)
	if to, err := os.Readlink(link); err != nil || to != "../nodes/"+taker.IP().String() {
		t.Errorf("%s -> %q (%v), want ../nodes/%s: the VIP's records are now the taker's", link, to, err, taker.IP())
	}

	// (c) the reclaim window: a new client gets NFS4ERR_GRACE, from
	// libnfs, for the open or the lock
	b2, err := e.c.Clients[1].StartNFS4Hold(e.ctx, hold, vip.Addr(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Stop()
	ans, err := b2.Do(e.ctx, "open")
	if err == nil && strings.HasPrefix(ans, "ok") {
		ans, err = b2.Do(e.ctx, "lock")
	}
	if err != nil || !strings.Contains(ans, "NFS4ERR_GRACE") {
		t.Errorf("a new client's open/lock during the taker's grace: %q %v, want NFS4ERR_GRACE", ans, err)
	}
	graceErrAt := time.Since(cut)
	// idle, it sends nothing: its lease runs out during the grace
	if err := b2.Stop(); err != nil {
		t.Logf("stop the client refused in grace: %v", err)
	}

	// the old client, through the handle it opened before the cut
	aWrite, aErr := a.Do(e.ctx, "write written-by-a-after-the-cut")
	if aErr != nil {
		t.Fatalf("the first client after the cut: %v", aErr)
	}
	// libnfs 4.0.0 does not even reconnect an NFSv4 context:
	// rpc_connect_async sets auto_reconnect = 0 and only the NFSv3 mount
	// turns it back on (lib/socket.c, lib/nfs_v3.c), so after the reset
	// every call fails in its own service loop ("nfs_service failed")
	t.Logf("the first client's write through its old handle after the cut: %q", aWrite)
	if strings.HasPrefix(aWrite, "ok") {
		t.Errorf("libnfs's old open worked after the cut: this test's premise (libnfs 4.0.0 neither reconnects NFSv4 nor reclaims) no longer holds; assert the reclaim instead")
	}

	// once grace is over a new client gets the file and the lock, and
	// reads what the first client wrote before the cut
	var graceEnd time.Duration
	if err := lab.Eventually(e.ctx, (lab.GaneshaGracePeriod+15)*time.Second, taker.Role+"'s grace over", func(ctx context.Context) error {
		in, err := taker.GaneshaInGrace(ctx)
		if err == nil && in {
			err = fmt.Errorf("in grace")
		}
		graceEnd = time.Since(cut)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	b3, err := e.c.Clients[1].StartNFS4Hold(e.ctx, hold, vip.Addr(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer b3.Stop()
	for _, cmd := range []string{"open", "lock"} {
		if _, err := b3.MustOK(e.ctx, cmd); err != nil {
			t.Fatalf("after grace: %v", err)
		}
	}
	if got, err := b3.MustOK(e.ctx, "read"); err != nil || got != "written-by-a-before-the-cut" {
		t.Errorf("read after grace: %q %v, want the first client's write", got, err)
	}
	t.Logf("NFS4ERR_GRACE for a new client %v after the cut; grace over by %v; then open, lock and read worked",
		graceErrAt.Round(time.Millisecond), graceEnd.Round(time.Millisecond))

	// A planned move that ends the connections (move --kill): releaseip
	// on the taker runs with the VIP off eth0 and lo, and its Ganesha
	// releases the VIP's clients ("2:VIP") but keeps their records; the
	// next holder loads them, the new client's among them.
	third := e.c.Others(old, taker)[0]
	b3Record := fmt.Sprintf("::ffff:%s-(", e.c.Clients[1].IP())
	b3Name := fmt.Sprintf("Libnfs pid:%d ", b3.PID())
	moved := time.Now()
	if out, err := taker.Admin(e.ctx, "move", "--kill", ip, third.IP().String()); err != nil {
		t.Fatalf("fsha move --kill %s %s: %v: %s", ip, third.IP(), err, out)
	}
	rel := e.waitHookRuns(taker, "releaseip", ip, moved)
	e.checkHookRuns(rel, "releaseip", taker, ip, vip.String(), "no")
	for _, r := range rel {
		if r.OnLo != "no" {
			t.Errorf("%s releaseip on %s after move --kill: VIP on lo %s, want no (not draining)", r.Hook, taker.Role, r.OnLo)
		}
	}
	take := e.waitHookRuns(third, "takeip", ip, moved)
	e.checkHookRuns(take, "takeip", third, ip, vip.String(), "yes")
	if take[0].GaneshaGrace != "boolean false" || take[1].GaneshaGrace != "boolean true" {
		t.Errorf("ganesha on %s before/after 61.ganesha-grace: get_grace %q / %q, want false / true",
			third.Role, take[0].GaneshaGrace, take[1].GaneshaGrace)
	}
	if glog, err = taker.GaneshaLog(); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"NFS Server recovery event 2 nodeid -1 ip " + ip, "NFS Server V4 recovery release ip " + ip} {
		if !strings.Contains(glog, want) {
			t.Errorf("ganesha log of %s lacks %q", taker.Role, want)
		}
	}
	if glog, err = third.GaneshaLog(); err != nil {
		t.Fatal(err)
	}
	loaded := false
	for _, line := range strings.Split(glog, "\n") {
		if strings.Contains(line, "added "+b3Record) && strings.Contains(line, b3Name) && strings.Contains(line, "to clid list") {
			loaded = true
		}
	}
	if !loaded {
		t.Errorf("ganesha log of %s: no \"added %s...%s... to clid list\": the records did not follow the VIP", third.Role, b3Record, b3Name)
	}
	// the client was notified once: nothing new for the move
	if after := statd.Notifies(); len(after) != len(notified) {
		t.Errorf("SM_NOTIFY calls after the move %+v, before %+v: no client was left to notify", after, notified)
	}
	t.Logf("move --kill to %s: releaseip on %s %v, takeip on %s %v after the command; records loaded: %v",
		third.Role, taker.Role, rel[1].At.Sub(moved).Round(time.Millisecond), third.Role,
		take[1].At.Sub(moved).Round(time.Millisecond), loaded)

	// A drained move: a client's connection keeps the VIP on lo, so
	// releaseip runs with the VIP there, and 61.ganesha-grace leaves the
	// clients served here alone (no release event in Ganesha's log).
	c3 := e.c.Clients[2]
	d, err := c3.StartNFS4Hold(e.ctx, hold, vip.Addr(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Stop()
	var key string
	e.eventually("the draining client connected", func(ctx context.Context) error {
		keys, err := socketsOf(ctx, c3, vip.Addr(), lab.NFSPort, "nfs4hold")
		if err == nil && len(keys) != 1 {
			err = fmt.Errorf("connections %v", keys)
		}
		if err == nil {
			key = keys[0]
		}
		return err
	})
	e.waitFlows(third, third, false, key)
	drained := time.Now()
	if out, err := third.Admin(e.ctx, "move", ip, taker.IP().String()); err != nil {
		t.Fatalf("fsha move %s %s: %v: %s", ip, taker.IP(), err, out)
	}
	rel = e.waitHookRuns(third, "releaseip", ip, drained)
	e.checkHookRuns(rel, "releaseip", third, ip, vip.String(), "no")
	for _, r := range rel {
		if r.OnLo != "yes" {
			t.Errorf("%s releaseip on %s of a drained move: VIP on lo %s, want yes", r.Hook, third.Role, r.OnLo)
		}
	}
	if glog, err = third.GaneshaLog(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(glog, "NFS Server recovery event 2 nodeid -1 ip "+ip) {
		t.Errorf("ganesha on %s released the VIP's clients while they drain", third.Role)
	}
}
