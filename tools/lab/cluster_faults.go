package lab

// The faults of a whole cluster node: its network, its power, a freeze.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
)

// NetworkDown takes the node's eth0 down from inside the node: processes
// run on, the node is cut off. NetworkUp undoes it.
func (n *ClusterNode) NetworkDown() error { return n.LinkDown() }

// NetworkUp brings eth0 back after NetworkDown.
func (n *ClusterNode) NetworkUp() error { return n.LinkUp() }

// PowerDown crashes the node as a power cut would: its links go down
// (eth0, then its extra and VIP interfaces: left up, the dying servers'
// FINs and RSTs would leave through them), then SIGKILL to every one of its processes (fsha first, servers with
// their children, ctdbd's whole session: recoverd, eventd, the cluster
// lock's helper; with Gluster its glusterd, brick and client, its mount
// detached). Addresses and the data plane stay in the namespace,
// unanswered; PowerUp reboots the node.
func (n *ClusterNode) PowerDown() error {
	procs := n.Processes()
	n.logger().Info("power down")
	n.lab.beginFault("power/"+n.Role, "power down "+n.Role, n.Role)
	// The link first: killed processes close their sockets, and the FINs
	// of a dying server must not reach clients a real power cut leaves
	// hanging.
	errs := []error{n.LinkDown(), n.setExtraLinks(false)}
	for _, p := range procs {
		if err := p.SignalSession(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, err)
		}
	}
	// The node's gluster dies with the rest, before the wait for the
	// rest: a process killed in a FUSE request its client has taken (the
	// unlock of CTDB's cluster lock as its helper exits, say) waits,
	// unkillable, for the client's answer, and the client waits out the
	// volume's ping timeout for bricks behind the cut link (a process of
	// a killed session outlived the 5 s wait below in the iofreeze bench
	// on gluster). The client's death ends every request on the mount.
	errs = append(errs, n.powerDownGluster())
	for _, p := range procs {
		errs = append(errs, p.Kill())
	}
	return errors.Join(errs...)
}

// PowerUp boots a powered-down node: what a reboot clears goes (the VIPs
// on eth0, the data plane, the run dir: /run is a tmpfs), the link comes
// up, then the servers (with CTDB: ctdbd first, smbd once ctdbd is back in
// the cluster) and fsha start again (fsha with the options of its last
// StartFsha). The node's state dir (/var/lib/fsha) stays, as on a disk.
func (n *ClusterNode) PowerUp(ctx context.Context) error {
	if len(n.Processes()) > 0 {
		return fmt.Errorf("power up %s: processes still run", n.Role)
	}
	n.logger().Info("power up")
	if err := emptyDir(n.RunDir); err != nil {
		return fmt.Errorf("power up %s: %w", n.Role, err)
	}
	held, err := n.HeldVIPs()
	if err != nil {
		return err
	}
	for _, v := range held {
		if err := n.DelAddr(v); err != nil {
			return err
		}
	}
	if _, err := n.Fsha(ctx, "unload"); err != nil {
		return fmt.Errorf("power up %s: unload data plane: %w", n.Role, err)
	}
	if err := errors.Join(n.LinkUp(), n.setExtraLinks(true)); err != nil {
		return err
	}
	if err := n.StartServers(ctx); err != nil {
		return err
	}
	if n.cluster.opts.CTDBMovesIPs {
		n.lab.endFault("power/" + n.Role)
		return nil
	}
	n.mu.Lock()
	opts := n.fshaOpts
	n.mu.Unlock()
	if _, err = n.StartFsha(ctx, opts); err != nil {
		return err
	}
	n.lab.endFault("power/" + n.Role)
	return nil
}

// Freeze stops (SIGSTOP) every process of the node, children included, as
// a hung VM: the network stays up, nothing answers. Thaw wakes them.
func (n *ClusterNode) Freeze() error {
	n.logger().Info("freeze")
	n.lab.beginFault("freeze/"+n.Role, "freeze "+n.Role+" (SIGSTOP)", n.Role)
	var errs []error
	for _, p := range n.Processes() {
		errs = append(errs, p.SignalSession(syscall.SIGSTOP))
	}
	return errors.Join(errs...)
}

// Thaw wakes (SIGCONT) the processes Freeze stopped, servers first.
func (n *ClusterNode) Thaw() error {
	n.logger().Info("thaw")
	procs := n.Processes()
	slices.Reverse(procs)
	var errs []error
	for _, p := range procs {
		errs = append(errs, p.SignalSession(syscall.SIGCONT))
	}
	n.lab.endFault("freeze/" + n.Role)
	return errors.Join(errs...)
}

// emptyDir removes what dir holds and keeps dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("empty %s: %w", dir, err)
	}
	var errs []error
	for _, e := range entries {
		errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}
