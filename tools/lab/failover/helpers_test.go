package failover

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// Bounds of the waits: they bound a broken run on a loaded 2-core
// machine, they measure nothing (tools/bench does).
const (
	testTimeout     = 100 * time.Second
	failoverTimeout = 15 * time.Second
	// resetBound is how soon after a power cut the clients of the dead
	// node must have seen their connection reset. fsha aims at well under
	// a second; this only catches "not at all" or "after a TCP timeout".
	resetBound = 5 * time.Second
)

// env is one test's cluster and client.
type env struct {
	t      *testing.T
	ctx    context.Context
	c      *lab.Cluster
	client *lab.Client
	// down are the nodes powered down: no admin socket to ask.
	down []*lab.ClusterNode
	// wantSteer is the steering path every node's eth0 must have: tc
	// (what auto gives a veth) unless the test forced --steer-mode.
	wantSteer string
	// wantDriver and wantXDP are what eth0 is on the lab's topology: a
	// veth with native XDP on the bridge, generic XDP on macvlan and
	// VXLAN devices.
	wantDriver, wantXDP string
}

func newEnv(t *testing.T, opts lab.ClusterOptions) *env {
	t.Helper()
	return newEnvWith(t, lab.Options{}, opts)
}

// newEnvWith is newEnv on a lab made with labOpts (e.g. the tuned one).
func newEnvWith(t *testing.T, labOpts lab.Options, opts lab.ClusterOptions) *env {
	t.Helper()
	testenv.RequireBPF(t)
	for _, cmd := range []string{"ip", "ss", "ethtool", "smbd", "smbclient", "ganesha.nfsd", "nfs-cat", "stdbuf"} {
		testenv.RequireCommand(t, cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	labOpts.Fsha, labOpts.Log = fshaBin, zaptest.NewLogger(t)
	l := lab.NewT(t, labOpts)
	start := time.Now()
	c, err := lab.NewCluster(ctx, l, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster of %d nodes up in %v", len(c.Nodes), time.Since(start).Round(time.Millisecond))
	e := &env{t: t, ctx: ctx, c: c, wantSteer: "tc", wantDriver: "veth", wantXDP: dataplane.XDPNative} // auto on veth
	if topo := l.Topology(); topo != lab.Bridge {
		e.wantDriver, e.wantXDP = string(topo), dataplane.XDPGeneric
	}
	if i := slices.Index(opts.FshaArgs, "--steer-mode"); i >= 0 && i+1 < len(opts.FshaArgs) {
		e.wantSteer = opts.FshaArgs[i+1]
	} else if m := os.Getenv(lab.SteerModeEnv); m != "" {
		e.wantSteer = m
	}
	if len(c.Clients) > 0 {
		e.client = c.Clients[0]
	}
	// registered after the lab's cleanup: runs before the teardown
	t.Cleanup(func() {
		if t.Failed() {
			e.logCluster()
		}
	})
	if len(opts.ManualFsha) == 0 {
		e.balanced() // else once the test started its daemons
	}
	return e
}

// balanced waits until the cluster has converged with each node holding
// its share of the VIPs. (lab.NewCluster returns once the VIPs are placed,
// which may be while a node is still in its start-up hold-down; the
// rebalance that follows would move VIPs under the test's feet.)
func (e *env) balanced() {
	e.t.Helper()
	share := len(e.c.VIPs) / len(e.c.Nodes)
	e.eventually("every node holds its share of the VIPs", func(ctx context.Context) error {
		if err := e.c.Converged(ctx, e.c.Nodes...); err != nil {
			return err
		}
		for _, n := range e.c.Nodes {
			h, err := n.HeldVIPs()
			if err != nil {
				return err
			}
			if len(h) < share {
				return fmt.Errorf("%s holds %v", n.Role, h)
			}
			if lo, err := loVIPs(n, e.c.VIPs); err != nil || len(lo) > 0 {
				return fmt.Errorf("%s drains %v (%v)", n.Role, lo, err)
			}
		}
		return nil
	})
}

// up are the nodes not powered down.
func (e *env) up() []*lab.ClusterNode { return e.c.Others(e.down...) }

// logCluster logs what every live node says (status, ip, timeline, flows
// --all, counters), for a failed test.
func (e *env) logCluster() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, n := range e.c.Nodes {
		if p := n.FshaProcess(); p == nil || p.Exited() {
			e.t.Logf("--- %s: fsha not running", n.Role)
			continue
		}
		for _, cmd := range [][]string{{"status", "--json"}, {"ip", "--json"}, {"timeline", "--json"}} {
			out, err := n.Admin(ctx, cmd...)
			e.t.Logf("--- %s: fsha %s (%v):\n%s", n.Role, strings.Join(cmd, " "), err, out)
		}
		out, err := fshaCmd(ctx, n, "flows", "--all", "--json")
		e.t.Logf("--- %s: fsha flows --all --json (%v):\n%s", n.Role, err, out)
		out, err = n.Fsha(ctx, "counters", "--json")
		e.t.Logf("--- %s: fsha counters --json (%v):\n%s", n.Role, err, out)
		lo, err := loVIPs(n, e.c.VIPs)
		e.t.Logf("--- %s: VIPs on lo %v (%v)", n.Role, lo, err)
	}
	if a, err := e.c.Assignment(); err == nil {
		e.t.Logf("VIPs on the nodes' eth0: %v", a)
	}
}

// fshaCmd runs an fsha command in the node's namespace with its pin path
// and run directory.
func fshaCmd(ctx context.Context, n *lab.ClusterNode, args ...string) ([]byte, error) {
	return n.Output(ctx, fshaBin, append(args, "--pin-path", n.PinPath, "--run-dir", n.RunDir)...)
}

// flowEntry is one line of `fsha flows --all --json`.
type flowEntry = dataplane.FlowRecord

// flowsAll is `fsha flows --all --json` of the node: its own connections
// (owner: its address) and the replicated ones of its peers.
func flowsAll(ctx context.Context, n *lab.ClusterNode) ([]flowEntry, []byte, error) {
	out, err := fshaCmd(ctx, n, "flows", "--all", "--json")
	if err != nil {
		return nil, out, err
	}
	var fs []flowEntry
	if err := json.Unmarshal(out, &fs); err != nil {
		return nil, out, fmt.Errorf("parse fsha flows --all --json of %s: %w: %s", n.Role, err, out)
	}
	return fs, out, nil
}

// findFlow returns the entry of the connection key ("client->vip").
func findFlow(fs []flowEntry, key string) (flowEntry, bool) {
	i := slices.IndexFunc(fs, func(f flowEntry) bool { return f.Key() == key })
	if i < 0 {
		return flowEntry{}, false
	}
	return fs[i], true
}

// waitFlows waits until the node lists every key with owner's address
// (and, if steer, marked steered).
func (e *env) waitFlows(n *lab.ClusterNode, owner *lab.ClusterNode, steer bool, keys ...string) {
	e.t.Helper()
	var last []byte
	err := lab.Eventually(e.ctx, failoverTimeout, fmt.Sprintf("%s lists %v owned by %s (steered %v)", n.Role, keys, owner.Role, steer),
		func(ctx context.Context) error {
			fs, out, err := flowsAll(ctx, n)
			last = out
			if err != nil {
				return err
			}
			for _, k := range keys {
				f, ok := findFlow(fs, k)
				if !ok {
					return fmt.Errorf("%s not listed", k)
				}
				if f.Owner != owner.IP().String() || f.Steer != steer {
					return fmt.Errorf("%s: owner %s steer %v", k, f.Owner, f.Steer)
				}
			}
			return nil
		})
	if err != nil {
		e.t.Fatalf("%v\nfsha flows --all --json of %s:\n%s", err, n.Role, last)
	}
}

// waitFlowsGone waits until the node lists none of the keys.
func (e *env) waitFlowsGone(n *lab.ClusterNode, keys ...string) {
	e.t.Helper()
	var last []byte
	err := lab.Eventually(e.ctx, failoverTimeout, fmt.Sprintf("%s no longer lists %v", n.Role, keys),
		func(ctx context.Context) error {
			fs, out, err := flowsAll(ctx, n)
			last = out
			if err != nil {
				return err
			}
			for _, k := range keys {
				if f, ok := findFlow(fs, k); ok {
					return fmt.Errorf("%s still listed: %+v", k, f)
				}
			}
			return nil
		})
	if err != nil {
		e.t.Fatalf("%v\nfsha flows --all --json of %s:\n%s", err, n.Role, last)
	}
}

// powerDown cuts a node's power the way the network sees it
// (ClusterNode.PowerDown): its link goes down first, then every one of its
// processes is SIGKILLed. (Killed first, their sockets would close with
// FINs that a real power cut never sends, and the clients would reconnect
// without fsha's help.) It returns the moment just before the link went
// down.
func (e *env) powerDown(n *lab.ClusterNode) time.Time {
	e.t.Helper()
	procs := len(n.Processes())
	at := time.Now()
	err := n.PowerDown()
	e.down = append(e.down, n)
	if err != nil {
		e.t.Fatalf("power down %s: %v", n.Role, err)
	}
	e.t.Logf("%s powered down (link down, then %d processes killed in %v)", n.Role, procs, time.Since(at).Round(time.Millisecond))
	return at
}

// powerUp reboots a node powered down by powerDown.
func (e *env) powerUp(n *lab.ClusterNode) {
	e.t.Helper()
	if err := n.PowerUp(e.ctx); err != nil {
		e.t.Fatal(err)
	}
	e.down = slices.DeleteFunc(e.down, func(o *lab.ClusterNode) bool { return o == n })
}

func (e *env) owner(vip netip.Prefix, among ...*lab.ClusterNode) *lab.ClusterNode {
	e.t.Helper()
	o, err := e.c.Owner(vip, among...)
	if err != nil {
		e.t.Fatal(err)
	}
	return o
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

func (e *env) eventually(what string, check func(ctx context.Context) error) {
	e.t.Helper()
	if err := lab.Eventually(e.ctx, failoverTimeout, what, check); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) waitConverged(up ...*lab.ClusterNode) {
	e.t.Helper()
	if err := e.c.WaitConverged(e.ctx, failoverTimeout, up...); err != nil {
		e.t.Fatal(err)
	}
}

// loVIPs lists the cluster's VIPs on the node's loopback: a VIP draining
// from there.
func loVIPs(n *lab.ClusterNode, vips []netip.Prefix) ([]netip.Addr, error) {
	nl := n.Netlink()
	lo, err := nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in %s: %w", n.NS, err)
	}
	addrs, err := nl.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list lo addresses in %s: %w", n.NS, err)
	}
	var out []netip.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, v := range vips {
			if v.Addr() == ip {
				out = append(out, ip)
			}
		}
	}
	return out, nil
}

