package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/tools/lab"
)

// demo is the data-plane demo (-dataplane): one node running
// smbd, nfs-ganesha and standalone `fsha up` behind a VIP, and a client.
// Real SMB, NFS and raw TCP connections go through the VIP; it prints what
// `fsha flows` and `fsha counters` see, closes some connections and
// restarts the daemon while traffic flows.
type demo struct {
	printer
	lab    *lab.Lab
	node   *lab.Node
	client *lab.Client
	vip    netip.Prefix
}

func runDataplane(ctx context.Context, out io.Writer, newLab func() (*lab.Lab, error)) error {
	l, err := newLab()
	if err != nil {
		return err
	}
	d := &demo{printer: printer{out}, lab: l, vip: lab.VIP(1)}
	return d.show(ctx)
}

// fsha runs an fsha command on the node and prints its output indented.
func (d *demo) fsha(ctx context.Context, title string, args ...string) error {
	d.heading("%s   [fsha %s]", title, strings.Join(args, " "))
	out, err := d.node.Fsha(ctx, args...)
	if err != nil {
		return err
	}
	d.block(out)
	return nil
}

func (d *demo) show(ctx context.Context) error {
	l := d.lab
	var err error
	d.heading("fsha data-plane demo (lab %s)", l.ID)
	if d.node, err = l.AddNode("n1"); err != nil {
		return err
	}
	if d.client, err = l.AddClient("c1"); err != nil {
		return err
	}
	if err := d.node.AddAddr(d.vip); err != nil {
		return err
	}
	d.step("lab: a bridge in %s joins", l.Switch.NS)
	d.say("node   n1  %-15s namespace %s, VIP %s on eth0", d.node.IP(), d.node.NS, d.vip.Addr())
	d.say("client c1  %-15s namespace %s", d.client.IP(), d.client.NS)

	share, err := l.NewShare("data")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello through the VIP\n"), 0o644); err != nil {
		return err
	}
	big := filepath.Join(share, "big.bin")
	if err := os.WriteFile(big, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(big, 1<<30); err != nil {
		return err
	}

	d.step("starting smbd, nfs-ganesha and `fsha up` on n1")
	if _, err := d.node.StartSmbd(ctx, share); err != nil {
		return err
	}
	d.say("smbd serves //%s/%s", d.vip.Addr(), lab.ShareName)
	if _, err := d.node.StartGanesha(ctx, share, lab.GaneshaOptions{}); err != nil {
		return err
	}
	d.say("nfs-ganesha exports nfs://%s%s (NFSv4)", d.vip.Addr(), lab.ExportPath)
	up, err := d.node.FshaUp(ctx, []netip.Prefix{d.vip})
	if err != nil {
		return err
	}
	d.say("fsha up tracks TCP ports 445 139 2049 111 of %s (pid %d, pins in %s)", d.vip.Addr(), up.PID(), d.node.PinPath)

	d.step("opening connections from c1 to the VIP")
	smb, err := d.client.StartSMBSession(d.vip.Addr())
	if err != nil {
		return err
	}
	if err := smb.Command("get hello.txt -"); err != nil {
		return err
	}
	if err := waitLog(ctx, smb.Process, "hello through the VIP"); err != nil {
		return err
	}
	d.say("smbclient //%s/share: session open, read hello.txt", d.vip.Addr())

	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	nfsCat, err := d.client.StartWith("nfs-cat-big", lab.StartOptions{Stdout: pw}, "nfs-cat", lab.NFSURL(d.vip.Addr(), "big.bin"))
	pw.Close()
	if err != nil {
		return err
	}
	d.say("nfs-cat %s: reading a 1 GiB file, held open (nobody reads its output)", lab.NFSURL(d.vip.Addr(), "big.bin"))

	raw := map[uint16]*rawConn{}
	for _, port := range []uint16{139, 111, 8080} {
		rc, err := d.openRaw(ctx, port)
		if err != nil {
			return err
		}
		raw[port] = rc
		if err := rc.exchange(1<<20, 256<<10); err != nil {
			return err
		}
	}
	d.say("raw TCP %s -> :139 and -> :111: sent 1 MiB, got 256 KiB back (Go sockets)", d.client.IP())
	d.say("raw TCP %s -> :8080: the same, but 8080 is not a tracked port", d.client.IP())
	if err := d.waitFlows(ctx, 4); err != nil {
		return err
	}

	if err := d.fsha(ctx, "tracked connections: 1 SMB session, 1 NFS read, 2 raw (8080 absent)", "flows"); err != nil {
		return err
	}
	if err := d.fsha(ctx, "data-plane counters (tracked = packets of a flow; 'vip, no flow' = handshakes, floods)", "counters"); err != nil {
		return err
	}

	d.step("closing: smbclient quits (FIN both ways), the raw :139 connection is reset (RST)")
	if err := smb.Close(ctx); err != nil {
		return fmt.Errorf("smbclient: %w", err)
	}
	if err := raw[139].reset(); err != nil {
		return err
	}
	if err := d.waitFlows(ctx, 2); err != nil {
		return err
	}
	if err := d.fsha(ctx, "flows after the closes: the SMB session and :139 are gone", "flows"); err != nil {
		return err
	}

	d.step("restarting fsha up while traffic flows (SIGTERM: programs stay attached, maps stay pinned)")
	before, err := d.bytesIn(ctx, 111)
	if err != nil {
		return err
	}
	sentBefore, err := raw[111].clientSent()
	if err != nil {
		return err
	}
	if err := up.Stop(); err != nil {
		return err
	}
	if err := up.ExitErr(); err != nil {
		return fmt.Errorf("fsha up on SIGTERM: %w", err)
	}
	d.say("fsha up stopped; sending 512 KiB on the raw :111 connection while it is down")
	if err := raw[111].exchange(512<<10, 0); err != nil {
		return err
	}
	if err := d.fsha(ctx, "flows while fsha up is down (read from the pinned maps)", "flows"); err != nil {
		return err
	}
	if up, err = d.node.FshaUp(ctx, []netip.Prefix{d.vip}); err != nil {
		return err
	}
	d.say("fsha up started again (pid %d): it reuses the pinned maps and swaps the programs in place", up.PID())
	if err := raw[111].exchange(512<<10, 0); err != nil {
		return err
	}
	after, err := d.bytesIn(ctx, 111)
	if err != nil {
		return err
	}
	sentAfter, err := raw[111].clientSent()
	if err != nil {
		return err
	}
	d.say("raw :111 across the restart: the client's socket sent %d bytes, fsha counted %d in", sentAfter-sentBefore, after-before)
	if after-before != sentAfter-sentBefore {
		return fmt.Errorf("fsha missed bytes across the restart: counted %d, sent %d", after-before, sentAfter-sentBefore)
	}
	if err := d.fsha(ctx, "flows after the restart: the same connections, still counting", "flows"); err != nil {
		return err
	}

	d.step("ending the NFS read and the raw connections")
	if err := nfsCat.Stop(); err != nil {
		return err
	}
	for _, port := range []uint16{111, 8080} {
		if err := raw[port].close(); err != nil {
			return err
		}
	}
	if err := d.waitFlows(ctx, 0); err != nil {
		return err
	}
	return d.fsha(ctx, "flows at the end", "flows")
}

