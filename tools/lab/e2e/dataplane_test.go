package e2e

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// greeting is what the lab's Go servers send first: the flow exists (it is
// created on the server's first data segment) before the client sends a
// byte, so every client byte must be counted.
var greeting = []byte("FSHA-LAB-READY\n")

// dataplaneLab is one node running fsha up with one VIP and Go servers on
// it, and one client.
type dataplaneLab struct {
	lab     *lab.Lab
	node    *lab.Node
	client  *lab.Client
	vip     netip.Addr
	fsha    *lab.Process
	servers map[uint16]*server
}

func newDataplaneLab(t *testing.T, ctx context.Context, ports ...uint16) *dataplaneLab {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip")
	testenv.RequireCommand(t, "ethtool")
	l := lab.NewT(t, lab.Options{Fsha: fshaBin, Log: zaptest.NewLogger(t)})
	n, c, vip := l.NodeAndClientT(t, true)
	up, err := n.FshaUp(ctx, []netip.Prefix{vip})
	if err != nil {
		t.Fatal(err)
	}
	d := &dataplaneLab{lab: l, node: n, client: c, vip: vip.Addr(), fsha: up, servers: map[uint16]*server{}}
	for _, p := range ports {
		d.servers[p] = serve(t, n, netip.AddrPortFrom(d.vip, p))
	}
	return d
}

// server accepts connections inside the node's namespace and hands them
// to the test, which drives both ends of every connection itself.
type server struct {
	ln    net.Listener
	conns chan *net.TCPConn
}

func serve(t *testing.T, n *lab.Node, addr netip.AddrPort) *server {
	t.Helper()
	ln, err := n.Listen("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	s := &server{ln: ln, conns: make(chan *net.TCPConn, 64)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the lab
			}
			select {
			case s.conns <- c.(*net.TCPConn):
			default:
				c.Close() // nobody asked for it
			}
		}
	}()
	return s
}

// pair is both ends of one connection: client side in the client
// namespace, server side in the node namespace.
type pair struct {
	c, s  *net.TCPConn
	vport uint16
}

func (p *pair) cport() uint16 { return uint16(p.c.LocalAddr().(*net.TCPAddr).Port) }

func (p *pair) String() string { return fmt.Sprintf("%s->%s", p.c.LocalAddr(), p.c.RemoteAddr()) }

// open connects the client to the VIP's port, exchanges the greeting and
// returns both ends.
func (d *dataplaneLab) open(t *testing.T, ctx context.Context, port uint16) *pair {
	t.Helper()
	srv := d.servers[port]
	conn, err := d.client.Dial(ctx, "tcp", netip.AddrPortFrom(d.vip, port).String())
	if err != nil {
		t.Fatal(err)
	}
	c := conn.(*net.TCPConn)
	p := &pair{c: c, vport: port}
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for p.s == nil {
		select {
		case s := <-srv.conns:
			if s.RemoteAddr().String() == c.LocalAddr().String() {
				p.s = s
			} else {
				s.Close()
			}
		case <-timeout.C:
			t.Fatalf("server on %d never accepted %s", port, c.LocalAddr())
		}
	}
	t.Cleanup(func() { p.s.Close(); p.c.Close() })
	if _, err := p.s.Write(greeting); err != nil {
		t.Fatal(err)
	}
	readN(t, p.c, len(greeting))
	return p
}

// pattern is a deterministic byte stream: byte i of a stream is pattern(i).
func pattern(off, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((off + i) % 251)
	}
	return b
}

func readN(t *testing.T, c *net.TCPConn, n int) []byte {
	t.Helper()
	buf := make([]byte, n)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatalf("read %d bytes on %s: %v", n, c.LocalAddr(), err)
	}
	_ = c.SetReadDeadline(time.Time{})
	return buf
}

// send writes n pattern bytes from one end and reads them at the other.
func send(t *testing.T, from, to *net.TCPConn, n int) {
	t.Helper()
	want := pattern(0, n)
	errc := make(chan error, 1)
	go func() {
		_, err := from.Write(want)
		errc <- err
	}()
	got := readN(t, to, n)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("payload corrupted in transit")
	}
}

