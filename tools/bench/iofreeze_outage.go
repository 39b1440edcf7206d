package main

// What the iofreeze suite looks at besides the application: CTDB's leader
// and cluster lock around a fault, the node that was cut off while it is
// (does it still hold the VIP, does its fsha still answer), and the
// guides' OVD Test 5: a file written through a survivor while the node is
// out is on the node's brick after the heal and reads back, identical,
// through the node itself.

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// Lines of the daemons' logs the suite counts.
const (
	// ctdbd: a recovery ended (every node logs it)
	ctdbRecovered = "Recovery mode set to NORMAL"
	// ctdbd (ctdb_recoverd.c, Samba 4.17): a node became CTDB's leader
	ctdbTookLock = "Took cluster lock, leader="
	// fsha (cmd/fsha/ctdbkick.go): it sent CTDB's election broadcast
	fshaAskedElection = "the dead peer was CTDB's leader: asked the survivors' CTDB to elect a new one now"
)

// Bounds of the suite's own checks (not of what it measures).
const (
	// ctdbLeaderBound: the ctdbd agreeing on a leader before a trial
	ctdbLeaderBound = 10 * time.Second
	// ovdWriteBound: writing the OVD file through the VIP once the
	// application runs again
	ovdWriteBound = 30 * time.Second
	// ovdHealBound: the file reaching the node's brick after its return
	// (the lab's self-heal crawl is 10 s)
	ovdHealBound = 120 * time.Second
	// ovdReadBound: reading it through the node after the cluster settled
	ovdReadBound = 30 * time.Second
	// statusBound: one admin API call to the cut-off node's fsha
	statusBound = 2 * time.Second
)

// ctdbView is CTDB's side of a trial.
type ctdbView struct {
	// led: the victim was CTDB's leader when the fault came; known: the
	// ctdbd agreed on a leader then
	led, known bool
	// tookLock: from the fault to the first survivor's ctdbd logging that
	// it took the cluster lock (0: none did before the node came back)
	tookLock time.Duration
	// asked: a survivor's fsha sent CTDB's election broadcast
	asked bool
	// recovered: from the fault to the last "Recovery mode set to
	// NORMAL" a survivor's ctdbd logged before the node's return: when
	// CTDB had the databases back (0: no recovery logged)
	recovered time.Duration

	offsets map[*lab.ClusterNode]int64 // the ctdbd logs' sizes at the fault
}

// ctdbBefore asks who leads CTDB (nil when the ctdbd do not agree) and
// notes where the ctdbd logs end. The caller sets led.
func ctdbBefore(ctx context.Context, c *lab.Cluster) (ctdbView, *lab.ClusterNode) {
	v := ctdbView{offsets: map[*lab.ClusterNode]int64{}}
	var leader *lab.ClusterNode
	err := lab.Eventually(ctx, ctdbLeaderBound, "the ctdbd agree on a leader", func(ctx context.Context) error {
		var err error
		leader, err = c.CTDBLeader(ctx)
		return err
	})
	v.known = err == nil
	if !v.known {
		leader = nil
	}
	for _, n := range c.Nodes {
		v.offsets[n] = fileSize(n.CTDBLog())
	}
	return v, leader
}

