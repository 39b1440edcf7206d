package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestPartitionMinority splits a three-node cluster (bridge VLANs, links
// up on both sides): the VIPs end up only on the majority side, the
// minority node holds none and reports no quorum, clients on the majority
// side are served through every VIP; once healed, all three share the VIPs
// again and the data is the same.
func TestPartitionMinority(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	e.works("before")

	if err := e.c.Partition(e.ctx, hostsOf(n3)); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{n3}
	// safety, at any time once the minority noticed: n3 holds nothing
	minorityOut := func(ctx context.Context) error {
		if h := e.held(n3); len(h) > 0 {
			return fmt.Errorf("minority n3 has %v on eth0", h)
		}
		st, err := n3.Status(ctx)
		if err != nil {
			return err
		}
		if st.Quorum {
			return errors.New("minority n3 reports quorum")
		}
		return nil
	}
	e.eventually("VIPs on the majority side only", func(ctx context.Context) error {
		if err := minorityOut(ctx); err != nil {
			return err
		}
		return e.c.Converged(ctx, n1, n2)
	})
	e.inSync()
	e.works("partitioned")
	// still so, after everything above
	if err := minorityOut(e.ctx); err != nil {
		t.Fatalf("later in the partition: %v", err)
	}

	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.out = nil
	e.eventually("healed: one VIP per node", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, e.c.Nodes...); err != nil {
			return err
		}
		for _, n := range e.c.Nodes {
			if h := e.held(n); len(h) != 1 {
				return fmt.Errorf("%s holds %v", n.Role, h)
			}
		}
		return nil
	})
	e.answering()
	e.inSync()
}

// TestPartitionTwoNodesLock splits a two-node cluster with the cluster
// lock, links up on both sides, and reads both nodes' addresses over and
// over: no VIP is ever on both sides; exactly one side (the lock holder)
// ends up with every VIP; after healing they share them again.
func TestPartitionTwoNodesLock(t *testing.T) {
	e, _ := newTwoNodes(t)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	e.works("before")

	mon := startOverlapMonitor(n1, n2)
	if err := e.c.Partition(e.ctx, hostsOf(n2)); err != nil {
		t.Fatal(err)
	}
	var winner, loser *lab.ClusterNode
	e.eventually("one side holds every VIP", func(ctx context.Context) error {
		for _, w := range e.c.Nodes {
			l := e.c.Others(w)[0]
			if len(e.held(w)) != len(e.c.VIPs) || len(e.held(l)) != 0 {
				continue
			}
			ws, err := w.Status(ctx)
			if err != nil {
				return err
			}
			ls, err := l.Status(ctx)
			if err != nil {
				return err
			}
			if !ws.Quorum || !ws.LockHeld || ls.Quorum || ls.LockHeld {
				return fmt.Errorf("%s holds every VIP: quorum %v lock %v; %s: quorum %v lock %v",
					w.Role, ws.Quorum, ws.LockHeld, l.Role, ls.Quorum, ls.LockHeld)
			}
			winner, loser = w, l
			return nil
		}
		a, _ := e.c.Assignment()
		return fmt.Errorf("VIPs: %v", a)
	})
	t.Logf("partition: %s took the lock and every VIP", winner.Role)
	// hold the partition a while: nothing moves back
	time.Sleep(2 * time.Second)
	if h := e.held(loser); len(h) > 0 {
		t.Errorf("%s got %v back during the partition", loser.Role, h)
	}
	if winner == n1 {
		e.inSync() // the client is on n1's side
	}

	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	e.both()
	overlaps, samples, err := mon.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads of the nodes' addresses", samples)
	for _, o := range overlaps[:min(len(overlaps), 10)] {
		t.Errorf("split brain: %s", o)
	}
	e.answering()
	e.inSync()
}

