package dataplane

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/testenv"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap/zaptest"
	"golang.org/x/sys/unix"
)

// vipTestTag is a short random tag for names unique to one test run.
func vipTestTag(t *testing.T) string {
	t.Helper()
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatalf("random tag: %v", err)
	}
	return hex.EncodeToString(b)
}

// lockVIPTestThread locks the test goroutine to its thread and, at
// cleanup, puts the thread back into the namespace it started in. If that
// fails the thread stays locked and dies with the goroutine, so no other
// goroutine ever runs in a test namespace.
func lockVIPTestThread(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	t.Cleanup(func() {
		if err := netns.Set(orig); err != nil {
			t.Errorf("restore netns: %v", err)
			orig.Close()
			return
		}
		orig.Close()
		runtime.UnlockOSThread()
	})
}

// newVIPTestNetns creates the network namespace fsha-<tag>-<suffix> and
// leaves the (locked) thread where it was. The namespace is deleted at
// cleanup.
func newVIPTestNetns(t *testing.T, tag, suffix string) netns.NsHandle {
	t.Helper()
	cur, err := netns.Get()
	if err != nil {
		t.Fatalf("get current netns: %v", err)
	}
	defer cur.Close()
	name := "fsha-" + tag + "-" + suffix
	ns, err := netns.NewNamed(name) // also moves the thread into it
	if err != nil {
		t.Fatalf("create netns %s: %v", name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("delete netns %s: %v", name, err)
		}
	})
	if err := netns.Set(cur); err != nil {
		t.Fatalf("leave netns %s: %v", name, err)
	}
	return ns
}

// enterVIPTestNetns runs the rest of the test in a namespace of its own.
func enterVIPTestNetns(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	lockVIPTestThread(t)
	ns := newVIPTestNetns(t, vipTestTag(t), "vip")
	if err := netns.Set(ns); err != nil {
		t.Fatalf("enter test netns: %v", err)
	}
}

// addVIPTestLink adds a veth pair, name and name+"p", both up, and
// returns name's link. (The lab kernel has no dummy driver.)
func addVIPTestLink(t *testing.T, name string) netlink.Link {
	t.Helper()
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}); err != nil {
		t.Fatalf("add veth %s: %v", name, err)
	}
	for _, n := range []string{name + "p", name} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			t.Fatalf("find %s: %v", n, err)
		}
		if err := netlink.LinkSetUp(l); err != nil {
			t.Fatalf("set %s up: %v", n, err)
		}
	}
	link, err := netlink.LinkByName(name)
	if err != nil {
		t.Fatalf("find %s: %v", name, err)
	}
	return link
}

func addTestAddr(t *testing.T, link netlink.Link, s string) {
	t.Helper()
	a, err := netlink.ParseAddr(s)
	if err != nil {
		t.Fatalf("parse %s: %v", s, err)
	}
	if err := netlink.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", s, link.Attrs().Name, err)
	}
}

// ipv4Addrs lists link's IPv4 addresses as "addr/len" strings, sorted.
func ipv4Addrs(t *testing.T, link netlink.Link) []string {
	t.Helper()
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	var out []string
	for _, a := range addrs {
		p, _ := prefixOf(a)
		out = append(out, p.String())
	}
	slices.Sort(out)
	return out
}

func findTestAddr(t *testing.T, link netlink.Link, family int, ip netip.Addr) (netlink.Addr, bool) {
	t.Helper()
	addrs, err := netlink.AddrList(link, family)
	if err != nil {
		t.Fatalf("list addresses: %v", err)
	}
	for _, a := range addrs {
		if p, ok := prefixOf(a); ok && p.Addr() == ip {
			return a, true
		}
	}
	return netlink.Addr{}, false
}

func mustHaveVIP(t *testing.T, v *VIPAddrs, iface string, ip netip.Addr, want bool) {
	t.Helper()
	got, err := v.HasVIP(iface, ip)
	if err != nil {
		t.Fatalf("HasVIP(%s, %s): %v", iface, ip, err)
	}
	if got != want {
		t.Fatalf("HasVIP(%s, %s) = %v, want %v", iface, ip, got, want)
	}
}

