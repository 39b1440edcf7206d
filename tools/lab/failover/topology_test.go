package failover

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// The networks users' file servers sit on besides a plain bridge of veth
// pairs (every other test's): macvlan in bridge mode, as container and VM
// networks use it, and a VXLAN overlay between the nodes, as Kubernetes
// overlays build it. Neither has native XDP, so fsha attaches its XDP
// program in generic mode there and steers on the tc path: these tests
// are also the end-to-end run of generic XDP. On each, a planned move
// drops nothing (TestPlannedMoves's checks: real smbclient and nfs-cat
// transfers and raw SMB and NFS sessions keep their one connection, no
// RST on a capture that saw frames both ways and lost none) and a power
// cut resets the blocked clients within resetBound.

// TestTopologyMacvlan: the cluster on macvlan (bridge mode).
func TestTopologyMacvlan(t *testing.T) { runTopology(t, lab.Macvlan) }

// TestTopologyVXLAN: the cluster on a VXLAN overlay.
func TestTopologyVXLAN(t *testing.T) { runTopology(t, lab.VXLAN) }

// TestGenericXDPForced: the bridge lab with --xdp-mode generic, as an
// operator forces it around a driver whose native XDP misbehaves.
func TestGenericXDPForced(t *testing.T) {
	e := newEnvWith(t, lab.Options{Topology: lab.Bridge}, lab.ClusterOptions{Nodes: 3,
		FshaArgs: []string{"--drain-timeout", drainTimeout, "--xdp-mode", "generic"}})
	e.wantXDP = dataplane.XDPGeneric
	e.checkGenericXDP("veth")
	e.move(e.c.VIPs[0])
	e.waitConverged(e.c.Nodes...)
	e.powerCutResets(e.c.VIPs[1], "veth with generic XDP forced")
}

