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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/fsha/fsha/control/admin"
)

// ClusterOptions configures NewCluster. The zero value is three nodes with
// smbd, nfs-ganesha and fsha each, three VIPs and one client.
type ClusterOptions struct {
	// Nodes is the number of file-server nodes (2 to MaxClusterNodes); 0 is 3.
	Nodes int
	// VIPs is the number of public addresses; 0 is one per node.
	VIPs int
	// VIPIfaces is every VIP's interface list in public_addresses (a
	// preference order); nil is eth0.
	VIPIfaces []string
	// PublicNet puts the IPv4 VIPs in PublicSubnet, a network of their own
	// that the clients also have an address in and the nodes do not (with
	// VIPIfaces: the VIPs' interfaces are the nodes' only way there, so
	// their answers leave through them).
	PublicNet bool
	// SecondNet puts the last IPv4 VIP on every node's eth1, in
	// PublicSubnet, on a second bridge (SecondBridge) that only the
	// nodes' and the clients' eth1 join; the clients have an address
	// there, and so does every node (.11 for n1), unless SecondNetBare.
	// With IPv6VIPs the last IPv6 VIP goes there too, in PublicSubnet6.
	// A node's public interfaces are then on two networks, each at its
	// own MAC, as with a client VLAN beside the nodes' own. Not with
	// PublicNet.
	SecondNet bool
	// SecondNetBare: with SecondNet, the nodes have no address of their
	// own on the second network, only the VIPs they hold (CTDB's public
	// interfaces often have none).
	SecondNetBare bool
	// ExtraIfaces are interfaces every node gets besides eth0 before its
	// servers and fsha start: veths into the bridge, without an address
	// (ifaces.go).
	ExtraIfaces []string
	// IPv6VIPs adds that many IPv6 public addresses (VIP6) after the
	// IPv4 ones, in the same public_addresses: a dual-stack cluster. It
	// needs a dual-stack lab (Options.IPv6).
	IPv6VIPs int
	// Clients is the number of client namespaces; 0 is 1, -1 is none.
	Clients int
	// Lock gives every node `--lock` on a file of the shared file system,
	// like CTDB's recovery lock; fsha requires it for two nodes.
	Lock bool
	// FailbackSticky runs `--failback sticky`: VIPs stay where they are
	// when a node comes back. By default a node gets its share back.
	FailbackSticky bool
	// NoServers starts neither smbd nor nfs-ganesha; fsha's health check
	// is then `cmd:true`.
	NoServers bool
	// ManualFsha lists nodes (by index, from 1) whose fsha the caller
	// starts itself with StartFsha, e.g. with a wrong gossip key.
	ManualFsha []int
	// FshaArgs are added to every node's `fsha up`.
	FshaArgs []string
	// FshaBin runs this fsha binary instead of the lab's (an older
	// release: a rolling upgrade restarts the nodes with the lab's).
	FshaBin string
	// CTDB runs ctdbd on every node, for Samba's clustered databases only
	// (fsha moves the VIPs), and smbd clustered on it (ctdb.go). ctdbd
	// starts before smbd, at start and on PowerUp.
	CTDB bool
	// CTDBFast gives ctdbd the fast tunables profile (1 s keepalives,
	// leader timeout 3 s) instead of CTDB's defaults.
	CTDBFast bool
	// CTDBMovesIPs makes it a CTDB cluster as users run it without fsha:
	// ctdbd holds the public addresses and fails them over itself (its
	// 10.interface event script, its tickles), and no fsha runs. It
	// needs CTDB. The baseline of the iofreeze bench.
	CTDBMovesIPs bool
	// NFSState shares nfs-ganesha's NFSv4 client records and statd's
	// directory between the nodes (on the shared storage), with a D-Bus
	// bus per node and the shipped NFS hooks installed (ganesha.go).
	NFSState bool
	// Gluster puts the share and the locks on a replicated GlusterFS
	// volume, a brick per node, FUSE-mounted on every node (gluster.go):
	// replica 3 for 3 nodes (or a multiple), replica 2 with an arbiter on
	// a witness host for 2. It combines with CTDB (CTDB's cluster lock on
	// the volume too), the GlusterFS HA guide's whole layout. PowerDown
	// and PowerUp take the node's gluster down and up with it; Freeze
	// and KillFsha leave it running.
	Gluster bool
	// GlusterOptions are volume options (name, value) set after the lab's
	// own (gluster.go) and before the volume starts.
	GlusterOptions [][2]string
}

