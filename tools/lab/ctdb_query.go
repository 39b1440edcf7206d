package lab

// Asking a lab node's ctdbd what it sees (the ctdb tool in the node's
// namespace), and waiting until the cluster's ctdbd agree.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// CTDB runs the ctdb tool against the node's ctdbd, in its namespace, and
// returns its stdout, e.g. CTDB(ctx, "status").
func (n *ClusterNode) CTDB(ctx context.Context, args ...string) ([]byte, error) {
	if n.CTDBBase == "" {
		return nil, fmt.Errorf("ctdb on %s: the cluster runs without CTDB", n.Role)
	}
	argv := append(append(n.ctdbEnv(), "ctdb"), args...)
	return n.Output(ctx, "env", argv...)
}

// CTDBStatus is what the node's ctdbd says of every node (`ctdb -X
// status`) and of the recovery mode (`ctdb status`).
func (n *ClusterNode) CTDBStatus(ctx context.Context) (CTDBStatus, error) {
	out, err := n.CTDB(ctx, "-X", "status")
	if err != nil {
		return CTDBStatus{}, err
	}
	nodes, err := parseCTDBNodes(string(out))
	if err != nil {
		return CTDBStatus{}, fmt.Errorf("ctdb status of %s: %w", n.Role, err)
	}
	if out, err = n.CTDB(ctx, "status"); err != nil {
		return CTDBStatus{}, err
	}
	rec, err := parseCTDBRecovery(string(out))
	if err != nil {
		return CTDBStatus{}, fmt.Errorf("ctdb status of %s: %w", n.Role, err)
	}
	return CTDBStatus{Nodes: nodes, Recovery: rec}, nil
}

// CTDBNodes is what the node's ctdbd says of every node, by the cheapest
// ask (`ctdb -X nodestatus all`: the node map only; its exit status is
// the flags of all nodes OR-ed, not a failure).
func (n *ClusterNode) CTDBNodes(ctx context.Context) ([]CTDBNode, error) {
	out, err := n.CTDB(ctx, "-X", "nodestatus", "all")
	var exit *exec.ExitError
	if err != nil && (!errors.As(err, &exit) || ctx.Err() != nil) {
		return nil, err
	}
	nodes, perr := parseCTDBNodes(string(out))
	if perr != nil {
		return nil, errors.Join(fmt.Errorf("ctdb nodestatus of %s: %w", n.Role, perr), err)
	}
	return nodes, nil
}

// CTDBLeader is the PNN of the CTDB leader (the recovery master) as the
// node's ctdbd knows it: `ctdb leader`, or `ctdb recmaster` before 4.17.
func (n *ClusterNode) CTDBLeader(ctx context.Context) (int, error) {
	out, err := n.CTDB(ctx, "leader")
	if err != nil && strings.Contains(err.Error(), "Unknown command") {
		out, err = n.CTDB(ctx, "recmaster")
	}
	if err != nil {
		return 0, err
	}
	pnn, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		return 0, fmt.Errorf("ctdb leader of %s: %q: %w", n.Role, out, err)
	}
	if pnn < 0 || pnn >= len(n.cluster.Nodes) {
		return 0, fmt.Errorf("ctdb leader of %s: no leader (%d)", n.Role, pnn)
	}
	return pnn, nil
}

// CTDBLeader returns the node that every running ctdbd names leader, or
// an error when they do not agree (an election is on).
func (c *Cluster) CTDBLeader(ctx context.Context) (*ClusterNode, error) {
	leader := -1
	for _, n := range c.CTDBRunning() {
		pnn, err := n.CTDBLeader(ctx)
		if err != nil {
			return nil, err
		}
		if leader >= 0 && pnn != leader {
			return nil, fmt.Errorf("ctdb leader: %s says pnn %d, another node pnn %d", n.Role, pnn, leader)
		}
		leader = pnn
	}
	if leader < 0 {
		return nil, errors.New("ctdb leader: no ctdbd runs")
	}
	return c.Nodes[leader], nil
}

// CTDBRunning returns the nodes whose ctdbd runs.
func (c *Cluster) CTDBRunning() []*ClusterNode {
	var running []*ClusterNode
	for _, n := range c.Nodes {
		if n.CTDBRuns() {
			running = append(running, n)
		}
	}
	return running
}

// CTDBHealthy checks, once, that each of nodes (every node whose ctdbd
// runs when none) sees itself and every node whose ctdbd runs OK, and its
// databases out of recovery.
func (c *Cluster) CTDBHealthy(ctx context.Context, nodes ...*ClusterNode) error {
	running := c.CTDBRunning()
	if len(nodes) == 0 {
		nodes = running
	}
	for _, n := range nodes {
		st, err := n.CTDBStatus(ctx)
		if err != nil {
			return err
		}
		if st.Recovery != "NORMAL" {
			return fmt.Errorf("ctdbd of %s: recovery mode %s: %s", n.Role, st.Recovery, st)
		}
		for _, m := range append([]*ClusterNode{n}, running...) {
			if s, ok := st.Node(m.PNN); !ok || !s.OK() {
				return fmt.Errorf("ctdbd of %s does not see %s OK: %s", n.Role, m.Role, st)
			}
		}
	}
	return nil
}

// WaitCTDB waits, at most timeout, until CTDBHealthy holds for nodes
// (every node whose ctdbd runs when none).
func (c *Cluster) WaitCTDB(ctx context.Context, timeout time.Duration, nodes ...*ClusterNode) error {
	who := "every running ctdbd"
	if len(nodes) > 0 {
		who = "ctdbd of " + roles(nodes)
	}
	return Eventually(ctx, timeout, who+" healthy", func(ctx context.Context) error {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		err := c.CTDBHealthy(qctx, nodes...)
		if err != nil {
			// each check runs the ctdb tool twice per node: poll
			// slower than Eventually's 50 ms on two CPUs
			select {
			case <-ctx.Done():
			case <-time.After(200 * time.Millisecond):
			}
		}
		return err
	})
}

// CTDBLogged finds, in a ctdbd log from offset on, the time of the first
// line at or after after that contains needle.
func CTDBLogged(log string, offset int64, needle string, after time.Time) (time.Time, bool) {
	f, err := os.Open(log)
	if err != nil {
		return time.Time{}, false
	}
	defer f.Close()
	if _, err := f.Seek(offset, 0); err != nil {
		return time.Time{}, false
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if !strings.Contains(line, needle) {
			continue
		}
		// 2026-12-06T03:40:27.742101+00:00 host ctdbd[123]: ...
		ts, _, _ := strings.Cut(line, " ")
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil && !at.Before(after) {
			return at, true
		}
	}
	return time.Time{}, false
}
