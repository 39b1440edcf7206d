package failover

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// ioPeriod is the pace of the mounted client's application: a write and
// a read of 4 KiB every ioPeriod.
const ioPeriod = 20 * time.Millisecond

// TestSMBMountContinuousIO mounts the share through a VIP with smbnetfs
// (FUSE on libsmbclient: a real SMB client, not fsha's) and runs an
// application's loop on it, a write and a checked read every 20 ms, while
// the VIP is moved to another node, then the old node (which still serves
// the connection, steered) loses power, and then, with it back, the
// VIP's holder does. The move must be invisible to the application: no
// error, no wrong read, the same TCP connection before and after (ss).
// After each power cut the application's I/O must come back on a
// survivor, reading what it wrote. The freezes and errors are logged; the
// targets (0.1 s for a move, 1 s for a crash) are the iofreeze bench's,
// not timed assertions here.
func TestSMBMountContinuousIO(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	m, err := e.client.MountSMB(e.ctx, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	io := lab.StartIO(m.Dir, "app.dat", ioPeriod)
	defer io.Stop(time.Second)
	e.eventually("the application's first writes and reads", func(context.Context) error {
		if r := lab.Report(io.Ops()); r.Ops-r.Errors < 10 {
			return fmt.Errorf("%s", r)
		}
		return nil
	})
	if r := lab.Report(io.Ops()); r.Errors > 0 || r.Mismatches > 0 {
		t.Fatalf("before any move: %s", r)
	}
	conns, err := socketsOf(e.ctx, e.client, vip.Addr(), lab.SMBPort, "smbnetfs")
	if err != nil || len(conns) != 1 {
		t.Fatalf("smbnetfs's connections to %s: %v (%v), want one", vip, conns, err)
	}
	for _, p := range e.c.Others(old) {
		e.waitFlows(p, old, false, conns...)
	}

	// a planned move: steered, the application sees nothing
	to := e.c.Others(old)[0]
	before := len(io.Ops())
	moved := time.Now()
	if out, err := old.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	e.eventually(vip.String()+" on "+to.Role, func(ctx context.Context) error {
		if o, err := e.c.Owner(vip, e.c.Nodes...); err != nil || o != to {
			return fmt.Errorf("owner %v (%v)", o, err)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // the application goes on through the steering
	move := lab.Report(io.Ops()[before:])
	t.Logf("move of %s from %s to %s: %s", vip, old.Role, to.Role, move)
	if move.Errors > 0 || move.Mismatches > 0 {
		t.Errorf("the move was visible to the application: %s", move)
	}
	if now, err := socketsOf(e.ctx, e.client, vip.Addr(), lab.SMBPort, "smbnetfs"); err != nil || len(now) != 1 || now[0] != conns[0] {
		t.Errorf("smbnetfs's connection changed across the move: %v (%v), was %v", now, err, conns)
	}

	// a power cut of the node that took the VIP: the old connection was
	// steered to old, which still holds it; cut old instead, the node
	// whose sockets the application uses
	before = len(io.Ops())
	cut := e.powerDown(old)
	e.resumed(io, before, cut, "the power cut of "+old.Role)
	crash := lab.Report(io.Ops()[before:])
	t.Logf("power cut of the drainer %s (%v after the move): %s", old.Role, cut.Sub(moved).Round(time.Millisecond), crash)
	if crash.Mismatches > 0 {
		t.Errorf("the application read back other data than it wrote: %s", crash)
	}

	// the common crash: the node that holds the VIP and the application's
	// connection loses power (old back first, for a majority)
	e.powerUp(old)
	e.waitConverged(e.c.Nodes...)
	holder := e.owner(vip)
	conns, err = socketsOf(e.ctx, e.client, vip.Addr(), lab.SMBPort, "smbnetfs")
	if err != nil || len(conns) != 1 {
		t.Fatalf("smbnetfs's connections to %s: %v (%v), want one", vip, conns, err)
	}
	for _, p := range e.c.Others(holder) {
		e.waitFlows(p, holder, false, conns...)
	}
	before = len(io.Ops())
	cut = e.powerDown(holder)
	e.resumed(io, before, cut, "the power cut of "+holder.Role)
	crash = lab.Report(io.Ops()[before:])
	t.Logf("power cut of the holder %s: %s", holder.Role, crash)
	if crash.Mismatches > 0 {
		t.Errorf("the application read back other data than it wrote: %s", crash)
	}
	final := io.Stop(5 * time.Second)
	t.Logf("whole run: %s", final)
}

// resumed waits until the application has done 10 good operations that
// ended after since, among its operations from index from on.
func (e *env) resumed(io *lab.IORun, from int, since time.Time, what string) {
	e.t.Helper()
	e.eventually("the application writes and reads again after "+what, func(context.Context) error {
		ops := io.Ops()[from:]
		if ok := lab.GoodSince(ops, since); ok < 10 {
			return fmt.Errorf("%d good operations since %s: %s", ok, what, lab.Report(ops))
		}
		return nil
	})
}
