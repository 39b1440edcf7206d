package dataplane

// A VIP's set of connections in the flow indexes (index.go): the client
// sides, IPv4 and IPv6 apart, as compact keys.

import "net/netip"

// key4 and key6 are a connection's client side in a VIP's set: the VIP,
// and with it the family, are the set's.
type key4 struct {
	client       [4]byte
	vport, cport uint16
}

type key6 struct {
	client       [16]byte
	vport, cport uint16
}

// flowSet is the set of connections to one VIP and their digest. Only the
// map of the VIP's family is ever made.
type flowSet struct {
	v4     map[key4]struct{}
	v6     map[key6]struct{}
	digest Digest
}

func (s *flowSet) len() int { return len(s.v4) + len(s.v6) }

func (s *flowSet) has(k *fshaFlowKey) bool {
	if k.Family == afInet {
		_, ok := s.v4[key4{[4]byte(k.Client[:4]), k.Vport, k.Cport}]
		return ok
	}
	_, ok := s.v6[key6{k.Client, k.Vport, k.Cport}]
	return ok
}

// add puts k in and reports whether it was not there.
func (s *flowSet) add(k *fshaFlowKey) bool {
	if k.Family == afInet {
		c := key4{[4]byte(k.Client[:4]), k.Vport, k.Cport}
		if _, ok := s.v4[c]; ok {
			return false
		}
		if s.v4 == nil {
			s.v4 = map[key4]struct{}{}
		}
		s.v4[c] = struct{}{}
	} else {
		c := key6{k.Client, k.Vport, k.Cport}
		if _, ok := s.v6[c]; ok {
			return false
		}
		if s.v6 == nil {
			s.v6 = map[key6]struct{}{}
		}
		s.v6[c] = struct{}{}
	}
	s.digest.Add(hashKey(k))
	return true
}

// remove takes k out and reports whether it was there.
func (s *flowSet) remove(k *fshaFlowKey) bool {
	if k.Family == afInet {
		c := key4{[4]byte(k.Client[:4]), k.Vport, k.Cport}
		if _, ok := s.v4[c]; !ok {
			return false
		}
		delete(s.v4, c)
	} else {
		c := key6{k.Client, k.Vport, k.Cport}
		if _, ok := s.v6[c]; !ok {
			return false
		}
		delete(s.v6, c)
	}
	s.digest.Remove(hashKey(k))
	return true
}

// each calls fn with the map key of every connection of s, a set of
// connections to vip.
func (s *flowSet) each(vip netip.Addr, fn func(k *fshaFlowKey)) {
	var k fshaFlowKey
	k.Vip, k.Family = addrBytes(vip)
	for c := range s.v4 {
		k.Client = [16]byte{}
		copy(k.Client[:], c.client[:])
		k.Vport, k.Cport = c.vport, c.cport
		fn(&k)
	}
	for c := range s.v6 {
		k.Client, k.Vport, k.Cport = c.client, c.vport, c.cport
		fn(&k)
	}
}

// appendKeys appends the map keys of s, a set of connections to vip.
func (s *flowSet) appendKeys(out []fshaFlowKey, vip netip.Addr) []fshaFlowKey {
	s.each(vip, func(k *fshaFlowKey) { out = append(out, *k) })
	return out
}

func keyVIP(k *fshaFlowKey) netip.Addr { return bytesAddr(k.Vip, k.Family) }
