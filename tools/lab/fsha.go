package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/fsha/fsha/dataplane"
)

// FshaStartTimeout bounds how long FshaUp waits for the daemon to track.
const FshaStartTimeout = 20 * time.Second

// Flow is one entry of `fsha flows --json`.
type Flow = dataplane.FlowRecord

// FshaBin is the lab's fsha binary ("" when none was given).
func (l *Lab) FshaBin() string { return l.opts.Fsha }

func (l *Lab) fshaBin() (string, error) {
	if l.opts.Fsha == "" {
		return "", errors.New("no fsha binary: set lab.Options.Fsha")
	}
	return l.opts.Fsha, nil
}

// WritePublicAddresses writes a CTDB-format public_addresses file with the
// VIPs on eth0 into the node's directory and returns its path.
func (n *Node) WritePublicAddresses(vips ...netip.Prefix) (string, error) {
	var b strings.Builder
	for _, v := range vips {
		fmt.Fprintf(&b, "%s %s\n", v, HostIface)
	}
	path := filepath.Join(n.Dir, "public_addresses")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return "", fmt.Errorf("write public_addresses: %w", err)
	}
	return path, nil
}

// FshaUp starts `fsha up` on the node with the VIPs and the node's pin path
// (debug logging, so flow events are in its log), and waits until it
// tracks. args are added to the command line.
func (n *Node) FshaUp(ctx context.Context, vips []netip.Prefix, args ...string) (*Process, error) {
	bin, err := n.lab.fshaBin()
	if err != nil {
		return nil, err
	}
	pa, err := n.WritePublicAddresses(vips...)
	if err != nil {
		return nil, err
	}
	argv := append([]string{bin, "up", "--public-addresses", pa, "--pin-path", n.PinPath, "--log-level", "debug"}, args...)
	p, err := n.Start("fsha-up", argv...)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, FshaStartTimeout)
	defer cancel()
	if err := p.WaitLog(ctx, `"msg":"tracking"`); err != nil {
		return nil, errors.Join(err, p.Stop())
	}
	n.daemonBack("fsha-up")
	return p, nil
}

// Fsha runs an fsha command on the node with the node's pin path, e.g.
// Fsha(ctx, "flows", "--json"), and returns its stdout.
func (n *Node) Fsha(ctx context.Context, args ...string) ([]byte, error) {
	bin, err := n.lab.fshaBin()
	if err != nil {
		return nil, err
	}
	return n.Output(ctx, bin, append(args, "--pin-path", n.PinPath)...)
}

// Flows returns `fsha flows --json` of the node.
func (n *Node) Flows(ctx context.Context) ([]Flow, error) {
	out, err := n.Fsha(ctx, "flows", "--json")
	if err != nil {
		return nil, err
	}
	var flows []Flow
	if err := json.Unmarshal(out, &flows); err != nil {
		return nil, fmt.Errorf("parse fsha flows --json: %w: %s", err, out)
	}
	return flows, nil
}

// Counters returns `fsha counters --json` of the node.
func (n *Node) Counters(ctx context.Context) (dataplane.Counters, error) {
	c, _, err := n.CountersAndSteering(ctx)
	return c, err
}

// CountersAndSteering reads `fsha counters --json`: the counters, and how
// each interface steers a drain's old connections.
func (n *Node) CountersAndSteering(ctx context.Context) (dataplane.Counters, []dataplane.SteerState, error) {
	var c struct {
		dataplane.Counters
		Steering []dataplane.SteerState `json:"steering"`
	}
	out, err := n.Fsha(ctx, "counters", "--json")
	if err != nil {
		return c.Counters, nil, err
	}
	if err := json.Unmarshal(out, &c); err != nil {
		return c.Counters, nil, fmt.Errorf("parse fsha counters --json: %w: %s", err, out)
	}
	return c.Counters, c.Steering, nil
}
