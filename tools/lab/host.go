package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
)

// Host is one namespace of the lab: a node, a client or the switch.
type Host struct {
	// Role is the short name, e.g. "n1"; also the name of the bridge-side veth.
	Role string
	// NS is the namespace name, fsha-<id>-<role>.
	NS string
	// Addr is the address of eth0 (invalid for the switch).
	Addr netip.Prefix
	// Addr6 is eth0's IPv6 address in a dual-stack lab (Options.IPv6),
	// else invalid.
	Addr6 netip.Prefix
	// Dir is this host's directory in the run directory: configs, logs.
	Dir string

	lab  *Lab
	ns   netns.NsHandle
	nl   *netlink.Handle
	node bool // a file-server node (its faults explain failovers)
}

// nsCmdTimeout bounds the ip/ethtool commands the lab runs itself.
const nsCmdTimeout = 10 * time.Second

func (l *Lab) newHost(role string) (*Host, error) {
	h := &Host{Role: role, NS: l.NSName(role), Dir: filepath.Join(l.Dir, role), lab: l, ns: netns.None()}
	if err := os.MkdirAll(h.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create host dir: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nsCmdTimeout)
	defer cancel()
	// ip netns add sets up /run/netns mount propagation so that the name
	// is visible in the mount namespaces of `ip netns exec`.
	if out, err := runCmd(ctx, "ip", "netns", "add", h.NS); err != nil {
		return nil, fmt.Errorf("create namespace %s: %w: %s", h.NS, err, out)
	}
	l.push("delete namespace "+h.NS, func() error {
		if _, err := os.Stat(filepath.Join("/run/netns", h.NS)); errors.Is(err, os.ErrNotExist) {
			return nil // CleanupStale took it
		}
		ctx, cancel := context.WithTimeout(context.Background(), nsCmdTimeout)
		defer cancel()
		if out, err := runCmd(ctx, "ip", "netns", "delete", h.NS); err != nil {
			return fmt.Errorf("%w: %s", err, out)
		}
		return nil
	})
	var err error
	if h.ns, err = netns.GetFromName(h.NS); err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", h.NS, err)
	}
	l.push("close namespace handle "+h.NS, h.ns.Close)
	if h.nl, err = netlink.NewHandleAt(h.ns); err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", h.NS, err)
	}
	l.push("close netlink handle "+h.NS, func() error { h.nl.Close(); return nil })
	lo, err := h.nl.LinkByName("lo")
	if err != nil {
		return nil, fmt.Errorf("find lo in %s: %w", h.NS, err)
	}
	if err := h.nl.LinkSetUp(lo); err != nil {
		return nil, fmt.Errorf("lo up in %s: %w", h.NS, err)
	}
	return h, nil
}

// Netlink returns a netlink handle bound to the host's namespace.
func (h *Host) Netlink() *netlink.Handle { return h.nl }

// IP is the address of eth0 without its prefix.
func (h *Host) IP() netip.Addr { return h.Addr.Addr() }

// Do runs fn on an OS thread switched into the host's namespace. Sockets
// fn creates stay in the namespace after it returns. If the thread cannot
// be switched back it is thrown away, never reused.
func (h *Host) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(h.ns); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter %s: %w", h.NS, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// stay locked: the runtime ends the thread with the goroutine
			errc <- errors.Join(ferr, fmt.Errorf("leave %s: %w", h.NS, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a listener inside the namespace. The lab closes it on Close
// if the caller has not.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen %s %s in %s: %w", network, addr, h.NS, err)
	}
	h.lab.push("close listener "+addr+" in "+h.Role, func() error { return ignoreClosed(ln.Close()) })
	return ln, nil
}

// Dial connects from inside the namespace. The lab closes the connection
// on Close if the caller has not.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		var d net.Dialer
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s %s from %s: %w", network, addr, h.NS, err)
	}
	h.lab.push("close connection to "+addr+" from "+h.Role, func() error { return ignoreClosed(c.Close()) })
	return c, nil
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// Sysctl writes a sysctl of the namespace, e.g. "net/ipv4/conf/eth0/arp_ignore".
func (h *Host) Sysctl(key, value string) error {
	return h.Do(func() error {
		return os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644)
	})
}

