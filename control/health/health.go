// Package health decides whether this node is fit to hold VIPs: its public
// interfaces have link and its file services answer. Link changes arrive
// from netlink at once; service checks run on an interval.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/config"
)

// Check is one service check.
type Check interface {
	Name() string
	Run(ctx context.Context) error
}

// TCPCheck connects to a local service.
type TCPCheck struct{ Addr string }

func (c TCPCheck) Name() string { return "tcp:" + c.Addr }

func (c TCPCheck) Run(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.Addr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// CommandCheck runs a command; exit status 0 is healthy.
type CommandCheck struct {
	Argv []string
	// Line is the command as configured (quotes and all), which names the
	// check in status and metrics so an operator finds it in the config;
	// empty: the words quoted again.
	Line string
}

func (c CommandCheck) Name() string {
	if c.Line != "" {
		return "cmd:" + c.Line
	}
	return "cmd:" + config.QuoteCommand(c.Argv)
}

func (c CommandCheck) Run(ctx context.Context) error {
	out, err := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ParseCheck reads "tcp:PORT" (on the node address), "tcp:HOST:PORT" or
// "cmd:COMMAND ARGS...", whose words are split as a shell would, quotes
// and backslashes included, with nothing expanded (config.SplitCommand).
func ParseCheck(s string, nodeAddr string) (Check, error) {
	kind, arg, ok := strings.Cut(s, ":")
	if !ok || arg == "" {
		return nil, fmt.Errorf("check %q: want tcp:PORT, tcp:HOST:PORT or cmd:COMMAND", s)
	}
	switch kind {
	case "tcp":
		if !strings.Contains(arg, ":") || strings.HasPrefix(arg, "[") && !strings.Contains(arg, "]:") {
			arg = net.JoinHostPort(nodeAddr, arg)
		}
		if _, _, err := net.SplitHostPort(arg); err != nil {
			return nil, fmt.Errorf("check %q: %w", s, err)
		}
		return TCPCheck{Addr: arg}, nil
	case "cmd":
		argv, err := config.SplitCommand(arg)
		if err != nil {
			var ce *config.CommandError
			if errors.As(err, &ce) {
				ce.Offset += len("cmd:") // a column of the check as written
			}
			return nil, fmt.Errorf("check %q: %w", s, err)
		}
		return CommandCheck{Argv: argv, Line: strings.TrimSpace(arg)}, nil
	}
	return nil, fmt.Errorf("check %q: unknown kind %q (tcp or cmd)", s, kind)
}

// Config configures a Checker.
type Config struct {
	// Interfaces are the public interfaces whose link is watched.
	Interfaces []string
	// Groups are the VIPs' interface lists (public_addresses' eth0,eth1):
	// the node is healthy when every group has an interface with link, so
	// a VIP's secondary interface stands in for its first one. Nil: every
	// interface must have link.
	Groups [][]string
	// Appeared is called (from the link watch, without the lock held)
	// when a watched interface appears after the start, or comes back
	// under a new index: the programs must be attached to it again.
	Appeared func(name string)
	// Attached, if set, tells whether the programs are on the interface
	// now: one present at the watch's start but not attached (it appeared
	// between the data plane's start and this one) is reported to
	// Appeared too.
	Attached func(name string) bool
	Checks   []Check
	Interval time.Duration // between check rounds
	Timeout  time.Duration // of one check
	// Failures is how many failed rounds in a row make a check fail, so
	// one slow answer does not move VIPs.
	Failures int
}

// Checker tracks the node's health.
type Checker struct {
	log     *zap.Logger
	cfg     Config
	changed chan struct{}

	mu       sync.Mutex
	linkUp   map[string]bool
	index    map[string]int // ifindex last seen per watched interface; absent: missing
	failures map[string]int
	last     map[string]CheckResult
	judged   bool // the first round of checks is over
}

// CheckResult is the latest run of one check.
type CheckResult struct {
	Name string
	// Passing is the check's verdict: it fails after Config.Failures
	// failed runs in a row.
	Passing bool
	// Failures counts the failed runs in a row (0: the last one passed).
	Failures int
	// Error is what the last run said when it failed ("" when it passed).
	Error string
	At    time.Time     // when the last run ended; zero: not run yet
	Took  time.Duration // how long it ran
}

// New returns a Checker; nothing runs until Run.
func New(log *zap.Logger, cfg Config) *Checker {
	if cfg.Interval == 0 {
		cfg.Interval = time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 500 * time.Millisecond
	}
	if cfg.Failures == 0 {
		cfg.Failures = 2
	}
	c := &Checker{
		log: log.Named("health"), cfg: cfg, changed: make(chan struct{}, 1),
		linkUp: map[string]bool{}, index: map[string]int{}, failures: map[string]int{}, last: map[string]CheckResult{},
	}
	// Until the first round, service checks count as failed: a node that
	// just started holds nothing before its services have answered once.
	for _, ch := range cfg.Checks {
		c.failures[ch.Name()] = cfg.Failures
	}
	return c
}

// Healthy reports whether every interface has link and every check passes.
func (c *Checker) Healthy() bool {
	healthy, _ := c.State()
	return healthy
}

// State returns health and, when unhealthy, why.
func (c *Checker) State() (bool, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	why := c.linkReasons()
	for _, ch := range c.cfg.Checks {
		if c.failures[ch.Name()] >= c.cfg.Failures {
			r, ran := c.last[ch.Name()]
			switch {
			case !ran:
				why = append(why, ch.Name()+" not run yet")
			case r.Error != "":
				why = append(why, fmt.Sprintf("%s failing (%d runs in a row): %s", ch.Name(), r.Failures, r.Error))
			default:
				why = append(why, ch.Name()+" failing")
			}
		}
	}
	return len(why) == 0, why
}

// linkReasons says which interfaces keep the node unhealthy. c.mu is held.
func (c *Checker) linkReasons() []string {
	var why []string
	if c.cfg.Groups == nil {
		for _, i := range c.cfg.Interfaces {
			if !c.linkUp[i] {
				why = append(why, "no link on "+i)
			}
		}
		return why
	}
	seen := map[string]bool{}
	for _, g := range c.cfg.Groups {
		if slices.ContainsFunc(g, func(i string) bool { return c.linkUp[i] }) {
			continue
		}
		var down []string
		for _, i := range g {
			if _, present := c.index[i]; present {
				down = append(down, i+" down")
			} else {
				down = append(down, i+" missing")
			}
		}
		r := "no link for VIPs on " + strings.Join(g, ",") + " (" + strings.Join(down, ", ") + ")"
		if !seen[r] {
			seen[r] = true
			why = append(why, r)
		}
	}
	return why
}

// Results returns the latest run of every check, in configuration order.
func (c *Checker) Results() []CheckResult {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]CheckResult, 0, len(c.cfg.Checks))
	for _, ch := range c.cfg.Checks {
		r, ran := c.last[ch.Name()]
		if !ran {
			r = CheckResult{Name: ch.Name()}
		}
		r.Passing = c.failures[ch.Name()] < c.cfg.Failures
		out = append(out, r)
	}
	return out
}

