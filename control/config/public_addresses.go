package config

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// PublicAddress is one line of the public_addresses file: a VIP that fsha
// moves between nodes, the interfaces it may be put on, and the nodes that
// may hold it.
//
// The node list is fsha's addition to CTDB's format. CTDB restricts a VIP to
// some nodes by giving those nodes a different public_addresses file; fsha
// computes the same assignment on every node from one shared file, so the
// restriction has to be written in it. CTDB ignores a third field, so a file
// with node lists still loads in CTDB (without the restriction).
type PublicAddress struct {
	// Prefix is the VIP with the prefix length of its subnet, as it is put
	// on the interface, e.g. 198.18.1.10/24. The host part is kept: this
	// is an interface address, not a route.
	Prefix     netip.Prefix
	Interfaces []string  // in order of preference, at least one
	Nodes      []NodeRef // nodes that may hold the VIP; empty means any node
	File       string    // file the entry was read from, for messages
	Line       int       // source line, for messages
}

// VIP returns the virtual IP address itself.
func (p PublicAddress) VIP() netip.Addr { return p.Prefix.Addr() }

// String returns the entry as a line of a public_addresses file.
func (p PublicAddress) String() string {
	var b strings.Builder
	b.WriteString(p.Prefix.String())
	b.WriteByte(' ')
	b.WriteString(strings.Join(p.Interfaces, ","))
	for i, r := range p.Nodes {
		if i == 0 {
			b.WriteByte(' ')
		} else {
			b.WriteByte(',')
		}
		b.WriteString(r.String())
	}
	return b.String()
}

// NodeRef names a node in a public address's node list, the way the
// operator wrote it: by number (PNN) or by its address in the nodes file.
// Exactly one is set; PNN is -1 when Addr is used. ResolveNodeRefs checks
// that the node exists.
type NodeRef struct {
	PNN  int
	Addr netip.Addr
}

// String returns the reference as written in a node list.
func (r NodeRef) String() string {
	if r.PNN >= 0 {
		return strconv.Itoa(r.PNN)
	}
	return r.Addr.String()
}

// Matches reports whether r names node n. A deleted node matches nothing.
func (r NodeRef) Matches(n Node) bool {
	if n.Deleted {
		return false
	}
	if r.PNN >= 0 {
		return r.PNN == n.PNN
	}
	return r.Addr == n.Addr
}

// maxPNN bounds node numbers. CTDB's are 32-bit and its "unknown node" is
// 0xffffffff; 2^31-1 fits an int everywhere and is far beyond any cluster.
const maxPNN = 1<<31 - 1

// publicAddressSyntax is the line format, quoted in messages.
const publicAddressSyntax = "ADDR/PREFIX IFACE[,IFACE...] [NODE[,NODE...]]"

// LoadPublicAddresses reads and checks the public_addresses file at path. See
// ParsePublicAddresses.
func LoadPublicAddresses(path string) ([]PublicAddress, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load public addresses: %w", err)
	}
	defer f.Close()
	return ParsePublicAddresses(path, f)
}

// ParsePublicAddresses reads a CTDB public_addresses file from r, one entry
// per line:
//
//	ADDR/PREFIX IFACE[,IFACE...] [NODE[,NODE...]]
//
// ADDR is an IPv4 or IPv6 unicast address, IFACE a Linux interface name and
// NODE a node number (PNN) or a node address from the nodes file. Blank lines
// and lines starting with '#' are ignored, and so is a '#' field and what
// follows it. name is used in messages only.
//
// It rejects a file with any bad line or a VIP listed twice; the error joins
// one *LineError per problem. An empty file is valid and has no VIPs, as in
// CTDB. Node lists are checked against the nodes file by ResolveNodeRefs.
func ParsePublicAddresses(name string, r io.Reader) ([]PublicAddress, error) {
	p := &problems{file: name}
	var addrs []PublicAddress
	first := make(map[netip.Addr]int) // VIP -> line it was first seen on

	eachLine(r, p, func(n int, line string) {
		f := fields(line)
		if len(f) == 0 {
			return
		}
		pa, ok := parsePublicAddress(p, n, f)
		if !ok {
			return
		}
		// The same VIP with another prefix length is still the same VIP:
		// two entries would have two nodes answer for one address.
		if l, dup := first[pa.VIP()]; dup {
			p.add(n, nil, "duplicate public address %s, first on line %d", pa.VIP(), l)
			return
		}
		first[pa.VIP()] = n
		pa.File = name
		addrs = append(addrs, pa)
	})

	if err := p.err(); err != nil {
		return nil, err
	}
	return addrs, nil
}

// parsePublicAddress parses the fields of one line. It checks every field,
// even after a bad one, so that one pass reports all problems of the line.
func parsePublicAddress(p *problems, n int, f []string) (PublicAddress, bool) {
	before := len(p.errs)
	pa := PublicAddress{Line: n}

	prefix, err := parseVIP(f[0])
	if err != nil {
		p.add(n, err, "invalid address %q", f[0])
	}
	pa.Prefix = prefix

	switch {
	case len(f) < 2:
		p.add(n, nil, "missing interface: want %s", publicAddressSyntax)
	case len(f) > 3:
		p.add(n, nil, "too many fields (%d): want %s", len(f), publicAddressSyntax)
	}
	if len(f) >= 2 {
		seen := make(map[string]bool)
		for _, name := range strings.Split(f[1], ",") {
			if err := checkIfaceName(name); err != nil {
				p.add(n, err, "invalid interface %q", name)
				continue
			}
			if seen[name] {
				p.add(n, nil, "interface %q listed twice", name)
				continue
			}
			seen[name] = true
			pa.Interfaces = append(pa.Interfaces, name)
		}
	}
	if len(f) >= 3 {
		seen := make(map[NodeRef]bool)
		for _, item := range strings.Split(f[2], ",") {
			ref, err := parseNodeRef(item)
			if err != nil {
				p.add(n, err, "invalid node %q in node list", item)
				continue
			}
			if seen[ref] {
				p.add(n, nil, "node %s listed twice in node list", ref)
				continue
			}
			seen[ref] = true
			pa.Nodes = append(pa.Nodes, ref)
		}
	}
	return pa, len(p.errs) == before
}