func TestVIPSecondaryAddRemoveKeepsNodeAddress(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	const iface = "fsha-vip0"
	link := addVIPTestLink(t, iface)
	addTestAddr(t, link, "198.18.3.1/24") // the node's own, primary
	vip := netip.MustParsePrefix("198.18.3.10/24")

	mustHaveVIP(t, v, iface, vip.Addr(), false)
	for range 2 { // idempotent
		if err := v.AddVIP(iface, vip); err != nil {
			t.Fatalf("AddVIP: %v", err)
		}
	}
	mustHaveVIP(t, v, iface, vip.Addr(), true)
	if got, want := ipv4Addrs(t, link), []string{"198.18.3.1/24", "198.18.3.10/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses after AddVIP = %v, want %v", got, want)
	}
	a, _ := findTestAddr(t, link, netlink.FAMILY_V4, vip.Addr())
	if a.Flags&unix.IFA_F_SECONDARY == 0 {
		t.Errorf("vip flags %#x: not a secondary of the node address", a.Flags)
	}
	if a.Label != iface+":fsha" {
		t.Errorf("vip label %q, want %q", a.Label, iface+":fsha")
	}

	if err := v.RemoveVIP(iface, vip); err != nil {
		t.Fatalf("RemoveVIP: %v", err)
	}
	mustHaveVIP(t, v, iface, vip.Addr(), false)
	if got, want := ipv4Addrs(t, link), []string{"198.18.3.1/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses after RemoveVIP = %v, want %v", got, want)
	}
	// already absent, and on an interface that does not exist: no error
	if err := v.RemoveVIP(iface, vip); err != nil {
		t.Fatalf("RemoveVIP of an absent vip: %v", err)
	}
	if err := v.RemoveVIP("fsha-gone0", vip); err != nil {
		t.Fatalf("RemoveVIP on a missing interface: %v", err)
	}
}

func TestVIPRemovePrimaryKeepsSecondaries(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	const iface = "fsha-vip1"
	link := addVIPTestLink(t, iface)
	promote := "/proc/sys/net/ipv4/conf/" + iface + "/promote_secondaries"
	if err := os.WriteFile(promote, []byte("0"), 0o644); err != nil {
		t.Fatalf("reset promote_secondaries: %v", err)
	}
	// The VIP came first, so it is the primary; the node address and a
	// second VIP are its secondaries, which the kernel would delete with it.
	vip := netip.MustParsePrefix("198.18.4.10/24")
	if err := v.AddVIP(iface, vip); err != nil {
		t.Fatalf("AddVIP: %v", err)
	}
	addTestAddr(t, link, "198.18.4.1/24")
	if err := v.AddVIP(iface, netip.MustParsePrefix("198.18.4.11/24")); err != nil {
		t.Fatalf("AddVIP: %v", err)
	}
	if a, _ := findTestAddr(t, link, netlink.FAMILY_V4, vip.Addr()); a.Flags&unix.IFA_F_SECONDARY != 0 {
		t.Fatalf("test setup: vip is not the primary (flags %#x)", a.Flags)
	}

	if err := v.RemoveVIP(iface, vip); err != nil {
		t.Fatalf("RemoveVIP: %v", err)
	}
	if got, want := ipv4Addrs(t, link), []string{"198.18.4.1/24", "198.18.4.11/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses after removing the primary vip = %v, want %v", got, want)
	}
	b, err := os.ReadFile(promote)
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(b)) != "1" {
		t.Errorf("promote_secondaries = %q, want 1", b)
	}
}

func TestVIPRestoreLostReaddsAddresses(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	const iface = "fsha-vip2"
	link := addVIPTestLink(t, iface)
	addTestAddr(t, link, "198.18.5.1/24")
	lost, err := netlink.ParseAddr("198.18.5.2/24")
	if err != nil {
		t.Fatal(err)
	}
	lost.Flags = unix.IFA_F_SECONDARY | unix.IFA_F_PERMANENT
	if err := v.restoreLost(link, iface, netlink.FAMILY_V4, []netlink.Addr{*lost}); err != nil {
		t.Fatalf("restoreLost: %v", err)
	}
	if got, want := ipv4Addrs(t, link), []string{"198.18.5.1/24", "198.18.5.2/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses after restoreLost = %v, want %v", got, want)
	}
}

