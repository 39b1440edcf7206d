// Regression tests of fsha bugs this package found: a planned move that
// announced the VIP before steering (RSTs to old connections), a lost move
// broadcast that left a VIP on no node, a failback to node 0 named "move".

package failover

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
)

// TestMoveBusyConnection moves a VIP back and forth while a raw NFS
// client sends RPC NULL calls back to back on one connection: a packet of
// it reaches the new owner every few hundred microseconds, so any moment
// in which the new owner answers for the VIP without steering the old
// connections shows as a reset from the new owner.
//
// Bug: control/node takes the VIP over (address up, gratuitous ARP) in
// takeLocked and only at the end of the same reconcile run, or a later
// one, marks the old owner's connections for steering
// (updateSteeringLocked -> Steer). Packets arriving in between reach the
// new owner's stack, which resets them: 20 to 100 ms without load.
func TestMoveBusyConnection(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	vip := e.c.VIPs[0]
	a := e.owner(vip)
	b := e.c.Others(a)[0]
	for round, to := range []*lab.ClusterNode{b, a, b} {
		from := e.owner(vip)
		rc, err := dialNFS(e.ctx, e.client, vip.Addr())
		if err != nil {
			t.Fatal(err)
		}
		s := startSession(rc, 0)
		e.waitFlows(to, from, false, rc.Key())
		w, err := e.client.WatchAddr(vip.Addr())
		if err != nil {
			t.Fatal(err)
		}
		times := watchTakeover(t, to, vip)
		start := time.Now()
		if out, err := from.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
			t.Fatalf("fsha move: %v: %s", err, out)
		}
		e.eventually(fmt.Sprintf("round %d: %s on %s", round, vip, to.Role), func(context.Context) error {
			if o, err := e.c.Owner(vip); err != nil || o != to {
				return fmt.Errorf("owner %v (%v)", o, err)
			}
			return nil
		})
		time.Sleep(time.Second)
		s.Close()
		w.Close()
		up, steer := times()
		t.Logf("round %d, %s -> %s: %s", round, from.Role, to.Role, s)
		t.Logf("round %d: %s has %s on eth0 at +%v, steers at +%v", round, to.Role, vip, up.Sub(start).Round(time.Microsecond), steer.Sub(start).Round(time.Microsecond))
		for _, r := range e.resetsTo(w, start, rc.Key()) {
			t.Errorf("round %d: %s", round, r)
		}
		if err := s.Err(); err != nil {
			t.Errorf("round %d: the busy connection broke in the move from %s to %s: %v", round, from.Role, to.Role, err)
		}
		e.waitConverged(e.c.Nodes...)
		e.eventually("drain over", func(ctx context.Context) error {
			for _, n := range e.c.Nodes {
				if lo, err := loVIPs(n, e.c.VIPs); err != nil || len(lo) > 0 {
					return fmt.Errorf("%s drains %v (%v)", n.Role, lo, err)
				}
			}
			return nil
		})
	}
}

// TestFailbackReasonNodeZero puts node 1 (PNN 0) in maintenance and back:
// the automatic failback that gives it a VIP back is a rebalance, and the
// releasing node's timeline must say so.
//
// Bug: node.releaseReason reads n.pins[i] for a VIP without a pin, gets
// the zero pin{PNN: 0}, and names every release to node 0 "move".
func TestFailbackReasonNodeZero(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, Clients: -1, NoServers: true, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	n1 := e.c.Node(1)
	if out, err := n1.Admin(e.ctx, "disable"); err != nil {
		t.Fatalf("fsha disable: %v: %s", err, out)
	}
	e.eventually("n1 holds nothing", func(context.Context) error {
		if h := e.held(n1); len(h) > 0 {
			return fmt.Errorf("n1 holds %v", h)
		}
		return e.c.Converged(e.ctx, e.c.Others(n1)...)
	})
	enabled := time.Now()
	if out, err := n1.Admin(e.ctx, "enable"); err != nil {
		t.Fatalf("fsha enable: %v: %s", err, out)
	}
	e.balanced()
	back := e.held(n1)[0]
	for _, n := range e.c.Others(n1) {
		if rec, ok := lastRecord(e.ctx, n, back, "drain"); ok && rec.Steps[0].At.After(enabled) {
			t.Logf("%s released %s to n1: reason %q", n.Role, back, rec.Reason)
			if rec.Reason != "rebalance" {
				t.Errorf("%s's failback of %s to n1 is named %q, want rebalance (no fsha move was given):\n%s",
					n.Role, back, rec.Reason, timelineJSON(e.ctx, n))
			}
			return
		}
	}
	t.Fatalf("no node drained %s to n1 after the enable", back)
}