// MaxClusterNodes bounds ClusterOptions.Nodes.
const MaxClusterNodes = 16

// ClusterStartTimeout bounds how long NewCluster waits for the servers,
// the daemons and a first stable assignment of the VIPs.
const ClusterStartTimeout = 30 * time.Second

// Cluster is an fsha cluster in a lab: nodes n1..nN on the bridge, each
// running smbd and nfs-ganesha on one shared directory (the lab's file
// system plays the cluster file system: every namespace sees it) and
// `fsha up --nodes`, with clients c1..cM. The lab writes the nodes file,
// public_addresses and the gossip key. Node i has PNN i-1 and address
// NodeAddr(i); VIP i is VIP(i).
type Cluster struct {
	Lab     *Lab
	Nodes   []*ClusterNode
	Clients []*Client
	// VIPs are the public addresses, in public_addresses order.
	VIPs []netip.Prefix
	// Share is the shared directory: //VIP/share and nfs://VIP/export.
	// With Gluster, node 1's mount of it (ClusterNode.ShareDir is each
	// node's).
	Share string
	// Files fsha reads: nodes, public_addresses, the gossip key, and the
	// lock file (empty without ClusterOptions.Lock; with Gluster, node 1's
	// path: ClusterNode.LockFile is each node's).
	NodesFile, PublicAddressesFile, KeyFile, LockFile string
	// CTDBLockFile is CTDB's cluster lock on the shared file system
	// (empty without ClusterOptions.CTDB).
	CTDBLockFile string
	// Witness is the gluster arbiter host of a two-node cluster with
	// ClusterOptions.Gluster, nil otherwise.
	Witness *Host

	opts    ClusterOptions
	gluster *glusterCluster // nil without ClusterOptions.Gluster

	// smbdGate and smbdClaimed order the starts of clustered smbd
	// (startClusteredSmbd).
	smbdGate    sync.Mutex
	smbdClaimed *Process
}

// ClusterNode is one node of a Cluster.
type ClusterNode struct {
	*Node
	// PNN is the node's number in the nodes file (Index-1).
	PNN int
	// RunDir holds the admin socket (--run-dir); HooksDir the event
	// scripts (--hooks-dir, empty unless a test adds some).
	RunDir, HooksDir string
	// CTDBBase is ctdbd's CTDB_BASE: its config, sockets, databases and
	// log (empty without ClusterOptions.CTDB).
	CTDBBase string

	cluster *Cluster
	gluster *glusterHost // nil without ClusterOptions.Gluster

	mu                         sync.Mutex
	fsha, smbd, ganesha, ctdbd *Process
	dbus                       *Process // NFSState: Ganesha's bus
	fshaOpts                   FshaOptions
	client                     *admin.Client
}

