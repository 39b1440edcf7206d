package dataplane

// Reply interfaces: interfaces that are not public (no VIP lives there)
// through which the node's answers to VIP clients leave all the same,
// because the kernel routes the clients there (the node's own address in
// the VIPs' subnet on eth0, a default route). fsha tracks a connection
// from the server's first answer, on TC egress: without its program
// there, such connections are neither tracked nor replicated, and after
// a crash the new holder has nothing to tickle. A reply interface gets
// the TC egress program only: no XDP (no client packet to a VIP comes in
// there, the VIP's ARP answers come from its own interface), no steering.
// The egress program needs nothing per interface (steer_modes is read by
// the ingress paths only), and its fencing is right there too: a node
// whose lease of a VIP ran out must not answer for it through any
// interface.

import (
	"fmt"
	"net"
	"slices"

	"go.uber.org/zap"
)

// egressFits says whether the egress program can run on iface: not on
// one whose packets carry no Ethernet header at TC egress (WireGuard,
// tun, GRE, IPoIB; ErrNotEthernet), as the program parses Ethernet
// frames and would track nothing there.
func egressFits(iface *net.Interface) error {
	if iface.Flags&net.FlagLoopback != 0 || len(iface.HardwareAddr) != 6 {
		return fmt.Errorf("%w: fsha's egress program parses Ethernet frames", ErrNotEthernet)
	}
	return nil
}

// attachReply attaches the TC egress program alone to iface, a reply
// interface, and notes its pin in wanted. attachMu is held.
func (dp *Dataplane) attachReply(iface *net.Interface, wanted map[string]bool) error {
	if err := egressFits(iface); err != nil {
		return fmt.Errorf("reply interface %s: %w", iface.Name, err)
	}
	a, err := dp.attachEgress(iface)
	if err != nil {
		return fmt.Errorf("attach tc egress to reply interface %s: %w", iface.Name, err)
	}
	a.Reply = true
	dp.attach = append(dp.attach, a)
	// the same pin as a public interface's egress: an interface that
	// turns from public to reply (a new public_addresses) keeps its link
	wanted[pinName("tcx", iface.Name)] = true
	return nil
}

// attachReplies attaches the reply interfaces at the start, after the
// public ones (which are not attached again here). One that is missing
// or cannot take the program is skipped with a warning: tracking on the
// public interfaces goes on as without it. attachMu is held.
func (dp *Dataplane) attachReplies(names []string, public []string, wanted map[string]bool) {
	for _, name := range names {
		if slices.Contains(public, name) {
			continue
		}
		iface, err := net.InterfaceByName(name)
		if err == nil {
			err = dp.attachReply(iface, wanted)
		}
		if err != nil {
			dp.log.Warn("reply interface not attached: answers to VIP clients through it stay untracked",
				zap.String("interface", name), zap.Error(err))
		}
	}
}

// AttachReplyInterface attaches the TC egress program to name, a reply
// interface found while the node runs (a new route), unless it runs
// there already: on a public interface, or on this reply interface as
// the kernel has it now (a link on another ifindex is of a former
// interface of that name: it is replaced). It reports whether it
// attached. Links attached here are pinned and kept by the next start
// if the interface is still a reply interface then.
func (dp *Dataplane) AttachReplyInterface(name string) (bool, error) {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return false, fmt.Errorf("reply interface %s: %w", name, err)
	}
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	for _, a := range dp.attach {
		if a.Interface != name {
			continue
		}
		if !a.Reply {
			return false, nil // a public interface: egress runs there
		}
		if a.link == nil && a.Ifindex == iface.Index {
			return false, nil // legacy clsact: the filter stays with its device
		}
		if a.link != nil && linkOnIfindex(a.link, iface.Index) {
			return false, nil
		}
	}
	dp.attach = slices.DeleteFunc(dp.attach, func(a attachment) bool {
		if a.Interface != name {
			return false
		}
		if a.link != nil {
			_ = a.link.Close() // of a former interface of that name
		}
		return true
	})
	if err := dp.attachReply(iface, map[string]bool{}); err != nil {
		return false, err
	}
	dp.log.Info("reply interface attached: tracking answers to VIP clients through it",
		zap.String("interface", name), zap.Int("ifindex", iface.Index))
	return true, nil
}

// ReplyInterfaces lists the reply interfaces the egress program runs on.
func (dp *Dataplane) ReplyInterfaces() []string {
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	var out []string
	for _, a := range dp.attach {
		if a.Reply && !slices.Contains(out, a.Interface) {
			out = append(out, a.Interface)
		}
	}
	return out
}

// CheckReplyInterface says whether name exists and can take the egress
// program, as a start would find it (fsha check-config).
func CheckReplyInterface(name string) error {
	iface, err := net.InterfaceByName(name)
	if err != nil {
		return fmt.Errorf("reply interface %s: %w", name, err)
	}
	if err := egressFits(iface); err != nil {
		return fmt.Errorf("reply interface %s: %w", name, err)
	}
	return nil
}