// Judged reports whether the links have been read and every check has run
// once: before, Healthy says false for want of an answer, not because
// something failed (a restarted node keeps its VIPs meanwhile).
func (c *Checker) Judged() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.judged
}

// LinkUp reports whether iface has link.
func (c *Checker) LinkUp(iface string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.linkUp[iface]
}

// Changed is signalled (coalesced) when health may have changed.
func (c *Checker) Changed() <-chan struct{} { return c.changed }

func (c *Checker) signal() {
	select {
	case c.changed <- struct{}{}:
	default:
	}
}

// Run watches links and runs the checks until ctx ends.
func (c *Checker) Run(ctx context.Context) error {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	if err := netlink.LinkSubscribeWithOptions(updates, done, netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { c.log.Warn("link watch", zap.Error(err)) },
	}); err != nil {
		return fmt.Errorf("watch links: %w", err)
	}
	// Subscribe first, then read the state, so no change falls in between.
	for _, name := range c.cfg.Interfaces {
		l, err := netlink.LinkByName(name)
		var missing netlink.LinkNotFoundError
		switch {
		case errors.As(err, &missing):
			c.log.Info("public interface missing: unusable until it appears", zap.String("interface", name))
			c.setLink(name, false)
			continue
		case err != nil:
			return fmt.Errorf("public interface %s: %w", name, err)
		}
		c.present(name, l.Attrs().Index, linkIsUp(l))
	}
	c.runChecks(ctx)
	c.mu.Lock()
	c.judged = true
	c.mu.Unlock()
	c.signal()

	tick := time.NewTicker(c.cfg.Interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case u, ok := <-updates:
			if !ok {
				return errors.New("link watch closed")
			}
			c.update(u)
		case <-tick.C:
			c.runChecks(ctx)
		}
	}
}

