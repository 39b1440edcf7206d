package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// convergeTimeout bounds every wait for the cluster to settle.
const convergeTimeout = 20 * time.Second

// runCluster is the default demo: a three-node cluster, a client doing I/O
// through a VIP, and a power cut of the node holding it. With full (the
// default of make demo) the cluster is the one the guides build: a
// replica 3 GlusterFS volume, ctdbd on every node for Samba's clustered
// databases only (its lock on the volume), smbd with clustering = yes and
// nfs-ganesha serving each node's mount of the volume, and fsha moving
// the VIPs. Without, every node serves one shared local directory.
func runCluster(ctx context.Context, out io.Writer, newLab func() (*lab.Lab, error), full bool) error {
	l, err := newLab()
	if err != nil {
		return err
	}
	p := printer{out}
	p.heading("fsha cluster failover demo (lab %s)", l.ID)
	opts := lab.ClusterOptions{Nodes: 3}
	if full {
		for _, cmd := range []string{"glusterd", "glusterfs", "gluster", "nsenter", "ctdbd", "ctdb"} {
			if _, err := exec.LookPath(cmd); err != nil {
				return fmt.Errorf("%s not installed: run `make deps` (or `make demo DEMO_ARGS=-light` for the lighter cluster)", cmd)
			}
		}
		opts.Gluster, opts.CTDB = true, true
		p.step("building a three-node file-server cluster as the GlusterFS and CTDB guides build it (about a minute):")
		p.say("each node: glusterd with a brick of the replica 3 volume %q and a FUSE mount of it,", lab.GlusterVolume)
		p.say("ctdbd for Samba's clustered databases only (no public addresses: CTDB moves no IP; its lock on the volume),")
		p.say("smbd with clustering = yes and nfs-ganesha serving the mount, and `fsha up --nodes` moving the VIPs")
	} else {
		p.step("building a three-node cluster: each node runs smbd, nfs-ganesha and `fsha up --nodes` on one shared directory")
	}
	c, err := lab.NewCluster(ctx, l, opts)
	if err != nil {
		return err
	}
	for _, n := range c.Nodes {
		p.say("node   %-3s %-13s pnn %d  namespace %s", n.Role, n.IP(), n.PNN, n.NS)
	}
	client := c.Clients[0]
	p.say("client %-3s %-13s        namespace %s", client.Role, client.IP(), client.NS)
	p.say("VIPs %s on eth0; shared directory %s served as //VIP/%s and nfs://VIP%s",
		joinPrefixes(c.VIPs), c.Share, lab.ShareName, lab.ExportPath)
	p.say("gossip encrypted with %s; health checks tcp:445 and tcp:2049 on each node", c.KeyFile)

	n1 := c.Node(1)
	if err := p.admin(ctx, n1, "the cluster as n1 sees it", "status"); err != nil {
		return err
	}
	if err := p.admin(ctx, n1, "who holds which VIP", "ip"); err != nil {
		return err
	}

	vip := c.VIPs[0]
	if full {
		if err := p.ctdb(ctx, n1, "CTDB as n1's ctdbd sees it: databases only, no IPs", "status"); err != nil {
			return err
		}
		if vip, err = vipOffLeader(ctx, c); err != nil {
			return err
		}
	}
	old, err := c.Owner(vip)
	if err != nil {
		return err
	}
	data := []byte("hello through the VIP, whichever node answers\n")
	if err := os.WriteFile(filepath.Join(c.Share, "hello.txt"), data, 0o644); err != nil {
		return err
	}
	p.step("client c1 starts reading hello.txt through %s with smbclient, one session after another", vip.Addr())
	reads := startIO(ctx, client, vip.Addr(), "hello.txt", data)
	defer reads.stop()
	if err := reads.waitOK(ctx, 3); err != nil {
		return err
	}
	p.say("%d reads so far, each answered by %s (the node holding %s)", reads.count(), old.Role, vip.Addr())
	sess, err := client.StartSMBSession(vip.Addr())
	if err != nil {
		return err
	}
	if err := sess.Command("ls hello.txt"); err != nil {
		return err
	}
	if err := waitLog(ctx, sess.Process, "hello.txt"); err != nil {
		return err
	}
	// let the other nodes learn of the session (connection replication)
	time.Sleep(500 * time.Millisecond)
	var sessPort uint16
	flows, err := old.Flows(ctx)
	if err != nil {
		return err
	}
	for _, fl := range flows {
		if fl.VIP == vip.Addr() && fl.VPort == lab.SMBPort && fl.Client == client.IP() && fl.State == "established" {
			sessPort = fl.CPort
		}
	}
	p.say("c1 also keeps an interactive smbclient session to %s open, idle (the nodes replicate its connection)", vip.Addr())

	p.step("power cut of %s: SIGKILL to its fsha, smbd and nfs-ganesha, then its link goes down", old.Role)
	p.say("meanwhile c1 also opens a new TCP connection to %s:445 every 10 ms, and a packet socket on c1 notes which node answers", vip.Addr())
	f, err := failover(ctx, c, vip, powerCut)
	if err != nil {
		return err
	}
	firstRead, err := reads.firstOKAfter(ctx, f.cut)
	if err != nil {
		return err
	}
	reads.stop()
	for _, fr := range f.frames {
		if sessPort != 0 && !fr.ARP && fr.DstPort == sessPort && fr.Flags&lab.FlagRST != 0 &&
			bytes.Equal(fr.Src, f.nextMAC) && fr.At.After(f.cut) && f.reset.IsZero() {
			f.reset = fr.At
		}
	}
	if full {
		f.notes = append(f.notes, ctdbNotes(c.Others(old), old, f.cut)...)
	}
	f.print(p, old)
	_ = sess.Close(ctx) // its connection is gone: whatever smbclient says
	if full {
		p.say("%-9s %s  c1's smbclient reads hello.txt again: smbd on %s waited for CTDB's recovery; the volume's FUSE mounts gave %s's brick up when fsha ended their connections with it (else after the volume's %d s ping timeout)",
			"+"+ms(firstRead.Sub(f.cut)), clock(firstRead), f.next.Role, old.Role, lab.GlusterPingTimeout)
	} else {
		p.say("%-9s %s  c1's smbclient reads hello.txt again (its attempt made during the gap waited for TCP's 1 s SYN retry)",
			"+"+ms(firstRead.Sub(f.cut)), clock(firstRead))
	}
	p.say("")
	p.say("total: %s from the power cut to a new connection answered by %s; smbclient reads: %d ok, %d failed, content checked",
		ms(f.firstConn.Sub(f.cut)), f.next.Role, reads.count(), reads.failures())

	if err := p.admin(ctx, f.next, "the takeover as "+f.next.Role+" recorded it", "timeline", "--vip", vip.Addr().String()); err != nil {
		return err
	}
	if err := c.WaitConverged(ctx, convergeTimeout, c.Others(old)...); err != nil {
		return err
	}
	if err := p.admin(ctx, f.next, "the cluster after the power cut", "status"); err != nil {
		return err
	}
	if err := p.admin(ctx, f.next, "every VIP is held by the two survivors", "ip"); err != nil {
		return err
	}
	if !full {
		return nil
	}
	return p.ctdb(ctx, f.next, "CTDB after the power cut: fsha's kick told it at once (README: Beside CTDB)", "status")
}