// after reads the survivors' logs for what followed the fault, up to
// until (the node's return).
func (v *ctdbView) after(c *lab.Cluster, victim *lab.ClusterNode, fault, until time.Time) {
	for _, n := range c.Others(victim) {
		if at, ok := lab.CTDBLogged(n.CTDBLog(), v.offsets[n], ctdbTookLock, fault); ok && at.Before(until) {
			if d := at.Sub(fault); v.tookLock == 0 || d < v.tookLock {
				v.tookLock = d
			}
		}
		for at := fault; ; {
			t, ok := lab.CTDBLogged(n.CTDBLog(), v.offsets[n], ctdbRecovered, at)
			if !ok || !t.Before(until) {
				break
			}
			v.recovered = max(v.recovered, t.Sub(fault))
			at = t.Add(time.Microsecond)
		}
		lines, _ := n.FshaLog(fshaAskedElection)
		for _, l := range lines {
			if !l.At.Before(fault) && l.At.Before(until) {
				v.asked = true
			}
		}
	}
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// cutOffView is the node that was cut off, just before it comes back.
type cutOffView struct {
	// heldVIP: a VIP was still on its eth0
	heldVIP bool
	// linkBack: its eth0, taken down by the test, was up again (CTDB's
	// 10.interface monitor sets a public interface up when it finds no
	// link: a CTDB node undoes an ifdown by itself)
	linkBack bool
	// tookLock: its own ctdbd logged taking CTDB's cluster lock while it
	// was cut off
	tookLock bool
	// fsha only: its admin API answered (slowest of a few calls) and what
	// it said about quorum and the lock
	fsha                    bool
	statusMax               time.Duration
	statusErr               error
	quorum, lockHeld, locks bool
}

// observeCutOff looks at the cut-off node: its addresses, its link, its
// ctdbd's log since the fault, and (fsha) three calls of its admin API.
func observeCutOff(ctx context.Context, sys freezeSystem, test string, n *lab.ClusterNode, ctdb ctdbView, fault time.Time) cutOffView {
	var v cutOffView
	if held, err := n.HeldVIPs(); err == nil {
		v.heldVIP = len(held) > 0
	}
	if lk, err := n.Netlink().LinkByName(lab.HostIface); err == nil && test == "network" {
		v.linkBack = lk.Attrs().Flags&net.FlagUp != 0
	}
	_, v.tookLock = lab.CTDBLogged(n.CTDBLog(), ctdb.offsets[n], ctdbTookLock, fault)
	if !sys.fsha {
		return v
	}
	v.fsha = true
	for range 3 {
		qctx, cancel := context.WithTimeout(ctx, statusBound)
		asked := time.Now()
		st, err := n.Status(qctx)
		took := time.Since(asked)
		cancel()
		v.statusMax = max(v.statusMax, took)
		if err != nil {
			v.statusErr = err
			break
		}
		v.quorum, v.locks = v.quorum || st.Quorum, st.Lock != ""
		v.lockHeld = v.lockHeld || st.LockHeld
		time.Sleep(200 * time.Millisecond)
	}
	return v
}

func (v *cutOffView) String() string {
	if v == nil {
		return "-"
	}
	s := "no VIP"
	if v.heldVIP {
		s = "HELD VIP"
	}
	if v.linkBack {
		s = "eth0 UP AGAIN, " + s
	}
	if v.tookLock {
		s += ", TOOK CTDB LOCK"
	}
	if !v.fsha {
		return s
	}
	switch {
	case v.statusErr != nil:
		return s + ", fsha did not answer"
	case v.quorum || v.lockHeld:
		s += fmt.Sprintf(", fsha quorum %v lock %v", v.quorum, v.lockHeld)
	case v.locks:
		s += ", no lock"
	}
	return s + fmt.Sprintf(", status <= %s", fmtDur(v.statusMax.Seconds(), 0))
}

// ovdCheck is the guides' OVD Test 5 for one trial: a file of random bytes
// written through the VIP while the node is out (a survivor holds the VIP)
// must, once the node is back, be on its brick (gluster's self-heal) and
// read back identical through the node's own address (its smbd on its
// mount).
type ovdCheck struct {
	name string
	data []byte
	// via: the node that held the VIP when the file was written
	via      string
	writeErr error
	// early: the node's brick had it before the node came back (the
	// oracle proves nothing then)
	early bool
	// healed: from the start of the node's return to its brick holding
	// the file, or healErr; heal is nil without bricks (local storage)
	heal     chan error
	healed   time.Duration
	healErr  error
	readErr  error
	mismatch bool
}

// writeDuring writes the trial's file through vip.
func writeDuring(ctx context.Context, c *lab.Cluster, vip netip.Prefix, victim *lab.ClusterNode, name string) *ovdCheck {
	o := &ovdCheck{name: name, data: make([]byte, 64<<10)}
	if _, err := rand.Read(o.data); err != nil {
		o.writeErr = err
		return o
	}
	o.writeErr = lab.Eventually(ctx, ovdWriteBound, "put "+name+" through "+vip.String(), func(ctx context.Context) error {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return c.Clients[0].PutSMB(qctx, vip.Addr(), name, o.data)
	})
	if w, err := c.Owner(vip, c.Others(victim)...); err == nil {
		o.via = w.Role
	}
	if victim.Brick() != "" && brickHas(victim, name, o.data) == nil {
		o.early = true
	}
	return o
}

// brickHas checks, reading the node's brick directly, that it holds name
// in the share with exactly data.
func brickHas(n *lab.ClusterNode, name string, data []byte) error {
	got, err := os.ReadFile(filepath.Join(n.Brick(), "share", name))
	if err != nil {
		return err
	}
	if !bytes.Equal(got, data) {
		return fmt.Errorf("brick of %s holds %d bytes of %s that differ from the %d written", n.Role, len(got), name, len(data))
	}
	return nil
}

// watchHeal starts timing, from back (the start of the node's return:
// its power-up or its link up), the file's arrival on the node's brick.
func (o *ovdCheck) watchHeal(ctx context.Context, n *lab.ClusterNode, back time.Time) {
	if o == nil || o.writeErr != nil || n.Brick() == "" {
		return
	}
	o.heal = make(chan error, 1)
	go func() {
		o.heal <- lab.Eventually(ctx, ovdHealBound, "self-heal of "+o.name+" to "+n.Role+"'s brick", func(context.Context) error {
			if err := brickHas(n, o.name, o.data); err != nil {
				time.Sleep(150 * time.Millisecond)
				return err
			}
			o.healed = time.Since(back)
			return nil
		})
	}()
}

// readBack waits for the heal and reads the file through the node.
func (o *ovdCheck) readBack(ctx context.Context, c *lab.Cluster, n *lab.ClusterNode) {
	if o == nil || o.writeErr != nil {
		return
	}
	if o.heal != nil {
		o.healErr = <-o.heal
	}
	var got []byte
	o.readErr = lab.Eventually(ctx, ovdReadBound, "read "+o.name+" through "+n.Role, func(ctx context.Context) error {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var err error
		got, err = c.Clients[0].GetSMB(qctx, n.IP(), o.name)
		return err
	})
	o.mismatch = o.readErr == nil && !bytes.Equal(got, o.data)
}

// ok tells whether the data came back: written, healed (with bricks),
// read back identical.
func (o *ovdCheck) ok() bool {
	return o != nil && o.writeErr == nil && !o.early && o.healErr == nil && o.readErr == nil && !o.mismatch
}

func (o *ovdCheck) String() string {
	switch {
	case o == nil:
		return "-"
	case o.writeErr != nil:
		return "NOT WRITTEN: " + o.writeErr.Error()
	case o.early:
		return "on the node's brick before its return (no proof)"
	}
	s := "via " + o.via
	switch {
	case o.heal == nil:
		s += ", no brick"
	case o.healErr != nil:
		s += ", NOT HEALED"
	default:
		s += ", healed " + fmtDur(o.healed.Seconds(), 0)
	}
	switch {
	case o.readErr != nil:
		s += ", READ FAILED"
	case o.mismatch:
		s += ", READ DIFFERS"
	default:
		s += ", read back identical"
	}
	return s
}
