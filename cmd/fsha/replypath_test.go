package main

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/dataplane"
)

func pa(p string, ifaces ...string) config.PublicAddress {
	return config.PublicAddress{Prefix: netip.MustParsePrefix(p), Interfaces: ifaces}
}

// fakeRoutes is a routing table: the interface of each subnet (an
// "error" one fails), and of the default routes per family.
type fakeRoutes struct {
	subnets       map[string]string
	def4, def6    []string
	asked6, hosts bool
}

func (f *fakeRoutes) view() routeView {
	return routeView{
		subnetDev: func(p netip.Prefix) (string, error) {
			if p.Bits() == p.Addr().BitLen() {
				f.hosts = true
			}
			d := f.subnets[p.String()]
			if d == "error" {
				return "", errors.New("netlink: no buffer space")
			}
			return d, nil
		},
		defaultDevs: func(ipv6 bool) ([]string, error) {
			if ipv6 {
				f.asked6 = true
				return f.def6, nil
			}
			return f.def4, nil
		},
	}
}

// The reply interfaces are the non-public interfaces the kernel routes a
// VIP's subnet or a default route of a VIP's family through; not a
// public one (any VIP's), not lo, not for a host route; a failed lookup
// is reported and the others kept.
func TestReplyInterfaces(t *testing.T) {
	for _, c := range []struct {
		name    string
		addrs   []config.PublicAddress
		routes  fakeRoutes
		want    []string // "iface: why, why"
		wantErr bool
	}{
		{
			name: "the node's own subnet on another interface",
			addrs: []config.PublicAddress{
				pa("198.18.0.201/24", "eth1", "eth2"),
				pa("198.18.0.202/24", "eth1", "eth2"), // same subnet: one reason
			},
			routes: fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "eth0"}},
			want:   []string{"eth0: 198.18.0.0/24 (VIP 198.18.0.201/24)"},
		},
		{
			name:   "the VIPs' subnet through their own interface",
			addrs:  []config.PublicAddress{pa("198.18.2.201/24", "eth1", "eth2")},
			routes: fakeRoutes{subnets: map[string]string{"198.18.2.0/24": "eth2"}},
		},
		{
			name:   "no route, a host route, lo",
			addrs:  []config.PublicAddress{pa("198.18.3.201/24", "eth1"), pa("198.18.4.1/32", "eth1"), pa("198.18.5.1/24", "eth1")},
			routes: fakeRoutes{subnets: map[string]string{"198.18.4.1/32": "eth0", "198.18.5.0/24": "lo"}},
		},
		{
			name:   "an interface public for another VIP",
			addrs:  []config.PublicAddress{pa("198.18.0.201/24", "eth1"), pa("198.18.0.203/24", "eth0")},
			routes: fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "eth0"}},
		},
		{
			name:  "default routes of the VIPs' families only",
			addrs: []config.PublicAddress{pa("198.18.2.201/24", "eth1"), pa("198.18.0.201/24", "eth1")},
			routes: fakeRoutes{subnets: map[string]string{"198.18.2.0/24": "eth1", "198.18.0.0/24": "eth0"},
				def4: []string{"eth3", "eth1", "eth0"}, def6: []string{"eth4"}},
			want: []string{"eth0: 198.18.0.0/24 (VIP 198.18.0.201/24), default route (IPv4)", "eth3: default route (IPv4)"},
		},
		{
			name:   "IPv6",
			addrs:  []config.PublicAddress{pa("2001:2::201/64", "eth1")},
			routes: fakeRoutes{subnets: map[string]string{"2001:2::/64": "eth0"}, def4: []string{"eth3"}, def6: []string{"eth4"}},
			want:   []string{"eth0: 2001:2::/64 (VIP 2001:2::201/64)", "eth4: default route (IPv6)"},
		},
		{
			name:    "a failed lookup",
			addrs:   []config.PublicAddress{pa("198.18.0.201/24", "eth1"), pa("198.18.6.201/24", "eth1")},
			routes:  fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "error", "198.18.6.0/24": "eth0"}},
			want:    []string{"eth0: 198.18.6.0/24 (VIP 198.18.6.201/24)"},
			wantErr: true,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := c.routes
			got, err := replyInterfaces(c.addrs, r.view())
			var s []string
			for _, g := range got {
				s = append(s, g.String())
			}
			if !slices.Equal(s, c.want) || (err != nil) != c.wantErr {
				t.Errorf("replyInterfaces = %q, %v; want %q (error %v)", s, err, c.want, c.wantErr)
			}
			if r.hosts {
				t.Errorf("looked up the route of a host route's subnet")
			}
			v6 := slices.ContainsFunc(c.addrs, func(a config.PublicAddress) bool { return a.VIP().Is6() })
			if r.asked6 != v6 {
				t.Errorf("asked for IPv6 default routes: %v; want it only with an IPv6 VIP", r.asked6)
			}
		})
	}
}

