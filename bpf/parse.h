/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Header parsing shared by the XDP and TC programs: one parse_* per header,
 * each advancing a cursor and returning the next protocol or -1 when the
 * packet is truncated or malformed. Every read is bounds-checked against
 * data_end first, so the verifier accepts it and bad packets simply pass.
 */
#pragma once

#define ETH_P_IP_BE	bpf_htons(0x0800)
#define ETH_P_IPV6_BE	bpf_htons(0x86DD)
#define ETH_P_ARP_BE	bpf_htons(0x0806)
#define ETH_P_8021Q_BE	bpf_htons(0x8100)
#define ETH_P_8021AD_BE bpf_htons(0x88A8)

#define IPPROTO_HOPOPTS_     0
#define IPPROTO_TCP_	     6
#define IPPROTO_ROUTING_     43
#define IPPROTO_FRAGMENT_    44
#define IPPROTO_AH_	     51
#define IPPROTO_DSTOPTS_     60
#define IPPROTO_ICMPV6_	     58
#define ND_NEIGHBOR_SOLICIT_ 135
#define ND_NEIGHBOR_ADVERT_  136

#define IP_MF_	   0x2000
#define IP_OFFSET_ 0x1FFF

#define MAX_VLAN_TAGS	     2
#define MAX_IPV6_EXT_HEADERS 6

struct hdr_cursor {
	void *pos;
};

/* parse results beyond protocol numbers */
#define PARSE_ERROR    -1
#define PARSE_FRAGMENT -2

struct vlan_hdr_ {
	__be16 tci;
	__be16 encapsulated_proto;
};

/* Returns the EtherType after at most MAX_VLAN_TAGS 802.1Q/802.1ad tags. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end)
{
	struct ethhdr *eth = nh->pos;

	if ((void *)(eth + 1) > data_end)
		return PARSE_ERROR;
	nh->pos = eth + 1;
	__be16 proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < MAX_VLAN_TAGS; i++) {
		if (proto != ETH_P_8021Q_BE && proto != ETH_P_8021AD_BE)
			break;
		struct vlan_hdr_ *vlh = nh->pos;
		if ((void *)(vlh + 1) > data_end)
			return PARSE_ERROR;
		proto = vlh->encapsulated_proto;
		nh->pos = vlh + 1;
	}
	return proto;
}

/*
 * Returns the IP protocol, PARSE_FRAGMENT for any fragment (a non-first one
 * has no TCP header; a first one is not worth reassembling for tracking), or
 * PARSE_ERROR. *l3_len is the total length the IP header claims. big_len,
 * when non-zero, is the packet's length from the IP header on, for a GSO
 * packet: a BIG TCP one of over 64 KiB says 0 where the length goes.
 */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, struct iphdr **iphdr,
				       __u32 *l3_len, __u32 big_len)
{
	struct iphdr *iph = nh->pos;

	if ((void *)(iph + 1) > data_end)
		return PARSE_ERROR;
	__u32 hdrsize = iph->ihl * 4;
	if (hdrsize < sizeof(*iph))
		return PARSE_ERROR;
	if (nh->pos + hdrsize > data_end)
		return PARSE_ERROR;
	__u32 tot_len = bpf_ntohs(iph->tot_len);
	if (tot_len == 0 && big_len)
		tot_len = big_len;
	if (tot_len < hdrsize)
		return PARSE_ERROR;
	nh->pos += hdrsize;
	*iphdr = iph;
	*l3_len = tot_len;
	if (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_))
		return PARSE_FRAGMENT;
	return iph->protocol;
}

struct ipv6_opt_hdr_ {
	__u8 nexthdr;
	__u8 hdrlen;
};

/*
 * Returns the upper-layer protocol after the IPv6 header and the extension
 * headers that can precede TCP (hop-by-hop, routing, destination options,
 * AH), PARSE_FRAGMENT for a fragment header, or PARSE_ERROR. *l3_len is the
 * header plus the payload length it claims; big_len as for parse_iphdr
 * (BIG TCP over IPv6 leaves the payload length 0, without a jumbo option).
 */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end,
					struct ipv6hdr **ip6hdr, __u32 *l3_len, __u32 big_len)
{
	struct ipv6hdr *ip6h = nh->pos;

	if ((void *)(ip6h + 1) > data_end)
		return PARSE_ERROR;
	nh->pos = ip6h + 1;
	*ip6hdr = ip6h;
	__u32 remaining = bpf_ntohs(ip6h->payload_len);
	if (remaining == 0 && big_len > sizeof(*ip6h))
		remaining = big_len - sizeof(*ip6h);
	*l3_len = sizeof(*ip6h) + remaining;
	int next = ip6h->nexthdr;

#pragma unroll
	for (int i = 0; i < MAX_IPV6_EXT_HEADERS; i++) {
		struct ipv6_opt_hdr_ *hdr = nh->pos;
		__u32 len;

		switch (next) {
		case IPPROTO_HOPOPTS_:
		case IPPROTO_ROUTING_:
		case IPPROTO_DSTOPTS_:
			if ((void *)(hdr + 1) > data_end)
				return PARSE_ERROR;
			len = (hdr->hdrlen + 1) * 8;
			break;
		case IPPROTO_AH_:
			if ((void *)(hdr + 1) > data_end)
				return PARSE_ERROR;
			len = (hdr->hdrlen + 2) * 4;
			break;
		case IPPROTO_FRAGMENT_:
			return PARSE_FRAGMENT;
		default:
			return next;
		}
		if (len > remaining)
			return PARSE_ERROR;
		remaining -= len;
		next = hdr->nexthdr;
		nh->pos += len;
		if (nh->pos > data_end)
			return PARSE_ERROR;
	}
	switch (next) {
	case IPPROTO_HOPOPTS_:
	case IPPROTO_ROUTING_:
	case IPPROTO_DSTOPTS_:
	case IPPROTO_AH_:
	case IPPROTO_FRAGMENT_:
		/* more extension headers than we follow: leave the packet alone */
		return PARSE_ERROR;
	}
	return next;
}

/* Checks the TCP header and its data offset; returns its length or -1. */
static __always_inline int parse_tcphdr(struct hdr_cursor *nh, void *data_end,
					struct tcphdr **tcphdr)
{
	struct tcphdr *h = nh->pos;

	if ((void *)(h + 1) > data_end)
		return PARSE_ERROR;
	int len = h->doff * 4;
	if (len < (int)sizeof(*h))
		return PARSE_ERROR;
	if (nh->pos + len > data_end)
		return PARSE_ERROR;
	nh->pos += len;
	*tcphdr = h;
	return len;
}
