package failover

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// TestReloadVIPs: the operator removes one VIP from public_addresses, adds
// another, restricts a third to a node that does not hold it, and reloads
// fsha on every node in turn (SIGHUP, what systemctl reload sends), while
// a raw SMB and a raw NFS session talk through every VIP. The removed VIP
// is on no node's eth0 and answers no new connection (ctdb reloadips
// releases it), yet its sessions go on: its node drains them from
// loopback. The added VIP is placed and answers. The restricted one moves
// to its node, its sessions steered back to the old holder. No
// connection of any VIP is reset (the client's capture) and no session
// breaks; once the removed VIP's sessions end, its address goes from its
// node.
func TestReloadVIPs(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaArgs: []string{"--drain-timeout", drainTimeout}})
	removed, added, moved := e.c.VIPs[2], lab.VIP(4), e.c.VIPs[0]
	retirer := e.owner(removed)
	from := e.owner(moved)
	to := e.c.Others(from)[0]
	var (
		sessions   []*session
		removedSes []*session
		keys       []string
	)
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	watches := map[netip.Prefix]*lab.Watch{}
	for _, v := range e.c.VIPs {
		w, err := e.client.WatchAddr(v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watches[v] = w
		for _, s := range e.rawSessions(v.Addr()) {
			sessions = append(sessions, s)
			keys = append(keys, s.rc.Key())
			if v == removed {
				removedSes = append(removedSes, s)
			}
		}
	}
	start := time.Now()

	kept := []netip.Prefix{e.c.VIPs[0], e.c.VIPs[1], added}
	if err := e.c.SetPublicAddresses(kept, map[netip.Prefix][]*lab.ClusterNode{moved: {to}}); err != nil {
		t.Fatal(err)
	}
	for _, n := range e.c.Nodes {
		t0 := time.Now()
		if err := n.FshaProcess().Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		// back: the new configuration's daemon answers (it lists the added
		// VIP, which the old one did not know)
		e.eventually(n.Role+" reloaded", func(ctx context.Context) error {
			ips, err := n.IPs(ctx)
			if err != nil {
				return err
			}
			if !slices.ContainsFunc(ips, func(ip admin.IP) bool { return ip.VIP == added.String() }) {
				return fmt.Errorf("%s lists %d VIPs, not %s yet", n.Role, len(ips), added)
			}
			return nil
		})
		t.Logf("%s reloaded %v after its SIGHUP", n.Role, time.Since(t0).Round(time.Millisecond))
	}

	// the added VIP answers, on one node; the restricted one on its node
	e.eventually(added.String()+" placed", func(ctx context.Context) error {
		_, err := e.c.Owner(added)
		return err
	})
	e.eventually(moved.String()+" on "+to.Role+", the only node it may be on now", func(ctx context.Context) error {
		o, err := e.c.Owner(moved)
		if err == nil && o != to {
			err = fmt.Errorf("on %s", o.Role)
		}
		return err
	})
	t.Logf("%s moved from %s to %s", moved, from.Role, to.Role)
	rc, err := dialSMB(e.ctx, e.client, added.Addr())
	if err != nil {
		t.Fatalf("a new connection to the added VIP %s: %v", added, err)
	}
	rc.conn.Close()
	// the removed one: on no eth0, drained on its node's loopback, and no
	// new connection
	for _, n := range e.c.Nodes {
		addrs, err := n.Addrs()
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(addrs, removed) {
			t.Errorf("the removed VIP %s is still on %s's %s", removed, n.Role, lab.HostIface)
		}
	}
	if lo, err := loVIPs(retirer, []netip.Prefix{removed}); err != nil || !slices.Contains(lo, removed.Addr()) {
		t.Errorf("%s's loopback: %v (%v), want the removed VIP %s draining there", retirer.Role, lo, err, removed.Addr())
	}
	dctx, cancel := context.WithTimeout(e.ctx, 2*time.Second)
	if rc, err := dialSMB(dctx, e.client, removed.Addr()); err == nil {
		rc.conn.Close()
		t.Errorf("a new connection to the removed VIP %s was answered", removed)
	}
	cancel()
	// its sessions still talk, a while after the last reload
	time.Sleep(time.Second)
	for _, s := range removedSes {
		before := s.OK()
		e.eventually("the removed VIP's "+s.rc.proto+" session answering", func(context.Context) error {
			if s.OK() <= before {
				return fmt.Errorf("%d answers, as before", s.OK())
			}
			return s.Err()
		})
	}

	for v, w := range watches {
		for _, r := range e.resetsTo(w, start, keys...) {
			t.Errorf("%s: a connection was reset by the reload: %s", v, r)
		}
	}
	for _, s := range sessions {
		s.Close()
	}
	e.checkSessions(sessions, "during the reload", nil)
	// its sessions closed, the removed VIP goes from its node
	e.eventually("the removed VIP gone from "+retirer.Role, func(context.Context) error {
		lo, err := loVIPs(retirer, []netip.Prefix{removed})
		if err == nil && len(lo) > 0 {
			err = fmt.Errorf("still on loopback: %v", lo)
		}
		return err
	})
}