// TestFrozenOwner stops (SIGSTOP) every process of a VIP's owner: another
// node takes the VIP; when the frozen node wakes up (SIGCONT) it lets the
// VIP go and never answers for it again: from the freeze on (once its
// lease ran out) the client sees no frame for the VIP from its MAC
// address, and the new owner's smbd answers.
func TestFrozenOwner(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FailbackSticky: true})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	oldMAC := mac(t, old.Host)
	e.works("before")

	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	frozen := time.Now()
	if err := old.Freeze(); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{old}
	var next *lab.ClusterNode
	e.eventually("another node takes "+vip.String(), func(ctx context.Context) error {
		if err := e.c.Converged(ctx, e.up()...); err != nil {
			return err
		}
		o, err := e.c.Owner(vip, e.up()...)
		next = o
		return err
	})
	t.Logf("%s frozen, %s took %s", old.Role, next.Role, vip)
	e.whoAnswers(vip, next)

	woke := time.Now()
	if err := old.Thaw(); err != nil {
		t.Fatal(err)
	}
	e.eventually(old.Role+" lets "+vip.String()+" go after waking up", func(context.Context) error {
		if h := e.held(old); len(h) > 0 {
			return fmt.Errorf("%s still has %v", old.Role, h)
		}
		return nil
	})
	t.Logf("%s woke up and dropped its VIPs within %v", old.Role, time.Since(woke).Round(time.Millisecond))
	for range 3 {
		e.whoAnswers(vip, next)
	}
	e.out = nil
	e.waitConverged(e.c.Nodes...)
	e.answering()

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Check(); err != nil {
		t.Errorf("the wire oracle cannot be trusted: %v", err)
	}
	frames := w.Frames()
	e.saveFrames("frames-"+vip.Addr().String(), frames)
	fenced := frozen.Add(lease + transit)
	var fromNext int
	for _, f := range frames {
		if bytes.Equal(f.Src, oldMAC) && f.At.After(fenced) {
			t.Errorf("frozen %s spoke for %s %v after the freeze: %s", old.Role, vip, f.At.Sub(frozen).Round(time.Millisecond), f)
		}
		if bytes.Equal(f.Src, mac(t, next.Host)) {
			fromNext++
		}
	}
	if fromNext == 0 {
		t.Errorf("no frame for %s from the new owner %s (%d frames)", vip, next.Role, len(frames))
	}
	e.released(old, vip, "newer epoch")
}

// whoAnswers checks, through vip, that node's smbd answers. A failed
// connection is tried again (the machine may be slow); another node
// answering fails at once.
func (e *env) whoAnswers(vip netip.Prefix, node *lab.ClusterNode) {
	e.t.Helper()
	e.retry(node.Role+" answers on "+vip.String(), func(ctx context.Context) error {
		who, err := e.client.WhoAnswers(ctx, vip.Addr())
		if err != nil {
			return err
		}
		if who != node.Role {
			return permanent{fmt.Errorf("%s answered, want %s", who, node.Role)}
		}
		return nil
	})
}

