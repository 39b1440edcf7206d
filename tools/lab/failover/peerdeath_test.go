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

// TestPeerDeathEndsCTDBConnections stands in for ctdbd and GlusterFS on
// every node: TCP connections between n1 and n3 on CTDB's port 4379, both
// ways, the way each ctdbd connects to every other one, and on brick
// ports (49152-60999: n1's client on n3's brick, n3's on n1's). When n3
// dies (a power cut), n1 must end those four at once (CTDB then sees n3
// disconnected and recovers now rather than after its keepalives; a brick
// drops the dead client's locks), and only those: n1's connections with
// n3 on other ports whose other end is a port of the range (an ephemeral
// one: 55555, 55556) and its connection to n2 on 4379 stay. A restart
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
	// dialFrom connects from a chosen local port (0: the kernel's pick)
	dialFrom := func(from, to *lab.Host, port, local int) (net.Conn, net.Conn) {
		ch := accepted(to, port)
		var c net.Conn
		err := from.Do(func() error {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.IP().AsSlice(), Port: local}}
			var err error
			c, err = d.DialContext(e.ctx, "tcp", netip.AddrPortFrom(to.IP(), uint16(port)).String())
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		select {
		case other := <-ch:
			t.Cleanup(func() { other.Close() })
			return c, other
		case <-time.After(5 * time.Second):
			t.Fatalf("%s did not accept %s's connection on %d", to.Role, from.Role, port)
			return nil, nil
		}
	}
	dial := func(from, to *lab.Host, port int) (net.Conn, net.Conn) { return dialFrom(from, to, port, 0) }
	// n1's ends of each connection: ctdbd's both ways, and GlusterFS's
	// (fsha's default --dead-peer-ports: 24007, bricks 49152-60999) both
	// ways; kept, connections on other ports whose other end is a port in
	// that range (an ephemeral port)
	out, _ := dial(n1.Host, n3.Host, 4379) // n1 -> n3:4379
	_, in := dial(n3.Host, n1.Host, 4379)  // n3 -> n1:4379, n1's accepted end
	toBrick, _ := dial(n1.Host, n3.Host, 50001)
	_, fromClient := dialFrom(n3.Host, n1.Host, 50000, 1000) // n3's client on n1's brick
	other, _ := dialFrom(n1.Host, n3.Host, 4400, 55555)
	_, otherIn := dialFrom(n3.Host, n1.Host, 4401, 55556)
	toN2, _ := dial(n1.Host, n2.Host, 4379)
	kicked := map[string]net.Conn{"n1->n3:4379": out, "n3->n1:4379": in, "n1->n3:50001": toBrick, "n3:1000->n1:50000": fromClient}
	kept := map[string]net.Conn{"n1:55555->n3:4400": other, "n3:55556->n1:4401": otherIn, "n1->n2:4379": toN2}
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
	e.eventually("n1 ends its connections with n3 on 4379 and the brick ports", func(context.Context) error {
		for name, c := range kicked {
			if err := state(c); err == nil {
				return fmt.Errorf("%s still open", name)
			} else if !errors.Is(err, syscall.ECONNABORTED) {
				return fmt.Errorf("%s: %v, want ECONNABORTED (destroyed by n1)", name, err)
			}
		}
		return nil
	})
	t.Logf("n1 ended its ctdbd and brick connections with n3 within %v of the power cut", time.Since(cut).Round(time.Millisecond))
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
