package dataplane

import (
	"strings"
	"testing"
)

func TestParseXDPAttach(t *testing.T) {
	for in, want := range map[string]XDPAttach{"": XDPAttachAuto, "auto": XDPAttachAuto, " Generic ": XDPAttachGeneric, "native": XDPAttachNative} {
		if got, err := ParseXDPAttach(in); err != nil || got != want {
			t.Errorf("ParseXDPAttach(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseXDPAttach("offload"); err == nil || !strings.Contains(err.Error(), "want auto, native or generic") {
		t.Errorf("offload: %v, want a refusal", err)
	}
}

// A pinned XDP link is kept when its mode is what --xdp-mode asks for.
func TestXDPModeFits(t *testing.T) {
	for _, c := range []struct {
		want         XDPAttach
		mode, driver string
		fits         bool
	}{
		{XDPAttachAuto, XDPNative, "veth", true},
		{XDPAttachAuto, XDPGeneric, "veth", false},   // forced generic before: native again
		{XDPAttachAuto, XDPGeneric, "ixgbe", false},  // a NIC with native XDP
		{XDPAttachAuto, XDPGeneric, "macvlan", true}, // generic is all it has
		{XDPAttachAuto, XDPGeneric, "virtio_net", false},
		{XDPAttachGeneric, XDPNative, "veth", false},
		{XDPAttachGeneric, XDPGeneric, "veth", true},
		{XDPAttachNative, XDPGeneric, "macvlan", false},
		{XDPAttachNative, XDPNative, "veth", true},
	} {
		if got := xdpModeFits(c.want, c.mode, c.driver); got != c.fits {
			t.Errorf("xdpModeFits(%s, %s, %s) = %v, want %v", c.want, c.mode, c.driver, got, c.fits)
		}
	}
}