// ctdbNotes are the survivors' ctdbd's view of the failure: when the
// first said the dead node dead (fsha's kick, README: Beside CTDB) and
// when its recovery ended.
func ctdbNotes(survivors []*lab.ClusterNode, dead *lab.ClusterNode, cut time.Time) []note {
	var out []note
	var first *lab.ClusterNode
	var deadAt time.Time
	for _, n := range survivors {
		at, ok := lab.CTDBLogged(n.CTDBLog(), 0, fmt.Sprintf("node %s:%d is dead", dead.IP(), lab.CTDBPort), cut)
		if ok && (deadAt.IsZero() || at.Before(deadAt)) {
			first, deadAt = n, at
		}
	}
	if first == nil {
		return nil
	}
	out = append(out, note{deadAt, fmt.Sprintf("%s's ctdbd: node %s is dead (fsha ended their connections; CTDB's keepalives would take 25 s)", first.Role, dead.Role)})
	if at, ok := lab.CTDBLogged(first.CTDBLog(), 0, "Recovery mode set to NORMAL", deadAt); ok {
		out = append(out, note{at, fmt.Sprintf("%s's ctdbd: CTDB's recovery of the databases done", first.Role)})
	}
	return out
}

// vipOffLeader is a VIP held by a node that is not CTDB's leader: the
// leader's loss costs CTDB an election (its leader timeout) before its
// recovery, on top of what the demo shows; README says so.
func vipOffLeader(ctx context.Context, c *lab.Cluster) (netip.Prefix, error) {
	var leader *lab.ClusterNode
	if err := lab.Eventually(ctx, convergeTimeout, "the ctdbd agree on a leader", func(ctx context.Context) error {
		var err error
		leader, err = c.CTDBLeader(ctx)
		return err
	}); err != nil {
		return netip.Prefix{}, err
	}
	for _, v := range c.VIPs {
		if o, err := c.Owner(v); err == nil && o != leader {
			return v, nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("every VIP is on CTDB's leader %s", leader.Role)
}

// ctdb prints a ctdb command's output, asked of n's ctdbd.
func (p printer) ctdb(ctx context.Context, n *lab.ClusterNode, title string, args ...string) error {
	return p.command(ctx, "ctdb", n.CTDB, n, title, args)
}

// admin prints an fsha admin command's output.
func (p printer) admin(ctx context.Context, n *lab.ClusterNode, title string, args ...string) error {
	return p.command(ctx, "fsha", n.Admin, n, title, args)
}

// command prints the output of tool's command args, run by run on n.
func (p printer) command(ctx context.Context, tool string, run func(context.Context, ...string) ([]byte, error),
	n *lab.ClusterNode, title string, args []string) error {
	p.heading("%s   [%s %s, on %s]", title, tool, strings.Join(args, " "), n.Role)
	out, err := run(ctx, args...)
	if err != nil {
		return err
	}
	p.block(out)
	return nil
}

func joinPrefixes(ps []netip.Prefix) string {
	var s []string
	for _, p := range ps {
		s = append(s, p.Addr().String())
	}
	return strings.Join(s, " ")
}

func clock(t time.Time) string { return t.Format("15:04:05.000") }

func ms(d time.Duration) string {
	return fmt.Sprintf("%dms", d.Round(time.Millisecond).Milliseconds())
}

// fault is a way to take a node down.
type fault struct {
	name, what string
	down       func(*lab.ClusterNode) error
}

var (
	powerCut = fault{
		name: "power", what: "power cut (SIGKILL of fsha, smbd, ganesha; link down)",
		down: (*lab.ClusterNode).PowerDown,
	}
	networkCut = fault{
		name: "network", what: "network cut (eth0 down inside the node)",
		down: (*lab.ClusterNode).NetworkDown,
	}
)

// failoverResult is what one failover looked like.
type failoverResult struct {
	fault     fault
	vip       netip.Prefix
	next      *lab.ClusterNode
	cut       time.Time
	takeover  admin.Takeover
	firstConn time.Time // first connection answered by the new owner
	lastOld   time.Time // last frame from the old owner
	reset     time.Time // the open session's reset by the new owner
	frames    []lab.Frame
	nextMAC   []byte
	probes    int
	// notes are more events for the timeline (CTDB's, in the full demo)
	notes []note
}

// note is an event of a failover's timeline.
type note struct {
	at   time.Time
	what string
}

// failover takes the holder of vip down with f while the client probes
// VIP:445 every 10 ms, and returns when a new owner has answered.
func failover(ctx context.Context, c *lab.Cluster, vip netip.Prefix, f fault) (*failoverResult, error) {
	client := c.Clients[0]
	old, err := c.Owner(vip)
	if err != nil {
		return nil, err
	}
	oldMAC, err := old.MAC()
	if err != nil {
		return nil, err
	}
	w, err := client.WatchAddr(vip.Addr())
	if err != nil {
		return nil, err
	}
	defer w.Close()
	res := &failoverResult{fault: f, vip: vip}
	var (
		probes  []lab.Probe
		oldSeen = make(chan struct{})
		once    sync.Once
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		probes = client.ProbeTCP(ctx, netip.AddrPortFrom(vip.Addr(), lab.SMBPort), lab.ProbeOptions{
			Watch: w, Max: convergeTimeout,
			Until: func(p lab.Probe) bool {
				if p.Err == nil && bytes.Equal(p.By, oldMAC) {
					once.Do(func() { close(oldSeen) })
				}
				return p.Err == nil && p.By != nil && !bytes.Equal(p.By, oldMAC)
			},
		})
	}()
	select {
	case <-oldSeen:
	case <-done:
		return nil, errors.New("the probes ended before the old owner answered one")
	case <-time.After(5 * time.Second):
		<-done
		return nil, fmt.Errorf("no probe answered by %s within 5 s", old.Role)
	}
	res.cut = time.Now()
	if err := f.down(old); err != nil {
		<-done
		return nil, err
	}
	<-done
	res.probes = len(probes)
	for _, p := range probes {
		if p.Err == nil && p.By != nil && !bytes.Equal(p.By, oldMAC) && p.Start.After(res.cut) {
			if res.firstConn.IsZero() || p.End.Before(res.firstConn) {
				res.firstConn = p.End
				for _, n := range c.Nodes {
					if m, _ := n.MAC(); bytes.Equal(m, p.By) {
						res.next = n
					}
				}
			}
		}
	}
	if res.next == nil {
		return nil, fmt.Errorf("no new connection to %s answered by another node within %v", vip.Addr(), convergeTimeout)
	}
	if res.nextMAC, err = res.next.MAC(); err != nil {
		return nil, err
	}
	res.frames = w.Frames()
	for _, fr := range res.frames {
		if bytes.Equal(fr.Src, oldMAC) {
			res.lastOld = fr.At
		}
	}
	// the new owner's record of the takeover
	err = lab.Eventually(ctx, 5*time.Second, "the takeover in "+res.next.Role+"'s timeline", func(ctx context.Context) error {
		tl, err := res.next.Timeline(ctx)
		if err != nil {
			return err
		}
		for _, t := range tl {
			if t.Kind == "takeover" && t.VIP == vip.String() && len(t.Steps) > 0 && t.Steps[0].At.After(res.cut) {
				res.takeover = t
				// the tickles finish after the takeover is recorded
				if time.Since(res.firstConn) < 2*time.Second && !slices.ContainsFunc(t.Steps, func(s admin.TimelineStep) bool {
					return strings.HasPrefix(s.Step, "tickle repeats done")
				}) {
					return errors.New("tickles not done yet")
				}
				return nil
			}
		}
		return errors.New("not recorded yet")
	})
	return res, err
}

// print shows the failover as a timeline from the cut.
func (f *failoverResult) print(p printer, old *lab.ClusterNode) {
	p.heading("failover of %s: %s of %s", f.vip.Addr(), f.fault.what, old.Role)
	type event = note
	events := []event{{f.cut, fmt.Sprintf("%s: %s", old.Role, f.fault.what)}}
	events = append(events, f.notes...)
	if !f.lastOld.IsZero() {
		events = append(events, event{f.lastOld, fmt.Sprintf("c1: last frame from %s for %s", old.Role, f.vip.Addr())})
	}
	for _, s := range f.takeover.Steps {
		what := s.Step
		if what == "decision" {
			what = fmt.Sprintf("decides to take %s over (%s)", f.vip.Addr(), f.takeover.Reason)
		}
		events = append(events, event{s.At, fmt.Sprintf("%s: %s", f.next.Role, what)})
	}
	events = append(events, event{f.firstConn, fmt.Sprintf("c1: new connection to %s:445 answered by %s", f.vip.Addr(), f.next.Role)})
	if !f.reset.IsZero() {
		events = append(events, event{f.reset, fmt.Sprintf("c1: its idle smbclient session is reset by %s (tickle ACK, challenge ACK, RST) instead of hanging", f.next.Role)})
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].at.Before(events[j].at) })
	for _, e := range events {
		p.say("%-9s %s  %s", "+"+ms(e.at.Sub(f.cut)), clock(e.at), e.what)
	}
}