// AddAddr adds (or replaces) an address on eth0, e.g. a VIP.
func (h *Host) AddAddr(p netip.Prefix) error { return h.AddAddrOn(HostIface, p) }

// DelAddr removes an address from eth0.
func (h *Host) DelAddr(p netip.Prefix) error {
	eth, err := h.nl.LinkByName(HostIface)
	if err != nil {
		return fmt.Errorf("find %s in %s: %w", HostIface, h.NS, err)
	}
	if err := h.nl.AddrDel(eth, &netlink.Addr{IPNet: prefixNet(p)}); err != nil {
		return fmt.Errorf("delete %s in %s: %w", p, h.NS, err)
	}
	return nil
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Run runs a command inside the namespace (ip netns exec) in its own
// session and returns its combined output. The context bounds it.
func (h *Host) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	return runCmd(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
}

// Output runs a command inside the namespace like Run but returns only its
// stdout; a failure's error carries the stderr.
func (h *Host) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	err := runCmdSplit(ctx, &stdout, &stderr, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("%s in %s: %w: %s", name, h.NS, err, bytes.TrimSpace(stderr.Bytes()))
	}
	return stdout.Bytes(), nil
}

func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	var out bytes.Buffer
	err := runCmdSplit(ctx, &out, &out, name, args...)
	return out.Bytes(), err
}

// runCmdSplit runs a command in its own session; the context kills it (by
// PID) when done.
func runCmdSplit(ctx context.Context, stdout, stderr io.Writer, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("%w (%w)", err, ctx.Err())
	}
	return err
}

// WaitListening waits until a TCP socket listens on port in the namespace.
func (h *Host) WaitListening(ctx context.Context, port uint16) error {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		var ok bool
		err := h.Do(func() error {
			var err error
			ok, err = listening(port)
			return err
		})
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("nothing listens on port %d in %s: %w", port, h.NS, ctx.Err())
		case <-tick.C:
		}
	}
}

// listening reads the calling thread's namespace's TCP tables.
func listening(port uint16) (bool, error) {
	socks, err := tcpSockets()
	for _, s := range socks {
		if s.State == TCPListen && s.Local.Port() == port {
			return true, nil
		}
	}
	return false, err
}

// logger is the lab logger with the host's namespace.
func (h *Host) logger() *zap.Logger { return h.lab.log.With(zap.String("ns", h.NS)) }

// eth0 returns the host's lab interface.
func (h *Host) eth0() (netlink.Link, error) {
	lk, err := h.nl.LinkByName(HostIface)
	if err != nil {
		return nil, fmt.Errorf("find %s in %s: %w", HostIface, h.NS, err)
	}
	return lk, nil
}

// MAC is the hardware address of eth0: who answered, as the client's
// neighbour table and captured frames show it.
func (h *Host) MAC() (net.HardwareAddr, error) {
	lk, err := h.eth0()
	if err != nil {
		return nil, err
	}
	return lk.Attrs().HardwareAddr, nil
}

// LinkDown takes eth0 down from inside the namespace: the host's network
// is gone but its processes run on.
func (h *Host) LinkDown() error {
	lk, err := h.eth0()
	if err != nil {
		return err
	}
	h.lab.beginFault("link/"+h.Role, HostIface+" down in "+h.Role, h.Role)
	if err := h.nl.LinkSetDown(lk); err != nil {
		return fmt.Errorf("%s down in %s: %w", HostIface, h.NS, err)
	}
	h.logger().Info("link down")
	return nil
}

// LinkUp brings eth0 back up.
func (h *Host) LinkUp() error {
	lk, err := h.eth0()
	if err != nil {
		return err
	}
	if err := h.nl.LinkSetUp(lk); err != nil {
		return fmt.Errorf("%s up in %s: %w", HostIface, h.NS, err)
	}
	h.lab.endFault("link/" + h.Role)
	h.logger().Info("link up")
	return nil
}

// Addrs lists the IPv4 and IPv6 addresses on eth0 (link-local ones
// excluded), as `ip addr show eth0` in the namespace would.
func (h *Host) Addrs() ([]netip.Prefix, error) { return h.AddrsOn(HostIface) }
