package lab_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

func newLab(t *testing.T) *lab.Lab {
	t.Helper()
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ip")
	testenv.RequireCommand(t, "ethtool")
	return lab.NewT(t, lab.Options{Log: zaptest.NewLogger(t)})
}

func nsExists(name string) bool {
	_, err := os.Stat(filepath.Join("/run/netns", name))
	return err == nil
}

func TestLabTwoNamespaces(t *testing.T) {
	l := newLab(t)
	n, c, _ := l.NodeAndClientT(t, false)
	nameRE := regexp.MustCompile(`^fsha-[0-9a-f]{6}-(sw|n1|c1)$`)
	for _, h := range []*lab.Host{l.Switch, n.Host, c.Host} {
		if !nameRE.MatchString(h.NS) || !strings.Contains(h.NS, l.ID) {
			t.Errorf("namespace name %q does not follow fsha-<runid>-<role>", h.NS)
		}
		if !nsExists(h.NS) {
			t.Errorf("namespace %s missing", h.NS)
		}
	}
	if got, want := n.IP().String(), "198.18.0.11"; got != want {
		t.Errorf("node address %s, want %s", got, want)
	}
	if !lab.Subnet.Contains(c.IP()) || !lab.Subnet.Contains(lab.VIP(1).Addr()) {
		t.Errorf("addresses outside %s", lab.Subnet)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// no route out: only the lab's connected subnet
	out, err := c.Run(ctx, "ip", "-4", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "default") || strings.Count(strings.TrimSpace(string(out)), "\n") != 0 {
		t.Errorf("client routes, want only %s:\n%s", lab.Subnet, out)
	}
	// the default lab is a plain network: transmit checksum offload on,
	// no XDP program on the bridge side (TestLabTuned: the other variant)
	checkTuning(t, l, n, l.Tuned())
	if st, err := os.Stat(n.PinPath); err != nil || !st.IsDir() || !strings.HasPrefix(n.PinPath, l.BPFFS) {
		t.Errorf("pin path %s: %v", n.PinPath, err)
	}

	// a Go server in the node, a Go client in the client namespace
	ln, err := n.Listen("tcp", n.IP().String()+":7000")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = io.Copy(conn, conn)
	}()
	conn, err := c.Dial(ctx, "tcp", n.IP().String()+":7000")
	if err != nil {
		t.Fatal(err)
	}
	if got := conn.LocalAddr().String(); !strings.HasPrefix(got, c.IP().String()+":") {
		t.Errorf("client socket %s, want the client's address", got)
	}
	msg := bytes.Repeat([]byte("fsha"), 4096)
	if _, err := conn.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through the bridge: %v", err)
	}
	conn.Close()
	// the node's socket is not visible from the test's own namespace
	if _, err := os.Stat("/proc/thread-self/net/tcp"); err != nil {
		t.Fatal(err)
	}

	names := []string{l.Switch.NS, n.NS, c.NS}
	if err := l.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	for _, ns := range names {
		if nsExists(ns) {
			t.Errorf("namespace %s left behind", ns)
		}
	}
	if onBPFFS(l.BPFFS) {
		t.Errorf("bpffs %s still mounted", l.BPFFS)
	}
	if _, err := l.AddNode("n2"); err == nil {
		t.Error("AddNode after Close succeeded")
	}
}

func onBPFFS(path string) bool {
	var st syscall.Statfs_t
	const bpfMagic = 0xcafe4a11
	return syscall.Statfs(path, &st) == nil && st.Type == bpfMagic
}

func TestLabRejectsBadRoles(t *testing.T) {
	l := newLab(t)
	for _, role := range []string{"", "N1", "1n", "a-b", "averyverylongrole"} {
		if _, err := l.AddClient(role); err == nil {
			t.Errorf("role %q accepted", role)
		}
	}
	if _, err := l.AddClient("c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.AddNode("c1"); err == nil {
		t.Error("duplicate role accepted")
	}
}

