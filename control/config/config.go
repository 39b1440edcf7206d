// Package config reads the two cluster files fsha shares with Samba CTDB: the
// nodes file, which lists the private address of every node and whose line
// order fixes each node's number (PNN), and the public_addresses file, which
// lists the VIPs fsha moves between nodes.
//
// fsha reads CTDB's own formats so that a CTDB cluster can switch in minutes,
// without rewriting its configuration. Where fsha is stricter than CTDB, it is
// because CTDB would take the file and then misbehave at run time (a typo in
// an interface name, a VIP listed twice, a prefix length of 0). Bad config is
// refused at start, and every problem of a file is reported at once, each
// with file, line and reason, so that an operator fixes them in one pass and a
// running node never takes a half-parsed config.
//
// Nothing here touches the network or the system: interface names are checked
// for syntax only, and node lists are checked against the nodes file by
// ResolveNodeRefs, not against live members.
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
)

// LineError is one problem on one line of a config file.
//
// The parse functions return every problem of a file joined with errors.Join,
// so an operator sees them all at once. Callers that need the problems one by
// one (an admin API listing them, a test looking for one) use errors.As, or
// walk the joined error with its Unwrap() []error method.
type LineError struct {
	File   string // the name the file was parsed under, usually its path
	Line   int    // 1-based source line; 0 when the problem is the file as a whole
	Reason string // what is wrong, lower case, naming the offending text
	Err    error  // the underlying cause, if any
}

// Error formats the problem the way compilers do, "file:line: reason: cause",
// so editors and terminals can jump to the line.
func (e *LineError) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

// Unwrap returns the underlying cause, so errors.Is and errors.As see
// through a LineError.
func (e *LineError) Unwrap() error { return e.Err }

// problems collects the LineErrors of one file. Parsing goes on after a
// problem so that all of them are reported together.
type problems struct {
	file string
	errs []error
}

func (p *problems) add(line int, err error, format string, args ...any) {
	p.errs = append(p.errs, &LineError{
		File:   p.file,
		Line:   line,
		Reason: fmt.Sprintf(format, args...),
		Err:    err,
	})
}

func (p *problems) err() error { return errors.Join(p.errs...) }

// eachLine calls fn with every line of r and its 1-based number. A read error
// is recorded as a problem on the line that could not be read, because the
// caller must not act on the part of the file that came before it.
func eachLine(r io.Reader, p *problems, fn func(n int, line string)) {
	sc := bufio.NewScanner(r) // drops "\n" and a "\r" before it
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		if n == 1 {
			// A byte order mark is what Windows editors put at the start of
			// a file; it is not part of the first address.
			line = strings.TrimPrefix(line, "\uFEFF")
		}
		fn(n, line)
	}
	if err := sc.Err(); err != nil {
		p.add(n+1, err, "read")
	}
}

// isBlank reports whether r separates fields. CTDB splits lines on blanks
// and tabs only; any other white space stays in a field, where the field's
// own check rejects it with a clear reason instead of splitting silently.
func isBlank(r rune) bool { return r == ' ' || r == '\t' }

// fields splits a line into fields and drops a trailing comment: a field
// that starts with '#' and everything after it. CTDB ignores everything
// after the interface field of a public address, so CTDB files annotated
// like "198.18.1.10/24 eth0 # smb" must keep working here. A '#' inside a
// field is kept, since it is legal in an interface name.
func fields(line string) []string {
	f := strings.FieldsFunc(line, isBlank)
	for i, s := range f {
		if strings.HasPrefix(s, "#") {
			return f[:i]
		}
	}
	return f
}

// isCommentLine reports whether the first non-blank character of line is
// '#'. In the nodes file such a line is a deleted node, not just a comment.
func isCommentLine(line string) bool {
	return strings.HasPrefix(strings.TrimLeftFunc(line, isBlank), "#")
}

// parseAddr parses one IP address as CTDB does: IPv4, IPv6, IPv6 in square
// brackets, and IPv4-mapped IPv6 taken as the IPv4 address it maps, since
// that is the address the kernel and the clients see.
func parseAddr(s string) (netip.Addr, error) {
	if len(s) >= 2 && s[0] == '[' && s[len(s)-1] == ']' {
		s = s[1 : len(s)-1]
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if a.Zone() != "" {
		// A zone names a local interface, so the same text would mean
		// different things on different nodes.
		return netip.Addr{}, fmt.Errorf("zone %q not allowed: the file is shared by all nodes", a.Zone())
	}
	return a.Unmap(), nil
}

// checkUnicast rejects addresses that name no single host.
func checkUnicast(a netip.Addr) error {
	switch {
	case a.IsUnspecified():
		return errors.New("unspecified address")
	case a.IsMulticast(): // link-local and interface-local multicast too
		return errors.New("multicast address")
	case a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return errors.New("broadcast address")
	}
	return nil
}

// checkNodeAddr rejects addresses a node cannot be reached at. Loopback is
// allowed because test clusters (CTDB's and fsha's) run every node on
// 127.0.0.x of one host.
func checkNodeAddr(a netip.Addr) error {
	if err := checkUnicast(a); err != nil {
		return err
	}
	if a.Is6() && a.IsLinkLocalUnicast() {
		return errors.New("IPv6 link-local address needs a zone, which differs from node to node")
	}
	return nil
}

// isDigits reports whether s is a non-empty run of ASCII digits. strconv
// alone would also take "+1", which is no way to write a number in these
// files.
func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
