package config

import (
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
)

// Node is one entry of the nodes file.
//
// CTDB numbers nodes by their position in the nodes file, counting every line
// that is not blank, and a line whose first non-blank character is '#' is a
// deleted node, not a plain comment: operators remove a node by commenting it
// out so that the nodes after it keep their numbers (see ctdb(1), "reloadnodes",
// and ctdb/conf/node.c). fsha numbers the same way, so a PNN means the same
// node to fsha and to an operator used to CTDB. The price is CTDB's too: a
// comment line at the top of a nodes file shifts every PNN by one.
type Node struct {
	PNN     int        // 0-based node number, the node's position in the file
	Addr    netip.Addr // the node's private address; zero if Deleted
	Deleted bool       // commented out: keeps its PNN, takes no part in the cluster
	File    string     // file the node was read from, for messages
	Line    int        // source line, for messages
}

// String returns the node as a line of a nodes file.
func (n Node) String() string {
	if n.Deleted {
		return "# deleted"
	}
	return n.Addr.String()
}

// LoadNodes reads and checks the nodes file at path. See ParseNodes.
func LoadNodes(path string) ([]Node, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load nodes: %w", err)
	}
	defer f.Close()
	return ParseNodes(path, f)
}

// ParseNodes reads a CTDB nodes file from r: one node address per line,
// blank lines ignored, a line starting with '#' a deleted node (see Node).
// The result has one Node per PNN, deleted ones included, in PNN order, so
// that nodes[pnn] is node pnn. Callers that count nodes (for a quorum) or
// contact them skip the Deleted ones. name is used in messages only.
//
// It rejects a file with any bad line, and a file with no live node; the
// error joins one *LineError per problem.
func ParseNodes(name string, r io.Reader) ([]Node, error) {
	p := &problems{file: name}
	var nodes []Node
	first := make(map[netip.Addr]int) // address -> line it was first seen on
	live := 0

	eachLine(r, p, func(n int, line string) {
		if isCommentLine(line) {
			nodes = append(nodes, Node{PNN: len(nodes), Deleted: true, File: name, Line: n})
			return
		}
		f := fields(line)
		switch {
		case len(f) == 0:
			return
		case len(f) > 1:
			p.add(n, nil, "too many fields (%d): want one node address per line", len(f))
			return
		}
		a, err := parseAddr(f[0])
		if err == nil {
			err = checkNodeAddr(a)
		}
		if err != nil {
			p.add(n, err, "invalid node address %q", f[0])
			return
		}
		if l, dup := first[a]; dup {
			p.add(n, nil, "duplicate node address %s, first on line %d", a, l)
		} else {
			first[a] = n
		}
		nodes = append(nodes, Node{PNN: len(nodes), Addr: a, File: name, Line: n})
		live++
	})

	switch {
	case len(p.errs) > 0:
	case len(nodes) == 0:
		p.add(0, nil, "no nodes listed")
	case live == 0:
		p.add(0, nil, "no live nodes: all %d are commented out (deleted)", len(nodes))
	}
	if err := p.err(); err != nil {
		return nil, err
	}
	return nodes, nil
}

// FormatNodes writes nodes as a nodes file that ParseNodes reads back to the
// same nodes. As the file encodes each PNN by position, nodes must be in PNN
// order without gaps, the way ParseNodes returns them.
func FormatNodes(w io.Writer, nodes []Node) error {
	var b strings.Builder
	for i, n := range nodes {
		if n.PNN != i {
			return fmt.Errorf("format nodes: node at index %d has PNN %d: the nodes file numbers nodes by position", i, n.PNN)
		}
		if !n.Deleted && !n.Addr.IsValid() {
			return fmt.Errorf("format nodes: node %d has no address", n.PNN)
		}
		b.WriteString(n.String())
		b.WriteByte('\n')
	}
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("format nodes: %w", err)
	}
	return nil
}
