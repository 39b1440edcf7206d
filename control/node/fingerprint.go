package node

import (
	"encoding/binary"
	"hash/fnv"
	"slices"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/ownership"
)

// Fingerprint identifies a node's cluster configuration: the nodes file
// (in PNN order: the numbers matter) and the public addresses with their
// node lists, sorted (the order of the lines does not matter, nor do the
// interfaces, which may differ from node to node). Nodes whose
// fingerprints differ from the majority's hold no VIPs.
func Fingerprint(nodes []config.Node, vips []config.PublicAddress) ownership.Fingerprint {
	h := fnv.New64a()
	for _, nd := range nodes {
		b, _ := nd.Addr.MarshalBinary()
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(nd.PNN)))
		if nd.Deleted {
			h.Write([]byte{1})
		} else {
			h.Write([]byte{0})
		}
		h.Write(b)
	}
	fp := ownership.Fingerprint{Nodes: h.Sum64(), NVIPs: uint16(len(vips))}
	sorted := slices.Clone(vips)
	slices.SortFunc(sorted, func(a, b config.PublicAddress) int { return a.VIP().Compare(b.VIP()) })
	h = fnv.New64a()
	for _, v := range sorted {
		b, _ := v.Prefix.MarshalBinary()
		h.Write(b)
		var allowed []int
		for _, ref := range v.Nodes {
			for _, nd := range nodes {
				if ref.Matches(nd) {
					allowed = append(allowed, nd.PNN)
				}
			}
		}
		slices.Sort(allowed)
		h.Write([]byte{byte(len(allowed))})
		for _, p := range allowed {
			h.Write(binary.BigEndian.AppendUint32(nil, uint32(p)))
		}
	}
	fp.VIPs = h.Sum64()
	return fp
}
