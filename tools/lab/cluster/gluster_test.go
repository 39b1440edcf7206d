package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// The GlusterFS HA guide's layout (ClusterOptions.Gluster): the share is a
// replicated GlusterFS volume, a brick per node, FUSE-mounted on every
// node in the node's namespace, so a power cut or a partition cuts the
// storage too. The oracles are the SMB client's bytes and the bricks'
// files read directly from the file system, never what fsha says.

const (
	// glusterBudget bounds a whole test: a cluster start with the volume
	// (and CTDB), a power cut, a reboot and the self-heal.
	glusterBudget = 6 * time.Minute
	// glusterReadBack bounds, from the power cut, the wait for a read
	// through the dead node's VIP: the survivors' clients wait out the
	// volume's ping timeout for the dead brick, clustered smbd waits for
	// CTDB's recovery.
	glusterReadBack = 90 * time.Second
	// glusterAttempt bounds one smbclient read.
	glusterAttempt = 15 * time.Second
	// glusterHeal bounds the self-heal of a file written while a brick
	// was down, once the brick is back.
	glusterHeal = 90 * time.Second
)

func requireGluster(t *testing.T) {
	t.Helper()
	for _, cmd := range []string{"glusterd", "glusterfs", "gluster", "nsenter"} {
		testenv.RequireCommand(t, cmd)
	}
}

// randomData is n random bytes: content no stale copy can match by chance.
func randomData(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// brickHas checks, reading the brick directly, that it holds name in the
// share with exactly data.
func brickHas(n *lab.ClusterNode, name string, data []byte) error {
	got, err := os.ReadFile(filepath.Join(n.Brick(), "share", name))
	if err != nil {
		return fmt.Errorf("brick of %s: %w", n.Role, err)
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("brick of %s holds %d bytes of %s that differ from the %d written", n.Role, len(got), name, len(data))
	}
	return nil
}

// TestGlusterPowerCut: the guide's whole layout on three nodes: ctdbd for
// Samba's databases, smbd clustered on it serving each node's mount of a
// replica 3 volume, fsha moving the VIPs. A file of random bytes is put
// through the VIP of a node (not CTDB's leader, whose loss costs CTDB an
// election on top); the node's power is cut; the file is read back
// through the same VIP, now on a survivor, byte for byte (by SMB, then
// by NFSv4 from the survivor's nfs-ganesha on its mount), and the
// survivors' bricks hold it. A second file written meanwhile reaches the
// cut node's brick by self-heal once it is back.
func TestGlusterPowerCut(t *testing.T) {
	requireGluster(t)
	testenv.RequireCommand(t, "ctdbd")
	began := time.Now()
	e := newEnvWithin(t, lab.ClusterOptions{Gluster: true, CTDB: true}, glusterBudget)
	e.waitConverged(e.c.Nodes...)
	t.Logf("cluster of 3 with the gluster volume and CTDB up and converged after %v", time.Since(began).Round(time.Millisecond))

	var leader *lab.ClusterNode
	e.eventually("the ctdbd agree on a leader", func(ctx context.Context) error {
		var err error
		leader, err = e.c.CTDBLeader(ctx)
		return err
	})
	var victim *lab.ClusterNode
	for _, n := range e.c.Nodes {
		if n != leader && len(e.held(n)) > 0 {
			victim = n
			break
		}
	}
	if victim == nil {
		t.Fatalf("no node but the CTDB leader %s holds a VIP", leader.Role)
	}
	survivors := e.c.Others(victim)
	vip := e.vipOf(victim)

	name := "gluster-a.bin"
	data := randomData(t, 256<<10)
	e.retry("put "+name+" through "+vip.String(), func(ctx context.Context) error {
		return e.client.PutSMB(ctx, vip.Addr(), name, data)
	})
	for _, n := range e.c.Nodes {
		if err := brickHas(n, name, data); err != nil {
			t.Fatalf("before the cut: %v", err)
		}
	}

	cut := time.Now()
	e.powerDown(victim)
	var newOwner *lab.ClusterNode
	e.eventually(vip.String()+" on a survivor", func(context.Context) error {
		var err error
		newOwner, err = e.c.Owner(vip, survivors...)
		return err
	})
	moved := time.Since(cut)

	readAt, attempts := e.readThroughWithin(vip, name, data, cut, glusterReadBack, glusterAttempt)
	for _, n := range survivors {
		if err := brickHas(n, name, data); err != nil {
			t.Errorf("after the cut: %v", err)
		}
	}
	// nfs-ganesha (VFS FSAL) on the survivor's FUSE mount serves it too
	e.retry("read "+name+" by NFSv4 through "+vip.String(), func(ctx context.Context) error {
		got, err := e.client.NFSCat(ctx, vip.Addr(), name)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, data) {
			return permanent{fmt.Errorf("read %d bytes of %s by NFS through %s that differ from the %d written", len(got), name, vip, len(data))}
		}
		return nil
	})
	t.Logf("power cut of %s (CTDB leader %s): %s on %s after %v; %s read back through it byte for byte after %v (%d attempts; volume ping timeout %d s)",
		victim.Role, leader.Role, vip, newOwner.Role, moved.Round(time.Millisecond), name, readAt.Round(time.Millisecond), attempts, lab.GlusterPingTimeout)

	// written while the victim's brick is down: self-heal brings it there
	name2 := "gluster-b.bin"
	data2 := randomData(t, 64<<10)
	e.retry("put "+name2+" through "+vip.String(), func(ctx context.Context) error {
		return e.client.PutSMB(ctx, vip.Addr(), name2, data2)
	})
	if err := brickHas(victim, name2, data2); err == nil {
		t.Fatalf("%s's brick holds %s written while it was powered down: the oracle proves nothing", victim.Role, name2)
	}
	up := time.Now()
	e.powerUp(victim)
	if err := e.c.WaitCTDB(e.ctx, lab.CTDBStartTimeout); err != nil {
		t.Fatal(err)
	}
	e.waitConverged(e.c.Nodes...)
	t.Logf("%s powered up (glusterd, brick, mount, ctdbd, smbd, fsha) and the cluster converged after %v", victim.Role, time.Since(up).Round(time.Millisecond))
	if err := lab.Eventually(e.ctx, glusterHeal, "self-heal of "+name2+" to "+victim.Role+"'s brick", func(context.Context) error {
		return brickHas(victim, name2, data2)
	}); err != nil {
		out, _ := victim.Gluster(e.ctx, "volume", "heal", lab.GlusterVolume, "info")
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("%s healed to %s's brick %v after its power-up", name2, victim.Role, time.Since(up).Round(time.Millisecond))
	for _, v := range e.c.VIPs {
		e.retry("read both files through "+v.String(), func(ctx context.Context) error {
			got, err := e.client.GetSMBFiles(ctx, v.Addr(), name, name2)
			if err != nil {
				return err
			}
			if !bytes.Equal(got[name], data) || !bytes.Equal(got[name2], data2) {
				return permanent{fmt.Errorf("through %s the files differ from what was written", v)}
			}
			return nil
		})
	}
}

// lockProbe tries, once, to take an OFD write lock on path (what fsha's
// --lock takes) and lets it go at once: nil when it got it, EAGAIN when
// another holds it, the file system's error otherwise, or errProbeHung
// when nothing answers within d (a hung FUSE mount blocks in the kernel:
// the probe is left behind and returns once the mount's client dies).
func lockProbe(path string, d time.Duration) error {
	res := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			res <- err
			return
		}
		defer f.Close() // closing the description drops its lock
		lk := unix.Flock_t{Type: unix.F_WRLCK}
		res <- unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &lk)
	}()
	select {
	case err := <-res:
		return err
	case <-time.After(d):
		return errProbeHung
	}
}