func TestProcessStop(t *testing.T) {
	l := newLab(t)
	n, err := l.AddNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	// runs in the namespace, in its own session, output in files
	p, err := n.Start("probe", "sh", "-c", `echo out; echo err >&2; readlink /proc/self/ns/net; echo sid=$(cut -d' ' -f6 /proc/$$/stat); sleep 1000`)
	if err != nil {
		t.Fatal(err)
	}
	// the script's last line before sleeping: everything is written
	if err := p.WaitLog(ctx, "sid="); err != nil {
		t.Fatal(err)
	}
	out, _ := os.ReadFile(p.StdoutPath)
	nsOut, err := n.Run(ctx, "readlink", "/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), strings.TrimSpace(string(nsOut))) {
		t.Errorf("process not in %s: %q vs %q", n.NS, out, nsOut)
	}
	if !strings.Contains(string(out), "sid="+strconv.Itoa(p.PID())+"\n") {
		t.Errorf("process %d does not lead its own session: %q", p.PID(), out)
	}
	errOut, _ := os.ReadFile(p.StderrPath)
	if strings.TrimSpace(string(errOut)) != "err" {
		t.Errorf("stderr log %q", errOut)
	}
	if err := p.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(); err != nil { // SIGCONT + SIGTERM end a stopped sh
		t.Fatal(err)
	}
	if sig := exitSignal(p.ExitErr()); sig != syscall.SIGTERM {
		t.Errorf("stopped process ended by %v, want SIGTERM (before the SIGKILL fallback): %v", sig, p.ExitErr())
	}
	if err := p.Signal(syscall.SIGTERM); !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("signal after exit: %v", err)
	}

	// ignores SIGTERM and leaves a child in its session: both are killed
	stubborn, err := n.StartWith("stubborn", lab.StartOptions{StopTimeout: 300 * time.Millisecond},
		"sh", "-c", `trap '' TERM; sleep 1000 & echo child $!; wait`)
	if err != nil {
		t.Fatal(err)
	}
	if err := stubborn.WaitLog(ctx, "child "); err != nil {
		t.Fatal(err)
	}
	child := strings.Fields(stubborn.Output())[1]
	if err := stubborn.Stop(); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(stubborn.ExitErr()); sig != syscall.SIGKILL {
		t.Errorf("process ignoring SIGTERM ended by %v, want SIGKILL", sig)
	}
	if alive(child) {
		t.Errorf("child %s of a killed process survives", child)
	}
	if err := stubborn.Stop(); err != nil {
		t.Errorf("second stop: %v", err)
	}
}

// exitSignal is the signal that ended a process, or -1.
func exitSignal(err error) syscall.Signal {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return ws.Signal()
		}
	}
	return -1
}

// alive tells whether a process exists and is not a zombie waiting for
// init to reap it.
func alive(pid string) bool {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && !strings.HasPrefix(strings.TrimSpace(string(stat[i+1:])), "Z")
}

