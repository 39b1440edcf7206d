// Package hooks runs the administrator's scripts on cluster events, like
// CTDB's event scripts: every executable in a hooks directory, in name
// order, each with a timeout, with the event, the VIP and the interface in
// its environment and (for CTDB scripts) its arguments. A takeover runs
// "takeip" hooks (for example sm-notify, so NFSv3 clients reclaim their
// locks), a release "releaseip", the health checker "monitor".
package hooks

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Event names a cluster event that hooks run for.
type Event string

// The events. Their names are CTDB's, so CTDB event scripts that look at
// their first argument work unchanged.
const (
	// Startup runs once the data plane is up, before the node takes a
	// VIP; until it succeeds the node is UNHEALTHY and it is tried again
	// (CTDB: "retried until it succeeds").
	Startup Event = "startup"
	// Shutdown runs as the daemon exits, whatever the way (FSHA_STOP
	// says which); its failure is logged and changes nothing.
	Shutdown  Event = "shutdown"
	TakeIP    Event = "takeip"    // a VIP was added here and announced
	ReleaseIP Event = "releaseip" // a VIP was removed from here
	// UpdateIP: a VIP held here moved to another of its interfaces (the
	// one it was on lost link), as CTDB's updateip: arguments old
	// interface, new interface, address, mask bits.
	UpdateIP Event = "updateip"
	Monitor  Event = "monitor" // periodic health check: a failure marks the node unhealthy
)

// Events lists every event.
var Events = []Event{Startup, Shutdown, TakeIP, ReleaseIP, UpdateIP, Monitor}

// Environment variables given to every hook. Variables of these names
// inherited from the daemon are removed first, so a hook never sees a
// stale FSHA_VIP.
const (
	EnvEvent    = "FSHA_EVENT"
	EnvNode     = "FSHA_NODE"
	EnvVIP      = "FSHA_VIP"      // 198.18.0.10
	EnvPrefix   = "FSHA_PREFIX"   // 198.18.0.10/24, as in public_addresses
	EnvMaskBits = "FSHA_MASKBITS" // 24
	EnvIface    = "FSHA_IFACE"    // eth0
	// EnvOldIface is the interface an updateip moved the VIP from.
	EnvOldIface = "FSHA_OLD_IFACE"
	// EnvEpoch is the epoch of the VIP's lease the takeip or releaseip is
	// for, in decimal. A VIP's epochs grow with every holder, cluster-wide,
	// so hooks on different nodes that keep shared state per VIP (like
	// 60.ganesha-grace's link to the last holder's NFSv4 records) can tell
	// which of two runs is the later holder's: hooks on two nodes run at
	// once, and the slower one may be the earlier holder's.
	EnvEpoch = "FSHA_EPOCH"
	// EnvStop tells shutdown hooks how the daemon stops: StopRestart,
	// StopShutdown or StopAbort.
	EnvStop = "FSHA_STOP"
)

// The values of EnvStop.
const (
	// StopRestart: a restart in place (SIGTERM, SIGHUP, a package
	// upgrade): the VIPs stay here and their connections go on being
	// served, so a hook must not stop the file servers.
	StopRestart = "restart"
	// StopShutdown: the VIPs were handed over to other nodes (SIGINT,
	// systemctl stop with a hand-over).
	StopShutdown = "shutdown"
	// StopAbort: the daemon stops at once (a second signal, an error);
	// the VIPs it held lapse at their deadlines.
	StopAbort = "abort"
)

var reservedEnv = []string{EnvEvent, EnvNode, EnvVIP, EnvPrefix, EnvMaskBits, EnvIface, EnvOldIface, EnvEpoch, EnvStop}

const (
	// DefaultTimeout is CTDB's default event script timeout.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxOutput bounds the output kept (and logged) per script.
	DefaultMaxOutput = 4096
	// defaultWaitDelay bounds the wait for a hook's output after it exited
	// (or was killed) when a process it left behind still holds its stdout.
	defaultWaitDelay = 2 * time.Second
	// defaultKillWait bounds the wait for a killed hook to exit: a process
	// stuck in the kernel (a hung NFS mount) does not die at once.
	defaultKillWait = 5 * time.Second
)

