package cluster

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestCTDBMovesIPs is the iofreeze bench's baseline cluster: CTDB alone
// holds and moves the VIPs (no fsha). Every VIP is on one node's eth0 as
// ctdb says; after a power cut of a holder, its VIP comes up on a
// survivor's eth0 and smbd answers there.
func TestCTDBMovesIPs(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, CTDB: true, CTDBFast: true, CTDBMovesIPs: true})
	// CTDB places as many VIPs on each healthy node (3 on 3): a node
	// without one means the lab's start saw a placement from before the
	// last node was healthy, which CTDB then changes on its own
	for _, n := range e.c.Nodes {
		if h := e.held(n); len(h) != 1 {
			t.Fatalf("%s holds %v at the start, want one VIP (CTDB balances 3 VIPs on 3 healthy nodes)", n.Role, h)
		}
	}
	vip := e.c.VIPs[0]
	old, err := e.c.Owner(vip, e.c.Nodes...)
	if err != nil {
		t.Fatal(err)
	}
	if who, err := e.client.WhoAnswers(e.ctx, vip.Addr()); err != nil || who != old.Role {
		t.Fatalf("%s answers on %s (%v), want %s", who, vip, err, old.Role)
	}
	w, err := e.client.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cut := time.Now()
	if err := old.PowerDown(); err != nil {
		t.Fatal(err)
	}
	up := e.c.Others(old)
	var next *lab.ClusterNode
	if err := lab.Eventually(e.ctx, 60*time.Second, "CTDB moves "+vip.String(), func(context.Context) error {
		o, err := e.c.Owner(vip, up...)
		if err != nil {
			return err
		}
		next = o
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	moved := time.Since(cut)
	if err := lab.Eventually(e.ctx, 60*time.Second, "smbd answers on "+vip.String(), func(ctx context.Context) error {
		who, err := e.client.WhoAnswers(ctx, vip.Addr())
		if err == nil && who != next.Role {
			return fmt.Errorf("%s answers, want %s", who, next.Role)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	answered := time.Since(cut)
	w.Close()
	nextMAC := mac(t, next.Host)
	firstARP := "never"
	for _, f := range w.Frames() {
		if f.ARP && bytes.Equal(f.Src, nextMAC) {
			firstARP = f.At.Sub(cut).Round(time.Millisecond).String()
			break
		}
	}
	t.Logf("CTDB moved %s from %s to %s: on eth0 after %v, first ARP from %s after %s, smbd answers after %v",
		vip, old.Role, next.Role, moved.Round(time.Millisecond), next.Role, firstARP, answered.Round(time.Millisecond))
}
