package main

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
)

// adminCommands are the commands that talk to the running daemon through
// its admin socket: nouns read, verbs change.
func adminCommands(e env) []*cli.Command {
	return []*cli.Command{
		statusCommand(e),
		ipCommand(e),
		timelineCommand(e),
		moveCommand(e),
		disableCommand(e),
		enableCommand(e),
		banCommand(e),
		unbanCommand(e),
		reloadCommand(e),
		stopCommand(e),
		continueCommand(e),
		tickleCommand(e),
		checksCommand(e),
		ipinfoCommand(e),
	}
}

func runDirFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "run-dir", Value: admin.DefaultRunDir, EnvVars: []string{"FSHA_RUN_DIR"},
		Usage: "directory of the daemon's admin socket (fsha.sock)",
	}
}

func adminClient(c *cli.Context) *admin.Client {
	return admin.NewClient(admin.SocketPath(c.String("run-dir")))
}

// wantArgs returns the positional arguments after checking their count.
// urfave/cli stops parsing flags at the first argument; flags given after
// the arguments (`fsha move VIP NODE --kill`) are applied here.
func wantArgs(c *cli.Context, names ...string) ([]string, error) {
	args, err := trailingFlags(c)
	if err != nil {
		return nil, err
	}
	if len(names) == 0 && len(args) > 0 {
		return nil, fmt.Errorf("%s takes no arguments, got %q", c.Command.Name, args)
	}
	if len(args) != len(names) {
		return nil, fmt.Errorf("%s: want %d argument(s) %s, got %d (usage: fsha %s %s)",
			c.Command.Name, len(names), strings.Join(names, " "), len(args), c.Command.Name, c.Command.ArgsUsage)
	}
	return args, nil
}

// trailingFlags sets the command's flags found among its arguments and
// returns the other arguments. "--" ends the flags.
func trailingFlags(c *cli.Context) ([]string, error) {
	var args []string
	in := c.Args().Slice()
	for i := 0; i < len(in); i++ {
		a := in[i]
		if a == "--" {
			return append(args, in[i+1:]...), nil
		}
		if len(a) < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9') {
			args = append(args, a) // not a flag (negative numbers included)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		f := lookupFlag(c.Command, name)
		if f == nil {
			return nil, fmt.Errorf("%s: unknown flag %s", c.Command.Name, a)
		}
		if _, isBool := f.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if i+1 >= len(in) {
				return nil, fmt.Errorf("%s: flag %s needs a value", c.Command.Name, a)
			}
			i++
			value = in[i]
		}
		if err := c.Set(name, value); err != nil {
			return nil, fmt.Errorf("%s: %s: %w", c.Command.Name, a, err)
		}
	}
	return args, nil
}

func lookupFlag(cmd *cli.Command, name string) cli.Flag {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func statusCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "status",
		Usage: "show the cluster's nodes, their states and quorum as this node sees them",
		Flags: []cli.Flag{runDirFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				st, err := cl.Status(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					if st.Nodes == nil {
						st.Nodes = []admin.NodeStatus{}
					}
					return writeJSON(w, st)
				}
				return printStatus(w, st)
			})
		},
	}
}

