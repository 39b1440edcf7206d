// Package lab builds throwaway test networks on this machine: file-server
// nodes and clients, each in its own network namespace, joined by a bridge
// in a "switch" namespace, with real kernel TCP stacks, real Samba and
// nfs-ganesha servers and real smbclient and libnfs clients.
//
// Every namespace is named fsha-<runid>-<role>, where runid is random per
// Lab, so parallel runs never collide. Addresses come from 198.18.0.0/24
// (RFC 2544 benchmarking space) and there is no default route: nothing a
// lab does can leave the machine. One bpffs is mounted under the lab's run
// directory, outside /sys, with a pin path per node (see DESIGN.md, "Lab
// pitfalls").
//
//	client c1 (eth0 198.18.0.101) --veth-- [ br0 in fsha-<id>-sw ] --veth-- node n1 (eth0 198.18.0.11, VIPs 198.18.0.201...)
//
// Close tears everything down in reverse order of creation and is safe to
// call twice; NewT registers it with t.Cleanup.
//
// NewCluster builds an fsha cluster on a lab: nodes running smbd,
// nfs-ganesha and `fsha up --nodes` on one shared directory, with the
// nodes file, public_addresses and gossip key written for them. Its nodes
// fail on demand as the OVD guide's tests want them to: NetworkDown (eth0
// down inside the node), PowerDown/PowerUp (SIGKILL of everything and link
// down; reboot), Freeze/Thaw (SIGSTOP/SIGCONT), KillFsha (the daemon
// only); Lab.Partition splits the switch with links up. Clients read and
// write through the VIPs with smbclient and nfs-cat, tell which node
// answered (WhoAnswers, Watch) and time reconnections (ProbeTCP). With
// ClusterOptions.CTDB every node also runs ctdbd for Samba's clustered
// databases and smbd with `clustering = yes` on it, as CTDB users run
// Samba, while fsha moves the VIPs (ctdb.go).
//
// Lab.PartitionOneWay, Loss, Duplicate, Cut, Unplug and Flap add network
// faults with nftables in the switch namespace (faults.go). A Monitor
// (Client.StartMonitor) asks on the wire, every 10 ms, who answers for
// each VIP, and reports overlaps (two nodes answering at once) and gaps
// (nobody answering) without trusting anything fsha says (monitor.go,
// monitorreport.go).
//
// Every fault the lab injects is recorded (Faults; a test injecting one by
// other means calls NoteFault), and Close reads the fsha logs for
// failovers: a VIP lost or given up, or taken from a node believed dead.
// One that no recorded fault explains is a false failover; NewT reports
// them to the test and RunWithFsha sums them up per package
// (failovers.go).
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Prefix is the namespace name prefix of every lab.
const Prefix = "fsha-"

const (
	bridgeName = "br0"
	// HostIface is the name of the lab interface inside every node and client.
	HostIface = "eth0"
	maxHosts  = 89
)

// Options configures a Lab. The zero value works.
type Options struct {
	// Dir is the run directory for configs, logs, shares and the bpffs. By
	// default a new directory under os.TempDir, removed by Close.
	Dir string
	// Keep leaves a default Dir in place after Close, for post-mortems.
	Keep bool
	// Fsha is the fsha binary the Node fsha helpers run.
	Fsha string
	// Log receives what the lab does; nil discards it.
	Log *zap.Logger
	// Tuned tunes the network for XDP_TX out of a veth (DESIGN.md's lab
	// pitfalls): transmit checksum offload off in every host and an
	// XDP_PASS program on the bridge side of every node's veth. Without
	// it (the default) the lab is what container networks are: a plain
	// bridge and veth pairs with default offloads, where fsha's auto
	// steering takes the tc path. FSHA_LAB_TUNED=1 turns it on for every
	// lab of a run.
	Tuned bool
	// IPv6 makes the lab dual-stack: every host's eth0 also gets an
	// address in Subnet6 (Host.Addr6), and clusters may have IPv6 VIPs
	// (ClusterOptions.IPv6VIPs).
	IPv6 bool
	// Topology is how the hosts are joined (topology.go); "" is Bridge,
	// or what FSHA_LAB_TOPOLOGY says. Tuned needs Bridge.
	Topology Topology
}

// TunedEnv turns Options.Tuned on for every lab of a run.
const TunedEnv = "FSHA_LAB_TUNED"

// Tuned reports whether the lab is tuned for XDP_TX out of a veth
// (Options.Tuned).
func (l *Lab) Tuned() bool { return l.opts.Tuned }

