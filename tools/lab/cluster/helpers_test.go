package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// Bounds of the waits. Generous: they bound a broken run, they do not
// measure anything (a 2-core CI machine runs other packages meanwhile).
const (
	testTimeout     = 90 * time.Second
	failoverTimeout = 20 * time.Second
	// lease is fsha's default data-plane lease: after it, a node whose
	// daemon stopped renewing answers nothing for its VIPs.
	lease = 300 * time.Millisecond
	// transit covers a frame's way from the node's egress hook to the
	// client's packet socket on a loaded machine.
	transit = 50 * time.Millisecond
)

// env is one test's cluster, its client and the files written so far.
type env struct {
	t      *testing.T
	ctx    context.Context
	c      *lab.Cluster
	client *lab.Client
	files  map[string][]byte
	// out are the nodes whose eth0 addresses do not tell who answers
	// (powered down, frozen or with a dead daemon: fenced).
	out []*lab.ClusterNode
}

func newEnv(t *testing.T, opts lab.ClusterOptions) *env {
	t.Helper()
	return newEnvWithin(t, opts, testTimeout+chaosBudget())
}

// newEnvWithin is newEnv for a test that needs budget in all (the
// context of every wait), e.g. CTDB's ~30 s of failure detection.
func newEnvWithin(t *testing.T, opts lab.ClusterOptions, budget time.Duration) *env {
	t.Helper()
	testenv.RequireBPF(t)
	for _, cmd := range []string{"ip", "bridge", "ethtool", "smbd", "smbclient", "ganesha.nfsd", "nfs-cat", "stdbuf"} {
		testenv.RequireCommand(t, cmd)
	}
	if opts.CTDB {
		testenv.RequireCommand(t, "ctdbd")
		testenv.RequireCommand(t, "ctdb")
	}
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	t.Cleanup(cancel)
	l := lab.NewT(t, lab.Options{Fsha: fshaBin, Log: zaptest.NewLogger(t)})
	c, err := lab.NewCluster(ctx, l, opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, ctx: ctx, c: c, files: map[string][]byte{}}
	if len(c.Clients) > 0 {
		e.client = c.Clients[0]
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.logCluster()
		}
	})
	return e
}

// logCluster logs every live node's status, ip and timeline, for a failed test.
func (e *env) logCluster() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range e.c.Nodes {
		if p := n.FshaProcess(); p == nil || p.Exited() {
			continue
		}
		for _, cmd := range []string{"status", "ip", "timeline"} {
			out, err := n.Admin(ctx, cmd)
			e.t.Logf("--- %s: fsha %s (%v):\n%s", n.Role, cmd, err, out)
		}
	}
	for _, n := range e.c.Nodes {
		if !n.CTDBRuns() {
			continue
		}
		out, err := n.CTDB(ctx, "status")
		e.t.Logf("--- %s: ctdb status (%v):\n%s", n.Role, err, out)
		if log, err := os.ReadFile(n.CTDBLog()); err == nil {
			e.t.Logf("--- %s: end of %s:\n%s", n.Role, n.CTDBLog(), tailString(string(log), 3000))
		}
	}
	if a, err := e.c.Assignment(); err == nil {
		e.t.Logf("VIPs on the nodes' eth0: %v", a)
	}
	for _, n := range e.c.Nodes {
		if m, err := n.MAC(); err == nil {
			e.t.Logf("%s has MAC %s", n.Role, m)
		}
	}
	for _, c := range e.c.Clients {
		out, err := c.Run(ctx, "ip", "neigh", "show", "dev", lab.HostIface)
		e.t.Logf("--- %s: ip neigh (%v):\n%s", c.Role, err, out)
	}
}

func (e *env) waitConverged(up ...*lab.ClusterNode) {
	e.t.Helper()
	if err := e.c.WaitConverged(e.ctx, failoverTimeout, up...); err != nil {
		e.t.Fatal(err)
	}
}

// owner waits until exactly one node among among (all when empty) has
// vip on its eth0, and returns it.
func (e *env) owner(vip netip.Prefix, among ...*lab.ClusterNode) *lab.ClusterNode {
	e.t.Helper()
	var o *lab.ClusterNode
	e.eventually("one holder of "+vip.String(), func(context.Context) error {
		var err error
		o, err = e.c.Owner(vip, among...)
		return err
	})
	return o
}

