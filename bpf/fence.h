/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * VIP leases and fencing: each VIP's deadline bucket, whether the node may
 * answer for it now, and the ARP and neighbour-discovery fences. Included
 * by fsha.c after the maps and its helpers (jiffies_ns, count). Moved
 * unchanged from fsha.c.
 */
#pragma once

/* Must match dataplane.vipFilterBit: fold the address into 16 bits, the
 * prefilter's bit and the address's vip_deadlines bucket. */
static __always_inline __u32 vip_bucket(__u32 h)
{
	h ^= h >> 16;
	return h & (VIP_FILTER_BITS - 1);
}

static __always_inline int vip_maybe(__u32 h)
{
	__u32 bit = vip_bucket(h);
	__u32 word = bit / 64;
	__u64 *w = bpf_map_lookup_elem(&vip_filter, &word);

	return w && (*w & (1ULL << (bit % 64)));
}

/* The prefilter's input for an IPv6 address: must match dataplane.vipFilterBit. */
static __always_inline __u32 vip6_hash(const struct in6_addr *a)
{
	return a->in6_u.u6_addr32[0] ^ a->in6_u.u6_addr32[1] ^ a->in6_u.u6_addr32[2] ^
	       a->in6_u.u6_addr32[3];
}

/* The prefilter's input for the first two u64 words of an address (IPv4:
 * the first word, the second zero): the xor of its u32 words. */
static __always_inline __u32 vip_words_hash(__u64 w0, __u64 w1)
{
	__u64 x = w0 ^ w1;

	return (__u32)(x ^ (x >> 32));
}

/* What the lease map makes of VIP traffic now: */
#define FENCE_NONE 0 /* every VIP may be answered for */
#define FENCE_NODE 1 /* no VIP may: the node-wide lease ran out */
#define FENCE_VIP  2 /* each VIP by its own lease */

static __always_inline int fencing(__u64 now)
{
	__u32 zero = 0;
	struct node_lease *l = bpf_map_lookup_elem(&lease, &zero);

	if (!l)
		return FENCE_NONE;
	if ((l->enabled & LEASE_MODE_NODE) && now > l->expires_ns)
		return FENCE_NODE;
	return (l->enabled & LEASE_MODE_VIP) ? FENCE_VIP : FENCE_NONE;
}

/* Reports whether every VIP of the bucket of hash h may still be answered
 * for: the bucket's deadline has not passed. */
static __always_inline int bucket_valid(__u32 h, __u64 now)
{
	__u32 b = vip_bucket(h);
	__u64 *until = bpf_map_lookup_elem(&vip_deadlines, &b);

	return until && now <= *until;
}

/* Which deadline of a VIP's lease applies to a packet. */
#define UNTIL_IP  0
#define UNTIL_ARP 1

/*
 * Reports whether the node must not answer for addr now: addr is a VIP
 * (in the vips map, the authoritative check behind the prefilter and the
 * buckets: an address that only shares a fenced VIP's bucket passes) and
 * the node's lease, or with LEASE_MODE_VIP the VIP's own deadline (which),
 * has passed. h is the address's prefilter input, for UNTIL_IP.
 */
static __always_inline int vip_fenced(const void *addr, __u8 family, __u32 h, int which)
{
	__u64 now = jiffies_ns(bpf_jiffies64());
	int f = fencing(now);
	struct vip_key vk = {};

	if (f == FENCE_NONE)
		return 0;
	if (f == FENCE_VIP && which == UNTIL_IP && bucket_valid(h, now))
		return 0;
	__builtin_memcpy(vk.addr, addr, family == FSHA_AF_INET ? 4 : 16);
	vk.family = family;
	if (f == FENCE_VIP) {
		struct vip_lease *vl = bpf_map_lookup_elem(&vip_leases, &vk);
		if (vl && now <= (which == UNTIL_IP ? vl->ip_until_ns : vl->arp_until_ns))
			return 0;
	}
	return bpf_map_lookup_elem(&vips, &vk) != NULL;
}

