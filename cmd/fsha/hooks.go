package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/health"
	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/node"
)

// newHookRunner returns the event-script runner for the hooks directory:
// one for every event (startup, takeip, releaseip, monitor, shutdown), so that fsha checks
// shows each one's latest run.
func newHookRunner(log *zap.Logger, dir, nodeAddr string, timeout time.Duration) *hooks.Runner {
	return hooks.NewRunner(log, hooks.Config{Dir: dir, Timeout: timeout, Node: nodeAddr})
}

// hookRunnerFor shapes r as the control loop calls it.
func hookRunnerFor(r *hooks.Runner) node.Hooks { return hookRunner{r} }

type hookRunner struct{ r *hooks.Runner }

func (h hookRunner) Run(ctx context.Context, event string, env map[string]string) error {
	vip, _ := netip.ParsePrefix(env[hooks.EnvPrefix])
	epoch, _ := strconv.ParseUint(env[hooks.EnvEpoch], 10, 64) // none: 0, left unset
	res := h.r.Run(ctx, hooks.Event(event), hooks.Vars{VIP: vip, Iface: env[hooks.EnvIface], OldIface: env[hooks.EnvOldIface], Epoch: epoch})
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
// CTDB's monitor event: a failing hook makes the node unhealthy. As in
// CTDB, monitor waits for startup to have succeeded.
type monitorCheck struct {
	r       *hooks.Runner
	startup *startupCheck
}

func (m monitorCheck) Name() string { return "hooks:monitor" }

func (m monitorCheck) Run(ctx context.Context) error {
	if !m.startup.done.Load() {
		return errors.New("not run: the startup hooks have not succeeded yet")
	}
	// the hooks have their own timeout (--hook-timeout), longer than a
	// TCP check's
	return hookFailure(m.r.Run(context.WithoutCancel(ctx), hooks.Monitor, hooks.Vars{}))
}

// startupCheck runs the startup event as a health check: the checker's
// first round runs it once the data plane is up, and the node takes no VIP
// until every check has passed, so startup runs before the node holds
// anything it did not hold before. A failing startup hook keeps the node
// UNHEALTHY, with the hook's name and output as the reason, and is tried
// again each round until it succeeds (CTDB's semantics); after that the
// check passes without running anything.
type startupCheck struct {
	r    *hooks.Runner
	done atomic.Bool
}

func (s *startupCheck) Name() string { return "hooks:startup" }

func (s *startupCheck) Run(ctx context.Context) error {
	if s.done.Load() {
		return nil
	}
	if err := hookFailure(s.r.Run(context.WithoutCancel(ctx), hooks.Startup, hooks.Vars{})); err != nil {
		return err
	}
	s.done.Store(true)
	return nil
}

// newHookChecks returns the startup and monitor checks when the hooks
// directory has scripts, nothing otherwise.
func newHookChecks(r *hooks.Runner) []health.Check {
	if scripts, err := r.Scripts(); err != nil || len(scripts) == 0 {
		return nil
	}
	startup := &startupCheck{r: r}
	return []health.Check{startup, monitorCheck{r: r, startup: startup}}
}

// hookFailure says which hook of an event failed and what it said.
func hookFailure(res hooks.Result) error {
	if res.Err != nil {
		return res.Err
	}
	failed := res.Failed()
	if len(failed) == 0 {
		return nil
	}
	f := failed[0]
	var what string
	switch {
	case f.Err != nil:
		what = f.Err.Error()
	case f.TimedOut:
		what = "timed out"
	case f.Signal != "":
		what = "killed by " + f.Signal
	default:
		what = fmt.Sprintf("exit status %d", f.ExitCode)
	}
	// the last line, where scripts say why they gave up
	if out := lastLine(f.Output); out != "" {
		what += ": " + out
	}
	more := ""
	if len(failed) > 1 {
		more = fmt.Sprintf(" (and %d more)", len(failed)-1)
	}
	return fmt.Errorf("%s hook %s failed%s: %s", res.Event, f.Name, more, what)
}

// runShutdownHooks runs the shutdown event as the daemon exits, telling
// the hooks how (FSHA_STOP). As in CTDB a failure changes nothing: the
// daemon stops anyway; the hooks' own lines in the log say what failed.
func runShutdownHooks(log *zap.Logger, r *hooks.Runner, how string) {
	if err := hookFailure(r.Run(context.Background(), hooks.Shutdown, hooks.Vars{Env: map[string]string{hooks.EnvStop: how}})); err != nil {
		log.Warn("shutdown hooks failed; stopping anyway", zap.String("stop", how), zap.Error(err))
	}
}
