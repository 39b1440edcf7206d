package cluster

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// The tests here judge ownership from the wire, with an independent
// monitor in a client namespace: every 10 ms it asks every VIP by ARP and
// sends a SYN to every node's MAC, and records which MAC answers. A VIP
// answered by two MACs for the same probe (or A, then B, then A again
// within a second) is an overlap; none may ever happen.

// iterations is how many faults a storm injects: a few in `make test`,
// FSHA_LAB_ITERATIONS (50 in `make chaos`) otherwise.
func iterations(def int) int {
	if v, err := strconv.Atoi(os.Getenv("FSHA_LAB_ITERATIONS")); err == nil && v > 0 {
		return v
	}
	return def
}

// chaosBudget is the time a test gets on top of testTimeout for the
// FSHA_LAB_ITERATIONS faults of `make chaos`: a fault of up to 1.2 s and
// the cluster settling after it take a few seconds each.
func chaosBudget() time.Duration {
	if v, err := strconv.Atoi(os.Getenv("FSHA_LAB_ITERATIONS")); err == nil && v > 0 {
		return time.Duration(v) * 5 * time.Second
	}
	return 0
}

// overlapWindow: a MAC answering again this soon after another answered is
// an overlap (A, B, A), not a switch-over and back (a failback after a
// short fault takes a few hundred milliseconds).
const overlapWindow = 100 * time.Millisecond

func (e *env) startWireMonitor() *lab.Monitor {
	e.t.Helper()
	m, err := e.c.StartMonitor(e.client, true)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if e.t.Failed() {
			if p, err := m.Save("wire-monitor.txt"); err == nil {
				e.t.Logf("wire monitor records: %s", p)
			}
		}
	})
	return m
}

// checkWire stops the monitor and fails on any overlap or any probe the
// monitor itself lost; it logs the longest gap per VIP.
func (e *env) checkWire(m *lab.Monitor) {
	e.t.Helper()
	lines, err := m.Finish()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range lines {
		e.t.Log(l)
	}
	var sent, answered int
	for _, st := range m.Stats() {
		sent += st.Rounds
		answered += st.Answered
	}
	if answered == 0 {
		e.t.Fatalf("no probe answered in %d rounds: the monitor saw nothing", sent)
	}
	ov := m.Overlaps(overlapWindow)
	for _, o := range ov[:min(len(ov), 10)] {
		e.t.Errorf("overlap on the wire: %+v", o)
	}
	e.t.Logf("wire: %d probe rounds, %d answered, %d overlaps", sent, answered, len(ov))
}

