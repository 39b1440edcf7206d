package dataplane

// How each interface steers a draining VIP's old connections back to the
// node that holds their sockets (bpf/fsha.c, steer_target):
//
//   - xdp: XDP ingress rewrites the MACs and returns XDP_TX. The fastest,
//     but it works only where the driver's XDP_TX does: native XDP on a
//     NIC driver known for it. On veth the frame is dropped unless the
//     peer has an XDP program too, and a frame received with a partial
//     checksum (any packet from a local socket behind a veth or a tap)
//     leaves with a wrong one; in generic (skb) mode XDP_TX skips the
//     qdisc and checksum state.
//   - tc: XDP ingress passes the packet up and TC ingress redirects it to
//     the same interface's egress with the MACs rewritten: the skb keeps
//     its checksum state and the peer needs nothing. Works on any
//     interface, at the cost of an skb per steered packet.
//
// auto (the default) takes xdp only for native XDP on the drivers below,
// tc everywhere else.

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// SteerMode is how an operator asks an interface to steer (--steer-mode).
type SteerMode string

const (
	SteerAuto SteerMode = "auto" // from what the interface is
	SteerXDP  SteerMode = "xdp"  // XDP_TX, whatever the interface
	SteerTC   SteerMode = "tc"   // TC ingress redirect, whatever the interface
)

// ParseSteerMode reads a --steer-mode value; "" is auto.
func ParseSteerMode(s string) (SteerMode, error) {
	switch m := SteerMode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", SteerAuto:
		return SteerAuto, nil
	case SteerXDP, SteerTC:
		return m, nil
	}
	return "", fmt.Errorf("steer mode %q: want auto, xdp or tc", s)
}

// XDPAttach is how an operator asks XDP to attach (--xdp-mode).
type XDPAttach string

const (
	// XDPAttachAuto: native, or generic where the driver refuses native.
	XDPAttachAuto XDPAttach = "auto"
	// XDPAttachNative: native only; an interface that refuses it fails
	// the attach.
	XDPAttachNative XDPAttach = "native"
	// XDPAttachGeneric: generic (skb) mode everywhere, e.g. around a
	// driver whose native XDP misbehaves. Steering then takes tc.
	XDPAttachGeneric XDPAttach = "generic"
)

// ParseXDPAttach reads an --xdp-mode value; "" is auto.
func ParseXDPAttach(s string) (XDPAttach, error) {
	switch m := XDPAttach(strings.ToLower(strings.TrimSpace(s))); m {
	case "", XDPAttachAuto:
		return XDPAttachAuto, nil
	case XDPAttachNative, XDPAttachGeneric:
		return m, nil
	}
	return "", fmt.Errorf("xdp mode %q: want auto, native or generic", s)
}

// XDP attach modes as the kernel reports them (IFLA_XDP_ATTACHED).
const (
	XDPNative  = "native"
	XDPGeneric = "generic"
	XDPOffload = "offload"
	XDPNone    = "none"
)

// xdpTXDrivers are the NIC drivers whose native XDP_TX is known to send
// the frame as rewritten: they implement XDP_TX in the driver's own TX
// ring, with the checksum the frame carries. veth is not one (see the
// file comment); a driver missing here gets tc, which works everywhere.
var xdpTXDrivers = []string{
	"bnxt_en", "ena", "gve", "i40e", "ice", "igb", "igc", "ixgbe", "ixgbevf",
	"mlx4_en", "mlx5_core", "nfp", "qede", "sfc", "virtio_net",
}

// chooseSteer picks the steering path of one interface from the operator's
// wish, its driver and how XDP is attached to it, and says why.
func chooseSteer(want SteerMode, driver, xdpMode string) (fshaSteerMode, string) {
	switch want {
	case SteerXDP:
		return fshaSteerModeSTEER_MODE_XDP, "forced by --steer-mode xdp"
	case SteerTC:
		return fshaSteerModeSTEER_MODE_TC, "forced by --steer-mode tc"
	}
	if xdpMode != XDPNative {
		return fshaSteerModeSTEER_MODE_TC, "xdp runs in " + xdpMode + " mode: XDP_TX there bypasses the qdisc and checksum state"
	}
	if driver == "veth" {
		return fshaSteerModeSTEER_MODE_TC, "veth: XDP_TX needs an XDP program on the peer and breaks partial checksums"
	}
	if !slices.Contains(xdpTXDrivers, driver) {
		return fshaSteerModeSTEER_MODE_TC, fmt.Sprintf("driver %q: XDP_TX not known to work", driver)
	}
	return fshaSteerModeSTEER_MODE_XDP, fmt.Sprintf("native xdp on driver %q", driver)
}