// waitFlows waits (bounded) until the node tracks exactly n flows.
func (d *demo) waitFlows(ctx context.Context, n int) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		flows, err := d.node.Flows(ctx)
		if err != nil {
			return err
		}
		if len(flows) == n {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("fsha tracks %d flows, want %d: %+v", len(flows), n, flows)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (d *demo) bytesIn(ctx context.Context, port uint16) (uint64, error) {
	flows, err := d.node.Flows(ctx)
	if err != nil {
		return 0, err
	}
	for _, f := range flows {
		if f.VPort == port {
			return f.BytesIn, nil
		}
	}
	return 0, fmt.Errorf("no flow to port %d", port)
}

func waitLog(ctx context.Context, p *lab.Process, s string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return p.WaitLog(ctx, s)
}

// rawConn is a plain TCP connection from the client to the VIP, with the
// server end in the node: both driven from here.
type rawConn struct {
	c, s *net.TCPConn
}

// openRaw listens on the VIP's port in the node, connects from the client,
// and lets the server speak first, so the flow exists before the client
// sends (fsha creates a flow on the server's first data segment).
func (d *demo) openRaw(ctx context.Context, port uint16) (*rawConn, error) {
	addr := netip.AddrPortFrom(d.vip.Addr(), port).String()
	ln, err := d.node.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c, err := d.client.Dial(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	var s net.Conn
	select {
	case s = <-accepted:
	case <-ctx.Done():
		return nil, fmt.Errorf("accept on %s: %w", addr, ctx.Err())
	}
	d.lab.Cleanup("close raw server "+addr, func() error { s.Close(); return nil })
	rc := &rawConn{c: c.(*net.TCPConn), s: s.(*net.TCPConn)}
	hello := []byte("hello\n")
	if _, err := rc.s.Write(hello); err != nil {
		return nil, err
	}
	if err := readFull(rc.c, len(hello)); err != nil {
		return nil, err
	}
	return rc, nil
}

// exchange sends up bytes client to server, then down bytes back.
func (rc *rawConn) exchange(up, down int) error {
	if err := transfer(rc.c, rc.s, up); err != nil {
		return err
	}
	return transfer(rc.s, rc.c, down)
}

func transfer(from, to *net.TCPConn, n int) error {
	errc := make(chan error, 1)
	go func() {
		_, err := from.Write(bytes.Repeat([]byte{'x'}, n))
		errc <- err
	}()
	if err := readFull(to, n); err != nil {
		return err
	}
	return <-errc
}

func readFull(c *net.TCPConn, n int) error {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	if _, err := io.ReadFull(c, make([]byte, n)); err != nil {
		return fmt.Errorf("read on %s: %w", c.LocalAddr(), err)
	}
	return nil
}

// clientSent is the TCP payload the client's socket has sent, counting
// retransmissions as the data plane does.
func (rc *rawConn) clientSent() (uint64, error) {
	raw, err := rc.c.SyscallConn()
	if err != nil {
		return 0, err
	}
	var (
		info *unix.TCPInfo
		ierr error
	)
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.SOL_TCP, unix.TCP_INFO)
	}); err != nil {
		return 0, err
	}
	if ierr != nil {
		return 0, fmt.Errorf("tcp_info: %w", ierr)
	}
	return info.Bytes_sent, nil
}

// reset aborts the connection from the client side: a RST.
func (rc *rawConn) reset() error {
	if err := rc.c.SetLinger(0); err != nil {
		return err
	}
	err := rc.c.Close()
	rc.s.Close()
	return err
}

// close ends the connection politely: FIN both ways.
func (rc *rawConn) close() error {
	if err := rc.c.Close(); err != nil {
		return err
	}
	_ = rc.s.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.s.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
		return fmt.Errorf("want EOF after the client's FIN, got %v", err)
	}
	return rc.s.Close()
}
