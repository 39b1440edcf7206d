package lab_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

const udpPort = 9000

// udpSink counts the UDP datagrams a host receives on udpPort, per
// phase (the datagram's first word): the oracle of the fault tests,
// independent of nftables' own counters. A datagram late for its phase
// is never counted in the next one.
type udpSink struct {
	mu     sync.Mutex
	counts map[string]int
	conn   net.PacketConn
}

func newUDPSink(t *testing.T, h *lab.Host) *udpSink {
	t.Helper()
	s := &udpSink{counts: map[string]int{}}
	err := h.Do(func() error {
		var err error
		s.conn, err = net.ListenPacket("udp4", ":"+strconv.Itoa(udpPort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.conn.Close() })
	go func() {
		buf := make([]byte, 2048)
		for {
			n, _, err := s.conn.ReadFrom(buf)
			if err != nil {
				return
			}
			phase, _, _ := strings.Cut(string(buf[:n]), " ")
			s.mu.Lock()
			s.counts[phase]++
			s.mu.Unlock()
		}
	}()
	return s
}

// received is how many datagrams of phase arrived, counted once none
// arrived for 300 ms (or after 10 s).
func (s *udpSink) received(phase string) int {
	count := func() int {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.counts[phase]
	}
	last, quietSince := count(), time.Now()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		if n := count(); n != last {
			last, quietSince = n, time.Now()
		} else if time.Since(quietSince) > 300*time.Millisecond {
			break
		}
	}
	return last
}

// sendUDP sends n datagrams of phase from h to addr:udpPort, 100 µs
// apart so that no socket buffer overflows.
func sendUDP(t *testing.T, h *lab.Host, to netip.Addr, phase string, n int) {
	t.Helper()
	var conn net.Conn
	if err := h.Do(func() error {
		var err error
		conn, err = net.Dial("udp4", netip.AddrPortFrom(to, udpPort).String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range n {
		if _, err := conn.Write([]byte(phase + " " + strconv.Itoa(i))); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("send from %s: %v", h.Role, err)
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// pair is two nodes with a UDP sink each. Tests send a first round of
// datagrams before any fault, which also resolves the neighbour entries:
// a loss test must not lose ARP and with it the queued datagrams.
type pair struct {
	t      *testing.T
	ctx    context.Context
	l      *lab.Lab
	a, b   *lab.Node
	sa, sb *udpSink
	phase  int
}

func newPair(t *testing.T) *pair {
	t.Helper()
	l := newLab(t)
	testenv.RequireCommand(t, "nft")
	p := &pair{l: l, t: t}
	var err error
	if p.a, err = l.AddNode("n1"); err != nil {
		t.Fatal(err)
	}
	if p.b, err = l.AddNode("n2"); err != nil {
		t.Fatal(err)
	}
	p.sa, p.sb = newUDPSink(t, p.a.Host), newUDPSink(t, p.b.Host)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	p.ctx = ctx
	t.Cleanup(func() {
		if t.Failed() {
			rules, err := l.FaultRules(context.Background())
			t.Logf("fault rules (%v):\n%s", err, rules)
		}
	})
	return p
}

// flows sends n datagrams each way and returns how many arrived at b
// (from a) and at a (from b).
func (p *pair) flows(n int) (toB, toA int) {
	p.t.Helper()
	p.phase++
	phase := "p" + strconv.Itoa(p.phase)
	sendUDP(p.t, p.a.Host, p.b.IP(), phase, n)
	sendUDP(p.t, p.b.Host, p.a.IP(), phase, n)
	return p.sb.received(phase), p.sa.received(phase)
}

func (p *pair) wantFlows(what string, n, wantToB, wantToA int) {
	p.t.Helper()
	if toB, toA := p.flows(n); toB != wantToB || toA != wantToA {
		p.t.Errorf("%s: %d of %d datagrams reached n2 and %d reached n1, want %d and %d", what, toB, n, toA, wantToB, wantToA)
	}
}

// within checks a count against a bound that holds unless the fault does
// not work (or is not random): 10 standard deviations and more.
func within(t *testing.T, what string, got, lo, hi int) {
	t.Helper()
	if got < lo || got > hi {
		t.Errorf("%s: %d, want %d to %d", what, got, lo, hi)
	} else {
		t.Logf("%s: %d (bounds %d to %d)", what, got, lo, hi)
	}
}

func neighFlush(t *testing.T, ctx context.Context, hosts ...*lab.Host) {
	t.Helper()
	for _, h := range hosts {
		if out, err := h.Run(ctx, "ip", "neigh", "flush", "dev", lab.HostIface); err != nil {
			t.Fatalf("flush neighbours of %s: %v: %s", h.Role, err, out)
		}
	}
}

// A one-way partition: n1's datagrams stop reaching n2, n2's still reach
// n1, also with both neighbour tables empty (ARP passes); HealFaults
// ends it and leaves a Partition alone.
func TestFaultPartitionOneWay(t *testing.T) {
	p := newPair(t)
	p.wantFlows("before", 100, 100, 100)
	if err := p.l.PartitionOneWay([]*lab.Host{p.a.Host}, []*lab.Host{p.b.Host}); err != nil {
		t.Fatal(err)
	}
	neighFlush(t, p.ctx, p.a.Host, p.b.Host)
	p.wantFlows("n1 -/-> n2", 100, 0, 100)
	if err := p.l.PartitionOneWay([]*lab.Host{p.a.Host}, []*lab.Host{p.l.Switch}); err == nil {
		t.Error("one-way partition to the switch accepted")
	}

	// HealFaults does not end a Partition, nor Heal a one-way partition
	if err := p.l.Partition(p.ctx, []*lab.Host{p.b.Host}); err != nil {
		t.Fatal(err)
	}
	if err := p.l.HealFaults(); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("partitioned, faults healed", 20, 0, 0)
	if err := p.l.PartitionOneWay([]*lab.Host{p.b.Host}, []*lab.Host{p.a.Host}); err != nil {
		t.Fatal(err)
	}
	if err := p.l.Heal(p.ctx); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("healed, n2 -/-> n1", 100, 100, 0)
	if err := p.l.HealFaults(); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("all healed", 100, 100, 100)
	if rules, err := p.l.FaultRules(p.ctx); err != nil || strings.TrimSpace(rules) != "" {
		t.Errorf("rules left after HealFaults (%v):\n%s", err, rules)
	}
}

// Random loss of 30% loses 15% to 45% of 1,000 datagrams, in the
// direction asked for only.
func TestFaultLoss(t *testing.T) {
	p := newPair(t)
	p.wantFlows("before", 50, 50, 50)
	const n = 1000
	if err := p.l.Loss(p.b.Host, 30, lab.ToHost); err != nil {
		t.Fatal(err)
	}
	toB, toA := p.flows(n)
	within(t, "30% loss to n2: datagrams n2 got", toB, n*55/100, n*85/100)
	if toA != n {
		t.Errorf("loss to n2 only: n1 got %d of %d", toA, n)
	}
	if err := p.l.Loss(p.b.Host, 0, lab.ToHost); err != nil {
		t.Fatal(err)
	}
	if err := p.l.Loss(p.b.Host, 30, lab.FromHost); err != nil {
		t.Fatal(err)
	}
	toB, toA = p.flows(n)
	within(t, "30% loss from n2: datagrams n1 got", toA, n*55/100, n*85/100)
	if toB != n {
		t.Errorf("loss from n2 only: n2 got %d of %d", toB, n)
	}
	if err := p.l.Loss(p.b.Host, 100); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("100% loss both ways", 50, 0, 0)
	if err := p.l.Loss(p.b.Host, 0); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("loss ended", 50, 50, 50)
	if err := p.l.Loss(p.b.Host, 101); err == nil {
		t.Error("loss of 101% accepted")
	}
}

// Duplication of 100% delivers every datagram twice, in the direction
// asked for only; 50% between 1,300 and 1,700 of 1,000.
func TestFaultDuplicate(t *testing.T) {
	p := newPair(t)
	p.wantFlows("before", 50, 50, 50)
	if err := p.l.Duplicate(p.b.Host, 100, lab.ToHost); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("all duplicated to n2", 100, 200, 100)
	if err := p.l.Duplicate(p.b.Host, 0, lab.ToHost); err != nil {
		t.Fatal(err)
	}
	if err := p.l.Duplicate(p.b.Host, 100, lab.FromHost); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("all duplicated from n2", 100, 100, 200)
	if err := p.l.Duplicate(p.b.Host, 50, lab.BothWays); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	toB, toA := p.flows(n)
	within(t, "50% duplicated to n2: datagrams n2 got", toB, n*130/100, n*170/100)
	within(t, "50% duplicated from n2: datagrams n1 got", toA, n*130/100, n*170/100)
	if err := p.l.HealFaults(); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("healed", 50, 50, 50)
}

// Cut drops everything both ways with the link up; Flap cuts three times,
// and a monitor on a client sees three outages of n2's VIP; Unplug takes
// n2's carrier away.
func TestFaultCutFlapUnplug(t *testing.T) {
	p := newPair(t)
	p.wantFlows("before", 20, 20, 20)
	if err := p.l.Cut(p.b.Host); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("n2 cut", 20, 0, 0)
	if s := operState(t, p.b); s != netlink.OperUp {
		t.Errorf("n2's eth0 %v while cut, want up", s)
	}
	if err := p.l.Uncut(p.b.Host); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("n2 uncut", 20, 20, 20)

	c, err := p.l.AddClient("c1")
	if err != nil {
		t.Fatal(err)
	}
	vip := lab.VIP(1)
	if err := p.b.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	names, err := lab.MACNames(p.a.Host, p.b.Host)
	if err != nil {
		t.Fatal(err)
	}
	m := startMonitor(t, c, lab.MonitorOptions{VIPs: []netip.Addr{vip.Addr()}, Names: names})
	answeredBy(p.ctx, t, m, vip.Addr(), lab.ProbeARP, "n2", 5)
	const flaps = 3
	if err := p.l.Flap(p.ctx, p.b.Host, lab.FlapOptions{Down: 300 * time.Millisecond, Up: 300 * time.Millisecond, Times: flaps}); err != nil {
		t.Fatal(err)
	}
	before := m.StatsOf(vip.Addr(), lab.ProbeARP).ByNode["n2"]
	answeredBy(p.ctx, t, m, vip.Addr(), lab.ProbeARP, "n2", before+5)
	stopMonitor(t, m)
	s := m.StatsOf(vip.Addr(), lab.ProbeARP)
	var outages []lab.Gap
	for _, g := range s.Gaps {
		if !g.Open && g.Rounds >= 2 {
			outages = append(outages, g)
		}
	}
	if len(outages) != flaps {
		t.Errorf("monitor saw %d outages of 2 rounds or more, want %d: %v", len(outages), flaps, s.Gaps)
	}
	t.Logf("outages: %v", outages)

	if err := p.l.Unplug(p.b.Host); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(p.ctx, 5*time.Second, "n2's carrier gone", func(context.Context) error {
		if s := operState(t, p.b); s == netlink.OperUp {
			return fmt.Errorf("eth0 %v", s)
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
	if err := p.l.Flap(p.ctx, p.b.Host, lab.FlapOptions{Times: -1}); err == nil {
		t.Error("flap -1 times accepted")
	}
	// HealFaults plugs it back
	if err := p.l.HealFaults(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(p.ctx, 5*time.Second, "n2's carrier back", func(context.Context) error {
		if s := operState(t, p.b); s != netlink.OperUp {
			return fmt.Errorf("eth0 %v", s)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	p.wantFlows("plugged", 20, 20, 20)

	// the lab recorded each fault with its end: one cut, the flaps' cuts,
	// one unplug (ended by HealFaults)
	var cuts, unplugs int
	for _, f := range p.l.Faults() {
		if len(f.Hosts) != 1 || f.Hosts[0] != "n2" || f.End.IsZero() || f.End.Before(f.Start) {
			t.Errorf("fault %s on %v: want n2's, ended", f, f.Hosts)
			continue
		}
		switch {
		case strings.HasPrefix(f.What, "cut "):
			cuts++
		case strings.HasPrefix(f.What, "unplug "):
			unplugs++
		default:
			t.Errorf("fault %s: not injected by this test", f)
		}
	}
	if cuts != 1+flaps || unplugs != 1 {
		t.Errorf("faults recorded: %d cuts and %d unplugs, want %d and 1: %v", cuts, unplugs, 1+flaps, p.l.Faults())
	}
}

func operState(t *testing.T, n *lab.Node) netlink.LinkOperState {
	t.Helper()
	lk, err := n.Netlink().LinkByName(lab.HostIface)
	if err != nil {
		t.Fatal(err)
	}
	return lk.Attrs().OperState
}