func tcpInfo(t *testing.T, c *net.TCPConn) *unix.TCPInfo {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var (
		info *unix.TCPInfo
		ierr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
	}); err != nil {
		t.Fatal(err)
	}
	if ierr != nil {
		t.Fatal(ierr)
	}
	return info
}

func (d *dataplaneLab) flows(t *testing.T, ctx context.Context) []lab.Flow {
	t.Helper()
	flows, err := d.node.Flows(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return flows
}

func (d *dataplaneLab) counters(t *testing.T, ctx context.Context) dataplane.Counters {
	t.Helper()
	c, err := d.node.Counters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (d *dataplaneLab) find(flows []lab.Flow, p *pair) (lab.Flow, bool) {
	for _, f := range flows {
		if f.VIP == d.vip && f.VPort == p.vport && f.Client == d.client.IP() && f.CPort == p.cport() {
			return f, true
		}
	}
	return lab.Flow{}, false
}

// eventually retries check every 50ms for up to 5s and fails the test with
// check's last complaint.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// wantExact waits until the flow of p is listed with the right tuple and
// proto and with bytes equal to what each socket sent: bytes_in is the
// client's TCP payload, bytes_out the server's (retransmissions included
// on both sides, as the programs see them twice).
func (d *dataplaneLab) wantExact(t *testing.T, ctx context.Context, p *pair, proto string) lab.Flow {
	t.Helper()
	var got lab.Flow
	eventually(t, "flow "+p.String(), func() error {
		f, ok := d.find(d.flows(t, ctx), p)
		if !ok {
			return errors.New("not listed by fsha flows")
		}
		got = f
		ci, si := tcpInfo(t, p.c), tcpInfo(t, p.s)
		if f.Proto != proto || f.State != "established" {
			return fmt.Errorf("proto %q state %q, want %q established", f.Proto, f.State, proto)
		}
		if f.BytesIn != ci.Bytes_sent || f.BytesOut != si.Bytes_sent {
			return fmt.Errorf("bytes in/out %d/%d, client sent %d, server sent %d (retransmitted %d/%d)",
				f.BytesIn, f.BytesOut, ci.Bytes_sent, si.Bytes_sent, ci.Bytes_retrans, si.Bytes_retrans)
		}
		return nil
	})
	return got
}

func (d *dataplaneLab) wantGone(t *testing.T, ctx context.Context, p *pair) {
	t.Helper()
	eventually(t, "flow "+p.String()+" gone", func() error {
		if f, ok := d.find(d.flows(t, ctx), p); ok {
			return fmt.Errorf("still listed: %+v", f)
		}
		return nil
	})
}

func TestDataplane(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	d := newDataplaneLab(t, ctx, 445, 2049, 8080)

	t.Run("exact bytes", func(t *testing.T) {
		for _, tc := range []struct {
			port           uint16
			proto          string
			clientB, servB int
		}{
			{445, "smb", 300_000, 70_000},
			{2049, "nfs", 1, 1_000_000},
		} {
			p := d.open(t, ctx, tc.port)
			send(t, p.c, p.s, tc.clientB)
			send(t, p.s, p.c, tc.servB)
			f := d.wantExact(t, ctx, p, tc.proto)
			ci, si := tcpInfo(t, p.c), tcpInfo(t, p.s)
			if ci.Bytes_sent-ci.Bytes_retrans != uint64(tc.clientB) ||
				si.Bytes_sent-si.Bytes_retrans != uint64(len(greeting)+tc.servB) {
				t.Errorf("sockets sent %d/%d new bytes, test wrote %d/%d", ci.Bytes_sent-ci.Bytes_retrans,
					si.Bytes_sent-si.Bytes_retrans, tc.clientB, len(greeting)+tc.servB)
			}
			if f.PacketsIn == 0 || f.PacketsOut == 0 || f.FirstSeen.IsZero() || f.LastSeen.Before(f.FirstSeen) {
				t.Errorf("flow %+v", f)
			}
			p.c.Close()
			p.s.Close()
			d.wantGone(t, ctx, p)
		}
	})

	// fsha maps reads every pinned map, the flow cache's per-CPU slots
	// included, while a connection is busy.
	t.Run("maps dump", func(t *testing.T) {
		p := d.open(t, ctx, 445)
		defer func() {
			p.c.Close()
			p.s.Close()
			d.wantGone(t, ctx, p)
		}()
		send(t, p.c, p.s, 1_000_000)
		out, err := d.node.Fsha(ctx, "maps", "--map", "flow_cache", "--json", "--raw", "--limit", "0")
		if err != nil {
			t.Fatalf("fsha maps --map flow_cache: %v\n%s", err, out)
		}
		var dumps []struct {
			ValueSize uint32 `json:"value_size"`
			Entries   []struct {
				Key    string   `json:"key"`
				PerCPU []string `json:"per_cpu"`
			} `json:"entries"`
		}
		if err := json.Unmarshal(out, &dumps); err != nil || len(dumps) != 1 {
			t.Fatalf("decode %d dumps: %v\n%s", len(dumps), err, out)
		}
		key := hex.EncodeToString(d.vip.AsSlice()) // a slot starts with its flow_key, the VIP first
		found := false
		for _, e := range dumps[0].Entries {
			for _, v := range e.PerCPU {
				v = strings.ReplaceAll(v, " ", "")
				if len(v) != 2*int(dumps[0].ValueSize) {
					t.Errorf("slot %s: a value of %d bytes, want %d", e.Key, len(v)/2, dumps[0].ValueSize)
				}
				found = found || strings.HasPrefix(v, key)
			}
		}
		if !found {
			t.Errorf("no flow cache slot holds the busy flow to %s: %s", d.vip, out)
		}
		// decoded with the slot's BTF type: the VIP is a member
		out, err = d.node.Fsha(ctx, "maps", "--map", "flow_cache", "--json", "--limit", "0")
		if err != nil || !bytes.Contains(out, []byte(`"vip": "`+key)) {
			t.Errorf("fsha maps --map flow_cache --json, decoded: no slot with \"vip\": \"%s...: %v\n%.2000s", key, err, out)
		}
		if out, err := d.node.Fsha(ctx, "maps"); err != nil || !bytes.Contains(out, []byte("flow_cache: PerCPUArray")) {
			t.Errorf("fsha maps: %v\n%s", err, out)
		}
	})

	t.Run("closes", func(t *testing.T) {
		before := d.counters(t, ctx)
		type closer struct {
			name  string
			close func(p *pair)
		}
		closers := []closer{
			{"client FIN first", func(p *pair) {
				p.c.Close()
				readEOF(t, p.s)
				p.s.Close()
			}},
			{"server FIN first", func(p *pair) {
				p.s.Close()
				readEOF(t, p.c)
				p.c.Close()
			}},
			{"client RST", func(p *pair) {
				_ = p.c.SetLinger(0)
				p.c.Close()
			}},
			{"server RST", func(p *pair) {
				_ = p.s.SetLinger(0)
				p.s.Close()
			}},
		}
		pairs := make([]*pair, len(closers))
		for i := range closers {
			pairs[i] = d.open(t, ctx, 445)
			send(t, pairs[i].c, pairs[i].s, 1000*(i+1))
			send(t, pairs[i].s, pairs[i].c, 2000*(i+1))
		}
		for _, p := range pairs {
			d.wantExact(t, ctx, p, "smb")
		}
		for i, cl := range closers {
			cl.close(pairs[i])
			d.wantGone(t, ctx, pairs[i])
			t.Logf("%s: flow removed", cl.name)
		}
		// the last ACKs after a FIN close must not bring a flow back
		time.Sleep(300 * time.Millisecond)
		flows := d.flows(t, ctx)
		for i, p := range pairs {
			if f, ok := d.find(flows, p); ok {
				t.Errorf("%s: flow came back: %+v", closers[i].name, f)
			}
		}
		after := d.counters(t, ctx)
		if got := closed(after) - closed(before); got != uint64(len(closers)) {
			t.Errorf("closed counters grew by %d, want %d", got, len(closers))
		}
		if got := after.Egress.Created - before.Egress.Created; got != uint64(len(closers)) {
			t.Errorf("created counter grew by %d, want %d", got, len(closers))
		}
		if after.Flows != 0 {
			t.Errorf("live flow count %d after every connection closed", after.Flows)
		}
	})

	t.Run("untracked port", func(t *testing.T) {
		before := d.counters(t, ctx)
		p := d.open(t, ctx, 8080)
		send(t, p.c, p.s, 50_000)
		send(t, p.s, p.c, 50_000)
		for _, f := range d.flows(t, ctx) {
			if f.VPort == 8080 {
				t.Errorf("port 8080 tracked: %+v", f)
			}
		}
		p.c.Close()
		p.s.Close()
		after := d.counters(t, ctx)
		if after.Egress.Created != before.Egress.Created || after.Ingress.Tracked != before.Ingress.Tracked {
			t.Errorf("traffic to 8080 created or updated flows: before %+v after %+v", before, after)
		}
		if got := after.Ingress.Other - before.Ingress.Other; got < 10 {
			t.Errorf("ingress 'other' grew by %d for a 50 kB exchange", got)
		}
	})

	t.Run("spoofed floods", func(t *testing.T) {
		testenv.RequireCommand(t, "hping3")
		before, drops := d.counters(t, ctx), d.drops(t)
		var sent uint64
		const count = 5000
		for _, args := range [][]string{
			{"-S", "--rand-source"},
			{"-A", "--rand-source"},
			{"-S"}, // from the client's own address: the node answers SYN-ACK, the client RST
			{"-A"}, // the node answers RST
		} {
			argv := append(args, "-p", "445", "-c", strconv.Itoa(count), "-i", "u50", "-q", d.vip.String())
			fctx, fcancel := context.WithTimeout(ctx, 20*time.Second)
			out, _ := d.client.Run(fctx, "hping3", argv...) // exits non-zero without replies
			fcancel()
			n := hpingSent(out)
			if n != count {
				t.Fatalf("hping3 %v sent %d packets, want %d:\n%s", argv, n, count, out)
			}
			sent += n
		}
		after := d.counters(t, ctx)
		if flows := d.flows(t, ctx); len(flows) != 0 {
			t.Errorf("floods created flows: %+v", flows)
		}
		if after.Egress.Created != before.Egress.Created || after.Flows != 0 {
			t.Errorf("floods created flows: created %d -> %d, live %d", before.Egress.Created, after.Egress.Created, after.Flows)
		}
		if after.Ingress.Tracked != before.Ingress.Tracked {
			t.Errorf("flood packets counted as tracked: %d -> %d", before.Ingress.Tracked, after.Ingress.Tracked)
		}
		untracked := after.Ingress.Untracked - before.Ingress.Untracked
		// every flood packet (but those a busy veth dropped before XDP),
		// plus the client's RSTs to the node's SYN-ACKs
		dropped := d.drops(t) - drops
		if untracked+dropped < sent {
			t.Errorf("ingress untracked grew by %d (and %d dropped) for %d flood packets", untracked, dropped, sent)
		}
		t.Logf("%d flood packets: ingress untracked +%d, egress untracked +%d", sent, untracked,
			after.Egress.Untracked-before.Egress.Untracked)
	})

	t.Run("restart", func(t *testing.T) {
		drops := d.drops(t)
		streams := []*stream{d.startStream(t, ctx, 445), d.startStream(t, ctx, 2049)}
		grows := func(what string) {
			t.Helper()
			first := d.flows(t, ctx)
			eventually(t, what, func() error {
				now := d.flows(t, ctx)
				for _, s := range streams {
					f0, ok0 := d.find(first, s.pair)
					f1, ok1 := d.find(now, s.pair)
					if !ok0 || !ok1 {
						return fmt.Errorf("flow %s not listed", s.pair)
					}
					if f1.BytesIn <= f0.BytesIn || f1.BytesOut <= f0.BytesOut {
						return fmt.Errorf("flow %s not counting: %d/%d then %d/%d", s.pair, f0.BytesIn, f0.BytesOut, f1.BytesIn, f1.BytesOut)
					}
				}
				return nil
			})
		}
		grows("flows counting before the restart")

		if err := d.fsha.Stop(); err != nil {
			t.Fatal(err)
		}
		if err := d.fsha.ExitErr(); err != nil {
			t.Fatalf("fsha up on SIGTERM: %v\n%s", err, d.fsha.Tail(2000))
		}
		grows("flows counting while fsha is down")

		up, err := d.node.FshaUp(ctx, []netip.Prefix{netip.PrefixFrom(d.vip, lab.VIP(1).Bits())})
		if err != nil {
			t.Fatal(err)
		}
		d.fsha = up
		// atomic upgrade: the programs were swapped inside the pinned
		// links, never detached
		for _, pin := range []string{"xdp_eth0", "tcx_eth0"} {
			if !logged(t, up.StderrPath, "replaced program in pinned link", "pin", "/links/"+pin) {
				t.Errorf("restarted fsha up did not reuse the pinned link %s:\n%s", pin, up.Tail(3000))
			}
		}
		grows("flows counting after the restart")

		for _, s := range streams {
			s.finish(t)
			d.wantExact(t, ctx, s.pair, map[uint16]string{445: "smb", 2049: "nfs"}[s.pair.vport])
			ci, si := tcpInfo(t, s.pair.c), tcpInfo(t, s.pair.s)
			t.Logf("%s: %d bytes each way; retransmitted segments client %d server %d",
				s.pair, s.written.Load(), ci.Total_retrans, si.Total_retrans)
		}
		if got := d.drops(t); got != drops {
			t.Errorf("packets dropped on the lab's links during the restart: %d -> %d", drops, got)
		}
	})
}

func readEOF(t *testing.T, c *net.TCPConn) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("want EOF on %s, got %d bytes, %v", c.LocalAddr(), n, err)
	}
}