// Lab is one test network. Its methods are safe for concurrent use.
type Lab struct {
	// ID is the random run id in every namespace name.
	ID string
	// Dir is the run directory.
	Dir string
	// BPFFS is the bpffs mount point; each node pins under BPFFS/<role>.
	BPFFS string
	// Switch is the namespace that holds the bridge.
	Switch *Host

	opts    Options
	log     *zap.Logger
	passXDP *ebpf.Program

	mu       sync.Mutex
	undo     []undoStep
	closed   bool
	closeErr error
	nodes    []*Node
	clients  []*Client
	roles    map[string]bool
	procSeq  map[string]int
	procs    []*Process

	partMu  sync.Mutex
	side    map[string]string // bridge port -> bridge, for ports Partition moved
	bridges []string          // bridges Partition added

	vxMu  sync.Mutex
	vteps []vtep // a VXLAN lab's hosts, for their flood lists

	faults faultSet // the switch's nftables faults (faults.go)
	flog   faultLog // every fault injected, for the failover check (failovers.go)

	// failovers is what Close found in the fsha logs (guarded by mu).
	failovers    *FailoverReport
	failoversErr error
}

type undoStep struct {
	what string
	fn   func() error
}

// TB is the part of testing.TB that NewT uses, so that this package does
// not import testing into programs like the demo.
type TB interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
	TempDir() string
	Failed() bool
	Name() string
}

// NewT builds a lab for a test: its run directory is a t.TempDir (or, with
// FSHA_LAB_KEEP=1, a directory that outlives the test), and t.Cleanup
// closes it, failing the test if the teardown fails. When the test failed
// it logs the tail of every process's output and the run directory. Then
// it judges the failovers in the fsha logs (see Failovers): each false
// failover fails the test under CI=true (or FSHA_LAB_FALSE_FAILOVERS=fail)
// and is logged otherwise, and the count goes to the package's summary
// (RunWithFsha). The caller must have checked privileges with
// tools/testenv first.
func NewT(t TB, opts Options) *Lab {
	t.Helper()
	if opts.Dir == "" {
		if os.Getenv("FSHA_LAB_KEEP") == "1" {
			dir, err := os.MkdirTemp("", "fsha-lab-")
			if err != nil {
				t.Fatalf("lab run dir: %v", err)
			}
			opts.Dir = dir
		} else {
			opts.Dir = t.TempDir()
		}
	}
	l, err := New(opts)
	if err != nil {
		t.Fatalf("build lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range l.Processes() {
				t.Logf("--- %s in %s (pid %d) output:\n%s", p.Name, p.host.NS, p.PID(), p.Tail(3000))
				if p.LogPath != "" {
					t.Logf("--- %s in %s (pid %d) log %s:\n%s", p.Name, p.host.NS, p.PID(), p.LogPath, p.LogTail(4000))
				}
			}
			kept := "removed with the test's TempDir; FSHA_LAB_KEEP=1 keeps it"
			if os.Getenv("FSHA_LAB_KEEP") == "1" {
				kept = "kept"
			}
			t.Logf("lab %s run dir %s (%s)", l.ID, l.Dir, kept)
		}
		if err := l.Close(); err != nil {
			t.Errorf("tear down lab %s: %v", l.ID, err)
		}
		l.checkFailovers(t)
	})
	return l
}

// New builds an empty lab: the run directory, the bpffs and the switch
// namespace with its bridge. Add nodes and clients with AddNode and
// AddClient.
func New(opts Options) (_ *Lab, err error) {
	if opts.Log == nil {
		opts.Log = zap.NewNop()
	}
	if os.Getenv(TunedEnv) == "1" {
		opts.Tuned = true
	}
	if opts.Topology == "" {
		t, err := ParseTopology(os.Getenv(TopologyEnv))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", TopologyEnv, err)
		}
		opts.Topology = t
	}
	if _, err := ParseTopology(string(opts.Topology)); err != nil {
		return nil, err
	}
	if opts.Tuned && opts.Topology != Bridge {
		return nil, fmt.Errorf("a tuned lab needs the bridge topology, not %s", opts.Topology)
	}
	id, err := newRunID()
	if err != nil {
		return nil, err
	}
	l := &Lab{ID: id, opts: opts, log: opts.Log.Named("lab").With(zap.String("lab", id)),
		roles: map[string]bool{}, procSeq: map[string]int{}}
	defer func() {
		if err != nil {
			err = errors.Join(err, l.Close())
		}
	}()

	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("remove memlock rlimit: %w", err)
	}
	if opts.Dir == "" {
		dir, err := os.MkdirTemp("", Prefix+id+"-")
		if err != nil {
			return nil, fmt.Errorf("create run dir: %w", err)
		}
		opts.Dir = dir
		if !opts.Keep {
			l.push("remove run dir", func() error { return os.RemoveAll(dir) })
		}
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("create run dir: %w", err)
	}
	l.Dir = opts.Dir

	if err := l.writeOwner(); err != nil {
		return nil, err
	}
	if err := l.mountBPFFS(); err != nil {
		return nil, err
	}
	if opts.Tuned {
		if l.passXDP, err = newPassXDP(); err != nil {
			return nil, err
		}
		l.push("close xdp pass program", l.passXDP.Close)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	go l.watchStalls(stop, done)
	l.push("stop the stall watch", func() error { close(stop); <-done; return nil })

	if l.Switch, err = l.newHost("sw"); err != nil {
		return nil, err
	}
	if err := l.setUpSwitch(); err != nil {
		return nil, err
	}
	l.log.Info("lab up", zap.String("dir", l.Dir), zap.String("topology", string(opts.Topology)))
	return l, nil
}

var roleRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// newRunID returns 6 random lower-case hex digits.
func newRunID() (string, error) {
	var b [3]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random run id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// NSName is the namespace name of role in this lab.
func (l *Lab) NSName(role string) string { return Prefix + l.ID + "-" + role }

// push records how to undo a step; Close runs the steps in reverse. After
// Close, it undoes the step at once.
func (l *Lab) push(what string, fn func() error) {
	l.mu.Lock()
	if !l.closed {
		l.undo = append(l.undo, undoStep{what: what, fn: fn})
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	if err := fn(); err != nil {
		l.log.Warn("undo after close", zap.String("step", what), zap.Error(err))
	}
}

// Cleanup registers fn to run when the lab closes, before everything
// created until now is torn down.
func (l *Lab) Cleanup(what string, fn func() error) { l.push(what, fn) }

// Close stops every process, deletes every namespace, unmounts the bpffs
// and removes the run directory (unless kept), in reverse order of
// creation. Errors are joined; a second Close returns the first's result.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return l.closeErr
	}
	l.closed = true
	steps := l.undo
	l.undo = nil
	l.mu.Unlock()

	// The logs, before the teardown stops the daemons (what they log
	// then is no failover) and removes the run directory.
	rep, rerr := l.readFailovers(time.Now())
	l.mu.Lock()
	l.failovers, l.failoversErr = &rep, rerr
	l.mu.Unlock()

	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		if err := steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", steps[i].what, err))
		}
	}
	err := errors.Join(errs...)
	l.mu.Lock()
	l.closeErr = err
	l.mu.Unlock()
	l.log.Info("lab down", zap.Error(err))
	return err
}

func (l *Lab) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

func (l *Lab) mountBPFFS() error {
	dir := filepath.Join(l.Dir, "bpffs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create bpffs mount point: %w", err)
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	l.BPFFS = dir
	l.push("unmount bpffs", func() error {
		// Lazy: a process that still holds a pin's directory open must
		// not keep the mount, the pins and the programs alive.
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return err
		}
		return nil
	})
	return nil
}

// claimRole checks that role is a valid, unused name.
func (l *Lab) claimRole(role string) error {
	if !roleRE.MatchString(role) {
		return fmt.Errorf("role %q: want 1-10 of [a-z0-9], starting with a letter", role)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return errors.New("lab closed")
	}
	if l.roles[role] {
		return fmt.Errorf("role %q already in the lab", role)
	}
	if len(l.roles) >= maxHosts {
		return errors.New("lab full")
	}
	l.roles[role] = true
	return nil
}

// Processes returns every process started in the lab, in start order.
func (l *Lab) Processes() []*Process {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Process(nil), l.procs...)
}

// Nodes returns the nodes in the order they were added.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// Clients returns the clients in the order they were added.
func (l *Lab) Clients() []*Client {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Client(nil), l.clients...)
}

// Node is a file server: a namespace with eth0 on the bridge (in a tuned
// lab with an XDP_PASS program on the bridge side of its veth, so that
// XDP_TX/REDIRECT out of eth0 is delivered) and a pin path in the lab's
// bpffs.
type Node struct {
	*Host
	// Index counts nodes from 1.
	Index int
	// PinPath is this node's directory in the lab's bpffs, for --pin-path.
	PinPath string
}

// Client is a namespace with eth0 on the bridge.
type Client struct {
	*Host
	// Index counts clients from 1.
	Index int
}

