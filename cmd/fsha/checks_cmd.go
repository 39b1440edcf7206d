package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/node"
	"github.com/fsha/fsha/dataplane"
)

// adminBackend is what the admin API serves: the node, and how its health
// checks and hooks last ran (fsha checks).
type adminBackend struct {
	*node.Node
	checker *health.Checker
	hooks   *hooks.Runner
	dp      *dataplane.Dataplane
	ifaces  []string
	// reload checks the configuration and restarts in place with it
	reload func() error
}

// Reload is fsha reload: the configuration checked, then a restart in
// place as SIGHUP's.
func (b adminBackend) Reload(context.Context) error {
	if b.reload == nil {
		return errors.New("this daemon cannot reload its configuration")
	}
	return b.reload()
}

// Status is the node's status with its public interfaces: link (the
// health checker's view) and steering path (the data plane's); then its
// reply interfaces, where the egress program alone runs.
func (b adminBackend) Status(ctx context.Context) (admin.Status, error) {
	st, err := b.Node.Status(ctx)
	if err != nil {
		return st, err
	}
	steer := map[string]dataplane.SteerState{}
	if b.dp != nil {
		for _, s := range b.dp.Steering() {
			steer[s.Interface] = s
		}
	}
	for _, name := range b.ifaces {
		is := admin.InterfaceStatus{Name: name, Role: admin.RolePublic, Link: b.checker.LinkUp(name)}
		if _, err := net.InterfaceByName(name); err == nil {
			is.Present = true
		}
		if s, ok := steer[name]; ok && is.Present {
			is.Driver, is.XDPMode, is.Steer, is.SteerReason = s.Driver, s.XDPMode, s.Steer, s.Reason
		}
		st.Interfaces = append(st.Interfaces, is)
	}
	if b.dp != nil {
		for _, name := range b.dp.ReplyInterfaces() {
			// egress only: no XDP, no steering; link as the kernel says
			is := admin.InterfaceStatus{Name: name, Role: admin.RoleReply}
			if ifi, err := net.InterfaceByName(name); err == nil {
				is.Present, is.Link = true, ifi.Flags&net.FlagRunning != 0
			}
			st.Interfaces = append(st.Interfaces, is)
		}
	}
	return st, nil
}

var _ admin.CheckReporter = adminBackend{}

// Checks is `fsha checks`.
func (b adminBackend) Checks(context.Context) (admin.Checks, error) {
	var out admin.Checks
	for _, r := range b.checker.Results() {
		out.Checks = append(out.Checks, admin.CheckStatus{Name: r.Name, Passing: r.Passing, FailedRuns: r.Failures,
			Error: r.Error, LastRun: r.At, Took: r.Took})
	}
	for _, res := range b.hooks.Last() {
		for _, s := range res.Scripts {
			hs := admin.HookStatus{Event: string(res.Event), Script: s.Name, OK: s.OK(), ExitCode: s.ExitCode,
				Output: strings.TrimSpace(s.Output), Ended: res.Ended, Took: s.Duration}
			switch {
			case s.Err != nil:
				hs.Error = s.Err.Error()
			case s.TimedOut:
				hs.Error = "timed out: killed"
			case s.Signal != "":
				hs.Error = "killed by " + s.Signal
			}
			out.Hooks = append(out.Hooks, hs)
		}
	}
	return out, nil
}

func checksCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "checks",
		Usage: "show this node's health checks and hooks with their latest run, like ctdb scriptstatus",
		Flags: []cli.Flag{runDirFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				ch, err := cl.Checks(c.Context)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return writeJSON(w, ch)
				}
				return printChecks(w, ch, time.Now())
			})
		},
	}
}

// printChecks prints the checks, then the hooks, one line each, and
// under each table what the failing ones said.
func printChecks(w io.Writer, ch admin.Checks, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	var said []string
	fmt.Fprintln(tw, "CHECK\tSTATE\tFAILED RUNS\tLAST RUN\tTOOK")
	for _, c := range ch.Checks {
		state := "passing"
		if !c.Passing {
			state = "FAILING"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", c.Name, state, c.FailedRuns, ago(c.LastRun, now), took(c.Took, c.LastRun))
		if c.Error != "" {
			said = append(said, fmt.Sprintf("%s said: %s", c.Name, c.Error))
		}
	}
	if len(ch.Checks) == 0 {
		fmt.Fprintln(tw, "(none)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range said {
		fmt.Fprintln(w, "  "+s)
	}
	said = nil
	fmt.Fprintln(w)
	fmt.Fprintln(tw, "HOOK\tEVENT\tRESULT\tLAST RUN\tTOOK")
	for _, h := range ch.Hooks {
		result := "OK"
		switch {
		case h.Error != "":
			result = "ERROR"
		case !h.OK:
			result = fmt.Sprintf("exit %d", h.ExitCode)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", h.Script, h.Event, result, ago(h.Ended, now), took(h.Took, h.Ended))
		if out := strings.TrimSpace(h.Error + " " + lastLine(h.Output)); !h.OK && out != "" {
			said = append(said, fmt.Sprintf("%s (%s) said: %s", h.Script, h.Event, out))
		}
	}
	if len(ch.Hooks) == 0 {
		fmt.Fprintln(tw, "(none run yet)")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, s := range said {
		fmt.Fprintln(w, "  "+s)
	}
	return nil
}

func ago(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return now.Sub(t).Round(time.Second).String() + " ago"
}

func took(d time.Duration, at time.Time) string {
	if at.IsZero() {
		return "-"
	}
	return d.Round(time.Millisecond).String()
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
