package failover

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestReplyInterfaceTracked: the VIPs live on eth1 but in the subnet of
// the nodes' own addresses (eth0, 198.18.0.0/24), so each node's kernel
// routes the clients, and its answers to them, through eth0: a reply
// interface, where fsha runs its egress program alone. A client holds a
// raw SMB and a raw NFS connection to a VIP, blocked in recv(); the
// other nodes list both as the holder's (replicated), and when the
// holder loses its power both clients get ECONNRESET from the new
// holder's tickles within resetBound. Without the egress program on eth0
// the connections are never tracked: not replicated, nobody tickles, and
// the clients wait for a TCP timeout.
func TestReplyInterfaceTracked(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, VIPIfaces: []string{"eth1"}, ExtraIfaces: []string{"eth1"}})
	vip := e.c.VIPs[0]
	holder := e.owner(vip)
	// The premise, the kernel's word: the holder answers the client
	// through eth0, not through the VIP's eth1.
	route, err := holder.Output(e.ctx, "ip", "-o", "route", "get", e.client.IP().String(), "from", vip.Addr().String())
	if err != nil || !strings.Contains(string(route), " dev "+lab.HostIface+" ") {
		t.Fatalf("%s routes %s through %q (%v), want %s", holder.Role, e.client.IP(), route, err, lab.HostIface)
	}
	for _, n := range e.c.Nodes {
		if role := ifaceRole(e.ctx, t, n, lab.HostIface); role != "reply" {
			t.Errorf("%s: fsha status --json gives %s the role %q, want reply", n.Role, lab.HostIface, role)
		}
	}

	smb, nfs := e.dialRaw(vip.Addr())
	smbDone, nfsDone := blockedRead(smb), blockedRead(nfs)
	keys := []string{smb.Key(), nfs.Key()}
	// (a) replicated: one bounded wait over the other nodes that does not
	// end the test, so that a run without the fix also shows (b)
	start := time.Now()
	err = lab.Eventually(e.ctx, replicatedBound, "the other nodes list "+strings.Join(keys, ", ")+" as "+holder.Role+"'s", func(ctx context.Context) error {
		for _, p := range e.c.Others(holder) {
			fs, _, err := flowsAll(ctx, p)
			if err != nil {
				return err
			}
			for _, k := range keys {
				f, ok := findFlow(fs, k)
				if !ok {
					return fmt.Errorf("%s does not list %s", p.Role, k)
				}
				if f.Owner != holder.IP().String() {
					return fmt.Errorf("%s lists %s as %s's", p.Role, k, f.Owner)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("connections answered through %s not replicated: %v", lab.HostIface, err)
	} else {
		t.Logf("replicated to the other nodes within %v", time.Since(start).Round(time.Millisecond))
	}

	// (b) the clients' own word: reset within resetBound of the cut
	cut := e.powerDown(holder)
	smbDelay := e.waitReset("raw SMB client blocked in recv() on "+smb.Key(), smbDone, cut)
	nfsDelay := e.waitReset("raw NFS client blocked in recv() on "+nfs.Key(), nfsDone, cut)
	t.Logf("power cut of %s (answers through %s): SMB client reset after %v, NFS client after %v", holder.Role, lab.HostIface,
		smbDelay.Round(time.Millisecond), nfsDelay.Round(time.Millisecond))
	if t.Failed() {
		return
	}
	next := e.owner(vip, e.up()...)
	rec := e.waitTickled(next, vip, holder, len(keys))
	t.Logf("%s took %s over: %s, tickled %d connections", next.Role, vip, rec.Reason, rec.Tickled)
}

// replicatedBound bounds the wait for a connection to reach the other
// nodes: replication takes milliseconds; never seen is the failure.
const replicatedBound = 5 * time.Second

// ifaceRole is the role `fsha status --json` gives the node's interface
// name ("" when it is not listed), read from the JSON itself.
func ifaceRole(ctx context.Context, t *testing.T, n *lab.ClusterNode, name string) string {
	t.Helper()
	out, err := n.Admin(ctx, "status", "--json")
	if err != nil {
		t.Fatalf("fsha status --json on %s: %v: %s", n.Role, err, out)
	}
	var st struct {
		Interfaces []struct{ Name, Role string }
	}
	if err := json.Unmarshal(out, &st); err != nil {
		t.Fatalf("fsha status --json on %s: %v: %s", n.Role, err, out)
	}
	i := slices.IndexFunc(st.Interfaces, func(i struct{ Name, Role string }) bool { return i.Name == name })
	if i < 0 {
		return ""
	}
	return st.Interfaces[i].Role
}