func runTopology(t *testing.T, topo lab.Topology) {
	e := newEnvWith(t, lab.Options{Topology: topo}, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	e.checkGenericXDP(map[lab.Topology]string{lab.Macvlan: "macvlan", lab.VXLAN: "vxlan"}[topo])
	vip := e.c.VIPs[0]
	e.move(vip)
	e.waitConverged(e.c.Nodes...)
	e.powerCutResets(e.c.VIPs[1], string(topo))
}

// checkGenericXDP: the kernel runs fsha's XDP program on every node's eth0
// (a device of kind) in generic mode (ip -d link says xdpgeneric), and
// fsha says it chose the tc path for it.
func (e *env) checkGenericXDP(kind string) {
	e.t.Helper()
	for _, n := range e.c.Nodes {
		out, err := n.Run(e.ctx, "ip", "-d", "link", "show", "dev", lab.HostIface)
		if err != nil {
			e.t.Fatalf("ip -d link show in %s: %v\n%s", n.Role, err, out)
		}
		if !strings.Contains(string(out), "xdpgeneric") || !strings.Contains(string(out), kind) {
			e.t.Errorf("%s's %s: want a %s device with a generic XDP program:\n%s", n.Role, lab.HostIface, kind, out)
		}
		if log := fshaLog(n); !strings.Contains(log, `"xdp_mode":"generic","steer":"tc"`) {
			e.t.Errorf("%s: fsha's log does not say it steers on the tc path in generic mode", n.Role)
		}
		// and fsha status says what the kernel says
		st, err := n.Status(e.ctx)
		if err != nil {
			e.t.Fatal(err)
		}
		want := admin.InterfaceStatus{Name: lab.HostIface, Link: true, Present: true, Driver: kind, XDPMode: "generic", Steer: "tc"}
		if len(st.Interfaces) != 1 || st.Interfaces[0].Name != want.Name || st.Interfaces[0].Driver != want.Driver ||
			st.Interfaces[0].XDPMode != want.XDPMode || st.Interfaces[0].Steer != want.Steer || !st.Interfaces[0].Link || !st.Interfaces[0].Present {
			e.t.Errorf("%s: fsha status says its interfaces are %+v, want %+v", n.Role, st.Interfaces, want)
		}
	}
}

// powerCutResets cuts the power of vip's holder while a raw SMB and a raw
// NFS client wait on it in recv(): both must get ECONNRESET within
// resetBound, and a new connection through the VIP is answered by the
// new holder.
func (e *env) powerCutResets(vip netip.Prefix, where string) {
	t := e.t
	t.Helper()
	old := e.owner(vip)
	smb, nfs := e.dialRaw(vip.Addr())
	smbDone, nfsDone := blockedRead(smb), blockedRead(nfs)
	for _, p := range e.c.Others(old) {
		e.waitFlows(p, old, false, smb.Key(), nfs.Key())
	}
	misaddressed := map[*lab.ClusterNode]int64{}
	for _, n := range e.c.Others(old) {
		misaddressed[n] = inAddrErrors(e.ctx, t, n, vip.Addr())
	}
	cut := e.powerDown(old)
	smbDelay := e.waitReset("raw SMB client blocked in recv() on "+smb.Key(), smbDone, cut)
	nfsDelay := e.waitReset("raw NFS client blocked in recv() on "+nfs.Key(), nfsDone, cut)
	t.Logf("power cut of %s on %s: SMB client reset after %v, NFS client after %v", old.Role, where,
		smbDelay.Round(time.Millisecond), nfsDelay.Round(time.Millisecond))

	e.waitConverged(e.up()...)
	next := e.owner(vip, e.up()...)
	rec := e.waitTickled(next, vip, old, 2)
	t.Logf("%s took %s over: %s, tickled %d connections", next.Role, vip, rec.Reason, rec.Tickled)
	// The kernel's own count: the clients' answers to the tickles reached
	// a VIP the new holder's stack took as its own (an IPv6 address is
	// usable only once the kernel's addrconf work has run, after the
	// address was added).
	if got := inAddrErrors(e.ctx, t, next, vip.Addr()) - misaddressed[next]; got != 0 {
		t.Errorf("%s dropped %d packets as addressed to another host during the takeover of %s (%s)", next.Role, got, vip, addrErrorsCounter(vip.Addr()))
	}
	for _, s := range rec.Steps {
		t.Logf("  +%-8v %s", s.Took.Round(time.Microsecond), s.Step)
	}
	e.eventually("a new SMB connection through "+vip.String()+" answered by "+next.Role, func(ctx context.Context) error {
		who, err := e.client.WhoAnswers(ctx, vip.Addr())
		if err != nil {
			return err
		}
		if who != next.Role {
			return fmt.Errorf("%s answers, want %s", who, next.Role)
		}
		return nil
	})
	again, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatalf("raw NFS client reconnecting: %v", err)
	}
	if err := again.ping(); err != nil {
		t.Errorf("raw NFS client, reconnected: RPC NULL: %v", err)
	}
	again.conn.Close()
}

// inAddrErrors is the node kernel's count of received packets dropped
// because their destination was none of its addresses, for addr's family.
func inAddrErrors(ctx context.Context, t *testing.T, n *lab.ClusterNode, addr netip.Addr) int64 {
	t.Helper()
	name := addrErrorsCounter(addr)
	// -a absolute values, -s history untouched, -z zeros printed too
	out, err := n.Output(ctx, "nstat", "-asz", name)
	if err != nil {
		t.Fatalf("nstat in %s: %v: %s", n.Role, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == name {
			v, err := strconv.ParseInt(f[1], 10, 64)
			if err != nil {
				t.Fatalf("nstat in %s: %q: %v", n.Role, line, err)
			}
			return v
		}
	}
	t.Fatalf("nstat in %s has no %s:\n%s", n.Role, name, out)
	return 0
}

func addrErrorsCounter(addr netip.Addr) string {
	if addr.Is4() {
		return "IpInAddrErrors"
	}
	return "Ip6InAddrErrors"
}