func closed(c dataplane.Counters) uint64 { return c.Ingress.Closed + c.Egress.Closed }

var hpingSentRE = regexp.MustCompile(`(\d+) packets transmitted`)

func hpingSent(out []byte) uint64 {
	m := hpingSentRE.FindSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return n
}

// drops sums the dropped-packet counters of every lab link.
func (d *dataplaneLab) drops(t *testing.T) uint64 {
	t.Helper()
	var sum uint64
	for _, h := range []*lab.Host{d.lab.Switch, d.node.Host, d.client.Host} {
		links, err := h.Netlink().LinkList()
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range links {
			if s := l.Attrs().Statistics; s != nil {
				sum += s.RxDropped + s.TxDropped
			}
		}
	}
	return sum
}

// stream is a paced echo stream over one connection: the client writes
// pattern bytes, the server echoes them, the client checks what returns.
type stream struct {
	pair     *pair
	stop     chan struct{}
	written  atomic.Int64
	received atomic.Int64
	wg       sync.WaitGroup
	stopOnce sync.Once
	mu       sync.Mutex
	err      error
}

func (d *dataplaneLab) startStream(t *testing.T, ctx context.Context, port uint16) *stream {
	t.Helper()
	s := &stream{pair: d.open(t, ctx, port), stop: make(chan struct{})}
	fail := func(err error) {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
	}
	s.wg.Add(3)
	go func() { // server: echo
		defer s.wg.Done()
		if _, err := io.Copy(s.pair.s, s.pair.s); err != nil {
			fail(fmt.Errorf("echo: %w", err))
		}
	}()
	go func() { // client reader: check the echo
		defer s.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, err := s.pair.c.Read(buf)
			off := int(s.received.Load())
			if n > 0 && !bytes.Equal(buf[:n], pattern(off, n)) {
				fail(fmt.Errorf("echo corrupted at byte %d", off))
				return
			}
			s.received.Add(int64(n))
			if err != nil {
				if !errors.Is(err, io.EOF) {
					fail(fmt.Errorf("client read: %w", err))
				}
				return
			}
		}
	}()
	go func() { // client writer: 4 KiB every 2 ms until stopped
		defer s.wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
			}
			off := int(s.written.Load())
			if _, err := s.pair.c.Write(pattern(off, 4096)); err != nil {
				fail(fmt.Errorf("client write: %w", err))
				return
			}
			s.written.Add(4096)
		}
	}()
	t.Cleanup(func() {
		s.finishOnce()
		s.pair.c.Close()
		s.pair.s.Close()
		s.wg.Wait()
	})
	return s
}

func (s *stream) finishOnce() { s.stopOnce.Do(func() { close(s.stop) }) }

// finish stops writing and waits (bounded) until the echo of every byte
// is back; the connection stays open and idle.
func (s *stream) finish(t *testing.T) {
	t.Helper()
	s.finishOnce()
	deadline := time.Now().Add(10 * time.Second)
	for s.received.Load() != s.written.Load() || s.written.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%s: echo stalled: wrote %d, got back %d", s.pair, s.written.Load(), s.received.Load())
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		t.Fatalf("%s: %v", s.pair, s.err)
	}
}
