package main

import (
	"testing"

	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

// The kick ends the connections on ctdbd's port and the others', and
// follows CTDB's leader only when it has ctdbd's port.
func TestNewPeerKick(t *testing.T) {
	gluster, err := dataplane.ParsePortSet(glusterPorts)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		ctdb   uint16
		others dataplane.PortSet
		elect  bool
		ports  string // "": no kick
		watch  bool
	}{
		{"defaults", ctdbPort, gluster, true, "4379,24007,49152-60999", true},
		{"no election", ctdbPort, gluster, false, "4379,24007,49152-60999", false},
		{"no ctdbd", 0, gluster, true, "24007,49152-60999", false},
		{"ctdbd only", ctdbPort, nil, true, "4379", true},
		{"nothing", 0, nil, true, "", false},
	} {
		k := newPeerKick(zap.NewNop(), c.ctdb, c.others, c.elect, "/nonexistent/ctdbd.socket")
		switch {
		case c.ports == "" && k != nil:
			t.Errorf("%s: a kick of %s, want none", c.name, k.ports)
		case c.ports == "":
		case k == nil:
			t.Errorf("%s: no kick, want one of %s", c.name, c.ports)
		case k.ports.String() != c.ports || (k.watch != nil) != c.watch:
			t.Errorf("%s: kick of %s, election %v; want %s, %v", c.name, k.ports, k.watch != nil, c.ports, c.watch)
		}
	}
	var none *peerKick
	if none.peerDead() != nil {
		t.Error("no kick: PeerDead should be nil")
	}
}
