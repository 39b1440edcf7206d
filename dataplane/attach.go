package dataplane

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Attachment says where one program runs.
type Attachment struct {
	Interface string `json:"interface"`
	Ifindex   int    `json:"ifindex"`
	// Hook is "xdp", "tcx-egress", "tcx-ingress" (steering in tc mode),
	// or "tc-egress" and "tc-ingress" (legacy clsact).
	Hook string `json:"hook"`
	// Reply: a reply interface (reply.go), where TC egress runs alone.
	Reply bool `json:"reply,omitempty"`
}

type attachment struct {
	Attachment
	link link.Link // nil for legacy tc filters
}

const (
	linksDir            = "links"
	legacyTCName        = "fsha_egress"
	legacyTCIngressName = "fsha_ingress"
	// legacyTCPrio is the priority of our clsact filter; a fixed one lets a
	// restart replace it in place instead of adding a second filter.
	legacyTCPrio = 0xfa5
)

// attachAll attaches the programs to every interface of ifaces that
// exists. A missing one is skipped with a warning (a secondary interface
// of a VIP that is not there yet: AttachInterface attaches it when it
// appears); its pinned links, if any, are pruned with it. The reply
// interfaces get TC egress alone (reply.go); the pins of those no longer
// wanted are pruned too.
func (dp *Dataplane) attachAll(ifaces, reply []string) error {
	dir := filepath.Join(dp.pinPath, linksDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create links dir: %w", err)
	}
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	wanted := make(map[string]bool)
	ifindexes := make(map[uint32]bool)
	var legacyIngress []string // interfaces whose legacy ingress filter goes
	for _, name := range ifaces {
		iface, err := net.InterfaceByName(name)
		if err != nil {
			dp.log.Warn("public interface missing: not attached until it appears", zap.String("interface", name), zap.Error(err))
			continue
		}
		st, err := dp.attachOne(iface, wanted)
		if err != nil {
			return err
		}
		ifindexes[uint32(iface.Index)] = true
		if st.Steer != "tc" {
			legacyIngress = append(legacyIngress, name)
		}
	}
	dp.attachReplies(reply, ifaces, wanted)
	if err := pruneSteerModes(dp.objs.SteerModes, ifindexes); err != nil {
		return err
	}
	// interfaces dropped from the config since the last start, and TC
	// ingress where steering is now xdp
	err := detachPinnedLinks(dp.log, dp.pinPath, wanted)
	if len(legacyIngress) > 0 { // nil would mean every interface
		err = errors.Join(err, detachLegacyTC(legacyIngress, netlink.HANDLE_MIN_INGRESS, legacyTCIngressName))
	}
	return err
}

// attachOne attaches XDP, the steering path and TC egress to iface, and
// notes the pins it keeps in wanted. attachMu is held.
func (dp *Dataplane) attachOne(iface *net.Interface, wanted map[string]bool) (SteerState, error) {
	name := iface.Name
	xdp, err := dp.attachXDP(iface)
	if err != nil {
		return SteerState{}, fmt.Errorf("attach xdp to %s: %w", name, err)
	}
	dp.attach = append(dp.attach, xdp)
	wanted[pinName("xdp", name)] = true
	st, err := dp.attachSteering(iface)
	if err != nil {
		return st, fmt.Errorf("steering on %s: %w", name, err)
	}
	if st.Steer == "tc" {
		wanted[pinName("tcxin", name)] = true
	}
	tc, err := dp.attachEgress(iface)
	if err != nil {
		return st, fmt.Errorf("attach tc egress to %s: %w", name, err)
	}
	dp.attach = append(dp.attach, tc)
	wanted[pinName("tcx", name)] = true
	return st, nil
}

// AttachInterface attaches the programs to a public interface that
// appeared (or came back with a new index) after the start: the same as
// at the start, its earlier attachments (to a previous incarnation of the
// name) forgotten.
func (dp *Dataplane) AttachInterface(name string) (SteerState, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return SteerState{}, fmt.Errorf("attach to %s: %w", name, err)
	}
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	dp.attach = slices.DeleteFunc(dp.attach, func(a attachment) bool {
		if a.Interface != name {
			return false
		}
		if a.link != nil {
			_ = a.link.Close() // the old interface, and its links, are gone
		}
		return true
	})
	dp.steer = slices.DeleteFunc(dp.steer, func(s SteerState) bool { return s.Interface == name })
	st, err := dp.attachOne(iface, map[string]bool{})
	if err != nil {
		return st, err
	}
	dp.log.Info("public interface appeared: attached", zap.String("interface", name), zap.Int("ifindex", iface.Index),
		zap.String("steer", st.Steer), zap.String("xdp_mode", st.XDPMode))
	return st, nil
}