// Config configures a Runner.
type Config struct {
	// Dir holds the hooks: every executable regular file in it runs, in
	// name order (name them like CTDB's "10.interface", "60.nfs").
	// Non-executable files are disabled hooks; hidden files, directories
	// and editor or package manager leftovers (name~, #name#, .bak, .orig,
	// .rej, .swp, .tmp, .dpkg-*, .rpmnew, .rpmsave) are skipped. A
	// directory that does not exist holds no hooks.
	Dir string
	// Commands are executables (paths, no arguments) run after Dir's
	// hooks for every event, with the same arguments and environment.
	Commands []string
	// Timeout per hook; the hook's whole process group is killed when it
	// runs out. Zero means DefaultTimeout.
	Timeout time.Duration
	// MaxOutput bounds the bytes of output kept per hook. Zero means
	// DefaultMaxOutput.
	MaxOutput int
	// Node is this node's name or address, given as FSHA_NODE.
	Node string
}

// Runner runs hooks.
type Runner struct {
	log       *zap.Logger
	cfg       Config
	waitDelay time.Duration
	killWait  time.Duration

	mu   sync.Mutex
	last map[Event]Result // the latest run of each event, for fsha checks
}

// NewRunner returns a Runner for cfg.
func NewRunner(log *zap.Logger, cfg Config) *Runner {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxOutput <= 0 {
		cfg.MaxOutput = DefaultMaxOutput
	}
	return &Runner{
		log:       log.Named("hooks"),
		cfg:       cfg,
		waitDelay: defaultWaitDelay,
		killWait:  defaultKillWait,
		last:      map[Event]Result{},
	}
}

// Last returns the latest run of each event that ran, in the order of
// Events, with when it ended.
func (r *Runner) Last() []Result {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Result
	for _, ev := range Events {
		if res, ok := r.last[ev]; ok {
			out = append(out, res)
		}
	}
	return out
}

// Vars are the details of one event.
type Vars struct {
	// VIP and Iface, for takeip, releaseip and updateip; OldIface, for
	// updateip, the interface the VIP left.
	VIP      netip.Prefix
	Iface    string
	OldIface string
	// Epoch of the VIP's lease, for takeip and releaseip (EnvEpoch); zero
	// leaves EnvEpoch unset.
	Epoch uint64
	// Env holds more variables for the hooks.
	Env map[string]string
}

// ScriptResult is what one hook did.
type ScriptResult struct {
	Name string // file name
	Path string
	// ExitCode is the hook's exit status, -1 if it did not exit by itself
	// (killed by a signal, or never started).
	ExitCode int
	// Signal that ended the hook, if one did.
	Signal string
	// TimedOut is set when the timeout ran out and the hook's process
	// group was killed.
	TimedOut bool
	// Err is set when the hook could not start, was cancelled, or would
	// not die.
	Err      error
	Duration time.Duration
	// Output is the hook's stdout and stderr, at most MaxOutput bytes.
	Output          string
	OutputTruncated bool
}

// OK reports whether the hook ran and exited with status 0.
func (s ScriptResult) OK() bool {
	return s.Err == nil && !s.TimedOut && s.ExitCode == 0
}

// Result is what the hooks of one event did.
type Result struct {
	Event    Event
	Scripts  []ScriptResult
	Duration time.Duration
	Ended    time.Time
	// Err is set when the event is unknown or the hooks directory could
	// not be read.
	Err error
}

// OK reports whether every hook succeeded.
func (r Result) OK() bool {
	return r.Err == nil && len(r.Failed()) == 0
}

// Failed returns the hooks that did not succeed.
func (r Result) Failed() []ScriptResult {
	var out []ScriptResult
	for _, s := range r.Scripts {
		if !s.OK() {
			out = append(out, s)
		}
	}
	return out
}

