package failover

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// TestPeerDeathEndsCTDBConnections stands in for ctdbd on every node: TCP
// connections between n1 and n3 on CTDB's port 4379, both ways, the way
// each ctdbd connects to every other one. When n3 dies (a power cut), n1
// must end its two at once (CTDB then sees n3 disconnected and recovers
// now rather than after its keepalives), and only those: n1's connection
// to n3 on another port and its connection to n2 on 4379 stay. A restart
// of n3's fsha (SIGTERM, back within the grace) ends nothing: ctdbd on n3
// runs on. The oracle is n1's kernel: a destroyed socket fails its reads
// with ECONNABORTED.
func TestPeerDeathEndsCTDBConnections(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3, NoServers: true, Clients: -1})
	n1, n2, n3 := e.c.Node(1), e.c.Node(2), e.c.Node(3)

	accepted := func(h *lab.Host, port int) <-chan net.Conn {
		ln, err := h.Listen("tcp", netip.AddrPortFrom(h.IP(), uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		ch := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err == nil {
				ch <- c
			}
		}()
		return ch
	}
	dial := func(from, to *lab.Host, port int) (net.Conn, net.Conn) {
		ch := accepted(to, port)
		c, err := from.Dial(e.ctx, "tcp", netip.AddrPortFrom(to.IP(), uint16(port)).String())
		if err != nil {
			t.Fatal(err)
		}
		select {
		case other := <-ch:
			t.Cleanup(func() { other.Close() })
			return c, other
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not accept %s's connection on %d", to.Role, from.Role, port)
			return nil, nil
		}
	}
	// n1's ends of each connection
	out, _ := dial(n1.Host, n3.Host, 4379) // n1 -> n3:4379
	_, in := dial(n3.Host, n1.Host, 4379)  // n3 -> n1:4379, n1's accepted end
	other, _ := dial(n1.Host, n3.Host, 4400)
	toN2, _ := dial(n1.Host, n2.Host, 4379)
	kicked := map[string]net.Conn{"n1->n3:4379": out, "n3->n1:4379": in}
	kept := map[string]net.Conn{"n1->n3:4400": other, "n1->n2:4379": toN2}
	// open: a read waits (deadline); ended: it fails with ECONNABORTED
	state := func(c net.Conn) error {
		if err := c.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
			return err
		}
		var b [1]byte
		_, err := c.Read(b[:])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil
		}
		if err == nil {
			return errors.New("read data nobody sent")
		}
		return err
	}
	allOpen := func(when string, conns map[string]net.Conn) {
		t.Helper()
		for name, c := range conns {
			if err := state(c); err != nil {
				t.Errorf("%s: connection %s: %v, want it open", when, name, err)
			}
		}
	}
	allOpen("at start", kicked)
	allOpen("at start", kept)

	// a restart of n3's fsha: nothing ended
	if err := n3.StopFsha(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // longer than a lease: n3 is unheard
	if _, err := n3.StartFsha(e.ctx, lab.FshaOptions{}); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	e.waitConverged(e.c.Nodes...)
	allOpen("after a restart of n3's fsha", kicked)
	allOpen("after a restart of n3's fsha", kept)

	// a power cut of n3: n1 ends its two ctdbd connections with it
	vip := e.held(n3)
	if len(vip) != 1 {
		t.Fatalf("n3 holds %v after its restart, want one VIP", vip)
	}
	cut := e.powerDown(n3)
	e.eventually("n1 ends its connections with n3 on 4379", func(context.Context) error {
		for name, c := range kicked {
			if err := state(c); err == nil {
				return fmt.Errorf("%s still open", name)
			} else if !errors.Is(err, syscall.ECONNABORTED) {
				return fmt.Errorf("%s: %v, want ECONNABORTED (destroyed by n1)", name, err)
			}
		}
		return nil
	})
	t.Logf("n1 ended its ctdbd connections with n3 within %v of the power cut", time.Since(cut).Round(time.Millisecond))
	allOpen("after n3's death", kept)
	// n3 restarted a few seconds ago: its VIP moves as after any crash,
	// not at the end of the restart's grace (the renewals gave it back)
	e.eventually(vip[0].String()+" on n1 or n2", func(context.Context) error {
		if !slices.Contains(e.held(n1), vip[0]) && !slices.Contains(e.held(n2), vip[0]) {
			return fmt.Errorf("%s on neither", vip[0])
		}
		return nil
	})
	t.Logf("%s on another node %v after the power cut (n3's fsha had restarted %v before it)",
		vip[0], time.Since(cut).Round(time.Millisecond), cut.Sub(restarted).Round(time.Millisecond))
}
