package e2e

import (
	"context"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/dataplane"
	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// TestSteerModeAttach: fsha up chooses the steering path of eth0 (a veth)
// as the kernel sees the interface, and sets it up in the kernel: with
// auto, tc (TC ingress attached next to TC egress); with --steer-mode xdp
// after a restart, xdp (TC ingress detached); back to auto, tc again.
// With --xdp-mode generic the program runs in generic (skb) mode and
// steers by tc; back to the default, native again; --xdp-mode native too.
// The oracles are the kernel's (bpftool net, ethtool -i, ip link) and
// what fsha counters reports must agree with them.
func TestSteerModeAttach(t *testing.T) {
	testenv.RequireBPF(t)
	for _, cmd := range []string{"ip", "ethtool", "bpftool"} {
		testenv.RequireCommand(t, cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	l := lab.NewT(t, lab.Options{Fsha: fshaBin, Log: zaptest.NewLogger(t)})
	n, _, vip := l.NodeAndClientT(t, true)

	if out, err := n.Run(ctx, "ethtool", "-i", lab.HostIface); err != nil || !regexp.MustCompile(`(?m)^driver: veth$`).Match(out) {
		t.Fatalf("ethtool -i %s: %v\n%s", lab.HostIface, err, out)
	}
	for i, c := range []struct {
		args      []string
		steer     string
		tcIngress bool
		generic   bool
	}{
		{nil, "tc", true, false},
		{[]string{"--steer-mode", "xdp"}, "xdp", false, false},
		{[]string{"--steer-mode", "auto"}, "tc", true, false},
		// forced generic, then back to auto: native again
		{[]string{"--xdp-mode", "generic"}, "tc", true, true},
		{nil, "tc", true, false},
		{[]string{"--xdp-mode", "native"}, "tc", true, false},
	} {
		xdpMode, bpftoolMode := dataplane.XDPNative, "driver"
		if c.generic {
			xdpMode, bpftoolMode = dataplane.XDPGeneric, "generic"
		}
		up, err := n.FshaUp(ctx, []netip.Prefix{vip}, c.args...)
		if err != nil {
			t.Fatal(err)
		}
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		err = up.WaitLog(wctx, `"xdp_mode":"`+xdpMode+`","steer":"`+c.steer+`","reason"`)
		wcancel()
		if err != nil {
			t.Errorf("run %d %v: log: %v", i, c.args, err)
		}
		// the kernel: XDP native on eth0, TC egress always, TC ingress
		// only for the tc path
		out, err := n.Run(ctx, "bpftool", "net", "show", "dev", lab.HostIface)
		if err != nil {
			t.Fatalf("bpftool net show: %v\n%s", err, out)
		}
		t.Logf("run %d %v: bpftool net show dev %s:\n%s", i, c.args, lab.HostIface, out)
		if !regexp.MustCompile(`(?m)^` + lab.HostIface + `\(\d+\) ` + bpftoolMode + ` id \d+`).Match(out) {
			t.Errorf("run %d %v: no %s XDP on %s (bpftool says \"driver\" for native mode, \"generic\" for generic)", i, c.args, xdpMode, lab.HostIface)
		}
		wantIngress := []string(nil)
		if c.tcIngress {
			wantIngress = []string{"fsha_tc_ingress"}
		}
		for at, want := range map[ebpf.AttachType][]string{
			ebpf.AttachTCXEgress:  {"fsha_tc_egress"},
			ebpf.AttachTCXIngress: wantIngress,
		} {
			if got := tcxPrograms(t, n, at); !slices.Equal(got, want) {
				t.Errorf("run %d %v: the kernel's %s programs on %s: %v, want %v", i, c.args, at, lab.HostIface, got, want)
			}
		}
		_, steer, err := n.CountersAndSteering(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := dataplane.SteerState{Interface: lab.HostIface, Ifindex: steerIfindex(steer), Driver: "veth", XDPMode: xdpMode, Steer: c.steer}
		if len(steer) != 1 || steer[0] != want {
			t.Errorf("run %d %v: fsha counters says %+v, want [%+v]", i, c.args, steer, want)
		}
		if err := up.Stop(); err != nil {
			t.Fatal(err)
		}
	}
}

// tcxPrograms asks the kernel (BPF_PROG_QUERY) for the names of the
// programs attached to the node's eth0 at the TCX hook at.
func tcxPrograms(t *testing.T, n *lab.Node, at ebpf.AttachType) []string {
	t.Helper()
	var names []string
	err := n.Do(func() error {
		iface, err := net.InterfaceByName(lab.HostIface)
		if err != nil {
			return err
		}
		res, err := link.QueryPrograms(link.QueryOptions{Target: iface.Index, Attach: at})
		if err != nil {
			return err
		}
		for _, p := range res.Programs {
			prog, err := ebpf.NewProgramFromID(p.ID)
			if err != nil {
				return err
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				return err
			}
			names = append(names, info.Name)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("query %s programs: %v", at, err)
	}
	return names
}

func steerIfindex(s []dataplane.SteerState) int {
	if len(s) == 0 {
		return -1
	}
	return s[0].Ifindex
}
