package main

import (
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/dataplane"
)

// replyCheckInterval is how often fsha up looks again for reply
// interfaces (replypath.go): routes change while the node runs (an
// address or a default route added), and a client answered through a
// new interface must be tracked from then on. A route lookup per VIP
// subnet and one route dump per family: cheap.
const replyCheckInterval = 5 * time.Second

// replyAttacher is the data plane as the reply interfaces need it.
type replyAttacher interface {
	// AttachReplyInterface attaches TC egress to name unless it runs
	// there already, and reports whether it attached.
	AttachReplyInterface(name string) (bool, error)
}

// replyTracker keeps TC egress on every reply interface while the node
// runs: check decides (replyInterfaces) and attaches what is missing; the
// data plane asks the kernel whether its link is still there. Only
// changes are logged: a new reply interface, or a new reason it cannot
// be tracked (warned once, not at every check).
type replyTracker struct {
	log   *zap.Logger
	dp    replyAttacher
	addrs []config.PublicAddress
	rv    routeView
	// refused: the last error warned about, per interface ("" key: the
	// route lookups)
	refused map[string]string
}

func newReplyTracker(log *zap.Logger, dp replyAttacher, addrs []config.PublicAddress, rv routeView) *replyTracker {
	return &replyTracker{log: log, dp: dp, addrs: addrs, rv: rv, refused: map[string]string{}}
}

// warned notes what the start already warned of, so that the first
// checks do not say it again: the route lookup's error, and each of want
// that the data plane did not attach (Load warned, with the error
// dataplane.CheckReplyInterface gives again).
func (r *replyTracker) warned(lookupErr error, want []replyIface, attached []string) {
	if lookupErr != nil {
		r.refused[""] = lookupErr.Error()
	}
	for _, ri := range want {
		if slices.Contains(attached, ri.Name) {
			continue
		}
		if err := dataplane.CheckReplyInterface(ri.Name); err != nil {
			r.refused[ri.Name] = err.Error()
		}
	}
}

// check finds the reply interfaces and attaches the ones the program
// does not run on yet. It returns what it found.
func (r *replyTracker) check() []replyIface {
	want, err := replyInterfaces(r.addrs, r.rv)
	r.warnOnce("", err, "reply interfaces: route lookup failed; answers through the interfaces it would name may leave untracked")
	for _, ri := range want {
		attached, err := r.dp.AttachReplyInterface(ri.Name)
		r.warnOnce(ri.Name, err, "reply interface not attached: answers to VIP clients through it stay untracked, and their connections are neither tracked nor replicated")
		if attached {
			r.log.Info("tracking answers to VIP clients on a new reply interface",
				zap.String("interface", ri.Name), zap.Strings("why", ri.Why))
		}
	}
	return want
}

func (r *replyTracker) warnOnce(key string, err error, msg string) {
	if err == nil {
		delete(r.refused, key)
		return
	}
	if r.refused[key] == err.Error() {
		return
	}
	r.refused[key] = err.Error()
	f := []zap.Field{zap.Error(err)}
	if key != "" {
		f = append(f, zap.String("interface", key))
	}
	r.log.Warn(msg, f...)
}