func steerModeName(m fshaSteerMode) string {
	switch m {
	case fshaSteerModeSTEER_MODE_XDP:
		return "xdp"
	case fshaSteerModeSTEER_MODE_TC:
		return "tc"
	}
	return fmt.Sprintf("unknown(%d)", m)
}

// interfaceDriver returns the name of the interface's driver, as
// `ethtool -i` shows it ("" when the interface has none to report).
func interfaceDriver(name string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("socket for ethtool: %w", err)
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, name)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("ethtool driver info of %s: %w", name, err)
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

// xdpAttachMode reads how XDP is attached to the interface, from the
// kernel: native (in the driver), generic (skb), offload or none.
func xdpAttachMode(ifindex int) (string, error) {
	l, err := netlink.LinkByIndex(ifindex)
	if err != nil {
		return "", fmt.Errorf("link %d: %w", ifindex, err)
	}
	x := l.Attrs().Xdp
	if x == nil || !x.Attached {
		return XDPNone, nil
	}
	switch x.AttachMode {
	case nl.XDP_ATTACHED_DRV:
		return XDPNative, nil
	case nl.XDP_ATTACHED_SKB:
		return XDPGeneric, nil
	case nl.XDP_ATTACHED_HW:
		return XDPOffload, nil
	}
	return fmt.Sprintf("mode %d", x.AttachMode), nil
}

// SteerState is one interface's steering path, as the pins and the kernel
// have it now.
type SteerState struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	Driver    string `json:"driver"`
	XDPMode   string `json:"xdp_mode"` // native, generic, offload, none
	Steer     string `json:"steer"`    // xdp or tc
	// Reason says why the loader chose Steer; only the daemon knows it
	// (empty when read from the pins).
	Reason string `json:"reason,omitempty"`
}

// SetSteerMode writes the steering mode of an interface for the programs.
func (m *Maps) SetSteerMode(ifindex int, mode fshaSteerMode) error {
	if err := m.SteerModes.Put(uint32(ifindex), uint32(mode)); err != nil {
		return fmt.Errorf("set steer mode of ifindex %d: %w", ifindex, err)
	}
	return nil
}

// SteerStates reads the steering mode of every interface the loader
// attached to, with what the kernel says of it now. An interface gone
// since is left out. Nil for the pins of an fsha without steer modes.
func (m *Maps) SteerStates() ([]SteerState, error) {
	if m.SteerModes == nil {
		return nil, nil
	}
	var out []SteerState
	var ifindex, mode uint32
	it := m.SteerModes.Iterate()
	for it.Next(&ifindex, &mode) {
		iface, err := net.InterfaceByIndex(int(ifindex))
		if err != nil {
			continue
		}
		st := SteerState{Interface: iface.Name, Ifindex: iface.Index, Steer: steerModeName(fshaSteerMode(mode))}
		if st.Driver, err = interfaceDriver(iface.Name); err != nil {
			return nil, err
		}
		if st.XDPMode, err = xdpAttachMode(iface.Index); err != nil {
			return nil, err
		}
		out = append(out, st)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read steer modes: %w", err)
	}
	slices.SortFunc(out, func(a, b SteerState) int { return strings.Compare(a.Interface, b.Interface) })
	return out, nil
}

// pruneSteerModes removes the modes of interfaces not in keep (ifindexes).
func pruneSteerModes(m *ebpf.Map, keep map[uint32]bool) error {
	var stale []uint32
	var ifindex, mode uint32
	it := m.Iterate()
	for it.Next(&ifindex, &mode) {
		if !keep[ifindex] {
			stale = append(stale, ifindex)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read steer modes: %w", err)
	}
	for _, k := range stale {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("remove steer mode of ifindex %d: %w", k, err)
		}
	}
	return nil
}

// PredictSteer says, before anything is attached, which steering path
// `fsha up --steer-mode want` would choose for the interface name, and
// why, from its driver: the choice once attached may differ only when the
// driver refuses native XDP (then: tc). For fsha check-config.
func PredictSteer(want SteerMode, name string) (driver, path, reason string, err error) {
	if driver, err = interfaceDriver(name); err != nil {
		return "", "", "", err
	}
	mode, reason := chooseSteer(want, driver, XDPNative)
	return driver, steerModeName(mode), reason, nil
}
