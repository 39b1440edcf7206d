package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
)

// nodeFlag is the global -n, as in `ctdb -n 2 ip`: the admin commands run
// on another node, or on every node, through this node's daemon, which
// forwards them over the cluster's authenticated channel.
func nodeFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "node", Aliases: []string{"n"}, EnvVars: []string{"FSHA_NODE"},
		Usage: "run the command on node `PNN` (a number as fsha status shows it; several: 1,2) or on every node (all), " +
			"through this node's daemon (ctdb -n); default: this node",
	}
}

// target is where -n sends a command: here (no -n), one node, or several
// with one section of output each.
type target struct {
	pnns []int // nil: this node
	all  bool
}

// parseTarget parses -n: "" (this node), "all", or PNNs separated by
// commas.
func parseTarget(s string) (target, error) {
	s = strings.TrimSpace(s)
	switch s {
	case "":
		return target{}, nil
	case "all":
		return target{all: true}, nil
	}
	var t target
	for _, f := range strings.Split(s, ",") {
		pnn, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || pnn < 0 {
			return target{}, fmt.Errorf("-n %q: want a node's number (PNN) as fsha status shows it, several separated by commas, or all", s)
		}
		if !slices.Contains(t.pnns, pnn) {
			t.pnns = append(t.pnns, pnn)
		}
	}
	return t, nil
}

// sections says whether the output is one section per node.
func (t target) sections() bool { return t.all || len(t.pnns) > 1 }

// nodeRun is a command's work against one node's admin API: cl talks to
// that node, here says whether it is this node (what the command reads
// outside the API, such as the pinned maps, is this node's only), and
// the output goes to w.
type nodeRun func(cl *admin.Client, here bool, w io.Writer) error

// nodeResult is one node's section.
type nodeResult struct {
	PNN     int
	Address string
	Out     []byte
	Err     error
}

// onNodes runs run where -n says. On one node its output is the
// command's, unchanged; on several, each node's is a section of its own
// (printSections), and the command fails if any node failed.
func onNodes(c *cli.Context, e env, run nodeRun) error { return onNodesOrdered(c, e, run, false) }

// onNodesThisLast is onNodes for a command that restarts the daemon it
// reaches (fsha reload): on several nodes, this node's runs once every
// other node has answered, since the others' requests go through this
// node's daemon, which would be restarting under them.
func onNodesThisLast(c *cli.Context, e env, run nodeRun) error {
	return onNodesOrdered(c, e, run, true)
}

func onNodesOrdered(c *cli.Context, e env, run nodeRun, thisLast bool) error {
	t, err := parseTarget(c.String("node"))
	if err != nil {
		return err
	}
	cl := adminClient(c)
	if !t.sections() {
		if len(t.pnns) == 1 {
			// -n with this node's own number is this node
			st, err := cl.Status(c.Context)
			return run(cl.On(t.pnns[0]), err == nil && st.ThisPNN == t.pnns[0], e.stdout)
		}
		return run(cl, true, e.stdout)
	}
	// The nodes and their addresses, as this node's daemon knows them
	// from the nodes file.
	st, err := cl.Status(c.Context)
	if err != nil {
		return fmt.Errorf("list the nodes: %w", err)
	}
	nodes, err := pickNodes(st, t)
	if err != nil {
		return err
	}
	each := func(_ context.Context, n nodeResult, w io.Writer) error {
		return run(cl.On(n.PNN), n.PNN == st.ThisPNN, w)
	}
	if !thisLast {
		return printSections(e.stdout, runOnNodes(c.Context, nodes, each), c.Bool("json"))
	}
	isThis := func(n nodeResult) bool { return n.PNN == st.ThisPNN }
	results := runOnNodes(c.Context, slices.DeleteFunc(slices.Clone(nodes), isThis), each)
	if i := slices.IndexFunc(nodes, isThis); i >= 0 {
		results = append(results, runOnNodes(c.Context, nodes[i:i+1], each)...)
		slices.SortFunc(results, func(a, b nodeResult) int { return a.PNN - b.PNN })
	}
	return printSections(e.stdout, results, c.Bool("json"))
}

