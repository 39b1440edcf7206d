package node

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
)

const timelineLen = 256

// record appends to the timeline.
func (n *Node) record(rec admin.Takeover) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.timeline = append(n.timeline, rec)
	if len(n.timeline) > timelineLen {
		n.timeline = slices.Delete(n.timeline, 0, len(n.timeline)-timelineLen)
	}
}

// updateRecord changes the timeline record of vip that started at t0 (of
// kind, when not empty), if it is still in the timeline.
func (n *Node) updateRecord(vip config.PublicAddress, t0 time.Time, kind string, fn func(*admin.Takeover)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for j := len(n.timeline) - 1; j >= 0; j-- {
		r := &n.timeline[j]
		if len(r.Steps) > 0 && r.Steps[0].At.Equal(t0) && r.VIP == vip.Prefix.String() && (kind == "" || r.Kind == kind) {
			fn(r)
			// steps of concurrent work (tickles, hooks) arrive in any order
			slices.SortStableFunc(r.Steps, func(a, b admin.TimelineStep) int { return a.At.Compare(b.At) })
			return
		}
	}
}

// tickle makes the clients of the given nodes' connections to the VIP,
// whose epochs are over, reconnect to this node at once; the data plane
// then forgets those connections.
func (n *Node) tickle(ctx context.Context, vip config.PublicAddress, iface string, owners []int, t0 time.Time) {
	res, err := n.dp.TickleVIP(ctx, iface, vip.VIP(), owners, true)
	end := time.Now()
	if err != nil {
		n.log.Warn("tickle", zap.Stringer("vip", vip.Prefix), zap.Error(err))
	}
	if res.Conns > 0 {
		n.log.Info("tickled", zap.Stringer("vip", vip.Prefix), zap.Int("connections", res.Conns), zap.Ints("owners", owners),
			zap.Duration("first_round", res.FirstRound), zap.Int64("resets", res.Resets))
	}
	n.updateRecord(vip, t0, "", func(r *admin.Takeover) {
		first := res.FirstRoundAt
		r.Tickled, r.Resets = r.Tickled+res.Conns, r.Resets+res.Resets
		r.Steps = append(r.Steps,
			admin.TimelineStep{Step: fmt.Sprintf("tickles sent (%d connections)", res.Conns), At: first, Took: first.Sub(t0)},
			admin.TimelineStep{Step: fmt.Sprintf("tickle repeats done (%d resets from our stack)", res.Resets), At: end, Took: end.Sub(t0)})
		if err != nil && r.Error == "" {
			r.Error = "tickle: " + err.Error()
		}
	})
	if n.observer != nil {
		if o, ok := n.observer.(interface{ ObserveTickles(conns int, resets int64) }); ok {
			o.ObserveTickles(res.Conns, res.Resets)
		}
	}
}

// runHooks runs the event's hooks for a VIP whose lease is at epoch.
func (n *Node) runHooks(ctx context.Context, event string, vip config.PublicAddress, iface string, epoch uint64, t0 time.Time) {
	n.runHooksEnv(ctx, event, vip, iface, epoch, t0, nil)
}

// runHooksEnv is runHooks with more variables for the hooks (updateip's
// FSHA_OLD_IFACE).
func (n *Node) runHooksEnv(ctx context.Context, event string, vip config.PublicAddress, iface string, epoch uint64, t0 time.Time, extra map[string]string) {
	var herr error
	if n.hooks != nil {
		env := map[string]string{
			"FSHA_VIP": vip.VIP().String(), "FSHA_PREFIX": vip.Prefix.String(), "FSHA_IFACE": iface,
			"FSHA_NODE": n.cfg.Nodes[n.cfg.Self].Addr.String(), "FSHA_EPOCH": strconv.FormatUint(epoch, 10),
		}
		maps.Copy(env, extra)
		herr = n.hooks.Run(ctx, event, env)
	}
	now := time.Now()
	n.updateRecord(vip, t0, "", func(r *admin.Takeover) {
		r.Steps = append(r.Steps, admin.TimelineStep{Step: "hooks done", At: now, Took: now.Sub(t0)})
		if herr != nil && r.Error == "" {
			r.Error = "hooks: " + herr.Error()
		}
		if n.observer != nil {
			n.observer.ObserveTakeover(r.Kind, now.Sub(t0))
		}
	})
}
