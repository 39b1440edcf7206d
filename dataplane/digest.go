package dataplane

import (
	"encoding/binary"
	"net/netip"
)

// Digest summarizes a set of connections to one VIP so that two nodes can
// tell whether they hold the same set without exchanging it: the number of
// connections, and the XOR and the sum (mod 2^64) of a 64-bit hash of each
// one's tuple. Adding or removing a connection updates it in O(1). Equal
// sets have equal digests; different sets have different ones except with
// a probability of about 2^-64 (the sum catches what XOR cancels, such as
// a connection counted twice).
type Digest struct {
	Count uint64
	Xor   uint64
	Sum   uint64
}

// Add counts the connection whose ConnHash is h in.
func (d *Digest) Add(h uint64) { d.Count++; d.Xor ^= h; d.Sum += h }

// Remove takes the connection whose ConnHash is h out.
func (d *Digest) Remove(h uint64) { d.Count--; d.Xor ^= h; d.Sum -= h }

// ConnHash is the hash of one connection's tuple that digests combine. It
// is the same on every node and in every release that speaks replication
// version 2: changing it makes every digest differ.
func ConnHash(vip netip.Addr, vport uint16, client netip.Addr, cport uint16) uint64 {
	var k fshaFlowKey
	k.Vip, k.Family = addrBytes(vip)
	k.Client, _ = addrBytes(client)
	k.Vport, k.Cport = vport, cport
	return hashKey(&k)
}

// hashKey hashes a flow key as it is stored in the maps (IPv4 in the first
// four address bytes): its five 64-bit words, each mixed in with the
// splitmix64 finalizer.
func hashKey(k *fshaFlowKey) uint64 {
	le := binary.LittleEndian
	h := uint64(0x9e3779b97f4a7c15)
	for _, w := range [5]uint64{
		le.Uint64(k.Vip[0:8]), le.Uint64(k.Vip[8:16]),
		le.Uint64(k.Client[0:8]), le.Uint64(k.Client[8:16]),
		uint64(k.Vport) | uint64(k.Cport)<<16 | uint64(k.Family)<<32,
	} {
		h = mix64(h ^ w)
	}
	return h
}

func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