// printStatus prints the status the way `ctdb status` does.
func printStatus(w io.Writer, st admin.Status) error {
	width := 16
	connected := 0
	for _, n := range st.Nodes {
		width = max(width, len(n.Address))
		if n.State != admin.StateDisconnected {
			connected++
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Number of nodes:%d\n", len(st.Nodes))
	for _, n := range st.Nodes {
		fmt.Fprintf(&b, "pnn:%d %-*s %s", n.PNN, width, n.Address, n.State)
		if n.This {
			b.WriteString(" (THIS NODE)")
		}
		if n.Skew != "" {
			b.WriteString(" config differs: " + n.Skew)
		}
		b.WriteByte('\n')
		if n.Reason != "" && n.State != admin.StateOK && n.Skew == "" {
			fmt.Fprintf(&b, "       why: %s\n", n.Reason)
		}
	}
	lock := "none"
	if st.Lock != "" {
		lock = st.Lock + " (not held)"
		if st.LockHeld {
			lock = st.Lock + " (held)"
		}
	}
	fmt.Fprintf(&b, "Quorum: %s (%d of %d nodes)   Failback: %s   Lock: %s\n",
		yesNo(st.Quorum), connected, len(st.Nodes), cmp.Or(st.Policy, "-"), lock)
	if !st.Quorum && st.QuorumReason != "" {
		fmt.Fprintf(&b, "       why: %s\n", st.QuorumReason)
	}
	if len(st.Interfaces) > 0 {
		// public: a VIP's, every program; reply: answers to VIP clients
		// leave there, tracked by the egress program alone
		b.WriteString("This node's interfaces:\n")
		t := newTable(&b, "INTERFACE", "ROLE", "LINK", "DRIVER", "XDP", "STEERING")
		for _, i := range st.Interfaces {
			link := yesNo(i.Link)
			if !i.Present {
				link = "missing"
			}
			t.row(i.Name, cmp.Or(i.Role, "-"), link, cmp.Or(i.Driver, "-"), cmp.Or(i.XDPMode, "-"), cmp.Or(i.Steer, "-"))
		}
		if err := t.flush(); err != nil {
			return err
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func ipCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "ip",
		Usage: "show the public addresses (VIPs), who holds them and where they are going",
		Flags: []cli.Flag{runDirFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				ips, err := cl.IPs(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					if ips == nil {
						ips = []admin.IP{}
					}
					return writeJSON(w, ips)
				}
				st, err := cl.Status(c.Context)
				if err != nil {
					return err
				}
				return printIPs(w, st, ips)
			})
		},
	}
}

// printIPs prints `ctdb ip`'s two columns (address, owner's PNN or -1)
// followed by the owner's address, the interfaces and the state.
func printIPs(w io.Writer, st admin.Status, ips []admin.IP) error {
	pnnOf := map[string]int{}
	for _, n := range st.Nodes {
		pnnOf[n.Address] = n.PNN
	}
	ips = slices.Clone(ips)
	slices.SortStableFunc(ips, func(a, b admin.IP) int { return vipAddr(a.VIP).Compare(vipAddr(b.VIP)) })

	if _, err := fmt.Fprintf(w, "Public IPs on node %d\n", st.ThisPNN); err != nil {
		return err
	}
	t := newTable(w, "VIP", "PNN", "OWNER", "IFACE", "EPOCH", "LEASE", "STATE")
	for _, ip := range ips {
		state := cmp.Or(ip.State, "-")
		if ip.Target != "" && ip.Target != ip.Owner {
			to := ip.Target
			if pnn, ok := pnnOf[ip.Target]; ok {
				to = fmt.Sprintf("pnn:%d %s", pnn, ip.Target)
			}
			state += " to " + to
		}
		epoch, lease := "-", "-"
		if ip.Epoch > 0 {
			epoch = strconv.FormatUint(ip.Epoch, 10)
		}
		if ip.LeaseLeft != 0 {
			// how long this node's data plane answers without a renewal
			lease = ip.LeaseLeft.Round(time.Millisecond).String()
		}
		t.row(ip.VIP, strconv.Itoa(ip.PNN), cmp.Or(ip.Owner, "-"), cmp.Or(ip.Iface, "-"), epoch, lease, state)
	}
	return t.flush()
}

// vipAddr is the address of "ADDR/PREFIX" (zero when unparsable, so it
// sorts first).
func vipAddr(s string) netip.Addr {
	a, _ := admin.ParseVIP(s)
	return a
}

func timelineCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "timeline",
		Usage: "show this node's recent takeovers and releases of VIPs, step by step",
		Flags: []cli.Flag{
			runDirFlag(), jsonFlag(),
			&cli.StringFlag{Name: "vip", EnvVars: []string{"FSHA_TIMELINE_VIP"}, Usage: "only this VIP"},
		},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			var only netip.Addr
			if v := c.String("vip"); v != "" {
				a, err := parseVIPArg("--vip", v)
				if err != nil {
					return err
				}
				only = a
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				tl, err := cl.Timeline(c.Context)
				if err != nil {
					return err
				}
				if only.IsValid() {
					tl = slices.DeleteFunc(tl, func(t admin.Takeover) bool { return vipAddr(t.VIP) != only })
				}
				if tl == nil {
					tl = []admin.Takeover{}
				}
				if c.Bool("json") {
					return writeJSON(w, tl)
				}
				return printTimeline(w, tl)
			})
		},
	}
}