func TestVIPPrefixLengthChange(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	const iface = "fsha-vip3"
	link := addVIPTestLink(t, iface)
	addTestAddr(t, link, "198.18.6.1/24")
	addTestAddr(t, link, "198.18.6.10/28") // stale, from an older config
	vip := netip.MustParsePrefix("198.18.6.10/24")
	if err := v.AddVIP(iface, vip); err != nil {
		t.Fatalf("AddVIP: %v", err)
	}
	if got, want := ipv4Addrs(t, link), []string{"198.18.6.1/24", "198.18.6.10/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
	// removal goes by address, whatever the length on the interface
	if err := v.RemoveVIP(iface, netip.MustParsePrefix("198.18.6.10/30")); err != nil {
		t.Fatalf("RemoveVIP: %v", err)
	}
	if got, want := ipv4Addrs(t, link), []string{"198.18.6.1/24"}; !slices.Equal(got, want) {
		t.Fatalf("addresses = %v, want %v", got, want)
	}
}

func TestVIPIPv6UsableAtOnce(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	// A veth does duplicate address detection (a dummy does not), so
	// without IFA_F_NODAD the address would be tentative for a second and
	// binding to it would fail.
	const iface = "fsha-vip6"
	link := addVIPTestLink(t, iface)
	vip := netip.MustParsePrefix("2001:2:0:6::10/64")
	if err := v.AddVIP(iface, vip); err != nil {
		t.Fatalf("AddVIP: %v", err)
	}
	a, ok := findTestAddr(t, link, netlink.FAMILY_V6, vip.Addr())
	if !ok {
		t.Fatalf("vip %s not on %s", vip, iface)
	}
	if a.Flags&unix.IFA_F_NODAD == 0 || a.Flags&unix.IFA_F_TENTATIVE != 0 {
		t.Fatalf("vip flags %#x: want nodad and not tentative", a.Flags)
	}
	// and the kernel delivers packets to it: its local route is in (the
	// kernel inserts it after AddrReplace returns, AddVIP waits for it)
	routes, err := netlink.RouteGet(vip.Addr().AsSlice())
	if err != nil || len(routes) == 0 || routes[0].Type != unix.RTN_LOCAL {
		t.Fatalf("ip route get %s: %+v (%v), want a local route", vip.Addr(), routes, err)
	}
	pc, err := net.ListenPacket("udp6", net.JoinHostPort(vip.Addr().String(), "0"))
	if err != nil {
		t.Fatalf("bind to the new vip at once: %v", err)
	}
	pc.Close()
	mustHaveVIP(t, v, iface, vip.Addr(), true)
	if err := v.RemoveVIP(iface, vip); err != nil {
		t.Fatalf("RemoveVIP: %v", err)
	}
	mustHaveVIP(t, v, iface, vip.Addr(), false)
}

func TestLocalVIPs(t *testing.T) {
	enterVIPTestNetns(t)
	v := NewVIPAddrs(zaptest.NewLogger(t))
	d0 := addVIPTestLink(t, "fsha-lv0")
	d1 := addVIPTestLink(t, "fsha-lv1")
	addTestAddr(t, d0, "198.18.8.1/24") // node address, not a VIP
	addTestAddr(t, d0, "198.18.8.10/24")
	addTestAddr(t, d1, "198.18.9.20/28") // stale length
	addTestAddr(t, d1, "2001:2:0:8::10/64")
	candidates := []netip.Prefix{
		netip.MustParsePrefix("198.18.8.10/24"),
		netip.MustParsePrefix("198.18.9.20/24"),
		netip.MustParsePrefix("198.18.8.30/24"), // nowhere
		netip.MustParsePrefix("2001:2:0:8::10/64"),
	}

	got, err := v.LocalVIPs(nil, candidates)
	if err != nil {
		t.Fatalf("LocalVIPs: %v", err)
	}
	want := []LocalVIP{
		{Iface: "fsha-lv0", Prefix: netip.MustParsePrefix("198.18.8.10/24")},
		{Iface: "fsha-lv1", Prefix: netip.MustParsePrefix("198.18.9.20/28")},
		{Iface: "fsha-lv1", Prefix: netip.MustParsePrefix("2001:2:0:8::10/64")},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("LocalVIPs(all) = %v, want %v", got, want)
	}

	got, err = v.LocalVIPs([]string{"fsha-lv1", "fsha-missing0"}, candidates)
	if err != nil {
		t.Fatalf("LocalVIPs: %v", err)
	}
	if !slices.Equal(got, want[1:]) {
		t.Fatalf("LocalVIPs(fsha-lv1) = %v, want %v", got, want[1:])
	}

	// what LocalVIPs finds, RemoveVIP removes
	for _, lv := range want {
		if err := v.RemoveVIP(lv.Iface, lv.Prefix); err != nil {
			t.Fatalf("RemoveVIP(%v): %v", lv, err)
		}
	}
	got, err = v.LocalVIPs(nil, candidates)
	if err != nil || len(got) != 0 {
		t.Fatalf("LocalVIPs after removal = %v, %v; want none", got, err)
	}
	if got, err := v.LocalVIPs(nil, nil); err != nil || got != nil {
		t.Fatalf("LocalVIPs without candidates = %v, %v", got, err)
	}
}

func TestVIPErrorsNameInterfaceAndAddress(t *testing.T) {
	// Only looks links up: no privileges needed.
	v := NewVIPAddrs(zaptest.NewLogger(t))
	const iface = "fsha-nolink0"
	vip := netip.MustParsePrefix("198.18.10.10/24")
	checks := map[string]error{
		"AddVIP": v.AddVIP(iface, vip),
	}
	_, checks["HasVIP"] = v.HasVIP(iface, vip.Addr())
	for name, err := range checks {
		if err == nil {
			t.Errorf("%s on a missing interface: no error", name)
			continue
		}
		if !strings.Contains(err.Error(), iface) || !strings.Contains(err.Error(), "198.18.10.10") {
			t.Errorf("%s error %q does not name the interface and the address", name, err)
		}
		var nf netlink.LinkNotFoundError
		if !errors.As(err, &nf) {
			t.Errorf("%s error %q does not wrap the netlink error", name, err)
		}
	}
	if err := v.AddVIP("lo", netip.Prefix{}); err == nil || !strings.Contains(err.Error(), "invalid prefix") {
		t.Errorf("AddVIP of an invalid prefix: %v", err)
	}
}

func TestCheckVIPPrefix(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want "" = refused
	}{
		{"198.18.0.10/24", "198.18.0.10/24"},
		{"2001:2::10/64", "2001:2::10/64"},
		{"::ffff:198.18.0.10/120", "198.18.0.10/24"},
		{"0.0.0.0/0", ""},
		{"::/0", ""},
		{"224.0.0.1/4", ""},
		{"ff02::1/16", ""},
		{"127.0.0.1/8", ""},
		{"::1/128", ""},
	} {
		got, err := checkVIPPrefix(netip.MustParsePrefix(tc.in))
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("checkVIPPrefix(%s) = %s, want refused", tc.in, got)
		case tc.want != "" && err != nil:
			t.Errorf("checkVIPPrefix(%s): %v", tc.in, err)
		case tc.want != "" && got.String() != tc.want:
			t.Errorf("checkVIPPrefix(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestHasSecondaryOf(t *testing.T) {
	addr := func(s string, flags int) netlink.Addr {
		a, err := netlink.ParseAddr(s)
		if err != nil {
			t.Fatal(err)
		}
		a.Flags = flags
		return *a
	}
	primary := addr("198.18.11.10/24", 0)
	for _, tc := range []struct {
		name   string
		others []netlink.Addr
		want   bool
	}{
		{"none", nil, false},
		{"secondary in subnet", []netlink.Addr{addr("198.18.11.1/24", unix.IFA_F_SECONDARY)}, true},
		{"other subnet", []netlink.Addr{addr("198.18.12.1/24", unix.IFA_F_SECONDARY)}, false},
		{"other length", []netlink.Addr{addr("198.18.11.1/25", 0)}, false},
		{"primary flag clear", []netlink.Addr{addr("198.18.11.1/24", 0)}, false},
	} {
		if got := hasSecondaryOf(primary, tc.others); got != tc.want {
			t.Errorf("%s: hasSecondaryOf = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// waitLocal polls until the address is local, and gives up at its bound
// with an error that names the address; a lookup error ends it at once.
func TestWaitLocal(t *testing.T) {
	vip := netip.MustParseAddr("2001:2::201")
	polls := 0
	waited, err := waitLocal(vip, time.Second, func(a netip.Addr) (bool, error) {
		if a != vip {
			t.Fatalf("looked up %s, want %s", a, vip)
		}
		polls++
		return polls == 5, nil
	})
	if err != nil || polls != 5 {
		t.Errorf("local at the 5th lookup: %d lookups, waited %v, err %v", polls, waited, err)
	}

	polls = 0
	_, err = waitLocal(vip, 2*time.Millisecond, func(netip.Addr) (bool, error) { polls++; return false, nil })
	if err == nil || !strings.Contains(err.Error(), "no local route for 2001:2::201") || polls < 2 {
		t.Errorf("never local: %d lookups, err %v; want an error after several", polls, err)
	}

	polls = 0
	_, err = waitLocal(vip, time.Second, func(netip.Addr) (bool, error) { polls++; return false, errors.New("netlink down") })
	if err == nil || !strings.Contains(err.Error(), "netlink down") || polls != 1 {
		t.Errorf("lookup error: %d lookups, err %v; want it returned at once", polls, err)
	}
}