// vipOf waits until n holds a VIP and returns one.
func (e *env) vipOf(n *lab.ClusterNode) netip.Prefix {
	e.t.Helper()
	var v netip.Prefix
	e.eventually(n.Role+" holds a VIP", func(context.Context) error {
		h := e.held(n)
		if len(h) == 0 {
			return errors.New("none")
		}
		v = h[0]
		return nil
	})
	return v
}

// held returns the VIPs on the node's eth0.
func (e *env) held(n *lab.ClusterNode) []netip.Prefix {
	e.t.Helper()
	h, err := n.HeldVIPs()
	if err != nil {
		e.t.Fatal(err)
	}
	return h
}

func (e *env) status(n *lab.ClusterNode) admin.Status {
	e.t.Helper()
	st, err := n.Status(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// allSee checks that every node has quorum and names of in state in its
// `fsha status`.
func (e *env) allSee(ctx context.Context, of *lab.ClusterNode, state string) error {
	for _, n := range e.c.Nodes {
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		if s := nodeState(st, of); s != state {
			return fmt.Errorf("%s sees %s %s, want %s", n.Role, of.Role, s, state)
		}
		if !st.Quorum {
			return fmt.Errorf("%s has no quorum", n.Role)
		}
	}
	return nil
}

// nodeState is the state n reports for other in `fsha status`.
func nodeState(st admin.Status, other *lab.ClusterNode) string {
	for _, ns := range st.Nodes {
		if ns.PNN == other.PNN {
			return ns.State
		}
	}
	return "(not listed)"
}

func content(name string) []byte {
	var r [512]byte
	_, _ = rand.Read(r[:])
	return fmt.Appendf(nil, "%s, written %s\n%s\n", name, time.Now().Format(time.RFC3339Nano), hex.EncodeToString(r[:]))
}

// permanent marks an error that retrying cannot fix: wrong data.
type permanent struct{ error }

// retry runs fn until it succeeds, for at most failoverTimeout: a VIP may
// move under a loaded machine (a stalled daemon lets its VIPs go), and a
// client then simply tries again, as a person would. An error wrapped in
// permanent (wrong data) fails at once.
func (e *env) retry(what string, fn func(ctx context.Context) error) {
	e.t.Helper()
	var perm error
	err := lab.Eventually(e.ctx, failoverTimeout, what, func(ctx context.Context) error {
		err := fn(ctx)
		var p permanent
		if errors.As(err, &p) {
			perm = p.error
			return nil
		}
		return err
	})
	if perm != nil {
		e.t.Fatalf("%s: %v", what, perm)
	}
	if err != nil {
		e.t.Fatal(err)
	}
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// up are the nodes not marked out.
func (e *env) up() []*lab.ClusterNode { return e.c.Others(e.out...) }

// works is the OVD guide's "Works": through each VIP it creates a file
// with SMB, then reads it back through the next VIP with SMB and NFS,
// content checked; and the smbd that answers on each VIP is the one of the
// node that has the VIP on its eth0.
func (e *env) works(tag string) {
	e.t.Helper()
	vips := e.c.VIPs
	for i, v := range vips {
		name := fmt.Sprintf("%s-via-vip%d.txt", tag, i+1)
		data := content(name)
		next := vips[(i+1)%len(vips)].Addr()
		e.retry("create "+name+" through "+v.Addr().String(), func(ctx context.Context) error {
			return e.client.PutSMB(ctx, v.Addr(), name, data)
		})
		e.files[name] = data
		e.retry("read "+name+" through "+next.String(), func(ctx context.Context) error {
			got, err := e.client.GetSMB(ctx, next, name)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, data) {
				return permanent{fmt.Errorf("SMB read %q, want %q", got, data)}
			}
			if got, err = e.client.NFSCat(ctx, next, name); err != nil {
				return err
			}
			if !bytes.Equal(got, data) {
				return permanent{fmt.Errorf("NFS read %q, want %q", got, data)}
			}
			return nil
		})
	}
	e.answering()
}

// answering checks that on every VIP the node holding it answers, and
// that it is a node that is up.
func (e *env) answering() {
	e.t.Helper()
	for _, v := range e.c.VIPs {
		e.retry("the holder of "+v.String()+" answers on it", func(ctx context.Context) error {
			o, err := e.c.Owner(v, e.up()...)
			if err != nil {
				return err
			}
			who, err := e.client.WhoAnswers(ctx, v.Addr())
			if err != nil {
				return err
			}
			// a wrong node answering a new connection after convergence
			// is two nodes serving one VIP: never retried
			if who != o.Role {
				return permanent{fmt.Errorf("%s is on %s's eth0 but %s answers on it", v, o.Role, who)}
			}
			return nil
		})
	}
}

// inSync reads every file written so far through every VIP, by SMB and by
// NFS, and checks the contents: "data in sync and accessible".
func (e *env) inSync() {
	e.t.Helper()
	var names []string
	for n := range e.files {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		e.t.Fatal("inSync: no files written yet")
	}
	for _, v := range e.c.VIPs {
		e.retry("read every file through "+v.Addr().String(), func(ctx context.Context) error {
			got, err := e.client.GetSMBFiles(ctx, v.Addr(), names...)
			if err != nil {
				return err
			}
			for _, name := range names {
				if !bytes.Equal(got[name], e.files[name]) {
					return permanent{fmt.Errorf("%s by SMB: %q, want %q", name, got[name], e.files[name])}
				}
				b, err := e.client.NFSCat(ctx, v.Addr(), name)
				if err != nil {
					return err
				}
				if !bytes.Equal(b, e.files[name]) {
					return permanent{fmt.Errorf("%s by NFS: %q, want %q", name, b, e.files[name])}
				}
			}
			return nil
		})
	}
}

// eventually waits, at most failoverTimeout, for check to pass.
func (e *env) eventually(what string, check func(ctx context.Context) error) {
	e.t.Helper()
	if err := lab.Eventually(e.ctx, failoverTimeout, what, check); err != nil {
		e.t.Fatal(err)
	}
}

// overlapMonitor reads, over and over, which VIPs are on the eth0 of each
// watched node (whose daemons all run: an address there is a node
// answering), to catch a VIP held by two nodes at once.
type overlapMonitor struct {
	nodes []*lab.ClusterNode
	stop  chan struct{}
	done  chan struct{}

	mu      sync.Mutex
	samples []sample
	err     error
}

type sample struct {
	node *lab.ClusterNode
	at   time.Time
	held []netip.Prefix
}

// maxMonitor bounds a monitor's run whatever the test does.
const maxMonitor = 60 * time.Second

func startOverlapMonitor(nodes ...*lab.ClusterNode) *overlapMonitor {
	m := &overlapMonitor{nodes: nodes, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		deadline := time.After(maxMonitor)
		for {
			for _, n := range m.nodes {
				h, err := n.HeldVIPs()
				m.mu.Lock()
				if err != nil && m.err == nil {
					m.err = err
				}
				m.samples = append(m.samples, sample{node: n, at: time.Now(), held: h})
				m.mu.Unlock()
			}
			select {
			case <-m.stop:
				return
			case <-deadline:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	return m
}

// Stop ends the sampling and returns the overlaps seen: a VIP on node A
// in two reads in a row of A and on node B in a read between them. Reads
// are sequential, so that is proof, not a race of the sampling. Each
// overlap is reported once per VIP and pair of nodes, as the window from
// its first to its last proof.
func (m *overlapMonitor) Stop() (overlaps []string, samples int, err error) {
	close(m.stop)
	<-m.done
	m.mu.Lock()
	defer m.mu.Unlock()
	type key struct {
		vip  netip.Prefix
		a, b string
	}
	type window struct{ first, last time.Time }
	windows := map[key]*window{}
	var order []key
	last := map[*lab.ClusterNode]int{}
	for k, s := range m.samples {
		if j, ok := last[s.node]; ok {
			for _, v := range s.held {
				if !slices.Contains(m.samples[j].held, v) {
					continue
				}
				for _, b := range m.samples[j+1 : k] {
					if !slices.Contains(b.held, v) {
						continue
					}
					pair := []string{s.node.Role, b.node.Role}
					slices.Sort(pair)
					kk := key{v, pair[0], pair[1]}
					w := windows[kk]
					if w == nil {
						w = &window{first: m.samples[j].at}
						windows[kk] = w
						order = append(order, kk)
					}
					w.last = s.at
				}
			}
		}
		last[s.node] = k
	}
	for _, k := range order {
		w := windows[k]
		overlaps = append(overlaps, fmt.Sprintf("%s on both %s and %s from %s to %s (at least %v)",
			k.vip, k.a, k.b, w.first.Format("15:04:05.000000"), w.last.Format("15:04:05.000000"), w.last.Sub(w.first).Round(time.Millisecond)))
	}
	return overlaps, len(m.samples), m.err
}

func hostsOf(ns ...*lab.ClusterNode) []*lab.Host {
	var hs []*lab.Host
	for _, n := range ns {
		hs = append(hs, n.Host)
	}
	return hs
}
