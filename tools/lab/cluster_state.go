package lab

// What a lab cluster's daemons say (their admin API, their logs) and what
// its kernels show (addresses on eth0): the views tests judge by.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/fsha/fsha/control/admin"
)

// Admin runs an fsha admin command against the node's daemon, e.g.
// Admin(ctx, "disable") or Admin(ctx, "status", "--json"), and returns its
// stdout.
func (n *ClusterNode) Admin(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := n.lab.fshaBin()
	if err != nil {
		return nil, err
	}
	return n.Output(ctx, bin, append(args, "--run-dir", n.RunDir)...)
}

// api is a client of the node's admin socket. The lab's polls (a daemon
// starting, a cluster converging) ask the daemon through it rather than
// through the CLI: a process launched per node per poll costs a 16-node
// lab hundreds of Go start-ups a second on two CPUs, which starved the
// daemons it was waiting for. Tests of the CLI itself call Admin.
func (n *ClusterNode) api() *admin.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client == nil {
		n.client = admin.NewClient(admin.SocketPath(n.RunDir))
	}
	return n.client
}

// apiErr drops the client's kept connection after an error (the daemon
// may have restarted) and names the node.
func (n *ClusterNode) apiErr(what string, err error) error {
	if err == nil {
		return nil
	}
	n.api().CloseIdleConnections()
	return fmt.Errorf("fsha %s of %s: %w", what, n.Role, err)
}

// Status is the node's `fsha status`, from its admin socket.
func (n *ClusterNode) Status(ctx context.Context) (admin.Status, error) {
	st, err := n.api().Status(ctx)
	return st, n.apiErr("status", err)
}

// IPs is the node's `fsha ip`, from its admin socket.
func (n *ClusterNode) IPs(ctx context.Context) ([]admin.IP, error) {
	ips, err := n.api().IPs(ctx)
	return ips, n.apiErr("ip", err)
}

// Timeline is the node's `fsha timeline`, from its admin socket.
func (n *ClusterNode) Timeline(ctx context.Context) ([]admin.Takeover, error) {
	tl, err := n.api().Timeline(ctx)
	return tl, n.apiErr("timeline", err)
}

// HeldVIPs lists the cluster's VIPs that are on the node's public
// interfaces (eth0, or ClusterOptions.VIPIfaces, and eth1 with
// SecondNet) now, as `ip addr` in its namespace shows them.
func (n *ClusterNode) HeldVIPs() ([]netip.Prefix, error) {
	on, err := n.HeldOn()
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, iface := range n.cluster.allVIPIfaces() {
		for _, a := range on[iface] {
			if !slices.Contains(out, a) {
				out = append(out, a)
			}
		}
	}
	return out, nil
}

// Holds tells whether vip is on the node's eth0 now.
func (n *ClusterNode) Holds(vip netip.Prefix) (bool, error) {
	held, err := n.HeldVIPs()
	return slices.Contains(held, vip), err
}

// Holders returns the nodes among among (all when empty) that have vip on
// their eth0 now.
func (c *Cluster) Holders(vip netip.Prefix, among ...*ClusterNode) ([]*ClusterNode, error) {
	if len(among) == 0 {
		among = c.Nodes
	}
	var out []*ClusterNode
	for _, n := range among {
		ok, err := n.Holds(vip)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, n)
		}
	}
	return out, nil
}

// Owner returns the one node among among (all when empty) that has vip on
// its eth0, or an error when none or several do.
func (c *Cluster) Owner(vip netip.Prefix, among ...*ClusterNode) (*ClusterNode, error) {
	hs, err := c.Holders(vip, among...)
	if err != nil {
		return nil, err
	}
	if len(hs) != 1 {
		return nil, fmt.Errorf("%s is on %d nodes (%s), want exactly one", vip, len(hs), roles(hs))
	}
	return hs[0], nil
}

func roles(ns []*ClusterNode) string {
	var r []string
	for _, n := range ns {
		r = append(r, n.Role)
	}
	if len(r) == 0 {
		return "none"
	}
	return strings.Join(r, " ")
}

// Converged checks, once, that the cluster of the nodes up is settled:
// each sees quorum and all of up as OK; each VIP is on the eth0 of exactly
// one node of up; and every node of up reports, in `fsha ip`, that owner
// with state "held" (no move pending).
func (c *Cluster) Converged(ctx context.Context, up ...*ClusterNode) error {
	return c.converged(ctx, false, up...)
}

// Placed is Converged, except that a VIP its owner holds while another
// node still drains old connections of it (a planned move or a failback
// whose connections live on) counts as settled.
func (c *Cluster) Placed(ctx context.Context, up ...*ClusterNode) error {
	return c.converged(ctx, true, up...)
}

