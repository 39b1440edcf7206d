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
	"path/filepath"
	"runtime"
	"strings"

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

// exec runs a command in side's namespace.
func (p *vethPair) exec(side int, name string, args ...string) error {
	return p.execInput(side, "", name, args...)
}

func (p *vethPair) execInput(side int, stdin, name string, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", p.nsName[side], name}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), p.nsName[side], err, strings.TrimSpace(string(out)))
	}
	return nil
}

// writeSysfs writes value to /sys/class/net/<side's veth>/<file>.
func (p *vethPair) writeSysfs(side int, file, value string) error {
	path := filepath.Join("/sys/class/net", p.ifName[side], file)
	return p.execInput(side, value, "tee", path)
}

// Close deletes both namespaces (and so the veth).
func (p *vethPair) Close() error {
	var errs []error
	for i := range p.nsName {
		if p.nl[i] != nil {
			p.nl[i].Close()
			p.nl[i] = nil
		}
		if p.ns[i] >= 0 {
			errs = append(errs, p.ns[i].Close())
			p.ns[i] = -1
			if err := netns.DeleteNamed(p.nsName[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("delete netns %s: %w", p.nsName[i], err))
			}
		}
	}
	return errors.Join(errs...)
}

// inNetns runs fn on an OS thread switched into ns. The thread is thrown
// away afterwards (the goroutine exits still locked), so no other goroutine
// ever runs in the wrong namespace.
func inNetns(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// newNamedNetns creates a named namespace (bind-mounted under
// /var/run/netns, so `ip netns exec` finds it) on a throwaway thread.
func newNamedNetns(name string) (netns.NsHandle, error) {
	type result struct {
		ns  netns.NsHandle
		err error
	}
	c := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err != nil {
			err = fmt.Errorf("create netns %s: %w", name, err)
		}
		c <- result{ns, err}
	}()
	r := <-c
	return r.ns, r.err
}