// released checks the node's timeline has a release of vip whose reason
// mentions why.
func (e *env) released(n *lab.ClusterNode, vip netip.Prefix, why string) {
	e.t.Helper()
	tl, err := n.Timeline(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if !slices.ContainsFunc(tl, func(r admin.Takeover) bool {
		return r.Kind == "release" && r.VIP == vip.String() && bytes.Contains([]byte(r.Reason), []byte(why))
	}) {
		e.t.Errorf("%s's timeline has no release of %s for %q: %+v", n.Role, vip, why, tl)
	}
}

func (e *env) saveFrames(name string, frames []lab.Frame) {
	if path, err := e.client.SaveFrames(name, frames); err == nil {
		e.t.Logf("%d frames in %s", len(frames), path)
	}
}

func mac(t *testing.T, h *lab.Host) net.HardwareAddr {
	t.Helper()
	m, err := h.MAC()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestKilledDaemon crashes (SIGKILL) only the fsha daemon of a VIP's owner:
// smbd and the link stay up and the VIP stays on its eth0, yet once the
// daemon's 300 ms lease runs out the node answers nothing for the VIP (the
// data plane drops it, counted as fenced); another node takes the VIP
// and answers. The client connects to VIP:445 every 10 ms from the kill
// until the new owner has answered, and a packet socket tells which node
// sent each frame.
func TestKilledDaemon(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	oldMAC := mac(t, old.Host)
	e.whoAnswers(vip, old) // the client knows the old owner's MAC now
	before, err := old.Counters(e.ctx)
	if err != nil {
		t.Fatal(err)
	}

	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := old.KillFsha(); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{old}

	target := netip.AddrPortFrom(vip.Addr(), lab.SMBPort)
	probes := e.client.ProbeTCP(e.ctx, target, lab.ProbeOptions{
		Watch: w, Max: failoverTimeout,
		Until: func(p lab.Probe) bool { return p.Err == nil && p.By != nil && !bytes.Equal(p.By, oldMAC) },
	})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Check(); err != nil {
		t.Errorf("the wire oracle cannot be trusted: %v", err)
	}
	frames := w.Frames()
	e.saveFrames("frames-"+vip.Addr().String(), frames)
	var (
		next     *lab.ClusterNode
		firstNew time.Time
		ok       int
	)
	for _, p := range probes {
		if p.Err != nil {
			continue
		}
		ok++
		if n := e.nodeByMAC(p.By); n != nil && n != old && (firstNew.IsZero() || p.End.Before(firstNew)) {
			next, firstNew = n, p.End
		}
	}
	if next == nil {
		t.Fatalf("no connection to %s answered by another node within %v (%d probes, %d frames)", target, failoverTimeout, len(probes), len(frames))
	}
	lastOld := time.Time{}
	fenced := killed.Add(lease + transit)
	for _, f := range frames {
		if !bytes.Equal(f.Src, oldMAC) {
			continue
		}
		lastOld = f.At
		if f.At.After(fenced) {
			t.Errorf("%s answered for %s %v after its daemon died (lease %v): %s", old.Role, vip, f.At.Sub(killed).Round(time.Millisecond), lease, f)
		}
	}
	t.Logf("daemon of %s killed; %d probes, %d answered; last frame from %s at +%v; first connection answered by %s at +%v",
		old.Role, len(probes), ok, old.Role, sinceOrNever(lastOld, killed), next.Role, firstNew.Sub(killed).Round(time.Millisecond))

	// the servers of the old node ran all along, the VIP stayed on its eth0
	for _, p := range old.Processes() {
		if p.Name == "fsha-up" {
			t.Errorf("fsha still runs on %s", old.Role)
		}
	}
	if len(old.Processes()) != 2 {
		t.Errorf("smbd and nfs-ganesha of %s did not both run on: %d processes", old.Role, len(old.Processes()))
	}
	if h := e.held(old); !slices.Contains(h, vip) {
		t.Errorf("%s's eth0 lost %s without its daemon: %v", old.Role, vip, h)
	}
	after, err := old.Counters(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s fenced (dropped): ingress %d -> %d, egress %d -> %d", old.Role, before.Ingress.Fenced, after.Ingress.Fenced, before.Egress.Fenced, after.Egress.Fenced)
	if after.Ingress.Fenced <= before.Ingress.Fenced {
		t.Errorf("%s's data plane dropped nothing for %s: fenced %d -> %d", old.Role, vip, before.Ingress.Fenced, after.Ingress.Fenced)
	}
	e.waitConverged(e.up()...)
	e.whoAnswers(vip, next)
}

func (e *env) nodeByMAC(m net.HardwareAddr) *lab.ClusterNode {
	if m == nil {
		return nil
	}
	for _, n := range e.c.Nodes {
		if bytes.Equal(mac(e.t, n.Host), m) {
			return n
		}
	}
	return nil
}

func sinceOrNever(t, from time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return t.Sub(from).Round(time.Millisecond).String()
}

// TestGossipKey starts the third node of a cluster with a wrong gossip key,
// then with none: either way the two others never see it OK, it holds no
// VIP and has no quorum, and the two go on serving every VIP. With the
// right key it joins and gets its VIP.
func TestGossipKey(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, ManualFsha: []int{3}, NoServers: true, Clients: -1})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	e.waitConverged(n1, n2)
	wrong, err := lab.WriteGossipKey(filepath.Join(n3.Dir, "wrong.key"))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		opts lab.FshaOptions
	}{
		{"wrong key", lab.FshaOptions{KeyFile: wrong}},
		{"no key", lab.FshaOptions{NoKey: true}},
	} {
		if _, err := n3.StartFsha(e.ctx, tc.opts); err != nil {
			t.Fatal(err)
		}
		// n3 tries to join at start and then every second: watch 3 s
		for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
			for _, n := range []*lab.ClusterNode{n1, n2} {
				st := e.status(n)
				if s := nodeState(st, n3); s != admin.StateDisconnected {
					t.Fatalf("%s: %s sees n3 %s", tc.name, n.Role, s)
				}
			}
			st := e.status(n3)
			if st.Quorum {
				t.Fatalf("%s: n3 has quorum: %+v", tc.name, st)
			}
			for _, other := range []*lab.ClusterNode{n1, n2} {
				if s := nodeState(st, other); s != admin.StateDisconnected {
					t.Fatalf("%s: n3 sees %s %s", tc.name, other.Role, s)
				}
			}
			if h := e.held(n3); len(h) > 0 {
				t.Fatalf("%s: n3 holds %v", tc.name, h)
			}
		}
		// and the two others served every VIP all along
		e.waitConverged(n1, n2)
		if err := n3.StopFsha(); err != nil {
			t.Fatal(err)
		}
	}

	if _, err := n3.StartFsha(e.ctx, lab.FshaOptions{}); err != nil {
		t.Fatal(err)
	}
	e.eventually("n3 with the right key joins and gets a VIP", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, e.c.Nodes...); err != nil {
			return err
		}
		if h := e.held(n3); len(h) != 1 {
			return fmt.Errorf("n3 holds %v", h)
		}
		return nil
	})
}