var errProbeHung = errors.New("no answer from the file system")

// TestGlusterPartitionTwoNodesLock: two nodes whose --lock is on the
// volume (replica 2 with the arbiter on the witness gw). n1 is cut off
// from n2, the witness and client c1, with a client c2 of its own: n2
// takes the lock and both VIPs; n1 holds none, on its eth0 and on the
// wire (c2 cannot connect to any VIP), and the volume refuses it the
// lock (a probe through its mount fails, one through n2's finds the lock
// held). Then n1's FUSE client is frozen (SIGSTOP: its lock I/O hangs in
// the kernel): n1's fsha still answers its admin API at once and, once
// the partition heals, takes a VIP back with its lock I/O still hung.
// Thawed, a file written through n2 during the partition reads back
// through both VIPs and is on n1's brick.
func TestGlusterPartitionTwoNodesLock(t *testing.T) {
	requireGluster(t)
	began := time.Now()
	e := newEnvWithin(t, lab.ClusterOptions{Nodes: 2, Lock: true, Gluster: true, Clients: 2}, glusterBudget)
	n1, n2 := e.c.Node(1), e.c.Node(2)
	c1, c2 := e.c.Clients[0], e.c.Clients[1]
	e.both()
	t.Logf("two nodes with the gluster volume (arbiter on %s) converged after %v", e.c.Witness.Role, time.Since(began).Round(time.Millisecond))
	if n1.LockFile() == n2.LockFile() || n1.LockFile() == "" {
		t.Fatalf("lock files %q and %q: want one per node's mount", n1.LockFile(), n2.LockFile())
	}

	mon := startOverlapMonitor(n1, n2)
	cut := time.Now()
	if err := e.c.Partition(e.ctx, []*lab.Host{n1.Host, c2.Host}); err != nil {
		t.Fatal(err)
	}
	e.out = []*lab.ClusterNode{n1}
	e.eventually("n2 holds the lock and every VIP, n1 none", func(ctx context.Context) error {
		if h := e.held(n1); len(h) > 0 {
			return fmt.Errorf("n1 has %v on eth0", h)
		}
		if h := e.held(n2); len(h) != len(e.c.VIPs) {
			return fmt.Errorf("n2 has %v on eth0", h)
		}
		st, err := n2.Status(ctx)
		if err != nil {
			return err
		}
		if !st.LockHeld {
			return errors.New("n2 holds every VIP without the lock")
		}
		return nil
	})
	t.Logf("partition: n2 holds the lock and every VIP %v after the cut", time.Since(cut).Round(time.Millisecond))

	// the volume's view, not fsha's: the lock is taken, and n1 cannot get it
	if err := lockProbe(n2.LockFile(), 10*time.Second); !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EACCES) {
		t.Errorf("lock probe through n2's mount: %v, want EAGAIN (n2's fsha holds it)", err)
	}
	err := lockProbe(n1.LockFile(), 10*time.Second)
	if err == nil {
		t.Fatal("lock probe through n1's mount took the lock: the cut-off side can lock")
	}
	t.Logf("lock probe through cut-off n1's mount: %v", err)
	// on the wire, from n1's side: nobody answers for any VIP
	for _, v := range e.c.VIPs {
		if _, err := c2.TryConnect(e.ctx, netip.AddrPortFrom(v.Addr(), lab.SMBPort), time.Second); err == nil {
			t.Errorf("c2, on n1's side, connected to %s:445 during the partition", v.Addr())
		}
	}

	name := "gluster-partition.bin"
	data := randomData(t, 128<<10)
	e.client = c1
	e.retry("put "+name+" through "+e.c.VIPs[0].String(), func(ctx context.Context) error {
		return c1.PutSMB(ctx, e.c.VIPs[0].Addr(), name, data)
	})

	// a hung cluster file system on n1: its lock I/O blocks in the kernel
	fuse := n1.GlusterClient()
	if err := fuse.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := fuse.WaitStopped(2 * time.Second); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			if err := fuse.Signal(syscall.SIGCONT); err != nil {
				t.Errorf("thaw n1's FUSE client: %v", err)
			}
		}
	}
	t.Cleanup(thaw)
	if err := lockProbe(n1.LockFile(), 3*time.Second); !errors.Is(err, errProbeHung) {
		t.Fatalf("lock probe through n1's frozen mount: %v, want it to hang", err)
	}
	var slowest time.Duration
	for i := 0; i < 10; i++ {
		ctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
		asked := time.Now()
		_, err := n1.Status(ctx)
		took := time.Since(asked)
		cancel()
		if err != nil {
			t.Fatalf("fsha status of n1 while its lock I/O hangs: %v", err)
		}
		slowest = max(slowest, took)
		if h := e.held(n1); len(h) > 0 {
			t.Fatalf("n1 has %v on eth0 while its lock I/O hangs", h)
		}
		time.Sleep(500 * time.Millisecond)
	}
	st := e.status(n1)
	if st.LockHeld || st.Quorum {
		t.Errorf("n1 while its lock I/O hangs: lock held %v, quorum %v", st.LockHeld, st.Quorum)
	}
	t.Logf("n1's lock I/O hangs (FUSE client stopped): 10 `fsha status` on n1's admin API answered, the slowest in %v", slowest.Round(time.Millisecond))

	// healed with n1's lock I/O still hung: its control loop, not blocked
	// on the lock, hears n2 again and takes its VIP back
	if err := e.c.Heal(e.ctx); err != nil {
		t.Fatal(err)
	}
	healed := time.Now()
	e.out = nil
	e.both()
	if err := lockProbe(n1.LockFile(), time.Second); !errors.Is(err, errProbeHung) {
		t.Fatalf("lock probe through n1's frozen mount after the heal: %v, want it to hang", err)
	}
	t.Logf("healed with n1's lock I/O still hanging: one VIP each %v after the heal", time.Since(healed).Round(time.Millisecond))
	thaw()
	overlaps, samples, err := mon.Stop()
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range overlaps[:min(len(overlaps), 10)] {
		t.Errorf("split brain: %s", o)
	}
	t.Logf("%d reads of the nodes' addresses from the cut to after the heal, no VIP on both", samples)
	for _, v := range e.c.VIPs {
		e.retry("read "+name+" through "+v.String(), func(ctx context.Context) error {
			got, err := c1.GetSMB(ctx, v.Addr(), name)
			if err != nil {
				return err
			}
			if !bytes.Equal(got, data) {
				return permanent{fmt.Errorf("read %d bytes of %s through %s that differ from the %d written", len(got), name, v, len(data))}
			}
			return nil
		})
	}
	if err := lab.Eventually(e.ctx, glusterHeal, "self-heal of "+name+" to n1's brick", func(context.Context) error {
		return brickHas(n1, name, data)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s on n1's brick %v after the heal", name, time.Since(healed).Round(time.Millisecond))
}
