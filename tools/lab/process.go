package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
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
)

// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
const DefaultStopTimeout = 5 * time.Second

// StartOptions tunes Host.StartWith.
type StartOptions struct {
	// Stdin feeds the process; nil is /dev/null.
	Stdin io.Reader
	// Stdout replaces the stdout log file, e.g. with a pipe.
	Stdout io.Writer
	// Env is added to the test process's environment.
	Env []string
	// StopTimeout overrides DefaultStopTimeout.
	StopTimeout time.Duration
	// LogPath is a log the daemon writes itself (smbd's log.smbd,
	// ctdbd's, ganesha's), shown with its output when a test fails: the
	// run dir is gone then, unless FSHA_LAB_KEEP=1.
	LogPath string
}

// Process is a command running inside a namespace in its own session, its
// output in files under the host's directory. Stop, Signal and the session
// sweep act on PIDs only: never on names.
type Process struct {
	// Name names the log files: <host dir>/<name>.stdout and .stderr
	// (<name>.2.stdout... for later starts under the same name).
	Name string
	// Args is the command line run inside the namespace.
	Args []string
	// StdoutPath and StderrPath are the log files (StdoutPath is empty
	// when StartOptions.Stdout replaced it).
	StdoutPath, StderrPath string
	// LogPath is StartOptions.LogPath.
	LogPath string

	host        *Host
	cmd         *exec.Cmd
	stopTimeout time.Duration
	done        chan struct{}
	waitErr     error
	stopOnce    sync.Once
	stopErr     error
}

// Start runs argv inside the namespace; see StartWith.
func (h *Host) Start(name string, argv ...string) (*Process, error) {
	return h.StartWith(name, StartOptions{}, argv...)
}

// StartWith runs argv inside the namespace with `ip netns exec`, which execs
// it: the PID is the command's own. It gets its own session (setsid), so a
// daemon that signals its process group, as smbd does, cannot hit the test.
// The lab stops it on Close if the caller has not.
func (h *Host) StartWith(name string, opts StartOptions, argv ...string) (_ *Process, err error) {
	if len(argv) == 0 {
		return nil, errors.New("start: no command")
	}
	if h.lab.isClosed() {
		return nil, errors.New("start: lab closed")
	}
	base := h.logBase(name)
	p := &Process{
		Name: filepath.Base(base), Args: argv, StderrPath: base + ".stderr", LogPath: opts.LogPath,
		host: h, stopTimeout: opts.StopTimeout, done: make(chan struct{}),
	}
	if p.stopTimeout <= 0 {
		p.stopTimeout = DefaultStopTimeout
	}
	var files []*os.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, argv...)...)
	cmd.Stdin = opts.Stdin
	if opts.Stdout != nil {
		cmd.Stdout = opts.Stdout
	} else {
		p.StdoutPath = base + ".stdout"
		f, err := os.Create(p.StdoutPath)
		if err != nil {
			return nil, fmt.Errorf("create stdout log: %w", err)
		}
		files = append(files, f)
		cmd.Stdout = f
	}
	ef, err := os.Create(p.StderrPath)
	if err != nil {
		return nil, fmt.Errorf("create stderr log: %w", err)
	}
	files = append(files, ef)
	cmd.Stderr = ef
	cmd.Env = append(os.Environ(), opts.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", argv[0], h.NS, err)
	}
	p.cmd = cmd
	go func() {
		p.waitErr = cmd.Wait()
		close(p.done)
	}()
	h.logger().Info("started", zap.String("name", p.Name), zap.Int("pid", p.PID()), zap.Strings("args", argv))
	h.lab.mu.Lock()
	h.lab.procs = append(h.lab.procs, p)
	h.lab.mu.Unlock()
	h.lab.push("stop "+p.Name+" in "+h.Role, p.Stop)
	return p, nil
}

// logBase picks <dir>/<name>, or <dir>/<name>.N when name was used before.
func (h *Host) logBase(name string) string {
	l := h.lab
	l.mu.Lock()
	defer l.mu.Unlock()
	key := h.Role + "/" + name
	l.procSeq[key]++
	if n := l.procSeq[key]; n > 1 {
		name += "." + strconv.Itoa(n)
	}
	return filepath.Join(h.Dir, name)
}

// PID is the process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Host is where the process runs.
func (p *Process) Host() *Host { return p.host }

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited tells whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr is the result of the exited process (nil for status 0); call it
// after Done.
func (p *Process) ExitErr() error {
	<-p.done
	return p.waitErr
}

// Wait waits for the process to exit on its own and returns its result.
func (p *Process) Wait(ctx context.Context) error {
	select {
	case <-p.done:
		return p.waitErr
	case <-ctx.Done():
		return fmt.Errorf("wait for %s: %w", p.Name, ctx.Err())
	}
}

// Signal sends sig to the process (by PID), e.g. SIGSTOP and SIGCONT to
// freeze a server or SIGKILL to crash it.
func (p *Process) Signal(sig os.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	if s, ok := sig.(syscall.Signal); ok {
		p.processFault(s)
	}
	return p.cmd.Process.Signal(sig)
}