// printTimeline prints each takeover or release and its steps, dated from
// the decision.
func printTimeline(w io.Writer, tl []admin.Takeover) error {
	var b strings.Builder
	if len(tl) == 0 {
		b.WriteString("no takeovers or releases recorded yet\n")
	}
	for i, t := range tl {
		if i > 0 {
			b.WriteByte('\n')
		}
		fmt.Fprintf(&b, "%s %s", cmp.Or(t.Kind, "takeover"), t.VIP)
		if t.Iface != "" {
			fmt.Fprintf(&b, " on %s", t.Iface)
		}
		if t.From != "" && !strings.Contains(t.Reason, t.From) {
			fmt.Fprintf(&b, " from %s", t.From)
		}
		if len(t.Steps) > 0 && !t.Steps[0].At.IsZero() {
			fmt.Fprintf(&b, " at %s", t.Steps[0].At.Local().Format("2006-01-02 15:04:05.000"))
		}
		if t.Reason != "" {
			fmt.Fprintf(&b, " (%s)", t.Reason)
		}
		b.WriteByte('\n')
		for j, s := range t.Steps {
			took := s.Took
			if took == 0 && j > 0 && !s.At.IsZero() && !t.Steps[0].At.IsZero() {
				took = s.At.Sub(t.Steps[0].At)
			}
			fmt.Fprintf(&b, "  %-8s %s\n", "+"+sinceDecision(took), s.Step)
		}
		if t.Error != "" {
			fmt.Fprintf(&b, "  FAILED: %s\n", t.Error)
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// sinceDecision prints a step's offset: whole milliseconds, a tenth of one
// below 10ms, seconds from one second on.
func sinceDecision(d time.Duration) string {
	switch {
	case d < 0:
		return "0ms"
	case d >= time.Second:
		return strconv.FormatFloat(d.Seconds(), 'f', 3, 64) + "s"
	case d < 10*time.Millisecond && d%time.Millisecond != 0:
		return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + "ms"
	}
	return strconv.FormatInt(d.Round(time.Millisecond).Milliseconds(), 10) + "ms"
}

// parseVIPArg parses a VIP given on the command line.
func parseVIPArg(what, s string) (netip.Addr, error) {
	a, err := admin.ParseVIP(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s: bad VIP %q: want an address such as 198.18.1.10", what, s)
	}
	return a, nil
}

func moveCommand(e env) *cli.Command {
	return &cli.Command{
		Name:      "move",
		Usage:     "move a VIP to another node (its connections drain unless --kill)",
		ArgsUsage: "VIP NODE",
		Description: "NODE is a node's address or PNN as `fsha status` shows them. Existing\n" +
			"connections stay with the old node until they end, unless --kill ends them at once.",
		Flags: []cli.Flag{
			runDirFlag(),
			&cli.BoolFlag{Name: "kill", EnvVars: []string{"FSHA_MOVE_KILL"}, Usage: "end the VIP's connections at once instead of draining them"},
		},
		Action: func(c *cli.Context) error {
			args, err := wantArgs(c, "VIP", "NODE")
			if err != nil {
				return err
			}
			vip, err := parseVIPArg("move", args[0])
			if err != nil {
				return err
			}
			node := strings.TrimSpace(args[1])
			if node == "" {
				return errors.New("move: empty NODE: give a node's address or PNN")
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				already := false
				if ips, err := cl.IPs(c.Context); err == nil {
					for _, ip := range ips {
						if vipAddr(ip.VIP) == vip && ip.Owner != "" && (ip.Owner == node || strconv.Itoa(ip.PNN) == node) && ip.State == "held" {
							already = true
						}
					}
				}
				if err := cl.Move(c.Context, vip, node, c.Bool("kill")); err != nil {
					return err
				}
				if already {
					_, err := fmt.Fprintf(w, "%s is already on node %s: it stays there (nothing moves)\n", vip, node)
					return err
				}
				how := "draining its connections"
				if c.Bool("kill") {
					how = "killing its connections"
				}
				_, err := fmt.Fprintf(w, "moving %s to node %s (%s)\n", vip, node, how)
				return err
			})
		},
	}
}

func disableCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "disable",
		Usage: "stop this node from holding VIPs (they move to other nodes) until `fsha enable`",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.Disable(c.Context); err != nil {
					return err
				}
				// Say where the VIPs go: nowhere, when no other node can
				// take them (they stay there until one can).
				if st, err := cl.Status(c.Context); err == nil {
					others := 0
					for _, n := range st.Nodes {
						if !n.This && n.State == admin.StateOK {
							others++
						}
					}
					if others == 0 {
						_, err := fmt.Fprintln(w, "node disabled, but no other node is OK to take its VIPs: they stay here until one is")
						return err
					}
				}
				_, err := fmt.Fprintln(w, "node disabled: its VIPs move to other nodes")
				return err
			})
		},
	}
}

func enableCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "enable",
		Usage: "let this node hold VIPs again after `fsha disable`",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.Enable(c.Context); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, "node enabled")
				return err
			})
		},
	}
}

func stopCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "stop",
		Usage: "hold this node out of the VIPs (they move, connections drain) until `fsha continue` or a restart of fsha (ctdb stop; fsha disable survives restarts)",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.OperatorStop(c.Context); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, "node stopped: its VIPs move to other nodes until fsha continue")
				return err
			})
		},
	}
}

func continueCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "continue",
		Usage: "end fsha stop: the node may hold VIPs again",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.OperatorContinue(c.Context); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, "node continues")
				return err
			})
		},
	}
}

func unbanCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "unban",
		Usage: "end this node's ban now: it may hold VIPs again",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.Unban(c.Context); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, "node unbanned")
				return err
			})
		},
	}
}

func banCommand(e env) *cli.Command {
	return &cli.Command{
		Name:      "ban",
		Usage:     "ban this node for SECONDS: it holds no VIPs until the ban ends",
		ArgsUsage: "SECONDS",
		Flags:     []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			args, err := wantArgs(c, "SECONDS")
			if err != nil {
				return err
			}
			secs, err := strconv.Atoi(args[0])
			if err != nil || secs <= 0 || secs > admin.MaxBanSeconds {
				return fmt.Errorf("ban: bad SECONDS %q: want a whole number of seconds from 1 to %d", args[0], admin.MaxBanSeconds)
			}
			d := time.Duration(secs) * time.Second
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.Ban(c.Context, d); err != nil {
					return err
				}
				_, err := fmt.Fprintf(w, "node banned for %s\n", d)
				return err
			})
		},
	}
}