// attachSteering chooses how iface steers (steermode.go), from what the
// kernel says of it now that XDP is attached, and sets it up: for tc, TC
// ingress is attached before the programs are told (steer_modes), so that
// no packet XDP passes up for it goes to the local stack unsteered; for
// xdp, the mode is written at once and TC ingress detached after.
func (dp *Dataplane) attachSteering(iface *net.Interface) (SteerState, error) {
	st := SteerState{Interface: iface.Name, Ifindex: iface.Index}
	var err error
	if st.Driver, err = interfaceDriver(iface.Name); err != nil {
		return st, err
	}
	if st.XDPMode, err = xdpAttachMode(iface.Index); err != nil {
		return st, err
	}
	mode, reason := chooseSteer(dp.steerWant, st.Driver, st.XDPMode)
	st.Steer, st.Reason = steerModeName(mode), reason
	if mode == fshaSteerModeSTEER_MODE_TC {
		a, err := dp.attachTC(iface, ebpf.AttachTCXIngress)
		if err != nil {
			return st, fmt.Errorf("attach tc ingress: %w", err)
		}
		dp.attach = append(dp.attach, a)
	}
	if err := dp.Maps.SetSteerMode(iface.Index, mode); err != nil {
		return st, err
	}
	dp.log.Info("steering path chosen", zap.String("interface", iface.Name), zap.String("driver", st.Driver),
		zap.String("xdp_mode", st.XDPMode), zap.String("steer", st.Steer), zap.String("reason", reason))
	if auto, why := chooseSteer(SteerAuto, st.Driver, st.XDPMode); mode == fshaSteerModeSTEER_MODE_XDP && auto != mode {
		dp.log.Warn("xdp steering forced where auto would take tc: planned moves may lose the steered packets (the old holder then ends its drains with a reset)",
			zap.String("interface", iface.Name), zap.String("steer", st.Steer), zap.String("auto", steerModeName(auto)), zap.String("auto_reason", why))
	}
	if st.XDPMode == XDPGeneric {
		dp.log.Warn("xdp runs in generic (skb) mode: slower, and steering takes the tc path",
			zap.String("interface", iface.Name), zap.String("driver", st.Driver))
	}
	dp.steer = append(dp.steer, st)
	return st, nil
}

func pinName(hook, iface string) string { return hook + "_" + iface }

// attachXDP replaces the program of a pinned XDP link in place (atomic: no
// packet misses a program) or attaches a new link and pins it, in the
// mode the operator asked for (--xdp-mode). A pinned link in another mode
// than the one asked for is replaced: the kernel has no in-place switch
// between native and generic, so packets pass untracked for the moment
// between the two.
func (dp *Dataplane) attachXDP(iface *net.Interface) (attachment, error) {
	a := attachment{Attachment: Attachment{Interface: iface.Name, Ifindex: iface.Index, Hook: "xdp"}}
	pin := filepath.Join(dp.pinPath, linksDir, pinName("xdp", iface.Name))
	if l := dp.reusePinnedLink(pin, iface.Index, dp.objs.FshaXdp); l != nil {
		driver, _ := interfaceDriver(iface.Name)
		if mode, err := xdpAttachMode(iface.Index); err == nil && !xdpModeFits(dp.xdpWant, mode, driver) {
			dp.log.Warn("xdp attached in another mode than --xdp-mode asks: attaching again", zap.String("interface", iface.Name),
				zap.String("xdp_mode", mode), zap.String("want", string(dp.xdpWant)))
			_ = l.Unpin()
			l.Close()
		} else {
			a.link = l
			return a, nil
		}
	}
	var l link.Link
	var err error
	if dp.xdpWant != XDPAttachGeneric {
		// auto: no mode flag, the kernel takes native where the driver
		// has it (generic where it has none at all, e.g. macvlan)
		var flags link.XDPAttachFlags
		if dp.xdpWant == XDPAttachNative {
			flags = link.XDPDriverMode
		}
		l, err = link.AttachXDP(link.XDPOptions{Program: dp.objs.FshaXdp, Interface: iface.Index, Flags: flags})
	}
	if dp.xdpWant == XDPAttachGeneric || (err != nil && dp.xdpWant == XDPAttachAuto) {
		// a driver that refuses native XDP (e.g. virtio_net with guest
		// checksum offload on): generic mode works on every interface
		var gerr error
		l, gerr = link.AttachXDP(link.XDPOptions{Program: dp.objs.FshaXdp, Interface: iface.Index, Flags: link.XDPGenericMode})
		if gerr != nil {
			return a, errors.Join(err, fmt.Errorf("generic mode: %w", gerr))
		}
		if err != nil {
			dp.log.Warn("native xdp refused, attached in generic mode", zap.String("interface", iface.Name), zap.Error(err))
		}
		err = nil
	}
	if err != nil {
		return a, fmt.Errorf("native mode (--xdp-mode native): %w", err)
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return a, fmt.Errorf("pin link: %w", err)
	}
	a.link = l
	return a, nil
}

// xdpModeFits tells whether XDP attached in mode (as the kernel says) on
// an interface of driver is what want asks for. For auto, generic fits
// unless the driver has native XDP: a node started once with --xdp-mode
// generic gets native again without it, and an interface that can only
// run generic (macvlan, vxlan) is not attached again at every restart.
func xdpModeFits(want XDPAttach, mode, driver string) bool {
	switch want {
	case XDPAttachNative:
		return mode == XDPNative
	case XDPAttachGeneric:
		return mode == XDPGeneric
	}
	return mode != XDPGeneric || !(driver == "veth" || slices.Contains(xdpTXDrivers, driver))
}

