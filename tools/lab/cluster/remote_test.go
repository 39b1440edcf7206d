package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestRemoteCommands runs admin commands for other nodes from n1, as an
// operator of a CTDB cluster runs `ctdb -n all status` from any node:
// `fsha -n all status --json` answers with every node's own status and
// `fsha -n 1 ip --json` with n2's own VIP table (each checked against what
// the node's own socket says), and `fsha -n 2 disable` then `enable` on n1
// put n3 (PNN 2) into maintenance and back, as n3's own status shows. The
// requests travel n1's daemon -> gossip channel -> the target's daemon.
func TestRemoteCommands(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)
	e.waitConverged()

	// -n all: one answer per PNN, each the node's own view
	e.eventually("fsha -n all status --json on n1 agrees with each node's own status", func(ctx context.Context) error {
		out, err := n1.Admin(ctx, "-n", "all", "status", "--json")
		if err != nil {
			return err
		}
		var all map[string]admin.Status
		if err := json.Unmarshal(out, &all); err != nil {
			return fmt.Errorf("%w in %s", err, out)
		}
		if len(all) != len(e.c.Nodes) {
			return fmt.Errorf("%d sections, want %d: %s", len(all), len(e.c.Nodes), out)
		}
		for _, n := range e.c.Nodes {
			got, ok := all[strconv.Itoa(n.PNN)]
			if !ok {
				return fmt.Errorf("no section for %s (PNN %d): %s", n.Role, n.PNN, out)
			}
			own, err := n.Status(ctx)
			if err != nil {
				return err
			}
			if g, w := statusView(got), statusView(own); g != w {
				return fmt.Errorf("%s via n1:\n%s\n%s itself:\n%s", n.Role, g, n.Role, w)
			}
		}
		return nil
	})

	// -n PNN: one node's answer, as the node gives it
	e.eventually("fsha -n 1 ip --json on n1 is n2's own VIP table", func(ctx context.Context) error {
		out, err := n1.Admin(ctx, "-n", strconv.Itoa(n2.PNN), "ip", "--json")
		if err != nil {
			return err
		}
		var got []admin.IP
		if err := json.Unmarshal(out, &got); err != nil {
			return fmt.Errorf("%w in %s", err, out)
		}
		own, err := n2.IPs(ctx)
		if err != nil {
			return err
		}
		if g, w := ipView(got), ipView(own); g != w {
			return fmt.Errorf("n2 via n1:\n%s\nn2 itself:\n%s", g, w)
		}
		return nil
	})

	// an unknown node is an error, not an empty answer
	if out, err := n1.Admin(e.ctx, "-n", "7", "status"); err == nil || !strings.Contains(err.Error(), "no such node") {
		t.Errorf("fsha -n 7 status: %v (%s), want no such node", err, out)
	}

	// a change on another node: its own status shows it
	if _, err := n1.Admin(e.ctx, "-n", strconv.Itoa(n3.PNN), "disable"); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{n3}
	e.eventually("n3 disabled by its own account and holding nothing", func(ctx context.Context) error {
		st, err := n3.Status(ctx)
		if err != nil {
			return err
		}
		if s := nodeState(st, n3); s != admin.StateDisabled {
			return fmt.Errorf("n3 says it is %s, want %s", s, admin.StateDisabled)
		}
		if h := e.held(n3); len(h) > 0 {
			return fmt.Errorf("disabled n3 has %v", h)
		}
		if st1, err := n1.Status(ctx); err != nil || nodeState(st1, n1) == admin.StateDisabled {
			return errors.Join(err, errors.New("n1 disabled itself"))
		}
		return e.c.Converged(ctx, n1, n2)
	})
	if _, err := n1.Admin(e.ctx, "-n", strconv.Itoa(n3.PNN), "enable"); err != nil {
		t.Fatal(err)
	}
	e.out = nil
	e.eventually("n3 enabled by its own account", func(ctx context.Context) error {
		st, err := n3.Status(ctx)
		if err != nil {
			return err
		}
		if s := nodeState(st, n3); s != admin.StateOK {
			return fmt.Errorf("n3 says it is %s, want %s", s, admin.StateOK)
		}
		return nil
	})
	e.waitConverged()
}

// statusView is what a node's status says that two reads a moment apart
// agree on: who it is, quorum, and every node's state as it sees them
// (not counters, which move).
func statusView(st admin.Status) string {
	var b strings.Builder
	fmt.Fprintf(&b, "this=%d quorum=%v policy=%s\n", st.ThisPNN, st.Quorum, st.Policy)
	nodes := slices.Clone(st.Nodes)
	slices.SortFunc(nodes, func(a, b admin.NodeStatus) int { return a.PNN - b.PNN })
	for _, n := range nodes {
		fmt.Fprintf(&b, "pnn:%d %s %s this=%v\n", n.PNN, n.Address, n.State, n.This)
	}
	return b.String()
}

// ipView is a node's VIP table without what moves between two reads (the
// lease left).
func ipView(ips []admin.IP) string {
	var lines []string
	for _, ip := range ips {
		lines = append(lines, fmt.Sprintf("%s owner=%s pnn=%d target=%s state=%s epoch=%d", ip.VIP, ip.Owner, ip.PNN, ip.Target, ip.State, ip.Epoch))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}