// ipOf returns the node's `fsha ip --json` line of vip.
func ipOf(ctx context.Context, n *lab.ClusterNode, vip netip.Prefix) (admin.IP, error) {
	ips, err := n.IPs(ctx)
	if err != nil {
		return admin.IP{}, err
	}
	i := slices.IndexFunc(ips, func(ip admin.IP) bool { return ip.VIP == vip.String() })
	if i < 0 {
		return admin.IP{}, fmt.Errorf("%s does not list %s: %+v", n.Role, vip, ips)
	}
	return ips[i], nil
}

// timelineJSON is the node's timeline as JSON, for failure messages.
func timelineJSON(ctx context.Context, n *lab.ClusterNode) string {
	out, err := n.Admin(ctx, "timeline", "--json")
	if err != nil {
		return fmt.Sprintf("(fsha timeline of %s: %v)", n.Role, err)
	}
	return string(out)
}

// content is a file's content that names it and differs on every run.
func content(name string, size int) []byte {
	r := make([]byte, size/2)
	_, _ = rand.Read(r)
	head := fmt.Sprintf("%s, written %s\n", name, time.Now().Format(time.RFC3339Nano))
	b := append([]byte(head), hex.EncodeToString(r)...)
	return b[:max(size, len(head))]
}

// writeShare writes a file straight into the cluster's shared directory,
// as another client of the cluster file system would.
func (e *env) writeShare(name string, data []byte) {
	e.t.Helper()
	if err := os.WriteFile(filepath.Join(e.c.Share, name), data, 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// fshaLog is the whole output of the node's current fsha daemon.
func fshaLog(n *lab.ClusterNode) string {
	if p := n.FshaProcess(); p != nil {
		return p.Output()
	}
	return ""
}

// socketsOf lists the TCP connections (client -> vip:port keys) that the
// named process has open in the client's namespace, per `ss -tnp`.
func socketsOf(ctx context.Context, c *lab.Client, vip netip.Addr, port uint16, process string) ([]string, error) {
	out, err := c.Output(ctx, "ss", "-Htnp", "state", "established", "dst", netip.AddrPortFrom(vip, port).String())
	if err != nil {
		return nil, err
	}
	var keys []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// Recv-Q Send-Q Local Peer Process
		if len(f) < 5 || !strings.Contains(line, `"`+process+`"`) {
			continue
		}
		keys = append(keys, f[2]+"->"+f[3])
	}
	return keys, nil
}

// resetsTo lists the RSTs, among the watched frames received after since,
// sent to the client ports of keys ("client->vip"), naming the node that
// sent each (by its MAC address) and when. It ends the watch, and a capture
// that failed, lost frames or saw no traffic both ways is listed too: its
// silence proves nothing.
func (e *env) resetsTo(w *lab.Watch, since time.Time, keys ...string) []string {
	e.t.Helper()
	var out []string
	if err := w.Check(); err != nil {
		out = append(out, "the capture cannot tell: "+err.Error())
	}
	sent, received, drops := w.Counts()
	e.t.Logf("capture: %d frames sent to the VIP, %d from it, %d lost", sent, received, drops)
	ports := map[uint16]string{}
	for _, k := range keys {
		c, _, _ := strings.Cut(k, "->")
		if ap, err := netip.ParseAddrPort(c); err == nil {
			ports[ap.Port()] = k
		}
	}
	for _, f := range w.Frames() {
		k, ours := ports[f.DstPort]
		if f.ARP || !ours || f.Flags&lab.FlagRST == 0 || f.At.Before(since) {
			continue
		}
		by := f.Src.String()
		for _, n := range e.c.Nodes {
			if m, err := n.MAC(); err == nil && bytes.Equal(m, f.Src) {
				by = n.Role
			}
		}
		out = append(out, fmt.Sprintf("RST from %s on %s at +%v", by, k, f.At.Sub(since).Round(time.Microsecond)))
	}
	return out
}

// vipViews is what every live node's `fsha ip` says of vip, one line per
// node, for failure messages: nodes that disagree on the target show.
func (e *env) vipViews(vip netip.Prefix) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var b strings.Builder
	for _, n := range e.up() {
		ip, err := ipOf(ctx, n, vip)
		if err != nil {
			fmt.Fprintf(&b, "\n  %s: %v", n.Role, err)
			continue
		}
		fmt.Fprintf(&b, "\n  %s says %s: owner %q target %q state %s draining_from %q", n.Role, vip, ip.Owner, ip.Target, ip.State, ip.DrainingFrom)
	}
	return b.String()
}
