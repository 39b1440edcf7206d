package main

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/node"
)

// newHooks returns the event-script runner for the hooks directory, shaped
// as the control loop calls it.
func newHooks(log *zap.Logger, dir, nodeAddr string, timeout time.Duration) node.Hooks {
	return hookRunner{hooks.NewRunner(log, hooks.Config{Dir: dir, Timeout: timeout, Node: nodeAddr})}
}

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