// pickNodes returns the nodes t names, in PNN order, with their
// addresses from st; a PNN that is no node is an error.
func pickNodes(st admin.Status, t target) ([]nodeResult, error) {
	byPNN := map[int]string{}
	for _, n := range st.Nodes {
		byPNN[n.PNN] = n.Address
	}
	var out []nodeResult
	if t.all {
		for pnn, addr := range byPNN {
			out = append(out, nodeResult{PNN: pnn, Address: addr})
		}
	}
	for _, pnn := range t.pnns {
		addr, ok := byPNN[pnn]
		if !ok {
			return nil, fmt.Errorf("-n: node %d: %w in the nodes file (fsha status lists them)", pnn, admin.ErrUnknownNode)
		}
		out = append(out, nodeResult{PNN: pnn, Address: addr})
	}
	slices.SortFunc(out, func(a, b nodeResult) int { return a.PNN - b.PNN })
	return out, nil
}

// runOnNodes runs run on every node at once (a node that does not answer
// costs the forward's timeout, not one per node) and returns the results
// in the nodes' order.
func runOnNodes(ctx context.Context, nodes []nodeResult, run func(context.Context, nodeResult, io.Writer) error) []nodeResult {
	out := slices.Clone(nodes)
	var wg sync.WaitGroup
	for i := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var buf bytes.Buffer
			out[i].Err = run(ctx, out[i], &buf)
			out[i].Out = buf.Bytes()
		}()
	}
	wg.Wait()
	return out
}

// printSections prints one section per node: for people a header naming
// the node as `ctdb -n all` does ("PNN:2 198.18.0.3") and the command's
// output or the node's error; with asJSON one object keyed by PNN, each
// value the command's JSON or {"error": ...}. It returns an error naming
// the nodes that failed, after printing everything.
func printSections(w io.Writer, results []nodeResult, asJSON bool) error {
	var failed []string
	for _, r := range results {
		if r.Err != nil {
			failed = append(failed, strconv.Itoa(r.PNN))
		}
	}
	if asJSON {
		obj := map[string]json.RawMessage{}
		for _, r := range results {
			v := json.RawMessage(bytes.TrimSpace(r.Out))
			if r.Err != nil || !json.Valid(v) {
				msg := "no JSON answer"
				if r.Err != nil {
					msg = r.Err.Error()
				}
				v, _ = json.Marshal(struct {
					Error string `json:"error"`
				}{msg})
			}
			obj[strconv.Itoa(r.PNN)] = v
		}
		if err := writeJSON(w, obj); err != nil {
			return err
		}
	} else {
		var b strings.Builder
		for i, r := range results {
			if i > 0 {
				b.WriteByte('\n')
			}
			fmt.Fprintf(&b, "PNN:%d %s\n", r.PNN, r.Address)
			b.Write(r.Out)
			if len(r.Out) > 0 && r.Out[len(r.Out)-1] != '\n' {
				b.WriteByte('\n')
			}
			if r.Err != nil {
				fmt.Fprintf(&b, "error: %v\n", r.Err)
			}
		}
		if _, err := io.WriteString(w, b.String()); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d nodes failed (PNN %s)", len(failed), len(results), strings.Join(failed, ", "))
	}
	return nil
}

// remoteCommands are the commands that honour -n: the admin commands.
// The others read or change this machine itself (its maps, its data
// plane) and refuse -n rather than silently run here.
func checkNodeFlag(c *cli.Context, remoteCommands []*cli.Command) error {
	if !c.IsSet("node") {
		return nil
	}
	name := c.Args().First()
	if name == "" || name == "help" || name == "h" {
		return nil
	}
	for _, cmd := range remoteCommands {
		if cmd.HasName(name) {
			return nil
		}
	}
	return errors.New("-n: fsha " + name + " works on this machine only: run it on the node itself (the admin commands status, ip, ipinfo, timeline, checks, move, disable, enable, stop, continue, ban, unban and tickle take -n)")
}