func linkIsUp(l netlink.Link) bool {
	a := l.Attrs()
	return a.Flags&net.FlagUp != 0 && (a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown)
}

// present notes a watched interface found at the watch's start; one the
// data plane has not attached to (it appeared in between) is reported to
// Appeared.
func (c *Checker) present(name string, index int, up bool) {
	c.mu.Lock()
	c.index[name] = index
	c.mu.Unlock()
	if c.cfg.Attached != nil && c.cfg.Appeared != nil && !c.cfg.Attached(name) {
		c.log.Info("public interface appeared since the data plane started", zap.String("interface", name))
		c.cfg.Appeared(name)
	}
	c.setLink(name, up)
}

// update applies a link message: a watched interface deleted is missing
// (no link), one that appears (or comes back under a new index) is
// reported to Appeared before its link counts.
func (c *Checker) update(u netlink.LinkUpdate) {
	name, index := u.Attrs().Name, u.Attrs().Index
	if !slices.Contains(c.cfg.Interfaces, name) {
		return
	}
	if u.Header.Type == unix.RTM_DELLINK {
		c.mu.Lock()
		delete(c.index, name)
		c.mu.Unlock()
		c.log.Info("public interface removed", zap.String("interface", name))
		c.setLink(name, false)
		return
	}
	c.mu.Lock()
	old, known := c.index[name]
	c.index[name] = index
	c.mu.Unlock()
	if (!known || old != index) && c.cfg.Appeared != nil {
		c.log.Info("public interface appeared", zap.String("interface", name), zap.Int("ifindex", index))
		c.cfg.Appeared(name)
	}
	c.setLink(name, linkIsUp(u.Link))
}

func (c *Checker) setLink(name string, up bool) {
	c.mu.Lock()
	was, known := c.linkUp[name]
	tracked := false
	for _, i := range c.cfg.Interfaces {
		tracked = tracked || i == name
	}
	if tracked {
		c.linkUp[name] = up
	}
	c.mu.Unlock()
	if tracked && (!known || was != up) {
		c.log.Info("link", zap.String("interface", name), zap.Bool("up", up))
		c.signal()
	}
}

func (c *Checker) runChecks(ctx context.Context) {
	var wg sync.WaitGroup
	for _, ch := range c.cfg.Checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
			defer cancel()
			began := time.Now()
			err := ch.Run(cctx)
			took := time.Since(began)
			c.mu.Lock()
			before := c.failures[ch.Name()] >= c.cfg.Failures
			_, ranBefore := c.last[ch.Name()]
			if err != nil {
				c.failures[ch.Name()]++
			} else {
				c.failures[ch.Name()] = 0
			}
			after := c.failures[ch.Name()] >= c.cfg.Failures
			// failures starts at the verdict's threshold (failing until
			// the first run); the result counts the real runs
			r := CheckResult{Name: ch.Name(), At: time.Now(), Took: took}
			if err != nil {
				r.Error = err.Error()
				r.Failures = c.last[ch.Name()].Failures + 1
			}
			c.last[ch.Name()] = r
			c.mu.Unlock()
			// The first run is logged whatever it says (a check failing
			// from the start changes nothing, and would go unsaid), then
			// every change of verdict.
			if before != after || !ranBefore {
				c.log.Info("check", zap.String("check", ch.Name()), zap.Bool("passing", !after),
					zap.Duration("took", took), zap.Error(err))
			}
			if before != after {
				c.signal()
			}
		}()
	}
	wg.Wait()
}
