package lab

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// TCPSocket is one line of a namespace's /proc/net/tcp or tcp6.
type TCPSocket struct {
	State         uint8 // TCP_ESTABLISHED 1, TCP_LISTEN 10, ...
	Local, Remote netip.AddrPort
	Inode         string // the socket's, as /proc/PID/fd links name it: socket:[Inode]
}

// TCP state numbers of /proc/net/tcp.
const (
	TCPEstablished = 1
	TCPListen      = 10
)

// TCPSockets lists the host's TCP sockets, IPv4 and IPv6, from the
// kernel's tables read inside its namespace.
func (h *Host) TCPSockets() ([]TCPSocket, error) {
	var out []TCPSocket
	err := h.Do(func() error {
		var err error
		out, err = tcpSockets()
		return err
	})
	return out, err
}

// tcpSockets reads the calling thread's namespace's TCP tables.
func tcpSockets() ([]TCPSocket, error) {
	var out []TCPSocket
	for _, f := range []string{"/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"} {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue // no IPv6
		}
		if err != nil {
			return nil, err
		}
		socks, err := parseTCPTable(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f, err)
		}
		out = append(out, socks...)
	}
	return out, nil
}

// parseTCPTable reads /proc/net/tcp's format: a header, then "sl
// local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
// ...", addresses as HEXADDR:HEXPORT with the address in the host's
// 32-bit words.
func parseTCPTable(b []byte) ([]TCPSocket, error) {
	var out []TCPSocket
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Scan() // the header
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 10 {
			return nil, fmt.Errorf("short line %q", sc.Text())
		}
		local, err := procAddrPort(f[1])
		if err != nil {
			return nil, err
		}
		remote, err := procAddrPort(f[2])
		if err != nil {
			return nil, err
		}
		st, err := strconv.ParseUint(f[3], 16, 8)
		if err != nil {
			return nil, fmt.Errorf("state %q: %w", f[3], err)
		}
		out = append(out, TCPSocket{State: uint8(st), Local: local, Remote: remote, Inode: f[9]})
	}
	return out, sc.Err()
}

// procAddrPort decodes "0100A8C0:1F90" (or its 32-hex-digit IPv6 form).
func procAddrPort(s string) (netip.AddrPort, error) {
	a, p, ok := strings.Cut(s, ":")
	raw, err := hex.DecodeString(a)
	if !ok || err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("port %q: %w", s, err)
	}
	// each 32-bit word is in the host's order (little-endian here)
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.NativeEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