func (c *Cluster) converged(ctx context.Context, draining bool, up ...*ClusterNode) error {
	owners := make([]*ClusterNode, len(c.VIPs))
	for i, v := range c.VIPs {
		o, err := c.Owner(v, up...)
		if err != nil {
			return err
		}
		owners[i] = o
	}
	for _, n := range up {
		st, err := n.Status(ctx)
		if err != nil {
			return err
		}
		if !st.Quorum {
			return fmt.Errorf("%s has no quorum", n.Role)
		}
		for _, m := range up {
			if i := slices.IndexFunc(st.Nodes, func(s admin.NodeStatus) bool { return s.PNN == m.PNN }); i < 0 || st.Nodes[i].State != admin.StateOK {
				return fmt.Errorf("%s does not see %s OK: %+v", n.Role, m.Role, st.Nodes)
			}
		}
		ips, err := n.IPs(ctx)
		if err != nil {
			return err
		}
		for i, v := range c.VIPs {
			j := slices.IndexFunc(ips, func(ip admin.IP) bool { return ip.VIP == v.String() })
			if j < 0 {
				return fmt.Errorf("%s does not list %s: %+v", n.Role, v, ips)
			}
			if ip := ips[j]; ip.Owner != owners[i].IP().String() || (ip.State != "held" && !(draining && ip.State == "draining")) {
				return fmt.Errorf("%s says %s is %s by %q (target %q); it is on %s", n.Role, v, ip.State, ip.Owner, ip.Target, owners[i].Role)
			}
		}
	}
	return nil
}

// WaitConverged waits, at most timeout, until Converged holds for the
// nodes up.
func (c *Cluster) WaitConverged(ctx context.Context, timeout time.Duration, up ...*ClusterNode) error {
	return Eventually(ctx, timeout, "cluster of "+roles(up)+" converged", func(ctx context.Context) error {
		return c.Converged(ctx, up...)
	})
}

// Assignment maps each VIP to the role of the node holding it (by the
// addresses on the nodes' eth0), "-" for none and "a+b" for several.
func (c *Cluster) Assignment() (map[netip.Prefix]string, error) {
	out := map[netip.Prefix]string{}
	for _, v := range c.VIPs {
		hs, err := c.Holders(v)
		if err != nil {
			return nil, err
		}
		r := "-"
		if len(hs) > 0 {
			r = strings.ReplaceAll(roles(hs), " ", "+")
		}
		out[v] = r
	}
	return out, nil
}

// Partition splits the lab's switch; see Lab.Partition.
func (c *Cluster) Partition(ctx context.Context, groups ...[]*Host) error {
	return c.Lab.Partition(ctx, groups...)
}

// Heal ends a Partition; see Lab.Heal.
func (c *Cluster) Heal(ctx context.Context) error { return c.Lab.Heal(ctx) }

// Eventually calls check every 50 ms until it returns nil, for at most
// timeout (and never past ctx). The error names what was awaited and
// carries check's last error (the last one not caused by the deadline).
func Eventually(ctx context.Context, timeout time.Duration, what string, check func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var last error
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() == nil || last == nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not within %v: %w", what, time.Since(start).Round(time.Millisecond), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// LogLine is one JSON line of a daemon's log.
type LogLine struct {
	At     time.Time
	Msg    string
	Fields map[string]any
}

// FshaLog returns the lines of the node's `fsha up` logs (every start
// so far, in order) whose message is msg, or every line when msg is "".
func (n *ClusterNode) FshaLog(msg string) ([]LogLine, error) {
	var out []LogLine
	for _, p := range n.lab.Processes() {
		if p.Host() != n.Host || !strings.HasPrefix(p.Name, "fsha-up") {
			continue
		}
		data, err := os.ReadFile(p.StderrPath)
		if err != nil {
			return nil, fmt.Errorf("read fsha log of %s: %w", n.Role, err)
		}
		for _, line := range strings.Split(string(data), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(line), &m) != nil {
				continue
			}
			l := LogLine{Fields: m}
			l.Msg, _ = m["msg"].(string)
			if msg != "" && l.Msg != msg {
				continue
			}
			if ts, ok := m["ts"].(string); ok {
				l.At, _ = parseLogTime(ts)
			}
			out = append(out, l)
		}
	}
	return out, nil
}

// SetPublicAddresses rewrites the cluster's public_addresses with vips
// (on HostIface), each restricted to the nodes only lists for it (none:
// any node), and makes them the cluster's VIPs; the nodes read it at
// their next start or reload.
func (c *Cluster) SetPublicAddresses(vips []netip.Prefix, only map[netip.Prefix][]*ClusterNode) error {
	var pa strings.Builder
	for _, v := range vips {
		fmt.Fprintf(&pa, "%s %s", v, HostIface)
		var refs []string
		for _, n := range only[v] {
			refs = append(refs, n.IP().String())
		}
		if len(refs) > 0 {
			fmt.Fprintf(&pa, " %s", strings.Join(refs, ","))
		}
		pa.WriteString("\n")
	}
	if err := os.WriteFile(c.PublicAddressesFile, []byte(pa.String()), 0o644); err != nil {
		return fmt.Errorf("write public_addresses: %w", err)
	}
	c.VIPs = slices.Clone(vips)
	return nil
}