// Scripts lists the hooks that would run, in order.
func (r *Runner) Scripts() ([]string, error) {
	var out []string
	if r.cfg.Dir != "" {
		entries, err := os.ReadDir(r.cfg.Dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("read hooks dir %s: %w", r.cfg.Dir, err)
		}
		// ReadDir sorts by name
		for _, e := range entries {
			if skipName(e.Name()) {
				continue
			}
			p := filepath.Join(r.cfg.Dir, e.Name())
			st, err := os.Stat(p) // follows symlinks
			if err != nil {
				r.log.Warn("skipping hook", zap.String("path", p), zap.Error(err))
				continue
			}
			if !st.Mode().IsRegular() {
				continue
			}
			if st.Mode().Perm()&0o111 == 0 {
				r.log.Debug("hook disabled (not executable)", zap.String("path", p))
				continue
			}
			out = append(out, p)
		}
	}
	return append(out, r.cfg.Commands...), nil
}

// skipName reports names that are never hooks.
func skipName(name string) bool {
	if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") ||
		(strings.HasPrefix(name, "#") && strings.HasSuffix(name, "#")) {
		return true
	}
	for _, ext := range []string{".bak", ".orig", ".rej", ".swp", ".tmp", ".rpmnew", ".rpmsave", ".rpmorig", ".dpkg-old", ".dpkg-new", ".dpkg-dist", ".dpkg-bak", ".dpkg-tmp", ".ucf-old", ".ucf-new", ".ucf-dist"} {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// Run runs every hook for event, one after the other, each with the
// timeout, and returns what each did. A failing hook does not stop the
// others: the event already happened (the VIP is up), and each hook does
// its own job. When ctx is done the running hook is killed and the rest
// are reported as not run.
func (r *Runner) Run(ctx context.Context, event Event, vars Vars) (res Result) {
	start := time.Now()
	res = Result{Event: event}
	if !slices.Contains(Events, event) {
		res.Err = fmt.Errorf("run hooks: unknown event %q", event)
		return res
	}
	defer func() {
		res.Duration = time.Since(start)
		res.Ended = time.Now()
		r.mu.Lock()
		r.last[event] = res
		r.mu.Unlock()
	}()
	scripts, err := r.Scripts()
	if err != nil {
		res.Err = fmt.Errorf("run %s hooks: %w", event, err)
		r.log.Error("hooks not run", zap.String("event", string(event)), zap.Error(err))
		return res
	}
	args, env := r.argsEnv(event, vars)
	for _, p := range scripts {
		if err := ctx.Err(); err != nil {
			res.Scripts = append(res.Scripts, ScriptResult{Name: filepath.Base(p), Path: p, ExitCode: -1,
				Err: fmt.Errorf("not run: %w", err)})
			continue
		}
		sr := r.runOne(ctx, p, args, env)
		r.logResult(event, vars, sr)
		res.Scripts = append(res.Scripts, sr)
	}
	return res
}

// argsEnv builds the arguments (CTDB's: event, then for takeip and
// releaseip interface, address, mask bits) and the environment.
func (r *Runner) argsEnv(event Event, vars Vars) ([]string, []string) {
	args := []string{string(event)}
	set := map[string]string{EnvEvent: string(event)}
	if r.cfg.Node != "" {
		set[EnvNode] = r.cfg.Node
	}
	if vars.VIP.IsValid() {
		set[EnvVIP] = vars.VIP.Addr().String()
		set[EnvPrefix] = vars.VIP.String()
		set[EnvMaskBits] = strconv.Itoa(vars.VIP.Bits())
		switch event {
		case TakeIP, ReleaseIP:
			args = append(args, vars.Iface, vars.VIP.Addr().String(), strconv.Itoa(vars.VIP.Bits()))
		case UpdateIP:
			args = append(args, vars.OldIface, vars.Iface, vars.VIP.Addr().String(), strconv.Itoa(vars.VIP.Bits()))
		}
	}
	if vars.Iface != "" {
		set[EnvIface] = vars.Iface
	}
	if vars.OldIface != "" {
		set[EnvOldIface] = vars.OldIface
	}
	if vars.Epoch != 0 && (event == TakeIP || event == ReleaseIP) {
		set[EnvEpoch] = strconv.FormatUint(vars.Epoch, 10)
	}
	for k, v := range vars.Env {
		if _, ours := set[k]; !ours {
			set[k] = v
		}
	}
	env := make([]string, 0, len(os.Environ())+len(set))
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains(reservedEnv, k) {
			continue
		}
		if _, over := set[k]; over {
			continue
		}
		env = append(env, kv)
	}
	for k, v := range set {
		env = append(env, k+"="+v)
	}
	slices.Sort(env)
	return args, env
}

func (r *Runner) logResult(event Event, vars Vars, sr ScriptResult) {
	fields := []zap.Field{
		zap.String("event", string(event)),
		zap.String("script", sr.Name),
		zap.Int("exit_code", sr.ExitCode),
		zap.Duration("duration", sr.Duration),
		zap.String("output", sr.Output),
	}
	if vars.VIP.IsValid() {
		fields = append(fields, zap.Stringer("vip", vars.VIP), zap.String("iface", vars.Iface))
	}
	if sr.OutputTruncated {
		fields = append(fields, zap.Bool("output_truncated", true))
	}
	switch {
	case sr.OK() && event == Monitor:
		r.log.Debug("hook done", fields...)
	case sr.OK():
		r.log.Info("hook done", fields...)
	default:
		fields = append(fields, zap.Bool("timed_out", sr.TimedOut), zap.String("signal", sr.Signal), zap.Error(sr.Err))
		r.log.Warn("hook failed", fields...)
	}
}

// runOne runs one hook in a process group of its own and kills the whole
// group if the timeout runs out or ctx is done.
func (r *Runner) runOne(ctx context.Context, path string, args, env []string) (sr ScriptResult) {
	sr = ScriptResult{Name: filepath.Base(path), Path: path, ExitCode: -1}
	out := &boundedBuffer{max: r.cfg.MaxOutput}
	defer func() { sr.Output, sr.OutputTruncated = out.String(), out.truncated() }()

	cmd := exec.Command(path, args...)
	cmd.Env = env
	cmd.Dir = "/"
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = r.waitDelay
	start := time.Now()
	if err := cmd.Start(); err != nil {
		sr.Err = fmt.Errorf("start hook %s: %w", path, err)
		sr.Duration = time.Since(start)
		return sr
	}
	pid := cmd.Process.Pid

	// Learn that the hook exited without reaping it: until cmd.Wait
	// reaps it, its pid, and so its process group id, cannot be reused,
	// so killing -pid can only ever hit the hook's own group.
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		waitExitedNoReap(pid)
	}()
	timer := time.NewTimer(r.cfg.Timeout)
	defer timer.Stop()
	var killed bool
	select {
	case <-exited:
	case <-timer.C:
		sr.TimedOut = true
		killed = true
	case <-ctx.Done():
		sr.Err = fmt.Errorf("hook %s cancelled: %w", path, ctx.Err())
		killed = true
	}
	if killed {
		if err := unix.Kill(-pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			r.log.Error("cannot kill hook process group", zap.String("script", path), zap.Int("pgid", pid), zap.Error(err))
		}
		select {
		case <-exited:
		case <-time.After(r.killWait):
			sr.Duration = time.Since(start)
			sr.Err = errors.Join(sr.Err, fmt.Errorf("hook %s (pid %d) did not exit %v after SIGKILL", path, pid, r.killWait))
			go func() { _ = cmd.Wait() }() // reap it whenever it goes
			return sr
		}
	}
	err := cmd.Wait()
	sr.Duration = time.Since(start)
	if st := cmd.ProcessState; st != nil {
		sr.ExitCode = st.ExitCode()
		if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			sr.Signal = ws.Signal().String()
		}
	}
	if errors.Is(err, exec.ErrWaitDelay) && sr.Err == nil && !sr.TimedOut {
		// The hook exited, but something it started still holds its
		// output: not a failure of the hook, only output lost.
		r.log.Debug("hook left a process holding its output", zap.String("script", path))
	}
	return sr
}

// waitExitedNoReap blocks until process pid has exited, leaving it a
// zombie for cmd.Wait to reap.
func waitExitedNoReap(pid int) {
	for {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if !errors.Is(err, unix.EINTR) {
			return
		}
	}
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	mu      sync.Mutex
	max     int
	buf     []byte
	dropped int
}

func (b *boundedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.max - len(b.buf)
	if room > len(p) {
		room = len(p)
	}
	b.buf = append(b.buf, p[:room]...)
	b.dropped += len(p) - room
	return len(p), nil
}

func (b *boundedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf)
}

func (b *boundedBuffer) truncated() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dropped > 0
}