// AddNode adds a node namespace fsha-<id>-<role> with the next node address.
func (l *Lab) AddNode(role string) (*Node, error) {
	if err := l.claimRole(role); err != nil {
		return nil, err
	}
	l.mu.Lock()
	idx := len(l.nodes) + 1
	l.mu.Unlock()
	h, err := l.addHost(role, NodeAddr(idx), true)
	if err != nil {
		return nil, fmt.Errorf("add node %s: %w", role, err)
	}
	n := &Node{Host: h, Index: idx, PinPath: filepath.Join(l.BPFFS, role)}
	if err := os.MkdirAll(n.PinPath, 0o700); err != nil {
		return nil, fmt.Errorf("create pin path: %w", err)
	}
	l.mu.Lock()
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()
	return n, nil
}

// AddClient adds a client namespace fsha-<id>-<role> with the next client address.
func (l *Lab) AddClient(role string) (*Client, error) {
	if err := l.claimRole(role); err != nil {
		return nil, err
	}
	l.mu.Lock()
	idx := len(l.clients) + 1
	l.mu.Unlock()
	h, err := l.addHost(role, ClientAddr(idx), false)
	if err != nil {
		return nil, fmt.Errorf("add client %s: %w", role, err)
	}
	c := &Client{Host: h, Index: idx}
	l.mu.Lock()
	l.clients = append(l.clients, c)
	l.mu.Unlock()
	return c, nil
}

// NodeAndClientT adds node n1 and client c1, the cast of most single-node
// tests, and, with vip, puts lab.VIP(1) on n1's eth0. It fails t if the
// lab cannot.
func (l *Lab) NodeAndClientT(t TB, vip bool) (*Node, *Client, netip.Prefix) {
	t.Helper()
	n, err := l.AddNode("n1")
	if err != nil {
		t.Fatalf("%v", err)
	}
	c, err := l.AddClient("c1")
	if err != nil {
		t.Fatalf("%v", err)
	}
	v := VIP(1)
	if vip {
		if err := n.AddAddr(v); err != nil {
			t.Fatalf("%v", err)
		}
	}
	return n, c, v
}

// addHost creates the namespace, its eth0 on the lab's topology and the
// address; in a tuned lab (Options.Tuned) it also switches transmit
// checksum offload off on eth0 and, for nodes, attaches the XDP_PASS
// program to the bridge-side end.
func (l *Lab) addHost(role string, addr netip.Prefix, node bool) (*Host, error) {
	h, err := l.newHost(role)
	if err != nil {
		return nil, err
	}
	h.Addr, h.node = addr, node
	var sw netlink.Link
	switch l.opts.Topology {
	case Macvlan:
		err = l.addMacvlan(h)
	case VXLAN:
		if _, err = l.addVeth(h, underlayIface); err == nil {
			err = l.addVXLAN(h, addr)
		}
	default:
		sw, err = l.addVeth(h, HostIface)
	}
	if err != nil {
		return nil, err
	}
	eth, err := h.nl.LinkByName(HostIface)
	if err != nil {
		return nil, fmt.Errorf("find %s: %w", HostIface, err)
	}
	if err := h.nl.AddrAdd(eth, &netlink.Addr{IPNet: prefixNet(addr)}); err != nil {
		return nil, fmt.Errorf("add address %s: %w", addr, err)
	}
	if l.opts.IPv6 {
		h.Addr6 = hostAddr6(int(addr.Addr().As4()[3]))
		// no duplicate address detection: usable at once, as the lab's
		// addresses are unique by construction
		a6 := &netlink.Addr{IPNet: prefixNet(h.Addr6), Flags: unix.IFA_F_NODAD}
		if err := h.nl.AddrAdd(eth, a6); err != nil {
			return nil, fmt.Errorf("add address %s: %w", h.Addr6, err)
		}
	}
	if err := h.nl.LinkSetUp(eth); err != nil {
		return nil, fmt.Errorf("%s up: %w", HostIface, err)
	}
	if l.opts.Tuned {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Pitfall: a veth sends partial checksums; after XDP_TX nobody
		// completes them and the receiver drops the segment.
		if out, err := h.Run(ctx, "ethtool", "-K", HostIface, "tx", "off"); err != nil {
			return nil, fmt.Errorf("switch tx checksum offload off: %w: %s", err, out)
		}
		if node {
			if err := l.attachPassXDP(role, sw.Attrs().Index); err != nil {
				return nil, err
			}
		}
	}
	l.log.Info("host up", zap.String("ns", h.NS), zap.Stringer("addr", addr), zap.Stringer("addr6", h.Addr6), zap.Bool("node", node),
		zap.Bool("tuned", l.opts.Tuned), zap.String("topology", string(l.opts.Topology)))
	return h, nil
}