// NewCluster builds a cluster in l, starts everything and, unless some
// nodes are ManualFsha, waits until every VIP is held by exactly one node
// and all nodes agree.
func NewCluster(ctx context.Context, l *Lab, opts ClusterOptions) (_ *Cluster, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 2 || opts.Nodes > MaxClusterNodes {
		return nil, fmt.Errorf("cluster of %d nodes: want 2 to %d", opts.Nodes, MaxClusterNodes)
	}
	if opts.VIPs == 0 {
		opts.VIPs = opts.Nodes
	}
	maxVIPs := MaxClusterVIPs
	if opts.PublicNet || opts.SecondNet {
		maxVIPs = 50 // VIP i is .200+i of PublicSubnet there
	}
	if opts.VIPs < 0 || opts.VIPs > maxVIPs {
		return nil, fmt.Errorf("%d VIPs: want 1 to %d", opts.VIPs, maxVIPs)
	}
	if opts.IPv6VIPs < 0 || opts.IPv6VIPs > 50 || (opts.IPv6VIPs > 0 && !l.IPv6()) {
		return nil, fmt.Errorf("%d IPv6 VIPs: want 0 to 50, on a dual-stack lab (Options.IPv6)", opts.IPv6VIPs)
	}
	switch {
	case opts.Clients == 0:
		opts.Clients = 1
	case opts.Clients < 0:
		opts.Clients = 0
	}
	if opts.CTDB && opts.NoServers {
		return nil, errors.New("cluster options: CTDB serves smbd, NoServers runs none")
	}
	if opts.NFSState && opts.NoServers {
		return nil, errors.New("cluster options: NFSState is about nfs-ganesha, NoServers runs none")
	}
	if opts.CTDBFast && !opts.CTDB {
		return nil, errors.New("cluster options: CTDBFast without CTDB")
	}
	if opts.CTDBMovesIPs && (!opts.CTDB || len(opts.ManualFsha) > 0) {
		return nil, errors.New("cluster options: CTDBMovesIPs needs CTDB and runs no fsha")
	}
	for _, i := range opts.ManualFsha {
		if i < 1 || i > opts.Nodes {
			return nil, fmt.Errorf("ManualFsha: no node %d", i)
		}
	}
	if _, err := l.fshaBin(); err != nil {
		return nil, err
	}
	c := &Cluster{Lab: l, opts: opts}
	dir := filepath.Join(l.Dir, "cluster")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create cluster dir: %w", err)
	}
	if c.Share, err = l.NewShare("data"); err != nil {
		return nil, err
	}
	if opts.Lock {
		// on the shared file system, beside the share, as CTDB's
		// recovery lock sits on the cluster file system
		c.LockFile = filepath.Join(filepath.Dir(c.Share), "fsha.lock")
	}
	if opts.CTDB {
		if _, err := os.Stat(ctdbMutexHelper); err != nil {
			return nil, fmt.Errorf("ctdb cluster lock helper: %w (make deps installs ctdb)", err)
		}
		c.CTDBLockFile = filepath.Join(filepath.Dir(c.Share), "ctdb.reclock")
	}
	var nodes, pa strings.Builder
	for i := 1; i <= opts.Nodes; i++ {
		fmt.Fprintln(&nodes, NodeAddr(i).Addr())
	}
	if opts.SecondNet && opts.PublicNet {
		return nil, errors.New("cluster options: SecondNet and PublicNet both use PublicSubnet")
	}
	for i := 1; i <= opts.VIPs; i++ {
		v, ifaces := VIP(i), c.vipIfaces()
		if opts.PublicNet {
			v = PublicVIP(i)
		}
		if opts.SecondNet && i == opts.VIPs {
			v, ifaces = PublicVIP(i), []string{secondNetIface}
		}
		c.VIPs = append(c.VIPs, v)
		fmt.Fprintf(&pa, "%s %s\n", v, strings.Join(ifaces, ","))
	}
	for i := 1; i <= opts.IPv6VIPs; i++ {
		v, ifaces := VIP6(i), c.vipIfaces()
		if opts.SecondNet && i == opts.IPv6VIPs {
			v, ifaces = PublicVIP6(i), []string{secondNetIface}
		}
		c.VIPs = append(c.VIPs, v)
		fmt.Fprintf(&pa, "%s %s\n", v, strings.Join(ifaces, ","))
	}
	c.NodesFile = filepath.Join(dir, "nodes")
	c.PublicAddressesFile = filepath.Join(dir, "public_addresses")
	if err := os.WriteFile(c.NodesFile, []byte(nodes.String()), 0o644); err != nil {
		return nil, fmt.Errorf("write nodes: %w", err)
	}
	if err := os.WriteFile(c.PublicAddressesFile, []byte(pa.String()), 0o644); err != nil {
		return nil, fmt.Errorf("write public_addresses: %w", err)
	}
	if c.KeyFile, err = WriteGossipKey(filepath.Join(dir, "gossip.key")); err != nil {
		return nil, err
	}

	for i := 1; i <= opts.Nodes; i++ {
		n, err := l.AddNode("n" + strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		cn := &ClusterNode{Node: n, PNN: i - 1, HooksDir: filepath.Join(n.Dir, "hooks"), cluster: c}
		if err := os.MkdirAll(cn.HooksDir, 0o755); err != nil {
			return nil, fmt.Errorf("create hooks dir: %w", err)
		}
		if cn.RunDir, err = l.runDir(n); err != nil {
			return nil, err
		}
		if opts.CTDB {
			if cn.CTDBBase, err = l.ctdbBase(n); err != nil {
				return nil, err
			}
		}
		if err := cn.setUpIfaces(ctx); err != nil {
			return nil, err
		}
		c.Nodes = append(c.Nodes, cn)
	}
	if opts.NFSState {
		if err := c.setupNFSState(); err != nil {
			return nil, err
		}
	}
	for i := 1; i <= opts.Clients; i++ {
		cl, err := l.AddClient("c" + strconv.Itoa(i))
		if err != nil {
			return nil, err
		}
		if opts.PublicNet {
			if err := cl.AddAddr(PublicClientAddr(i)); err != nil {
				return nil, err
			}
		}
		if opts.SecondNet {
			if _, err := cl.AddIfaceOn(secondNetIface, SecondBridge); err != nil {
				return nil, err
			}
			if err := cl.AddAddrOn(secondNetIface, PublicClientAddr(i)); err != nil {
				return nil, err
			}
			if l.IPv6() {
				if err := cl.AddAddrOn(secondNetIface, PublicClientAddr6(i)); err != nil {
					return nil, err
				}
			}
		}
		c.Clients = append(c.Clients, cl)
	}

	// Every daemon of a cluster starts at once on the machine's CPUs (each
	// verifies its programs): a large lab gets longer, as in StartFsha.
	startTimeout := ClusterStartTimeout * time.Duration(max(1, opts.Nodes/4))
	if opts.CTDB {
		startTimeout += CTDBStartTimeout
	}
	if opts.Gluster {
		startTimeout += GlusterStartTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	if opts.Gluster {
		// the volume first: ctdbd's lock and the servers' share are on it
		if err := c.startGluster(ctx); err != nil {
			return nil, err
		}
		if err := c.prepareGlusterShare(); err != nil {
			return nil, err
		}
	}
	if opts.CTDB {
		// every ctdbd up and OK before any smbd, as at a cluster's boot
		if err := c.startCTDB(ctx); err != nil {
			return nil, err
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, n := range c.Nodes {
		g.Go(func() error { return n.StartServers(gctx) })
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	// A node whose fsha the test starts later gets its data plane now,
	// from a standalone run stopped at once (its pins stay): a first start
	// creates the flows map, which keeps a CPU of the shared kernel for
	// ~0.3 s, long enough to cost the other nodes their leases
	// (stallwatch.go), an artifact of the lab the test is not about.
	g, gctx = errgroup.WithContext(ctx)
	for _, n := range c.Nodes {
		if slices.Contains(opts.ManualFsha, n.Index) {
			g.Go(func() error { return n.primeDataPlane(gctx, c.VIPs) })
		}
	}
	if opts.CTDBMovesIPs {
		if err := g.Wait(); err != nil {
			return nil, err
		}
		if err := c.WaitCTDBIPs(ctx, startTimeout); err != nil {
			return nil, fmt.Errorf("cluster start: %w", err)
		}
		l.log.Info("CTDB cluster up", zap.Int("nodes", opts.Nodes), zap.Int("vips", opts.VIPs))
		return c, nil
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	g, gctx = errgroup.WithContext(ctx)
	for _, n := range c.Nodes {
		if !slices.Contains(opts.ManualFsha, n.Index) {
			g.Go(func() error { _, err := n.StartFsha(gctx, FshaOptions{}); return err })
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if len(opts.ManualFsha) == 0 {
		if err := c.WaitConverged(ctx, startTimeout, c.Nodes...); err != nil {
			return nil, fmt.Errorf("cluster start: %w", err)
		}
	}
	l.log.Info("cluster up", zap.Int("nodes", opts.Nodes), zap.Int("vips", opts.VIPs))
	return c, nil
}

// primeDataPlane loads the node's data plane with a standalone fsha up and
// stops it: the programs and maps stay pinned for the node's cluster run.
func (n *ClusterNode) primeDataPlane(ctx context.Context, vips []netip.Prefix) error {
	p, err := n.FshaUp(ctx, vips)
	if err != nil {
		return fmt.Errorf("prime the data plane of %s: %w", n.Role, err)
	}
	if err := p.Stop(); err != nil {
		return fmt.Errorf("stop the data plane's first run on %s: %w", n.Role, err)
	}
	return nil
}

// WriteGossipKey writes a new random gossip secret to path (mode 0600) and
// returns path.
func WriteGossipKey(path string) (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("gossip key: %w", err)
	}
	if err := os.WriteFile(path, []byte(hex.EncodeToString(b[:])+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write gossip key: %w", err)
	}
	return path, nil
}

// runDir is the node's fsha run directory. A unix socket path must fit in
// 108 bytes: when the lab's directory is too deep, the run directory goes
// to a short temporary directory removed with the lab.
func (l *Lab) runDir(n *Node) (string, error) {
	dir := filepath.Join(n.Dir, "run")
	if len(admin.SocketPath(dir)) < 100 {
		return dir, os.MkdirAll(dir, 0o700)
	}
	dir, err := os.MkdirTemp("", Prefix+l.ID+"-"+n.Role+"-")
	if err != nil {
		return "", fmt.Errorf("create run dir: %w", err)
	}
	l.push("remove run dir of "+n.Role, func() error { return os.RemoveAll(dir) })
	return dir, nil
}

// Node returns node i (from 1).
func (c *Cluster) Node(i int) *ClusterNode { return c.Nodes[i-1] }

// NodeByAddr returns the node with address addr (as fsha prints it), or nil.
func (c *Cluster) NodeByAddr(addr string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.IP().String() == addr {
			return n
		}
	}
	return nil
}

// NodeByRole returns the node with role (n1...), or nil.
func (c *Cluster) NodeByRole(role string) *ClusterNode {
	for _, n := range c.Nodes {
		if n.Role == role {
			return n
		}
	}
	return nil
}

// Others returns the nodes other than the given ones.
func (c *Cluster) Others(not ...*ClusterNode) []*ClusterNode {
	var out []*ClusterNode
	for _, n := range c.Nodes {
		if !slices.Contains(not, n) {
			out = append(out, n)
		}
	}
	return out
}

// StartServers starts smbd and nfs-ganesha on the shared directory (unless
// the cluster has NoServers). With CTDB, ctdbd first, unless it runs:
// smbd starts once this node's ctdbd sees every running ctdbd OK. With
// Gluster, the node's glusterd, brick and mount before all, unless its
// mount runs (after a power cut).
func (n *ClusterNode) StartServers(ctx context.Context) error {
	c := n.cluster
	if err := n.joinGluster(ctx); err != nil {
		return err
	}
	if c.opts.NoServers {
		return nil
	}
	var (
		smbd *Process
		err  error
	)
	if c.opts.CTDB {
		if err := n.JoinCTDB(ctx); err != nil {
			return err
		}
		smbd, err = n.startClusteredSmbd(ctx)
	} else {
		smbd, err = n.StartSmbdWith(ctx, n.ShareDir(), SmbdOptions{})
	}
	if err != nil {
		return err
	}
	ganesha, err := n.startGanesha(ctx)
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.smbd, n.ganesha = smbd, ganesha
	n.mu.Unlock()
	return nil
}

// startClusteredSmbd starts the node's smbd on its ctdbd, alone while no
// other node's clustered smbd runs. A clustered smbd claims its version in
// CTDB's g_lock.tdb as it starts: it takes the record's read lock and,
// finding no version there (the first smbd of the cluster), upgrades to a
// write lock to set it; two first smbds that start together both hold the
// read lock, both ask for the write lock, and one gets
// NT_STATUS_POSSIBLE_DEADLOCK and exits 255 ("smbd_claim_version: smbd
// (null) already running, refusing to start"; Samba 4.17, source3/smbd/
// server.c). That failed the lab's set-up 1 time in 4 with GlusterFS and
// CTDB (ci49's TestGlusterPowerCut). Once one runs, the version is there
// and the others only take the read lock: they start together.
func (n *ClusterNode) startClusteredSmbd(ctx context.Context) (*Process, error) {
	c := n.cluster
	opts := SmbdOptions{CTDBSocket: n.CTDBSocket(), NetbiosName: CTDBNetbiosName}
	c.smbdGate.Lock()
	if p := c.smbdClaimed; p != nil && !p.Exited() {
		c.smbdGate.Unlock()
		return n.StartSmbdWith(ctx, n.ShareDir(), opts)
	}
	defer c.smbdGate.Unlock()
	p, err := n.StartSmbdWith(ctx, n.ShareDir(), opts)
	if err == nil {
		c.smbdClaimed = p
	}
	return p, err
}

// Processes returns the node's daemons (fsha, smbd, nfs-ganesha, ctdbd, dbus-daemon)
// that run. ctdbd daemonizes: it runs while anything of the session of
// the process the lab started does (Process.SessionAlive).
func (n *ClusterNode) Processes() []*Process {
	n.mu.Lock()
	defer n.mu.Unlock()
	var out []*Process
	for _, p := range []*Process{n.fsha, n.smbd, n.ganesha, n.dbus} {
		if p != nil && !p.Exited() {
			out = append(out, p)
		}
	}
	if n.ctdbd != nil && n.ctdbd.SessionAlive() {
		out = append(out, n.ctdbd)
	}
	return out
}