// smbIO reads a file through a VIP with smbclient, one session after the
// other, until stopped, checking the content each time.
type smbIO struct {
	mu      sync.Mutex
	reads   []read
	cancel  context.CancelFunc
	done    chan struct{}
	stopped sync.Once
}

type read struct {
	start, end time.Time
	err        error
}

func startIO(ctx context.Context, c *lab.Client, vip netip.Addr, name string, want []byte) *smbIO {
	ctx, cancel := context.WithCancel(ctx)
	s := &smbIO{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for ctx.Err() == nil {
			r := read{start: time.Now()}
			rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
			got, err := c.GetSMB(rctx, vip, name)
			rcancel()
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("read %q, want %q", got, want)
			}
			r.end, r.err = time.Now(), err
			if ctx.Err() != nil {
				return // killed by the stop, not a failure
			}
			s.mu.Lock()
			s.reads = append(s.reads, r)
			s.mu.Unlock()
			if err != nil {
				time.Sleep(20 * time.Millisecond)
			}
		}
	}()
	return s
}

func (s *smbIO) stop() {
	s.stopped.Do(func() {
		s.cancel()
		<-s.done
	})
}

func (s *smbIO) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return countOK(s.reads)
}

func countOK(rs []read) int {
	n := 0
	for _, r := range rs {
		if r.err == nil {
			n++
		}
	}
	return n
}