func TestSmbd(t *testing.T) {
	l := newLab(t)
	testenv.RequireCommand(t, "smbd")
	testenv.RequireCommand(t, "smbclient")
	n, c, vip := l.NodeAndClientT(t, false)
	share, err := l.NewShare("data")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(share, "hello.txt"), []byte("hello from the share\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	smbd, err := n.StartSmbd(ctx, share)
	if err != nil {
		t.Fatal(err)
	}
	// smbd answers on an address added after it started, as on a VIP
	if err := n.AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	out, err := c.SMBClient(ctx, vip.Addr(), "ls; get hello.txt -; put /etc/hostname uploaded.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "hello.txt") || !strings.Contains(string(out), "hello from the share") {
		t.Errorf("smbclient output:\n%s", out)
	}
	want, _ := os.ReadFile("/etc/hostname")
	if got, err := os.ReadFile(filepath.Join(share, "uploaded.txt")); err != nil || !bytes.Equal(got, want) {
		t.Errorf("put through smbd: %q, %v", got, err)
	}

	// an interactive session stays connected between commands
	s, err := c.StartSMBSession(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Command("ls"); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitLog(ctx, "uploaded.txt"); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		t.Errorf("smbclient session: %v\n%s", err, s.Tail(1000))
	}

	if err := smbd.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.SMBClient(ctx, vip.Addr(), "ls"); err == nil {
		t.Error("smbclient works after smbd stopped")
	}
}

func TestGanesha(t *testing.T) {
	l := newLab(t)
	testenv.RequireCommand(t, "ganesha.nfsd")
	testenv.RequireCommand(t, "nfs-cat")
	n, c, vip := l.NodeAndClientT(t, true)
	share, err := l.NewShare("data")
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("0123456789abcdef"), 64<<10/16)
	if err := os.WriteFile(filepath.Join(share, "file"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	g, err := n.StartGanesha(ctx, share, lab.GaneshaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.NFSCat(ctx, vip.Addr(), "file")
	if err != nil {
		t.Fatalf("%v\n%s", err, g.Tail(3000))
	}
	if !bytes.Equal(got, content) {
		t.Errorf("nfs-cat read %d bytes, want the %d bytes of the file", len(got), len(content))
	}
	if _, err := c.NFSCat(ctx, vip.Addr(), "missing"); err == nil {
		t.Error("nfs-cat of a missing file succeeded")
	}
	if err := g.Stop(); err != nil {
		t.Fatal(err)
	}
}

func TestCleanupStale(t *testing.T) {
	live := newLab(t)
	if _, err := live.AddClient("c1"); err != nil {
		t.Fatal(err)
	}
	crashed := newLab(t)
	if _, err := crashed.AddNode("n1"); err != nil {
		t.Fatal(err)
	}
	// Pretend crashed's owner died: point its record at a finished process.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	rec := filepath.Join("/run/fsha-lab", crashed.ID+".json")
	data, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	data = regexp.MustCompile(`"pid":\d+`).ReplaceAll(data, []byte(`"pid":`+strconv.Itoa(done.Process.Pid)))
	if err := os.WriteFile(rec, data, 0o600); err != nil {
		t.Fatal(err)
	}

	removed, err := lab.CleanupStale(zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{crashed.NSName("sw"): true, crashed.NSName("n1"): true}
	for _, ns := range removed {
		if !strings.HasPrefix(ns, "fsha-") {
			t.Errorf("removed %s, not a lab namespace", ns)
		}
		if strings.Contains(ns, live.ID) {
			t.Errorf("removed %s of a live lab", ns)
		}
		delete(want, ns)
	}
	if len(want) != 0 {
		t.Errorf("stale namespaces not removed: %v (removed %v)", want, removed)
	}
	for _, role := range []string{"sw", "c1"} {
		if !nsExists(live.NSName(role)) {
			t.Errorf("live lab's namespace %s removed", live.NSName(role))
		}
	}
	if onBPFFS(crashed.BPFFS) {
		t.Error("stale bpffs still mounted")
	}
	if err := crashed.Close(); err != nil {
		t.Errorf("closing a lab cleaned up under it: %v", err)
	}
}

func TestPartitionLinkAndWatch(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var nodes []*lab.Node
	for _, role := range []string{"n1", "n2"} {
		n, err := l.AddNode(role)
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, n)
	}
	c, err := l.AddClient("c1")
	if err != nil {
		t.Fatal(err)
	}
	vip := lab.VIP(1)
	if err := nodes[0].AddAddr(vip); err != nil {
		t.Fatal(err)
	}
	if addrs, err := nodes[0].Addrs(); err != nil || !slices.Contains(addrs, vip) || !slices.Contains(addrs, nodes[0].Addr) {
		t.Fatalf("n1 addresses %v (%v), want %s and %s", addrs, err, nodes[0].Addr, vip)
	}
	ports := map[*lab.Node]netip.AddrPort{}
	for _, n := range nodes {
		ln, err := n.Listen("tcp", ":7001")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Close()
			}
		}()
		ports[n] = netip.AddrPortFrom(n.IP(), 7001)
	}
	reach := func(to netip.AddrPort) error {
		_, err := c.TryConnect(ctx, to, 300*time.Millisecond)
		return err
	}

	// the watch sees the SYN-ACK of n1 for the VIP, with n1's MAC
	w, err := c.WatchAddr(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	local, err := c.TryConnect(ctx, netip.AddrPortFrom(vip.Addr(), 7001), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	mac1, err := nodes[0].MAC()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Check(); err != nil {
		t.Errorf("the wire oracle cannot be trusted: %v", err)
	}
	var synack, arp bool
	for _, f := range w.Frames() {
		if !f.ARP && f.DstPort == local.Port() && f.Flags&(lab.FlagSYN|lab.FlagACK) == lab.FlagSYN|lab.FlagACK && bytes.Equal(f.Src, mac1) {
			synack = true
		}
		if f.ARP && f.ARPOp == 2 && bytes.Equal(f.Src, mac1) {
			arp = true
		}
	}
	if !synack || !arp || w.Err() != nil {
		t.Errorf("watch of %s: SYN-ACK from n1 %v, ARP reply from n1 %v (%v): %v", vip, synack, arp, w.Err(), w.Frames())
	}
	if m, err := c.Neighbour(vip.Addr()); err != nil || !bytes.Equal(m, mac1) {
		t.Errorf("client's neighbour entry for %s: %s (%v), want %s", vip, m, err, mac1)
	}

	// a partition: n2 alone on a bridge of its own, links up
	if err := l.Partition(ctx, []*lab.Host{nodes[1].Host}); err != nil {
		t.Fatal(err)
	}
	if err := reach(ports[nodes[0]]); err != nil {
		t.Errorf("n1 on the client's side: %v", err)
	}
	if err := reach(ports[nodes[1]]); err == nil {
		t.Error("n2 reachable across the partition")
	}
	if lk, err := nodes[1].Netlink().LinkByName(lab.HostIface); err != nil || lk.Attrs().OperState != netlink.OperUp {
		t.Errorf("n2's link in the partition: %v %v, want up", lk.Attrs().OperState, err)
	}
	if err := l.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if err := lab.Eventually(ctx, 5*time.Second, "reach "+n.Role+" after healing", func(context.Context) error {
			return reach(ports[n])
		}); err != nil {
			t.Error(err)
		}
	}

	// link down from inside the node, and back
	if err := nodes[1].LinkDown(); err != nil {
		t.Fatal(err)
	}
	if err := reach(ports[nodes[1]]); err == nil {
		t.Error("n2 reachable with its link down")
	}
	if err := nodes[1].LinkUp(); err != nil {
		t.Fatal(err)
	}
	if err := lab.Eventually(ctx, 5*time.Second, "reach n2 with its link up", func(context.Context) error {
		return reach(ports[nodes[1]])
	}); err != nil {
		t.Error(err)
	}
}

func TestSignalSessionAndKill(t *testing.T) {
	l := newLab(t)
	n, err := l.AddNode("n1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	p, err := n.Start("tree", "sh", "-c", `sleep 1000 & echo child $!; wait`)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.WaitLog(ctx, "child "); err != nil {
		t.Fatal(err)
	}
	child := strings.Fields(p.Output())[1]
	state := func(pid string) string {
		stat, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil {
			return "gone"
		}
		i := bytes.LastIndexByte(stat, ')')
		return strings.Fields(string(stat[i+1:]))[0]
	}
	if err := p.SignalSession(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	for _, pid := range []string{strconv.Itoa(p.PID()), child} {
		if err := lab.Eventually(ctx, 5*time.Second, "stopped "+pid, func(context.Context) error {
			if s := state(pid); s != "T" {
				return errors.New("state " + s)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}
	if err := p.SignalSession(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil {
		t.Fatal(err)
	}
	if sig := exitSignal(p.ExitErr()); sig != syscall.SIGKILL {
		t.Errorf("killed process ended by %v, want SIGKILL", sig)
	}
	if alive(child) {
		t.Errorf("child %s survives Kill", child)
	}
}

// checkTuning checks the kernel's state of the lab's veth tuning: transmit
// checksum offload off in the node and an XDP program on the bridge side
// of a node's veth, both only in a tuned lab; never XDP on a client's.
func checkTuning(t *testing.T, l *lab.Lab, n *lab.Node, tuned bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := n.Run(ctx, "ethtool", "-k", lab.HostIface)
	if err != nil {
		t.Fatal(err)
	}
	want := "on"
	if tuned {
		want = "off"
	}
	if !regexp.MustCompile(`(?m)^tx-checksumming: ` + want).Match(out) {
		t.Errorf("tx checksumming in %s, want %s:\n%s", n.NS, want, out)
	}
	for role, want := range map[string]bool{"n1": tuned, "c1": false} {
		lk, err := l.Switch.Netlink().LinkByName(role)
		if err != nil {
			t.Fatal(err)
		}
		if x := lk.Attrs().Xdp; (x != nil && x.Attached) != want {
			t.Errorf("xdp on bridge-side %s: %+v, want attached=%v", role, x, want)
		}
	}
}

// TestLabTuned: the tuned variant (Options.Tuned) switches transmit
// checksum offload off and attaches XDP_PASS to a node's bridge side.
func TestLabTuned(t *testing.T) {
	testenv.RequireBPF(t)
	testenv.RequireCommand(t, "ethtool")
	l := lab.NewT(t, lab.Options{Tuned: true, Log: zaptest.NewLogger(t)})
	n, _, _ := l.NodeAndClientT(t, false)
	checkTuning(t, l, n, true)
}
