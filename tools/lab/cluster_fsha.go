package lab

// The nodes' fsha daemons: their command line, start, stop and kill.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.uber.org/zap"
)

// FshaOptions tunes StartFsha.
type FshaOptions struct {
	// KeyFile replaces the cluster's gossip key file.
	KeyFile string
	// NoKey runs gossip with no key (--insecure-gossip).
	NoKey bool
	// Args are added to the command line.
	Args []string
	// Bin runs this fsha binary instead of the lab's (an older release,
	// for rolling upgrades).
	Bin string
}

// fshaArgs is the node's `fsha up` command line.
func (n *ClusterNode) fshaArgs(opts FshaOptions) ([]string, error) {
	c := n.cluster
	bin, err := n.lab.fshaBin()
	if err != nil {
		return nil, err
	}
	if c.opts.FshaBin != "" {
		bin = c.opts.FshaBin
	}
	if opts.Bin != "" {
		bin = opts.Bin
	}
	argv := []string{bin, "up",
		"--nodes", c.NodesFile, "--public-addresses", c.PublicAddressesFile,
		"--pin-path", n.PinPath, "--run-dir", n.RunDir, "--hooks-dir", n.HooksDir,
		"--log-level", "debug",
	}
	switch {
	case opts.NoKey:
		argv = append(argv, "--insecure-gossip")
	case opts.KeyFile != "":
		argv = append(argv, "--gossip-key", opts.KeyFile)
	default:
		argv = append(argv, "--gossip-key", c.KeyFile)
	}
	if lock := n.LockFile(); lock != "" {
		argv = append(argv, "--lock", lock)
	}
	if c.opts.FailbackSticky {
		argv = append(argv, "--failback", "sticky")
	}
	if c.opts.NoServers {
		argv = append(argv, "--check", "cmd:true")
	}
	if m := os.Getenv(SteerModeEnv); m != "" && !slices.Contains(c.opts.FshaArgs, "--steer-mode") && !slices.Contains(opts.Args, "--steer-mode") {
		argv = append(argv, "--steer-mode", m)
	}
	argv = append(argv, c.opts.FshaArgs...)
	return append(argv, opts.Args...), nil
}

// SteerModeEnv gives every fsha of a run's clusters --steer-mode (unless
// the test sets one): FSHA_LAB_TUNED=1 FSHA_LAB_STEER_MODE=xdp runs the
// planned-move tests on veth's native XDP_TX path.
const SteerModeEnv = "FSHA_LAB_STEER_MODE"

// StartFsha starts `fsha up` on the node and waits until its admin socket
// answers. The options are kept for PowerUp.
func (n *ClusterNode) StartFsha(ctx context.Context, opts FshaOptions) (*Process, error) {
	argv, err := n.fshaArgs(opts)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	if n.fsha != nil && !n.fsha.Exited() {
		n.mu.Unlock()
		return nil, fmt.Errorf("fsha already runs on %s (pid %d)", n.Role, n.fsha.PID())
	}
	n.fshaOpts = opts
	n.mu.Unlock()
	// Each node its own state dir (the default, /var/lib/fsha, is the
	// host's): by the environment, which older releases ignore.
	env := append([]string{"FSHA_STATE_DIR=" + filepath.Join(n.Dir, "state")}, n.hookEnv()...)
	if n.CTDBBase != "" {
		// the node's own ctdbd, for the CTDB election kick
		// (--ctdb-socket; a flag would stop an older release)
		env = append(env, "FSHA_CTDB_SOCKET="+n.CTDBSocket())
	}
	p, err := n.StartWith("fsha-up", StartOptions{Env: env}, argv...)
	if err != nil {
		return nil, err
	}
	n.mu.Lock()
	n.fsha = p
	n.mu.Unlock()
	// The daemons of a cluster start together and share the machine's
	// CPUs (each verifies its programs): a large lab gets longer.
	ctx, cancel := context.WithTimeout(ctx, FshaStartTimeout*time.Duration(max(1, len(n.cluster.Nodes)/4)))
	defer cancel()
	for {
		qctx, qcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := n.Status(qctx)
		qcancel()
		if err == nil {
			n.daemonBack("fsha-up")
			return p, nil
		}
		select {
		case <-p.Done():
			return nil, fmt.Errorf("fsha up on %s exited (%v): %s", n.Role, p.ExitErr(), p.Tail(2000))
		case <-ctx.Done():
			return nil, errors.Join(fmt.Errorf("fsha up on %s: admin socket does not answer: %w: %w", n.Role, err, ctx.Err()), p.Stop())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FshaProcess is the node's current `fsha up`, nil before StartFsha.
func (n *ClusterNode) FshaProcess() *Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.fsha
}

// StopFsha stops `fsha up` the orderly way (SIGTERM): it releases its VIPs
// and leaves the cluster.
func (n *ClusterNode) StopFsha() error {
	p := n.FshaProcess()
	if p == nil {
		return nil
	}
	if !p.Exited() {
		n.lab.beginFault("fsha/"+n.Role, "stop fsha on "+n.Role+" (a restart)", n.Role)
	}
	return p.Stop()
}

// KillFsha crashes only the node's fsha daemon (SIGKILL); the servers and
// the network stay up, and the VIPs stay on eth0.
func (n *ClusterNode) KillFsha() error {
	p := n.FshaProcess()
	if p == nil {
		return errors.New("no fsha on " + n.Role)
	}
	n.logger().Info("kill fsha", zap.Int("pid", p.PID()))
	n.lab.beginFault("fsha/"+n.Role, "kill fsha on "+n.Role, n.Role)
	return p.Kill()
}
