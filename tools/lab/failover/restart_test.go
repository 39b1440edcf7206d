package failover

import (
	"context"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
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
		for _, s := range e.rawSessions(v.Addr()) {
			sessions = append(sessions, s)
			keys = append(keys, s.rc.Key())
		}
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
		// a restart forgets the timeline: read what the node did so far
		tl, err := n.Timeline(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkNoMoves(t, n.Role, tl, start)
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
	}
	e.checkSessions(sessions, "during the rolling restart", nil)
	for _, s := range sessions {
		if min := int(total / pingEvery / 4); s.OK() < min {
			t.Errorf("%s session answered %d pings in %v, want at least %d", s.rc.proto, s.OK(), total.Round(time.Millisecond), min)
		}
	}
	for _, n := range e.c.Nodes {
		tl, err := n.Timeline(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		checkNoMoves(t, n.Role, tl, start)
	}
}

// lapseBound is how soon a holder whose lease lapsed must have renewed it
// for the lapse to pass as a hiccup: the default lease.
const lapseBound = 250 * time.Millisecond

// checkNoMoves fails on every change in timeline tl of node role since
// start but the adoptions of its own restarts, and a lapse that the same
// node renewed within lapseBound. While one node of three restarts, the
// two others each need the other's answers for their leases, and a
// delay of more than a lease (a machine stall, as the lab's stall watch
// sees at times in full runs) lapses a lease; its holder renews it as
// soon as the answers come, and the address is off for that long only.
// Such a lapse is logged: the clients' own view (resets on the wire,
// sessions) says whether anyone noticed.
func checkNoMoves(t *testing.T, role string, tl []admin.Takeover, start time.Time) {
	t.Helper()
	hiccups, moves := restartMoves(tl, start)
	for _, h := range hiccups {
		t.Logf("%s's lease of %s", role, h)
	}
	for _, m := range moves {
		t.Errorf("%s moved a VIP during the rolling restart: %s", role, m)
	}
}

// restartMoves sorts timeline tl's changes since start: the lapses
// renewed by the node within lapseBound, and everything else but
// adoptions.
func restartMoves(tl []admin.Takeover, start time.Time) (hiccups, moves []string) {
	renewed := make([]bool, len(tl))
	for i, r := range tl {
		if !r.Steps[0].At.After(start) || r.Kind == "adopted" || renewed[i] {
			continue
		}
		at := r.Steps[0].At
		if r.Kind == "lapse" {
			j := slices.IndexFunc(tl[i+1:], func(x admin.Takeover) bool {
				return x.VIP == r.VIP && x.Kind == "takeover" && x.Reason == "renewed after a lapse"
			})
			if j >= 0 {
				if off := tl[i+1+j].Steps[0].At.Sub(at); off <= lapseBound {
					renewed[i+1+j] = true
					hiccups = append(hiccups, fmt.Sprintf("%s lapsed at %s and was renewed %v later", r.VIP,
						at.Format("15:04:05.000"), off.Round(time.Microsecond)))
					continue
				}
			}
		}
		moves = append(moves, fmt.Sprintf("%s %s (%s) at %s", r.Kind, r.VIP, r.Reason, at.Format("15:04:05.000")))
	}
	return hiccups, moves
}