// TestPartitionHealClients puts a client on the minority side of a
// partition of a three-node cluster (sticky failback, so the VIP taken
// from the minority node stays where it went). Once the partition heals,
// that client, whose neighbour table still has the minority node's MAC
// address for the VIP, must be served through every VIP again within a
// few seconds: the VIP's holder has to announce it to the side that could
// not hear its takeover.
func TestPartitionHealClients(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, Clients: 2, FailbackSticky: true})
	n3 := e.c.Node(3)
	c1, c2 := e.c.Clients[0], e.c.Clients[1]
	vip := e.vipOf(n3)
	for _, c := range []*lab.Client{c1, c2} {
		e.client = c
		e.answering() // both clients know every VIP's MAC address
	}

	if err := e.c.Partition(e.ctx, hostsOf(n3), []*lab.Host{c2.Host}); err != nil {
		t.Fatal(err)
	}
	// the groups are on separate bridges: put n3 and c2 together
	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.c.Partition(e.ctx, []*lab.Host{n3.Host, c2.Host}); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{n3}
	e.eventually(vip.String()+" moves to the majority side", func(ctx context.Context) error {
		if h := e.held(n3); len(h) > 0 {
			return fmt.Errorf("n3 still has %v", h)
		}
		return e.c.Converged(ctx, e.up()...)
	})
	next := e.owner(vip, e.up()...)
	e.client = c1
	e.whoAnswers(vip, next)

	// the takeover's announcements (4, 250 ms apart) are over before the
	// heal: c2 cannot have heard them
	time.Sleep(1500 * time.Millisecond)
	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	e.out = nil
	e.waitConverged(e.c.Nodes...)
	e.client = c2
	const bound = 10 * time.Second
	// a failed read is retried (c2's stale neighbour entry leads nowhere
	// until it is refreshed); an answer from another node ends the wait
	// and fails: that is two nodes serving the VIP
	var wrong string
	err := lab.Eventually(e.ctx, bound, "c2 served through "+vip.String()+" after the heal", func(ctx context.Context) error {
		who, err := c2.WhoAnswers(ctx, vip.Addr())
		if err != nil {
			return err
		}
		if who != next.Role {
			wrong = who
		}
		return nil
	})
	if wrong != "" {
		t.Fatalf("%s answered c2 through %s after the heal, want %s", wrong, vip, next.Role)
	}
	if err != nil {
		m, _ := c2.Neighbour(vip.Addr())
		t.Fatalf("%v\nc2's neighbour entry for %s: %s (n3 has %s, %s has %s)", err, vip, m, mac(t, n3.Host), next.Role, mac(t, next.Host))
	}
	t.Logf("c2 served through %s %v after the heal", vip, time.Since(healed).Round(time.Millisecond))
	e.answering()
}

// TestNetworkFlap cuts one node's network (eth0 down inside it) for about
// as long as the cluster needs to declare it dead, again and again, with
// durations around that time (five cuts, FSHA_LAB_ITERATIONS in `make
// chaos`). While every daemon runs, an address on a
// node's eth0 is that node answering: no VIP may ever be on two nodes at
// once, and after each cut the cluster must settle with every VIP held.
func TestNetworkFlap(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, Clients: -1, NoServers: true})
	mon := startOverlapMonitor(e.c.Nodes...)
	cuts := []time.Duration{400, 600, 800, 1000, 1200}
	for i := range iterations(len(cuts)) {
		cut := cuts[i%len(cuts)]
		n := e.c.Nodes[i%len(e.c.Nodes)]
		if err := n.NetworkDown(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(cut * time.Millisecond)
		if err := n.NetworkUp(); err != nil {
			t.Fatal(err)
		}
		if err := e.c.WaitConverged(e.ctx, failoverTimeout, e.c.Nodes...); err != nil {
			t.Errorf("after a %v network cut of %s: %v", cut*time.Millisecond, n.Role, err)
			break
		}
	}
	overlaps, samples, err := mon.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d reads of the nodes' addresses", samples)
	for _, o := range overlaps[:min(len(overlaps), 10)] {
		t.Errorf("VIP on two nodes: %s", o)
	}
}
