package health

import (
	"net"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

func linkMsg(typ uint16, name string, index int, up bool) netlink.LinkUpdate {
	a := netlink.LinkAttrs{Name: name, Index: index, OperState: netlink.OperDown}
	if up {
		a.Flags, a.OperState = net.FlagUp, netlink.OperUp
	}
	u := netlink.LinkUpdate{Link: &netlink.Device{LinkAttrs: a}}
	u.Header.Type = typ
	return u
}

// A VIP's interfaces are a preference order: the node stays fit while
// every VIP has one with link, and says which are down or missing when
// one has none. An interface that appears (or comes back under a new
// index) is reported once per incarnation; one deleted is missing.
func TestLinkGroups(t *testing.T) {
	var appeared []string
	c := New(zap.NewNop(), Config{
		Interfaces: []string{"eth0", "eth1", "eth2"},
		Groups:     [][]string{{"eth0", "eth1"}, {"eth0", "eth1"}, {"eth2"}},
		Appeared:   func(name string) { appeared = append(appeared, name) },
	})
	// at the start eth0 and eth2 exist (the programs were attached to
	// them then), eth1 does not yet
	c.index["eth0"], c.index["eth2"] = 2, 4
	c.setLink("eth0", true)
	c.setLink("eth1", false)
	c.setLink("eth2", true)
	if why := c.linkReasons(); len(why) != 0 {
		t.Fatalf("every group has a link: reasons %v", why)
	}

	c.update(linkMsg(unix.RTM_NEWLINK, "eth0", 2, false))
	why := c.linkReasons()
	if len(why) != 1 || !strings.Contains(why[0], "eth0,eth1") || !strings.Contains(why[0], "eth0 down") || !strings.Contains(why[0], "eth1 missing") {
		t.Fatalf("eth0 down, eth1 missing: reasons %v, want one naming both", why)
	}
	if len(appeared) != 0 {
		t.Fatalf("a known interface changing link is no appearance: %v", appeared)
	}

	c.update(linkMsg(unix.RTM_NEWLINK, "eth1", 3, true))
	if why := c.linkReasons(); len(why) != 0 || !slices.Equal(appeared, []string{"eth1"}) {
		t.Fatalf("eth1 appeared with link: reasons %v, appeared %v", why, appeared)
	}
	c.update(linkMsg(unix.RTM_NEWLINK, "eth1", 3, true))
	c.update(linkMsg(unix.RTM_NEWLINK, "lo", 1, true)) // not watched
	if !slices.Equal(appeared, []string{"eth1"}) {
		t.Fatalf("appeared %v, want eth1 once", appeared)
	}

	c.update(linkMsg(unix.RTM_DELLINK, "eth2", 4, true))
	why = c.linkReasons()
	if len(why) != 1 || !strings.Contains(why[0], "eth2 missing") || c.LinkUp("eth2") {
		t.Fatalf("eth2 deleted: reasons %v, link %v", why, c.LinkUp("eth2"))
	}
	c.update(linkMsg(unix.RTM_NEWLINK, "eth2", 9, true))
	if why := c.linkReasons(); len(why) != 0 || !slices.Equal(appeared, []string{"eth1", "eth2"}) {
		t.Fatalf("eth2 back under a new index: reasons %v, appeared %v", why, appeared)
	}
}

// Without groups every watched interface must have link (a health
// config without VIPs: the old rule).
func TestLinkNoGroups(t *testing.T) {
	c := New(zap.NewNop(), Config{Interfaces: []string{"eth0", "eth1"}})
	c.setLink("eth0", true)
	c.setLink("eth1", false)
	if why := c.linkReasons(); !slices.Equal(why, []string{"no link on eth1"}) {
		t.Fatalf("reasons %v", why)
	}
}

// At the watch's start, an interface present but without the programs
// (it appeared after the data plane started) is reported to Appeared; one
// with them is not.
func TestLinkPresentAtStart(t *testing.T) {
	var appeared []string
	c := New(zap.NewNop(), Config{
		Interfaces: []string{"eth0", "eth1"},
		Appeared:   func(name string) { appeared = append(appeared, name) },
		Attached:   func(name string) bool { return name == "eth0" },
	})
	c.present("eth0", 2, true)
	c.present("eth1", 3, true)
	if !slices.Equal(appeared, []string{"eth1"}) || !c.LinkUp("eth0") || !c.LinkUp("eth1") {
		t.Fatalf("appeared %v, links %v %v; want eth1 reported, both up", appeared, c.LinkUp("eth0"), c.LinkUp("eth1"))
	}
	c.update(linkMsg(unix.RTM_NEWLINK, "eth1", 3, true))
	if !slices.Equal(appeared, []string{"eth1"}) {
		t.Fatalf("appeared %v: eth1's index is known now", appeared)
	}
}