func (s *smbIO) failures() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.reads) - countOK(s.reads)
}

// waitOK waits until n reads succeeded.
func (s *smbIO) waitOK(ctx context.Context, n int) error {
	return lab.Eventually(ctx, convergeTimeout, fmt.Sprintf("%d smbclient reads", n), func(context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		if ok := countOK(s.reads); ok < n {
			if len(s.reads) > 0 && s.reads[len(s.reads)-1].err != nil {
				return s.reads[len(s.reads)-1].err
			}
			return fmt.Errorf("%d so far", ok)
		}
		return nil
	})
}

// firstOKAfter waits for a read that succeeded and started after t, and
// returns when it ended.
func (s *smbIO) firstOKAfter(ctx context.Context, t time.Time) (time.Time, error) {
	var at time.Time
	err := lab.Eventually(ctx, convergeTimeout, "a read after the failure", func(context.Context) error {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, r := range s.reads {
			if r.err == nil && r.start.After(t) {
				at = r.end
				return nil
			}
		}
		return errors.New("none yet")
	})
	return at, err
}

// runMeasure times n failovers for each fault, each on a fresh cluster
// (so that one failover's aftermath cannot skew the next).
func runMeasure(ctx context.Context, out io.Writer, newLab func() (*lab.Lab, error), n int) error {
	p := printer{out}
	p.heading("timing %d power cuts and %d network cuts, each on a fresh three-node cluster", n, n)
	const row = "   %-8s %-5s %-7s %-13s %-10s %-9s %-16s %s\n"
	fmt.Fprintf(out, row, "FAULT", "TRIAL", "NODES", "TAKEOVER", "ADDRESS UP", "ANNOUNCED", "CLIENT CONNECTED", "LAST FRAME FROM OLD")
	totals := map[string][]time.Duration{}
	for _, f := range []fault{powerCut, networkCut} {
		for i := 1; i <= n; i++ {
			r, old, err := measureOne(ctx, newLab, f)
			if err != nil {
				return fmt.Errorf("%s cut %d: %w", f.name, i, err)
			}
			step := func(name string) string {
				for _, s := range r.takeover.Steps {
					if s.Step == name {
						return sinceCut(s.At, r.cut)
					}
				}
				return "-"
			}
			total := r.firstConn.Sub(r.cut)
			totals[f.name] = append(totals[f.name], total)
			fmt.Fprintf(out, row, f.name, strconv.Itoa(i), old.Role+"->"+r.next.Role, step("decision"),
				step("address up"), step("first announcement"), sinceCut(r.firstConn, r.cut), sinceCut(r.lastOld, r.cut))
		}
	}
	p.heading("failure -> new TCP connection to VIP:445 answered by the new owner")
	for _, name := range []string{powerCut.name, networkCut.name} {
		d := totals[name]
		slices.Sort(d)
		p.say("%-8s min %s  median %s  max %s  (%d trials)", name, ms(d[0]), ms(d[len(d)/2]), ms(d[len(d)-1]), len(d))
	}
	return nil
}

// measureOne builds a cluster in a new lab, fails the holder of the first
// VIP with f and tears the lab down.
func measureOne(ctx context.Context, newLab func() (*lab.Lab, error), f fault) (_ *failoverResult, _ *lab.ClusterNode, err error) {
	l, err := newLab()
	if err != nil {
		return nil, nil, err
	}
	defer func() { err = errors.Join(err, l.Close()) }()
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{Nodes: 3})
	if err != nil {
		return nil, nil, err
	}
	old, err := c.Owner(c.VIPs[0])
	if err != nil {
		return nil, nil, err
	}
	r, err := failover(ctx, c, c.VIPs[0], f)
	return r, old, err
}

// sinceCut prints t relative to the cut: +412ms, or -6ms for before it.
func sinceCut(t, cut time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := t.Sub(cut).Round(time.Millisecond)
	if d < 0 {
		return "-" + ms(-d)
	}
	return "+" + ms(d)
}