// TestFaultStormWire cuts one node at a time off the network (at the
// switch, links up), cuts one direction only (one-way partitions), makes
// its links lossy, for 0.3 to 1.2 s each, again and again, on 3 and 5
// nodes. The wire never shows a VIP answered by two nodes, and after each
// fault the cluster settles with every VIP held.
func TestFaultStormWire(t *testing.T) {
	for _, nodes := range []int{3, 5} {
		t.Run(fmt.Sprintf("%d nodes", nodes), func(t *testing.T) {
			e := newEnv(t, lab.ClusterOptions{Nodes: nodes, NoServers: true})
			e.waitConverged(e.c.Nodes...)
			m := e.startWireMonitor()
			rng := rand.New(rand.NewSource(time.Now().UnixNano()))
			for i := range iterations(3) {
				n := e.c.Nodes[rng.Intn(len(e.c.Nodes))]
				others := hostsOf(e.c.Others(n)...)
				d := time.Duration(300+rng.Intn(900)) * time.Millisecond
				var what string
				var err error
				switch i % 4 {
				case 0:
					what, err = "cut at the switch", e.c.Lab.Cut(n.Host)
				case 1:
					what, err = "one-way partition (its frames lost)", e.c.Lab.PartitionOneWay([]*lab.Host{n.Host}, others)
				case 2:
					what, err = "one-way partition (frames to it lost)", e.c.Lab.PartitionOneWay(others, []*lab.Host{n.Host})
				default:
					what, err = "40% loss both ways", e.c.Lab.Loss(n.Host, 40)
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Logf("fault %d: %s of %s for %v", i+1, what, n.Role, d)
				time.Sleep(d)
				if err := e.c.Lab.HealFaults(); err != nil {
					t.Fatal(err)
				}
				if err := e.c.WaitConverged(e.ctx, failoverTimeout, e.c.Nodes...); err != nil {
					t.Fatalf("after %s of %s: %v", what, n.Role, err)
				}
			}
			e.checkWire(m)
		})
	}
}

// TestIsolatedOwner7 isolates the holder of a VIP in a seven-node cluster
// with its links up (frames dropped at the switch): another node answers
// for the VIP only after the isolated one stopped, and the isolated one
// takes the address off its interface at its deadline. Once in `make
// test`, FSHA_LAB_ITERATIONS times (a VIP after another) in `make chaos`.
func TestIsolatedOwner7(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 7, NoServers: true})
	e.waitConverged(e.c.Nodes...)
	m := e.startWireMonitor()
	for i := range iterations(1) {
		vip := e.c.VIPs[i%len(e.c.VIPs)]
		old := e.owner(vip)
		time.Sleep(200 * time.Millisecond)
		if err := e.c.Lab.Cut(old.Host); err != nil {
			t.Fatal(err)
		}
		t.Logf("isolation %d: %s, holder of %s", i+1, old.Role, vip)
		e.out = []*lab.ClusterNode{old}
		e.eventually(vip.String()+" answered by another node", func(ctx context.Context) error {
			if err := e.c.Converged(ctx, e.up()...); err != nil {
				return err
			}
			_, err := e.c.Owner(vip, e.up()...)
			return err
		})
		e.eventually(old.Role+" takes "+vip.String()+" off its interface", func(context.Context) error {
			if h := e.held(old); len(h) > 0 {
				return fmt.Errorf("%s still has %v", old.Role, h)
			}
			return nil
		})
		if err := e.c.Lab.Uncut(old.Host); err != nil {
			t.Fatal(err)
		}
		e.out = nil
		e.waitConverged(e.c.Nodes...)
	}
	e.checkWire(m)
}

// TestConfigSkew starts one node of three with a public_addresses file
// that has one VIP more and its lines in another order: it holds nothing,
// says why, and the others (and fsha status everywhere) name it.
func TestConfigSkew(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, ManualFsha: []int{3}})
	n3 := e.c.Node(3)
	orig, err := os.ReadFile(e.c.PublicAddressesFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(orig)), "\n")
	for i, j := 0, len(lines)-1; i < j; i, j = i+1, j-1 {
		lines[i], lines[j] = lines[j], lines[i]
	}
	extra := lab.VIP(9)
	lines = append(lines, extra.String()+" eth0")
	skewed := filepath.Join(n3.Dir, "public_addresses.skewed")
	if err := os.WriteFile(skewed, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m := e.startWireMonitor()
	if _, err := n3.StartFsha(e.ctx, lab.FshaOptions{Args: []string{"--public-addresses", skewed}}); err != nil {
		t.Fatal(err)
	}
	e.eventually("every node names n3's skew", func(ctx context.Context) error {
		for _, n := range e.c.Nodes {
			st, err := n.Status(ctx)
			if err != nil {
				return err
			}
			ns := nodeStatus(st, n3)
			if ns.Skew == "" || ns.State != admin.StateUnhealthy {
				return fmt.Errorf("%s sees n3 as %s, skew %q", n.Role, ns.State, ns.Skew)
			}
		}
		return nil
	})
	st := e.status(n3)
	t.Logf("n3 about itself: %s: %s", nodeStatus(st, n3).State, nodeStatus(st, n3).Skew)
	// a while later: n3 still holds nothing, the others hold every VIP
	time.Sleep(2 * time.Second)
	if h := e.held(n3); len(h) > 0 {
		t.Fatalf("n3, whose configuration differs, holds %v", h)
	}
	e.waitConverged(e.c.Node(1), e.c.Node(2))
	e.checkWire(m)
	for _, st := range m.Stats() {
		if st.ByNode[n3.Role] > 0 {
			t.Errorf("n3 answered %d probes of %v", st.ByNode[n3.Role], st.VIP)
		}
	}
}

func nodeStatus(st admin.Status, n *lab.ClusterNode) admin.NodeStatus {
	for _, ns := range st.Nodes {
		if ns.Address == n.IP().String() {
			return ns
		}
	}
	return admin.NodeStatus{}
}
