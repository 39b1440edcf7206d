package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Addresses of the veth ends (198.18.0.0/15 only, no route out).
var (
	vethAddrA = netip.MustParsePrefix("198.18.0.1/24")
	vethAddrB = netip.MustParsePrefix("198.18.0.2/24")
)

// vethPair is two network namespaces, fsha-bench-<id>-a and -b, joined by
// a veth whose ends are named fb<id>a and fb<id>b. Close deletes the
// namespaces and with them the veth.
type vethPair struct {
	nsName [2]string
	ns     [2]netns.NsHandle
	nl     [2]*netlink.Handle
	ifName [2]string
	ifIdx  [2]int
}

// Sides of a vethPair.
const (
	sideA = 0
	sideB = 1
)

func newVethPair() (_ *vethPair, err error) {
	var id [3]byte
	if _, err := rand.Read(id[:]); err != nil {
		return nil, fmt.Errorf("random id: %w", err)
	}
	tag := hex.EncodeToString(id[:])
	p := &vethPair{
		nsName: [2]string{"fsha-bench-" + tag + "-a", "fsha-bench-" + tag + "-b"},
		ifName: [2]string{"fb" + tag + "a", "fb" + tag + "b"},
		ns:     [2]netns.NsHandle{-1, -1},
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	for i, name := range p.nsName {
		if p.ns[i], err = newNamedNetns(name); err != nil {
			return nil, err
		}
		// IPv4 only: no router solicitations, DAD or MLD on the veth.
		if err := p.exec(i, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"); err != nil {
			return nil, err
		}
		if p.nl[i], err = netlink.NewHandleAt(p.ns[i]); err != nil {
			return nil, fmt.Errorf("netlink in %s: %w", name, err)
		}
	}
	veth := &netlink.Veth{
		LinkAttrs:        netlink.LinkAttrs{Name: p.ifName[sideA], HardwareAddr: macA, MTU: 1500},
		PeerName:         p.ifName[sideB],
		PeerHardwareAddr: macB,
		PeerNamespace:    netlink.NsFd(p.ns[sideB]),
	}
	if err := p.nl[sideA].LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("add veth %s: %w", p.ifName[sideA], err)
	}
	for i, addr := range []netip.Prefix{vethAddrA, vethAddrB} {
		l, err := p.nl[i].LinkByName(p.ifName[i])
		if err != nil {
			return nil, fmt.Errorf("find %s: %w", p.ifName[i], err)
		}
		p.ifIdx[i] = l.Attrs().Index
		a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.Addr().AsSlice(), Mask: net.CIDRMask(addr.Bits(), 32)}}
		if err := p.nl[i].AddrAdd(l, a); err != nil {
			return nil, fmt.Errorf("address %s on %s: %w", addr, p.ifName[i], err)
		}
		if err := p.nl[i].LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", p.ifName[i], err)
		}
		// As in the lab: no partial checksums on veth.
		if err := p.exec(i, "ethtool", "-K", p.ifName[i], "tx", "off"); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// attachXDP attaches prog to side's veth end in native mode.
func (p *vethPair) attachXDP(side int, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := inNetns(p.ns[side], func() (err error) {
		l, err = link.AttachXDP(link.XDPOptions{Program: prog, Interface: p.ifIdx[side], Flags: link.XDPDriverMode})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach xdp to %s: %w", p.ifName[side], err)
	}
	return l, nil
}

// attachTCXEgress attaches prog to side's veth end at TCX egress.
func (p *vethPair) attachTCXEgress(side int, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := inNetns(p.ns[side], func() (err error) {
		l, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: p.ifIdx[side], Attach: ebpf.AttachTCXEgress})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx egress to %s: %w", p.ifName[side], err)
	}
	return l, nil
}

// exec runs a command in side's namespace.
func (p *vethPair) exec(side int, name string, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.nsName[side], name}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), p.nsName[side], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Close deletes both namespaces (and so the veth).
func (p *vethPair) Close() error {
	var errs []error
	for i, name := range p.nsName {
		if p.nl[i] != nil {
			p.nl[i].Close()
			p.nl[i] = nil
		}
		if p.ns[i] >= 0 {
			errs = append(errs, p.ns[i].Close())
			p.ns[i] = -1
		}
		// Even when creating it failed halfway.
		if err := netns.DeleteNamed(name); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("delete netns %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// onThread runs fn on an OS thread of its own, which is thrown away
// afterwards (the goroutine exits still locked to it): fn may change the
// thread's namespace, CPU affinity or scheduling policy freely.
func onThread(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		errc <- fn()
	}()
	return <-errc
}

// inNetns runs fn on a thread of its own switched into ns.
func inNetns(ns netns.NsHandle, fn func() error) error {
	return onThread(func() error {
		if err := netns.Set(ns); err != nil {
			return fmt.Errorf("enter netns: %w", err)
		}
		return fn()
	})
}

// newNamedNetns creates a named namespace (bind-mounted under
// /var/run/netns, so `ip netns exec` finds it) on a throwaway thread, as
// creating it moves the calling thread into it.
func newNamedNetns(name string) (netns.NsHandle, error) {
	ns := netns.None()
	err := onThread(func() (err error) {
		if ns, err = netns.NewNamed(name); err != nil {
			return fmt.Errorf("create netns %s: %w", name, err)
		}
		return nil
	})
	return ns, err
}