// TestMoveLostBroadcast moves a VIP to a node that misses the move's
// gossip broadcast (its UDP gossip port drops everything from the mover
// for a moment; gossip falls back to TCP for liveness, so it stays a live
// member, and the third node's heartbeats still reach it, so it keeps its
// majority and may be the target of a move): the
// old owner drains the VIP for the target, the target does not know it is
// the target, and the VIP is announced by nobody until memberlist's
// push/pull (every 15 s, with one random peer) brings the move.
//
// Bug: Node.Move hands the pin to gossip.Broadcast only (UDP, 3
// transmissions for 3 nodes, piggybacked on whatever memberlist sends);
// nothing makes sure the target and the holder got it. Seen without any
// fault injection when `go test ./tools/lab/...` loads the machine.
func TestMoveLostBroadcast(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, Clients: -1, NoServers: true, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	vip := e.c.VIPs[0]
	from := e.owner(vip)
	to := e.c.Others(from)[0]
	undrop := dropUDP(t, e.c.Lab, to, from.IP(), 4380)
	if out, err := from.Admin(e.ctx, "move", vip.Addr().String(), to.IP().String()); err != nil {
		t.Fatalf("fsha move: %v: %s", err, out)
	}
	time.Sleep(time.Second) // the broadcast is gone by now
	undrop()
	start := time.Now()
	onTarget := func(context.Context) error {
		o, err := e.c.Owner(vip)
		if err != nil {
			return err
		}
		if o != to {
			return fmt.Errorf("on %s", o.Role)
		}
		return nil
	}
	if err := lab.Eventually(e.ctx, 2*time.Second, vip.String()+" on "+to.Role, onTarget); err != nil {
		t.Errorf("%v%s", err, e.vipViews(vip))
	}
	err := lab.Eventually(e.ctx, 40*time.Second, vip.String()+" on "+to.Role, onTarget)
	t.Logf("%s on %s %v after the broadcast could arrive again (%v)", vip, to.Role, time.Since(start).Round(time.Millisecond), err)
}

// dropUDP makes the node's eth0 drop every IPv4 UDP datagram from src to
// port on ingress (a TCX program, ahead of nothing else the node needs:
// fsha's own programs are XDP and TCX egress) and returns the undo, which
// notes the fault in the lab. (The gossip port also carries the ownership
// heartbeats: dropping every node's would take the node's majority away.)
func dropUDP(t *testing.T, l *lab.Lab, n *lab.ClusterNode, src netip.Addr, port uint16) func() {
	t.Helper()
	be := port<<8 | port>>8 // the port as a little-endian load of network order reads it
	src4 := src.As4()
	srcLE := binary.LittleEndian.Uint32(src4[:]) // the address as a little-endian load reads it
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "fsha_test_drop", Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 76, asm.Word), // skb->data
			asm.LoadMem(asm.R3, asm.R1, 80, asm.Word), // skb->data_end
			asm.Mov.Reg(asm.R4, asm.R2),
			asm.Add.Imm(asm.R4, 14+20+4),
			asm.JGT.Reg(asm.R4, asm.R3, "pass"),
			asm.LoadMem(asm.R5, asm.R2, 12, asm.Half),
			asm.JNE.Imm(asm.R5, 0x0008, "pass"), // ETH_P_IP
			asm.LoadMem(asm.R5, asm.R2, 14, asm.Byte),
			asm.JNE.Imm(asm.R5, 0x45, "pass"), // IPv4 without options
			asm.LoadMem(asm.R5, asm.R2, 23, asm.Byte),
			asm.JNE.Imm(asm.R5, 17, "pass"), // UDP
			asm.LoadMem(asm.R5, asm.R2, 26, asm.Word),
			asm.JNE.Imm32(asm.R5, int32(srcLE), "pass"), // source address (32-bit compare)
			asm.LoadMem(asm.R5, asm.R2, 36, asm.Half),
			asm.JNE.Imm(asm.R5, int32(be), "pass"),
			asm.Mov.Imm(asm.R0, 2), // TCX_DROP
			asm.Return(),
			asm.Mov.Imm(asm.R0, -1).WithSymbol("pass"), // TCX_NEXT
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load udp drop program: %v", err)
	}
	var lk link.Link
	start := time.Now()
	err = n.Do(func() error {
		ifi, err := net.InterfaceByName(lab.HostIface)
		if err != nil {
			return err
		}
		lk, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: prog, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		prog.Close()
		t.Fatalf("attach udp drop program to %s: %v", n.Role, err)
	}
	var once sync.Once
	undo := func() {
		once.Do(func() {
			if err := lk.Close(); err != nil {
				t.Errorf("detach udp drop program: %v", err)
			}
			prog.Close()
			l.NoteFault(fmt.Sprintf("UDP from %s to port %d dropped on %s", src, port, n.Role), []*lab.Host{n.Host}, start, time.Now())
		})
	}
	t.Cleanup(undo)
	return undo
}

// watchTakeover samples, every half millisecond for at most 3 s, whether
// the node has vip on its eth0 and whether its data plane steers (the
// pinned steering map); the returned func stops it and tells when each
// began.
func watchTakeover(t *testing.T, n *lab.ClusterNode, vip netip.Prefix) func() (up, steer time.Time) {
	t.Helper()
	pm, err := dataplane.OpenPinned(n.PinPath)
	if err != nil {
		t.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan struct{})
	var up, steer time.Time
	go func() {
		defer close(done)
		defer pm.Close()
		end := time.Now().Add(3 * time.Second)
		for time.Now().Before(end) {
			select {
			case <-stop:
				return
			case <-time.After(500 * time.Microsecond):
			}
			var active uint32
			if steer.IsZero() && pm.Steering.Lookup(uint32(0), &active) == nil && active > 0 {
				steer = time.Now()
			}
			if h, err := n.Holds(vip); up.IsZero() && err == nil && h {
				up = time.Now()
			}
		}
	}()
	var once sync.Once
	return func() (time.Time, time.Time) {
		once.Do(func() { close(stop) })
		<-done
		return up, steer
	}
}
