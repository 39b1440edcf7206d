package dataplane

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fsha/fsha/tools/testenv"
)

// Reply interfaces get TC egress alone, pinned like the public
// interfaces' links: kept (the program replaced in place) by a restart
// that still wants them, removed by one that does not; one found while
// running is attached once, again when its interface is recreated; lo
// (no Ethernet header) is refused. The oracle is the kernel: the pins'
// links and the interfaces' XDP state.
func TestReplyInterfaces(t *testing.T) {
	testenv.RequireBPF(t)
	dir := ownNetnsAndPins(t)
	// a veth pair (no dummy module everywhere), name's end up (pub0: steering on
	// the tc path, as auto gives a veth)
	addVeth := func(name string) int {
		t.Helper()
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
			t.Fatalf("add veth %s: %v", name, err)
		}
		l, err := netlink.LinkByName(name)
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			t.Fatalf("%s up: %v", name, err)
		}
		return l.Attrs().Index
	}
	pub0, rep0, rep1 := addVeth("pub0"), addVeth("rep0"), addVeth("rep1")
	if lo, err := netlink.LinkByName("lo"); err != nil || netlink.LinkSetUp(lo) != nil {
		t.Fatalf("lo up: %v", err)
	}
	load := func(reply ...string) (*Dataplane, *observer.ObservedLogs) {
		t.Helper()
		core, logs := observer.New(zapcore.InfoLevel)
		dp, err := Load(zap.New(zapcore.NewTee(core, zaptest.NewLogger(t).Core())), Options{
			PinPath: dir, FlowsMax: 1024, PeerFlowsMax: 1024, Interfaces: []string{"pub0"}, ReplyInterfaces: reply})
		if err != nil {
			t.Fatalf("load: %v", err)
		}
		return dp, logs
	}
	// pinsOn says which pins there are, and checks each TC link is on the
	// ifindex given (the kernel's word, not the pin's name)
	pinsOn := func(want map[string]int) {
		t.Helper()
		entries, err := os.ReadDir(filepath.Join(dir, linksDir))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range entries {
			got = append(got, e.Name())
		}
		var names []string
		for n := range want {
			names = append(names, n)
		}
		slices.Sort(names)
		if !slices.Equal(got, names) {
			t.Errorf("pinned links %v, want %v", got, names)
		}
		for name, ifindex := range want {
			l, err := link.LoadPinnedLink(filepath.Join(dir, linksDir, name), nil)
			if err != nil {
				continue // reported above
			}
			if !linkOnIfindex(l, ifindex) {
				t.Errorf("pinned link %s is not on ifindex %d", name, ifindex)
			}
			l.Close()
		}
	}
	noXDP := func(name string) {
		t.Helper()
		l, err := netlink.LinkByName(name)
		if err != nil {
			t.Fatal(err)
		}
		if x := l.Attrs().Xdp; x != nil && x.Attached {
			t.Errorf("%s has an XDP program: a reply interface gets TC egress only", name)
		}
	}

	dp, logs := load("rep0", "pub0", "lo")
	pinsOn(map[string]int{"xdp_pub0": pub0, "tcx_pub0": pub0, "tcxin_pub0": pub0, "tcx_rep0": rep0})
	noXDP("rep0")
	if got := dp.ReplyInterfaces(); !slices.Equal(got, []string{"rep0"}) {
		t.Errorf("ReplyInterfaces() = %v, want [rep0] (pub0 is public, lo refused)", got)
	}
	if logs.FilterMessage("reply interface not attached: answers to VIP clients through it stay untracked").FilterField(zap.String("interface", "lo")).Len() != 1 {
		t.Errorf("no warning that lo cannot take the egress program")
	}

	for _, c := range []struct {
		name     string
		attached bool
		err      error
	}{
		{"rep1", true, nil},
		{"rep1", false, nil}, // there already
		{"rep0", false, nil},
		{"pub0", false, nil}, // public: egress runs there
		{"lo", false, ErrNotEthernet},
	} {
		got, err := dp.AttachReplyInterface(c.name)
		if got != c.attached || (c.err == nil) != (err == nil) || (c.err != nil && !errors.Is(err, c.err)) {
			t.Errorf("AttachReplyInterface(%s) = %v, %v; want %v, %v", c.name, got, err, c.attached, c.err)
		}
	}
	pinsOn(map[string]int{"xdp_pub0": pub0, "tcx_pub0": pub0, "tcxin_pub0": pub0, "tcx_rep0": rep0, "tcx_rep1": rep1})
	noXDP("rep1")
	if err := dp.Close(); err != nil {
		t.Fatal(err)
	}

	// a restart that still wants rep0, not rep1: rep0's link is kept,
	// its program replaced in place; rep1's detached
	dp, logs = load("rep0")
	defer func() { dp.Close() }()
	if logs.FilterMessage("replaced program in pinned link").FilterField(zap.String("pin", filepath.Join(dir, linksDir, "tcx_rep0"))).Len() != 1 {
		t.Errorf("restart did not reuse the pinned link of rep0")
	}
	if logs.FilterMessage("detached").FilterField(zap.String("link", "tcx_rep1")).Len() != 1 {
		t.Errorf("restart did not detach rep1, no longer a reply interface")
	}
	pinsOn(map[string]int{"xdp_pub0": pub0, "tcx_pub0": pub0, "tcxin_pub0": pub0, "tcx_rep0": rep0})

	// rep0 recreated (a new ifindex): attached again
	if l, err := netlink.LinkByName("rep0"); err != nil || netlink.LinkDel(l) != nil {
		t.Fatalf("delete rep0: %v", err)
	}
	rep0 = addVeth("rep0")
	if got, err := dp.AttachReplyInterface("rep0"); !got || err != nil {
		t.Errorf("AttachReplyInterface(rep0) recreated = %v, %v; want attached", got, err)
	}
	pinsOn(map[string]int{"xdp_pub0": pub0, "tcx_pub0": pub0, "tcxin_pub0": pub0, "tcx_rep0": rep0})
	if got := dp.ReplyInterfaces(); !slices.Equal(got, []string{"rep0"}) {
		t.Errorf("ReplyInterfaces() = %v, want [rep0]", got)
	}
}
