package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

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
// through the same VIP, now on a survivor, byte for byte, and the
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

	var readAt time.Duration
	attempts := 0
	var lastErr error
	for readAt == 0 {
		if time.Since(cut) > glusterReadBack {
			t.Fatalf("no read of %s through %s within %v of the power cut (%d attempts): %v", name, vip, glusterReadBack, attempts, lastErr)
		}
		attempts++
		ctx, cancel := context.WithTimeout(e.ctx, glusterAttempt)
		got, err := e.client.GetSMB(ctx, vip.Addr(), name)
		cancel()
		switch {
		case err != nil:
			lastErr = err
			if e.ctx.Err() != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
		case !bytes.Equal(got, data):
			t.Fatalf("read %d bytes of %s through %s after the cut that differ from the %d written", len(got), name, vip, len(data))
		default:
			readAt = time.Since(cut)
		}
	}
	for _, n := range survivors {
		if err := brickHas(n, name, data); err != nil {
			t.Errorf("after the cut: %v", err)
		}
	}
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
