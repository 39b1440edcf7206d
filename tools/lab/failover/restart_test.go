package failover

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestRollingRestart restarts fsha (SIGTERM, then a new `fsha up`, as
// `systemctl restart` does) on every node in turn while a real smbclient
// and a real nfs-cat read through a VIP and raw SMB and NFS sessions talk
// through every VIP every 50 ms. Nothing may notice: no session breaks or
// pauses, no connection is reset (the client's own view of its sockets
// and the wire), no VIP moves, and every node still tracks each of its
// connections afterwards.
//
// With FSHA_UPGRADE_FROM set to another fsha binary, the nodes start with
// it and are restarted with the one under test: a rolling upgrade.
func TestRollingRestart(t *testing.T) {
	old := os.Getenv("FSHA_UPGRADE_FROM")
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, FshaBin: old})
	before, err := e.c.Assignment()
	if err != nil {
		t.Fatal(err)
	}

	// load: a long transfer of each kind on VIP 1, a raw SMB and a raw NFS
	// session on every VIP
	vip := e.c.VIPs[0]
	const size, rate = 24 << 20, 2 << 20 // ~12 s: in flight through every restart
	smbData, nfsData := content("rolling-smb.bin", size), content("rolling-nfs.bin", size)
	e.writeShare("rolling-smb.bin", smbData)
	e.writeShare("rolling-nfs.bin", nfsData)
	var sessions []*session
	var keys []string
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	for _, v := range e.c.VIPs {
		smb, err := dialSMB(e.ctx, e.client, v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		nfs, err := dialNFS(e.ctx, e.client, v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		sessions = append(sessions, startSession(smb, pingEvery), startSession(nfs, pingEvery))
		keys = append(keys, smb.Key(), nfs.Key())
	}
	smbGet, err := startSMBGet(e.client, vip.Addr(), "rolling-smb.bin", smbData, rate)
	if err != nil {
		t.Fatal(err)
	}
	nfsCat, err := startNFSCat(e.client, vip.Addr(), "rolling-nfs.bin", nfsData, rate)
	if err != nil {
		t.Fatal(err)
	}
	transfers := []*transfer{smbGet, nfsCat}
	for _, tr := range transfers {
		tr.key = e.socketOf(vip, tr.port, tr.process)
		keys = append(keys, tr.key)
	}
	watches := map[string]*lab.Watch{}
	for _, v := range e.c.VIPs {
		w, err := e.client.WatchAddr(v.Addr())
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		watches[v.String()] = w
	}
	// every node tracks its own connections before
	owned := map[*lab.ClusterNode][]string{}
	for _, n := range e.c.Nodes {
		flows, err := n.Flows(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range flows {
			if slices.Contains(keys, f.Key()) {
				owned[n] = append(owned[n], f.Key())
			}
		}
	}
	start := time.Now()

	for _, n := range e.c.Nodes {
		t0 := time.Now()
		if err := n.StopFsha(); err != nil {
			t.Fatal(err)
		}
		if p := n.FshaProcess(); p.ExitErr() != nil {
			t.Errorf("%s: fsha exited with %v on SIGTERM", n.Role, p.ExitErr())
		}
		time.Sleep(time.Second) // an upgrade's unpacking, a slow start
		if _, err := n.StartFsha(e.ctx, lab.FshaOptions{Bin: e.c.Lab.FshaBin()}); err != nil {
			t.Fatal(err)
		}
		e.eventually(n.Role+" back in the cluster", func(ctx context.Context) error {
			st, err := n.Status(ctx)
			if err != nil {
				return err
			}
			for _, ns := range st.Nodes {
				if ns.State != "OK" {
					return fmt.Errorf("%s sees node %d %s", n.Role, ns.PNN, ns.State)
				}
			}
			return nil
		})
		t.Logf("%s restarted: back %v after the SIGTERM", n.Role, time.Since(t0).Round(time.Millisecond))
		after, err := e.c.Assignment()
		if err != nil {
			t.Fatal(err)
		}
		for v, owner := range before {
			if after[v] != owner {
				t.Errorf("after %s's restart %s is on %s, was on %s", n.Role, v, after[v], owner)
			}
		}
	}

	for _, tr := range transfers {
		ctx, cancel := context.WithTimeout(e.ctx, 60*time.Second)
		err := tr.Wait(ctx)
		cancel()
		if err != nil {
			t.Errorf("%v", err)
		}
	}
	total := time.Since(start)
	for v, w := range watches {
		for _, r := range e.resetsTo(w, start, keys...) {
			t.Errorf("%s: a connection was reset during the rolling restart: %s", v, r)
		}
	}
	// no flow lost: each node still tracks the connections it had, bar
	// those that ended (the transfers); read while the sessions are open
	// (a close removes the flow)
	for n, ks := range owned {
		flows, err := n.Flows(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		var now []string
		for _, f := range flows {
			now = append(now, f.Key())
		}
		for _, k := range ks {
			if !slices.Contains(now, k) && !slices.ContainsFunc(transfers, func(tr *transfer) bool { return tr.key == k }) {
				t.Errorf("%s no longer tracks %s after the restarts", n.Role, k)
			}
		}
	}
	for _, s := range sessions {
		s.Close()
		t.Logf("%s", s)
		if err := s.Err(); err != nil {
			t.Errorf("%s session broke during the rolling restart: %v", s.rc.proto, err)
		}
		if min := int(total / pingEvery / 4); s.OK() < min {
			t.Errorf("%s session answered %d pings in %v, want at least %d", s.rc.proto, s.OK(), total.Round(time.Millisecond), min)
		}
	}
	for _, n := range e.c.Nodes {
		tl, err := n.Timeline(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range tl {
			if r.Steps[0].At.After(start) && r.Kind != "adopted" {
				t.Errorf("%s moved a VIP during the rolling restart: %s %s (%s)", n.Role, r.Kind, r.VIP, r.Reason)
			}
		}
	}
}