/*
 * The fast path's check: reports whether a VIP whose address hashes to h
 * may be answered for in jiffy j without looking at its own lease. Two
 * inlined array lookups; when it says no, the general path decides.
 */
static __always_inline int may_answer(__u32 h, __u64 j)
{
	__u32 zero = 0;
	struct node_lease *l = bpf_map_lookup_elem(&lease, &zero);

	if (!l || !l->enabled)
		return 1;
	__u64 now = jiffies_ns(j);
	if ((l->enabled & LEASE_MODE_NODE) && now > l->expires_ns)
		return 0;
	return !(l->enabled & LEASE_MODE_VIP) || bucket_valid(h, now);
}

/* ARP for IPv4 over Ethernet: the header, then sha, spa, tha, tpa. */
struct arp_eth_ {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[6];
	__u8 spa[4];
	__u8 tha[6];
	__u8 tpa[4];
};

#define ARPOP_REQUEST_BE bpf_htons(1)

/*
 * Drop ARP asking for a fenced VIP (ingress) or speaking for one (egress),
 * so that neighbours stop sending the VIP's traffic here. One exception:
 * an outgoing request that asks for another address with a fenced VIP as
 * its sender becomes a probe (sender 0.0.0.0, RFC 5227), which every host
 * answers and none learns a sender from. That is how a node draining a VIP
 * on an interface where it has no address of its own (the kernel then
 * asks with the VIP, on loopback) still finds its clients' MACs; dropped,
 * its answers to the drained connections would wait for a neighbour that
 * never resolves. Gratuitous ARP (sender = target) is still dropped.
 */
static __always_inline int fence_arp(struct hdr_cursor *nh, void *data_end, int dir)
{
	struct arp_eth_ *arp = nh->pos;

	if ((void *)(arp + 1) > data_end)
		return COUNTER_PARSE_ERROR;
	if (arp->hln != 6 || arp->pln != 4)
		return COUNTER_OTHER;
	const __u8 *addr = dir == DIRECTION_INGRESS ? arp->tpa : arp->spa;
	if (!vip_fenced(addr, FSHA_AF_INET, 0, UNTIL_ARP))
		return COUNTER_OTHER;
	if (dir == DIRECTION_EGRESS && arp->op == ARPOP_REQUEST_BE &&
	    __builtin_memcmp(arp->spa, arp->tpa, 4) != 0) {
		__builtin_memset(arp->spa, 0, 4);
		return COUNTER_ARP_PROBED;
	}
	return COUNTER_FENCED;
}

struct nd_msg_ {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__u32 reserved;
	struct in6_addr target;
};

/*
 * Neighbour discovery for a fenced VIP: drop solicitations for it
 * (ingress, target), advertisements for it (egress, target) and
 * solicitations from it (egress, source: they announce its link-layer
 * address). Returns COUNTER_FENCED or CANDIDATE: anything else, and an
 * ICMPv6 message too short for one, goes on to the IP rules.
 */
static __always_inline int fence_ndp(struct hdr_cursor *nh, void *data_end, int dir,
				     const struct in6_addr *vip_side)
{
	struct nd_msg_ *nd = nh->pos;

	if ((void *)(nd + 1) > data_end)
		return CANDIDATE;
	const struct in6_addr *addr = &nd->target;
	if (dir == DIRECTION_EGRESS && nd->type == ND_NEIGHBOR_SOLICIT_)
		addr = vip_side;
	else if (nd->type !=
		 (dir == DIRECTION_INGRESS ? ND_NEIGHBOR_SOLICIT_ : ND_NEIGHBOR_ADVERT_))
		return CANDIDATE;
	return vip_fenced(addr, FSHA_AF_INET6, 0, UNTIL_ARP) ? COUNTER_FENCED : CANDIDATE;
}

/* Reports whether ARP and neighbour discovery must be looked at: some VIP
 * may be fenced now. */
static __always_inline int fencing_now(void)
{
	return fencing(jiffies_ns(bpf_jiffies64())) != FENCE_NONE;
}