// fsha check-config names the reply interfaces a start would attach to,
// and warns of one that cannot take the program.
func TestDescribeReplies(t *testing.T) {
	r := fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "eth0"}, def4: []string{"wg0"}}
	fits := func(name string) error {
		if name == "wg0" {
			return errors.New("no Ethernet header")
		}
		return nil
	}
	got := describeRepliesWith([]config.PublicAddress{pa("198.18.0.201/24", "eth1")}, r.view(), fits)
	if len(got) != 2 ||
		got[0] != "reply interface eth0: answers to VIP clients leave through it (198.18.0.0/24 (VIP 198.18.0.201/24)): fsha up tracks them there with its egress program" ||
		!strings.HasPrefix(got[1], "warning: answers to VIP clients leave through wg0 (default route (IPv4)) but it cannot take fsha's egress program (no Ethernet header)") {
		t.Errorf("check-config says:\n%s", strings.Join(got, "\n"))
	}
}

// fakeAttacher is the data plane's AttachReplyInterface: attached once
// per name, refused for the names in refuse.
type fakeAttacher struct {
	on     []string
	refuse map[string]error
	calls  int
}

func (f *fakeAttacher) AttachReplyInterface(name string) (bool, error) {
	f.calls++
	if err := f.refuse[name]; err != nil {
		return false, err
	}
	if slices.Contains(f.on, name) {
		return false, nil
	}
	f.on = append(f.on, name)
	return true, nil
}

// The tracker attaches the reply interfaces a check finds, including
// one a new route brings while the node runs, logs each new one once,
// and warns once per reason of a refusal, not at every check.
func TestReplyTracker(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	routes := &fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "eth0"}}
	dp := &fakeAttacher{on: []string{"eth0"}, refuse: map[string]error{"wg0": errors.New("no Ethernet header")}} // eth0 attached at the start
	tr := newReplyTracker(zap.New(core), dp, []config.PublicAddress{pa("198.18.0.201/24", "eth1")}, routes.view())
	news := func() []string {
		var out []string
		for _, e := range logs.FilterMessage("tracking answers to VIP clients on a new reply interface").All() {
			out = append(out, e.ContextMap()["interface"].(string))
		}
		return out
	}
	warned := func() int { return logs.FilterMessageSnippet("reply interface not attached").Len() }

	tr.check()
	if !slices.Equal(dp.on, []string{"eth0"}) || len(news()) != 0 {
		t.Errorf("first check: attached %v, logged new %v; want eth0 as it was, nothing new", dp.on, news())
	}
	routes.def4 = []string{"eth3", "wg0"} // default routes appear
	for range 3 {
		if got := replyNames(tr.check()); !slices.Equal(got, []string{"eth0", "eth3", "wg0"}) {
			t.Errorf("check found %v", got)
		}
	}
	if !slices.Equal(dp.on, []string{"eth0", "eth3"}) || !slices.Equal(news(), []string{"eth3"}) || warned() != 1 {
		t.Errorf("after a new default route: attached %v, logged new %v, %d warnings; want eth3 attached and logged once, wg0 warned once",
			dp.on, news(), warned())
	}
	dp.refuse["wg0"] = errors.New("another reason")
	tr.check()
	if warned() != 2 {
		t.Errorf("%d warnings; want a second one for wg0's new reason", warned())
	}
}

// What the start warned of (a failed route lookup, a reply interface the
// data plane refused) the tracker's checks do not warn of again, as long
// as the reason stays the same.
func TestReplyTrackerAfterStart(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	routes := &fakeRoutes{subnets: map[string]string{"198.18.0.0/24": "error"}, def4: []string{"nosuch0"}}
	want, lookupErr := replyInterfaces([]config.PublicAddress{pa("198.18.0.201/24", "eth1")}, routes.view())
	if lookupErr == nil || len(want) != 1 {
		t.Fatalf("the start's lookup: %v, %v; want an error and nosuch0", want, lookupErr)
	}
	refusal := dataplane.CheckReplyInterface("nosuch0") // what attaching it says
	if refusal == nil {
		t.Fatal("an interface that does not exist can take the program")
	}
	dp := &fakeAttacher{refuse: map[string]error{"nosuch0": refusal}}
	tr := newReplyTracker(zap.New(core), dp, []config.PublicAddress{pa("198.18.0.201/24", "eth1")}, routes.view())
	tr.warned(lookupErr, want, nil)
	tr.check()
	tr.check()
	if n := logs.Len(); n != 0 {
		t.Errorf("%d lines after the start's warnings, want none: %v", n, logs.All())
	}
	dp.refuse["nosuch0"] = errors.New("another reason")
	tr.check()
	if n := logs.FilterMessageSnippet("reply interface not attached").Len(); n != 1 {
		t.Errorf("%d warnings for a new reason, want 1", n)
	}
}