// WaitStopped waits, at most d, until every thread of the process is
// stopped. kill(2) returns before a SIGSTOP has stopped each thread: one
// still running, a FUSE daemon's reader say, may answer one more request
// after Signal returned.
func (p *Process) WaitStopped(d time.Duration) error {
	task := fmt.Sprintf("/proc/%d/task", p.PID())
	for end := time.Now().Add(d); ; {
		running, err := runningThreads(task)
		if err != nil {
			return err
		}
		if running == 0 {
			return nil
		}
		if time.Now().After(end) {
			return fmt.Errorf("%s (pid %d): %d threads still not stopped after %v", p.Name, p.PID(), running, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runningThreads counts the threads under task (a /proc/PID/task) that
// are not stopped (state T or t).
func runningThreads(task string) (int, error) {
	ents, err := os.ReadDir(task)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(task, e.Name(), "stat"))
		if err != nil {
			continue // the thread ended
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return 0, fmt.Errorf("%s/%s/stat: no state in %q", task, e.Name(), b)
		}
		if st := b[i+2]; st != 'T' && st != 't' {
			n++
		}
	}
	return n, nil
}

// SignalSession sends sig, by PID, to the process and to everything left
// in its session: a daemon's children too (smbd forks one per client).
// SIGSTOP freezes the whole server, SIGCONT wakes it.
func (p *Process) SignalSession(sig syscall.Signal) error {
	pids, err := sessionMembers(p.PID())
	if err != nil {
		return err
	}
	if !p.Exited() && !slices.Contains(pids, p.PID()) {
		pids = append(pids, p.PID())
	}
	if len(pids) == 0 {
		return os.ErrProcessDone
	}
	p.processFault(sig)
	var errs []error
	for _, pid := range pids {
		if err := syscall.Kill(pid, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signal %d: %w", pid, err))
		}
	}
	return errors.Join(errs...)
}

// SessionAlive tells whether the process runs or anything of its session
// does: a daemon that forks away from the started process and lets it
// exit (ctdbd) runs on in the session that process led.
func (p *Process) SessionAlive() bool {
	if !p.Exited() {
		return true
	}
	pids, err := sessionMembers(p.PID())
	return err != nil || len(pids) > 0
}

// Kill crashes the process: SIGKILL to it and to everything in its
// session at once, then waits (bounded) until it is gone. Unlike Stop, it
// leaves no chance to clean up, like a power cut.
func (p *Process) Kill() error {
	if err := p.SignalSession(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("%s (pid %d) survives SIGKILL", p.Name, p.PID())
	}
	return killSession(p.PID())
}

// Stop ends the process: SIGTERM (after SIGCONT, in case it was stopped),
// SIGKILL once the stop timeout passes, then SIGKILL to anything left in
// its session. It returns nil once everything is gone, whatever the exit
// status (see ExitErr); calling it again returns the same result.
func (p *Process) Stop() error {
	p.stopOnce.Do(func() { p.stopErr = p.stop() })
	return p.stopErr
}

func (p *Process) stop() error {
	if !p.Exited() {
		p.processFault(syscall.SIGTERM)
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(p.stopTimeout)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
			p.host.logger().Warn("did not stop on SIGTERM, killing", zap.String("name", p.Name), zap.Int("pid", p.PID()))
			_ = p.cmd.Process.Kill()
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				return fmt.Errorf("%s (pid %d) survives SIGKILL", p.Name, p.PID())
			}
		}
	}
	return killSession(p.PID())
}

// killSession SIGKILLs, by PID, the processes left in the session that the
// process sid leads (children a daemon did not take down with it). Linux
// does not reuse a PID while a session carries it as id, so this never hits
// a stranger.
func killSession(sid int) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := sessionMembers(sid)
		if err != nil || len(pids) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %s of session %d survive SIGKILL", describePids(pids), sid)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// describePids names each process: its pid, command, state and where in
// the kernel it waits (wchan), e.g. "7663 (smbd, D, request_wait_answer)".
func describePids(pids []int) string {
	var out []string
	for _, pid := range pids {
		d := strconv.Itoa(pid)
		dir := filepath.Join("/proc", d)
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		wchan, _ := os.ReadFile(filepath.Join(dir, "wchan"))
		state := "?"
		if stat, err := os.ReadFile(filepath.Join(dir, "stat")); err == nil {
			if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
				if f := strings.Fields(string(stat[i+1:])); len(f) > 0 {
					state = f[0]
				}
			}
		}
		out = append(out, fmt.Sprintf("%s (%s, %s, %s)", d, strings.TrimSpace(string(comm)), state, strings.TrimSpace(string(wchan))))
	}
	return strings.Join(out, ", ")
}

func sessionMembers(sid int) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid pgrp session ...; comm may hold anything
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) < 4 || f[0] == "Z" {
			continue
		}
		if s, err := strconv.Atoi(f[3]); err == nil && s == sid {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// Output returns the process's logs so far (stdout then stderr).
func (p *Process) Output() string {
	var b strings.Builder
	for _, f := range []string{p.StdoutPath, p.StderrPath} {
		if f == "" {
			continue
		}
		data, _ := os.ReadFile(f)
		b.Write(data)
	}
	return b.String()
}

// Tail returns the last n bytes of Output, for error messages.
func (p *Process) Tail(n int) string {
	s := p.Output()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

// LogTail returns the last n bytes of the daemon's own log (LogPath), or
// "" without one.
func (p *Process) LogTail(n int) string {
	if p.LogPath == "" {
		return ""
	}
	data, err := os.ReadFile(p.LogPath)
	if err != nil {
		return err.Error()
	}
	return tail(string(data), n)
}

// WaitLog waits until the process's logs contain substr. It fails early
// when the process exits first.
func (p *Process) WaitLog(ctx context.Context, substr string) error {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(p.Output(), substr) {
			return nil
		}
		select {
		case <-p.done:
			if strings.Contains(p.Output(), substr) {
				return nil
			}
			return fmt.Errorf("%s exited (%v) before logging %q: %s", p.Name, p.waitErr, substr, p.Tail(2000))
		case <-ctx.Done():
			return fmt.Errorf("%s did not log %q: %w: %s", p.Name, substr, ctx.Err(), p.Tail(2000))
		case <-tick.C:
		}
	}
}
