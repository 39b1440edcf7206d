package lab

// A fake NFSv3 client's status monitor (statd), to see sm-notify's reboot
// notifications arrive: a portmapper on UDP 111 that knows one program,
// NSM (100024 v1), and an NSM service that records SM_NOTIFY calls. Only
// what sm-notify sends is decoded (ONC RPC over UDP, RFC 5531; PMAP v2
// GETPORT, RFC 1833; SM_NOTIFY from the X/Open NSM protocol).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// RPC numbers used here.
const (
	pmapProg       = 100000
	pmapVers       = 2
	pmapGetPort    = 3
	nsmProg        = 100024
	nsmVers        = 1
	nsmNotify      = 6
	rpcCall        = 0
	rpcReply       = 1
	rpcAccepted    = 0
	rpcSuccess     = 0
	rpcProgUnavail = 1
	rpcProcUnavail = 3
	rpcGarbage     = 4
)

// SMNotify is one SM_NOTIFY call the fake statd received.
type SMNotify struct {
	At   time.Time
	From netip.AddrPort
	// MonName is the name the rebooted server gives itself (sm-notify -v)
	// and State its new NSM state number (odd: up).
	MonName string
	State   uint32
}

// FakeStatd is the fake status monitor of a client namespace.
type FakeStatd struct {
	pmap, nsm net.PacketConn

	mu       sync.Mutex
	notifies []SMNotify
	getports int
	errs     []error
}

// StartFakeStatd listens on UDP 111 and on an NSM port in the client's
// namespace. The lab closes it with the namespace.
func (c *Client) StartFakeStatd() (*FakeStatd, error) {
	f := &FakeStatd{}
	err := c.Do(func() error {
		var err error
		if f.pmap, err = net.ListenPacket("udp4", ":111"); err != nil {
			return fmt.Errorf("fake statd: portmapper: %w", err)
		}
		if f.nsm, err = net.ListenPacket("udp4", ":0"); err != nil {
			f.pmap.Close()
			return fmt.Errorf("fake statd: nsm: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	c.lab.push("close fake statd in "+c.Role, f.Close)
	go f.serve(f.pmap, f.portmap)
	go f.serve(f.nsm, f.monitor)
	return f, nil
}

// Close stops listening.
func (f *FakeStatd) Close() error {
	return errors.Join(ignoreClosed(f.pmap.Close()), ignoreClosed(f.nsm.Close()))
}

// Notifies returns the SM_NOTIFY calls received so far.
func (f *FakeStatd) Notifies() []SMNotify {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]SMNotify(nil), f.notifies...)
}

// GetPorts counts the portmapper lookups of NSM's port.
func (f *FakeStatd) GetPorts() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.getports
}

// Errors returns the calls that could not be decoded.
func (f *FakeStatd) Errors() []error {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]error(nil), f.errs...)
}

// rpcCallMsg is the header of an RPC call and its arguments.
type rpcCallMsg struct {
	xid, prog, vers, proc uint32
	args                  []byte
}

// handler answers one call: accept status and result.
type handler func(from netip.AddrPort, c rpcCallMsg) (uint32, []byte)

func (f *FakeStatd) serve(pc net.PacketConn, h handler) {
	buf := make([]byte, 65536)
	for {
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		from := addr.(*net.UDPAddr).AddrPort()
		c, err := parseCall(buf[:n])
		if err != nil {
			f.mu.Lock()
			f.errs = append(f.errs, fmt.Errorf("from %s: %w", from, err))
			f.mu.Unlock()
			continue
		}
		stat, res := h(from, c)
		_, _ = pc.WriteTo(replyMsg(c.xid, stat, res), addr)
	}
}

func (f *FakeStatd) portmap(_ netip.AddrPort, c rpcCallMsg) (uint32, []byte) {
	if c.prog != pmapProg || c.vers != pmapVers {
		return rpcProgUnavail, nil
	}
	if c.proc != pmapGetPort {
		return rpcProcUnavail, nil
	}
	if len(c.args) < 16 {
		return rpcGarbage, nil
	}
	port := uint32(0) // not registered
	if binary.BigEndian.Uint32(c.args) == nsmProg && binary.BigEndian.Uint32(c.args[4:]) == nsmVers {
		port = uint32(f.nsm.LocalAddr().(*net.UDPAddr).Port)
		f.mu.Lock()
		f.getports++
		f.mu.Unlock()
	}
	return rpcSuccess, binary.BigEndian.AppendUint32(nil, port)
}

func (f *FakeStatd) monitor(from netip.AddrPort, c rpcCallMsg) (uint32, []byte) {
	if c.prog != nsmProg || c.vers != nsmVers {
		return rpcProgUnavail, nil
	}
	if c.proc != nsmNotify {
		return rpcProcUnavail, nil
	}
	// stat_chge: string mon_name<1024>, int state
	name, rest, err := xdrString(c.args)
	if err != nil || len(rest) < 4 {
		return rpcGarbage, nil
	}
	f.mu.Lock()
	f.notifies = append(f.notifies, SMNotify{At: time.Now(), From: from, MonName: name, State: binary.BigEndian.Uint32(rest)})
	f.mu.Unlock()
	return rpcSuccess, nil
}

// parseCall decodes an RPC call message (any credentials).
func parseCall(b []byte) (rpcCallMsg, error) {
	var c rpcCallMsg
	u32 := func() (uint32, error) {
		if len(b) < 4 {
			return 0, errors.New("short rpc message")
		}
		v := binary.BigEndian.Uint32(b)
		b = b[4:]
		return v, nil
	}
	skipAuth := func() error {
		if _, err := u32(); err != nil { // flavor
			return err
		}
		n, err := u32()
		if err != nil {
			return err
		}
		n = (n + 3) &^ 3
		if uint32(len(b)) < n {
			return errors.New("short rpc auth")
		}
		b = b[n:]
		return nil
	}
	var mtype, rpcvers uint32
	var err error
	for _, p := range []*uint32{&c.xid, &mtype, &rpcvers, &c.prog, &c.vers, &c.proc} {
		if *p, err = u32(); err != nil {
			return c, err
		}
	}
	if mtype != rpcCall || rpcvers != 2 {
		return c, fmt.Errorf("not an RPCv2 call (type %d, version %d)", mtype, rpcvers)
	}
	if err := skipAuth(); err != nil {
		return c, err
	}
	if err := skipAuth(); err != nil {
		return c, err
	}
	c.args = b
	return c, nil
}

// replyMsg encodes an accepted reply with a null verifier.
func replyMsg(xid, stat uint32, res []byte) []byte {
	var b []byte
	for _, v := range []uint32{xid, rpcReply, rpcAccepted, 0, 0, stat} {
		b = binary.BigEndian.AppendUint32(b, v)
	}
	return append(b, res...)
}

// xdrString decodes an XDR string and returns the rest.
func xdrString(b []byte) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, errors.New("short xdr string")
	}
	n := binary.BigEndian.Uint32(b)
	b = b[4:]
	padded := (n + 3) &^ 3
	if n > 1024 || uint32(len(b)) < padded {
		return "", nil, errors.New("bad xdr string length")
	}
	return string(b[:n]), b[padded:], nil
}
