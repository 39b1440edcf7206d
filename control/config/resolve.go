package config

import (
	"errors"
	"fmt"
	"net/netip"
)

// ResolveNodeRefs checks the public addresses against the nodes file, which
// neither file can do alone: every node in a node list must be a live node of
// the nodes file, no node may be listed twice under two names (as 1 and as
// its address), and no VIP may be a node's own address, since releasing the
// VIP would then cut the node off the cluster network.
//
// It returns all problems joined, one *LineError per problem, placed at the
// public address's file and line.
func ResolveNodeRefs(addrs []PublicAddress, nodes []Node) error {
	byPNN := make(map[int]Node, len(nodes))
	byAddr := make(map[netip.Addr]Node, len(nodes))
	for _, n := range nodes {
		byPNN[n.PNN] = n
		if !n.Deleted {
			byAddr[n.Addr] = n
		}
	}

	var errs []error
	bad := func(pa PublicAddress, format string, args ...any) {
		errs = append(errs, &LineError{File: pa.File, Line: pa.Line, Reason: fmt.Sprintf(format, args...)})
	}
	for _, pa := range addrs {
		if n, ok := byAddr[pa.VIP()]; ok {
			bad(pa, "public address %s is the address of node %d (%s:%d); a node's own address cannot move",
				pa.VIP(), n.PNN, n.File, n.Line)
		}
		named := make(map[int]NodeRef) // PNN -> how the list named it first
		for _, ref := range pa.Nodes {
			n, err := resolve(ref, byPNN, byAddr, len(nodes))
			if err != nil {
				bad(pa, "node %s in node list: %v", ref, err)
				continue
			}
			if prev, dup := named[n.PNN]; dup {
				bad(pa, "node list names node %d twice, as %s and as %s", n.PNN, prev, ref)
				continue
			}
			named[n.PNN] = ref
		}
	}
	return errors.Join(errs...)
}

// resolve finds the live node ref names.
func resolve(ref NodeRef, byPNN map[int]Node, byAddr map[netip.Addr]Node, count int) (Node, error) {
	if ref.PNN < 0 {
		n, ok := byAddr[ref.Addr]
		if !ok {
			return Node{}, errors.New("no live node has this address in the nodes file")
		}
		return n, nil
	}
	n, ok := byPNN[ref.PNN]
	switch {
	case !ok && count == 0:
		return Node{}, errors.New("no such node: the nodes file lists none")
	case !ok:
		return Node{}, fmt.Errorf("no such node: the nodes file lists %d (PNN 0-%d)", count, count-1)
	case n.Deleted:
		return Node{}, fmt.Errorf("node is deleted (commented out at %s:%d)", n.File, n.Line)
	}
	return n, nil
}
