package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/node"
)

// newHookRunner returns the event-script runner for the hooks directory:
// one for every event (takeip, releaseip, monitor), so that fsha checks
// shows each one's latest run.
func newHookRunner(log *zap.Logger, dir, nodeAddr string, timeout time.Duration) *hooks.Runner {
	return hooks.NewRunner(log, hooks.Config{Dir: dir, Timeout: timeout, Node: nodeAddr})
}

// hookRunnerFor shapes r as the control loop calls it.
func hookRunnerFor(r *hooks.Runner) node.Hooks { return hookRunner{r} }

type hookRunner struct{ r *hooks.Runner }

func (h hookRunner) Run(ctx context.Context, event string, env map[string]string) error {
	vip, _ := netip.ParsePrefix(env[hooks.EnvPrefix])
	res := h.r.Run(ctx, hooks.Event(event), hooks.Vars{VIP: vip, Iface: env[hooks.EnvIface]})
	if res.Err != nil {
		return res.Err
	}
	if failed := res.Failed(); len(failed) > 0 {
		var names []string
		for _, s := range failed {
			names = append(names, s.Name)
		}
		return fmt.Errorf("%s hooks failed: %s", event, strings.Join(names, ", "))
	}
	return nil
}

// monitorCheck runs the hooks' monitor event as a health check, like
// CTDB's monitor event: a failing hook makes the node unhealthy.
type monitorCheck struct{ r *hooks.Runner }

func (m monitorCheck) Name() string { return "hooks:monitor" }

func (m monitorCheck) Run(ctx context.Context) error {
	// the hooks have their own timeout (--hook-timeout), longer than a
	// TCP check's
	res := m.r.Run(context.WithoutCancel(ctx), hooks.Monitor, hooks.Vars{})
	if res.Err != nil {
		return res.Err
	}
	if failed := res.Failed(); len(failed) > 0 {
		return fmt.Errorf("monitor hook %s failed", failed[0].Name)
	}
	return nil
}

// newMonitorCheck returns the monitor check when the hooks directory has
// scripts, nil otherwise.
func newMonitorCheck(r *hooks.Runner) health.Check {
	if scripts, err := r.Scripts(); err != nil || len(scripts) == 0 {
		return nil
	}
	return monitorCheck{r}
}