// parseVIP parses ADDR/PREFIX. It parses the two halves itself rather than
// with netip.ParsePrefix so that it can take IPv4-mapped and bracketed IPv6
// as CTDB does, and say which half is wrong.
func parseVIP(s string) (netip.Prefix, error) {
	as, bs, ok := strings.Cut(s, "/")
	if !ok {
		return netip.Prefix{}, errors.New("missing prefix length: want ADDR/PREFIX, e.g. 198.18.1.10/24")
	}
	a, err := parseAddr(as)
	if err != nil {
		// parseAddr unmaps IPv4-mapped addresses, so look again below.
		return netip.Prefix{}, err
	}
	if !isDigits(bs) || len(bs) > 3 {
		return netip.Prefix{}, fmt.Errorf("invalid prefix length %q", bs)
	}
	bits, _ := strconv.Atoi(bs) // at most 3 digits
	if mapped, _ := netip.ParseAddr(strings.Trim(as, "[]")); mapped.Is4In6() {
		// ::ffff:198.18.1.10/120 is 198.18.1.10/24.
		if bits < 96 || bits > 128 {
			return netip.Prefix{}, fmt.Errorf("prefix length /%d out of range for an IPv4-mapped address (96-128)", bits)
		}
		bits -= 96
	}
	switch {
	case bits > a.BitLen():
		return netip.Prefix{}, fmt.Errorf("prefix length /%d out of range for IPv%d (1-%d)", bits, ipVersion(a), a.BitLen())
	case bits == 0:
		// The kernel would add a connected route to every destination
		// through the VIP's interface, hijacking the node's default route.
		return netip.Prefix{}, errors.New("prefix length /0 would route every destination to the interface")
	}
	if err := checkVIP(a, bits); err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, bits), nil
}

func ipVersion(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// checkVIP rejects addresses that clients cannot reach at a node, and so
// cannot be moved between nodes.
func checkVIP(a netip.Addr, bits int) error {
	if err := checkUnicast(a); err != nil {
		return fmt.Errorf("%w; a public address must be unicast", err)
	}
	switch {
	case a.IsLoopback():
		return errors.New("loopback address; a public address must be reachable by clients")
	case a.IsLinkLocalUnicast():
		return errors.New("link-local address; a public address must be routable")
	case a.Is4() && bits <= 30:
		// Subnets up to /30 have a broadcast address (all host bits set).
		// Taking it as a VIP breaks broadcast on the segment and is
		// always a typo.
		a4 := a.As4()
		host := uint32(1)<<(32-bits) - 1
		if binary.BigEndian.Uint32(a4[:])&host == host {
			return fmt.Errorf("broadcast address of %s", netip.PrefixFrom(a, bits).Masked())
		}
	}
	return nil
}

// ifNameSize is the kernel's IFNAMSIZ, including the terminating NUL.
const ifNameSize = 16

// checkIfaceName applies the kernel's rules for interface names
// (dev_valid_name in net/core/dev.c), so a name that passes can exist. It
// does not check that the interface exists: the file is shared by nodes
// whose interfaces may differ, and interfaces come and go.
func checkIfaceName(name string) error {
	switch {
	case name == "":
		return errors.New("empty name")
	case len(name) >= ifNameSize:
		return fmt.Errorf("longer than %d bytes", ifNameSize-1)
	case name == "." || name == "..":
		return errors.New("not a valid interface name")
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; c {
		case '/', ':':
			return fmt.Errorf("contains %q", c)
		case '%':
			// The kernel takes a name with '%' as a template ("eth%d")
			// and numbers it, so no interface is ever called that.
			return errors.New("contains '%', which the kernel treats as a name template")
		case 0, ' ', '\t', '\n', '\v', '\f', '\r', 0xa0: // NUL and the kernel's isspace
			return fmt.Errorf("contains white space or NUL (byte 0x%02x)", c)
		}
	}
	return nil
}

// parseNodeRef parses one node-list item: digits are a PNN, anything else
// must be a node address.
func parseNodeRef(s string) (NodeRef, error) {
	if s == "" {
		return NodeRef{}, errors.New("empty item")
	}
	if isDigits(s) {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil || v > maxPNN {
			return NodeRef{}, fmt.Errorf("node number out of range (0-%d)", maxPNN)
		}
		return NodeRef{PNN: int(v)}, nil
	}
	a, err := parseAddr(s)
	if err != nil {
		return NodeRef{}, fmt.Errorf("want a node number (PNN) or a node address: %w", err)
	}
	if err := checkNodeAddr(a); err != nil {
		return NodeRef{}, err
	}
	return NodeRef{PNN: -1, Addr: a}, nil
}

// FormatPublicAddresses writes addrs as a public_addresses file that
// ParsePublicAddresses reads back to the same entries.
func FormatPublicAddresses(w io.Writer, addrs []PublicAddress) error {
	var b strings.Builder
	for _, pa := range addrs {
		if !pa.Prefix.IsValid() || len(pa.Interfaces) == 0 {
			return fmt.Errorf("format public addresses: entry %q needs an address and an interface", pa.String())
		}
		b.WriteString(pa.String())
		b.WriteByte('\n')
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("format public addresses: %w", err)
	}
	return nil
}