func (dp *Dataplane) attachEgress(iface *net.Interface) (attachment, error) {
	return dp.attachTC(iface, ebpf.AttachTCXEgress)
}

// attachTC attaches the TC program of a direction (egress: tracking;
// ingress: steering in tc mode). It prefers TCX (kernel 6.6+) and falls
// back to a clsact direct-action filter where TCX is missing.
func (dp *Dataplane) attachTC(iface *net.Interface, at ebpf.AttachType) (attachment, error) {
	hook, pinHook, prog, parent, legacyName := "egress", "tcx", dp.objs.FshaTcEgress, uint32(netlink.HANDLE_MIN_EGRESS), legacyTCName
	if at == ebpf.AttachTCXIngress {
		hook, pinHook, prog, parent, legacyName = "ingress", "tcxin", dp.objs.FshaTcIngress, netlink.HANDLE_MIN_INGRESS, legacyTCIngressName
	}
	a := attachment{Attachment: Attachment{Interface: iface.Name, Ifindex: iface.Index, Hook: "tcx-" + hook}}
	pin := filepath.Join(dp.pinPath, linksDir, pinName(pinHook, iface.Name))
	if l := dp.reusePinnedLink(pin, iface.Index, prog); l != nil {
		a.link = l
		return a, nil
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: iface.Index, Program: prog, Attach: at})
	if errors.Is(err, link.ErrNotSupported) {
		dp.log.Warn("tcx not supported, falling back to clsact", zap.String("interface", iface.Name), zap.String("hook", hook))
		a.Hook = "tc-" + hook
		return a, attachLegacyTC(iface.Index, prog, parent, legacyName)
	}
	if err != nil {
		return a, err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return a, fmt.Errorf("pin link: %w", err)
	}
	a.link = l
	return a, nil
}

// reusePinnedLink returns the pinned link at pin updated to prog, or nil when
// there is none usable (then any stale pin is removed).
func (dp *Dataplane) reusePinnedLink(pin string, ifindex int, prog *ebpf.Program) link.Link {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	log := dp.log.With(zap.String("pin", pin))
	if err != nil {
		log.Warn("pinned link unusable, replacing it", zap.Error(err))
		_ = os.Remove(pin)
		return nil
	}
	if !linkOnIfindex(l, ifindex) {
		// the interface was recreated: the old link is defunct
		log.Info("pinned link belongs to a former interface, replacing it")
		_ = l.Unpin()
		l.Close()
		return nil
	}
	if err := l.Update(prog); err != nil {
		log.Warn("update pinned link failed, replacing it", zap.Error(err))
		_ = l.Unpin()
		l.Close()
		return nil
	}
	log.Info("replaced program in pinned link")
	return l
}

func linkOnIfindex(l link.Link, ifindex int) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex) == ifindex
	}
	if t := info.TCX(); t != nil {
		return int(t.Ifindex) == ifindex
	}
	return false
}

// detachPinnedLinks removes the pinned links not in keep (all when keep is nil).
func detachPinnedLinks(log *zap.Logger, pinPath string, keep map[string]bool) error {
	dir := filepath.Join(pinPath, linksDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read links dir: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if keep[e.Name()] {
			continue
		}
		pin := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(pin, nil)
		if err == nil {
			// Unpinning the last reference detaches the program.
			errs = append(errs, l.Unpin(), l.Close())
		} else {
			errs = append(errs, os.Remove(pin))
		}
		log.Info("detached", zap.String("link", e.Name()))
	}
	if keep == nil {
		_ = os.Remove(dir)
	}
	return errors.Join(errs...)
}

func attachLegacyTC(ifindex int, prog *ebpf.Program, parent uint32, name string) error {
	qdisc := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: ifindex, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(qdisc); err != nil {
		return fmt.Errorf("add clsact qdisc: %w", err)
	}
	filter := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: ifindex,
			Parent:    parent,
			Handle:    1,
			Protocol:  unix.ETH_P_ALL,
			Priority:  legacyTCPrio,
		},
		Fd:           prog.FD(),
		Name:         name,
		DirectAction: true,
	}
	if err := netlink.FilterReplace(filter); err != nil {
		return fmt.Errorf("replace clsact filter: %w", err)
	}
	return nil
}

// detachLegacyTC removes our clsact filters named name from the hook
// parent of the given interfaces, or of every interface when ifaces is nil.
func detachLegacyTC(ifaces []string, parent uint32, name string) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if ifaces != nil && !slices.Contains(ifaces, l.Attrs().Name) {
			continue
		}
		filters, err := netlink.FilterList(l, parent)
		if err != nil {
			continue // no clsact qdisc
		}
		for _, f := range filters {
			if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, name) {
				errs = append(errs, netlink.FilterDel(f))
			}
		}
	}
	return errors.Join(errs...)
}
