// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// go:build ignore

/*
 * fsha data plane: track every TCP connection to a VIP on a tracked port.
 *
 *   fsha_xdp        XDP on each public interface, client -> VIP: updates and
 *                   closes flows, never creates one (SYN/ACK-flood safe).
 *   fsha_tc_egress  TCX (or clsact) egress, VIP -> client: creates a flow on
 *                   the first non-SYN, non-RST, non-FIN segment a local
 *                   socket sends, updates and closes.
 *
 * Both let every packet through, tracking never changes forwarding, except
 * for a VIP the node may not answer for (the node's lease or the VIP's own
 * ran out, see struct node_lease): then they drop what would make it
 * answer for that VIP.
 *
 * The cost per packet is kept low on three paths, in this order (see
 * BENCHMARKS.md): prefilter() lets untagged non-VIP traffic go after one
 * bitmap lookup; fast_track() adds a segment of a flow the CPU already
 * looked up in this jiffy to its flow cache slot (fsha.h), without the
 * flows map's lookup, a kernel function call; everything else goes through
 * parse_packet() and the flows map. Time is jiffies (inlined), never a
 * clock helper call.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "fsha.h"
#include "parse.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Keep the enums and the event in BTF so that bpf2go generates Go constants for them. */
const enum counter *unused_counter __attribute__((unused));
const enum direction *unused_direction __attribute__((unused));
const enum flow_state *unused_flow_state __attribute__((unused));
const enum flow_fin *unused_flow_fin __attribute__((unused));
const enum flow_event_type *unused_flow_event_type __attribute__((unused));
const enum flow_close_reason *unused_flow_close_reason __attribute__((unused));
const enum vip_flags *unused_vip_flags __attribute__((unused));
const struct flow_event *unused_flow_event __attribute__((unused));
const enum peer_flags *unused_peer_flags __attribute__((unused));
const struct flow_cache_slot *unused_flow_cache_slot __attribute__((unused));
const struct peer_flow *unused_peer_flow
    __attribute__((unused)); /* the value of peer_flows' inner maps */
const enum lease_mode *unused_lease_mode __attribute__((unused));
const enum vip_lease_state *unused_vip_lease_state __attribute__((unused));
const struct vip_grant *unused_vip_grant __attribute__((unused));
const enum pin_format_version *unused_pin_format_version __attribute__((unused));
const enum steer_mode *unused_steer_mode __attribute__((unused));
const enum node_mac_flags *unused_node_mac_flags __attribute__((unused));

/* Capacity of the flows map, set by the loader: used to count evictions. */
volatile const __u64 flows_max = 1048576;

/*
 * The programs' clock is jiffies: bpf_jiffies64() is inlined by the
 * verifier, where bpf_ktime_get_coarse_ns() is a function call that costs
 * about as much as the rest of a tracked packet. The loader measures both
 * clocks together (fsha_clock) and sets these two so that
 * jiffies * ns_per_jiffy - jiffies_offset_ns is CLOCK_MONOTONIC in
 * nanoseconds, at the same jiffy resolution as the coarse clock: every
 * timestamp in the maps stays CLOCK_MONOTONIC. The coarse clock, and so
 * the programs' now, lags CLOCK_MONOTONIC by up to a jiffy: deadlines
 * (struct vip_lease) are written one jiffy early to make up for it.
 */
volatile const __u64 ns_per_jiffy = 4000000;
volatile const __u64 jiffies_offset_ns = 0;

/* 0 turns the flow cache off (benchmarks measure the flows map path with
 * it); the verifier then removes the cache's code. */
volatile const __u32 flow_cache_on = 1;

#include "maps.h"

/* An ingress RST closes a flow only with a sequence number in
 * [seq_in - RST_SLACK, seq_in + RST_WINDOW): the receive window of the
 * server, whose scale we do not see, bounded generously. */
#define RST_SLACK  65536
#define RST_WINDOW (1 << 24)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* What the programs need of one TCP segment, oriented from the server.
 * Aligned so that keys compare as five u64 words (key_equal). */
struct packet {
	struct flow_key key;
	__u32 seq;
	__u32 ack;
	__u32 payload;
	__u16 window;
	__u8 flags;
} __attribute__((aligned(8)));

/* CLOCK_MONOTONIC nanoseconds of a jiffy: see ns_per_jiffy. */
static __always_inline __u64 jiffies_ns(__u64 j)
{
	return j * ns_per_jiffy - jiffies_offset_ns;
}

/* -1: the packet is a tracking candidate; otherwise an enum counter. */
#define CANDIDATE -1

static __always_inline void count(int dir, __u32 counter)
{
	__u32 idx = dir * COUNTER_MAX + counter;
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

static __always_inline int seq_after(__u32 a, __u32 b)
{
	return (__s32)(a - b) > 0;
}

#include "fence.h"

static __always_inline int port_tracked(__u16 port)
{
	__u32 key = port;
	__u8 *v = bpf_map_lookup_elem(&ports, &key);

	return v && *v;
}

/*
 * The length from the TCP header on: what the IP header says, or what the
 * skb holds when that is more (skb_len 0 on XDP). A GSO packet on egress
 * carries the payload of several segments behind one segment's headers.
 */
static __always_inline __u32 l4_length(__u32 ip_says, __u32 skb_len, __u32 l4_off)
{
	if (skb_len > l4_off && skb_len - l4_off > ip_says)
		return skb_len - l4_off;
	return ip_says;
}

/*
 * Parses one frame and fills pkt oriented from the server: on ingress the
 * VIP is the destination, on egress the source. skb_len, when non-zero, is
 * the length of the packet as the skb knows it: a GSO packet on egress is
 * longer than one IP datagram says, and when it is over 64 KiB (BIG TCP;
 * gso says the skb is a GSO one) its IP length field is 0. prefiltered: the
 * prefilter has passed the VIP-side address already.
 */
static __always_inline int parse_packet(void *data, void *data_end, int dir, __u32 skb_len, int gso,
					int prefiltered, struct packet *pkt)
{
	struct hdr_cursor nh = {.pos = data};
	struct tcphdr *tcp;
	__u32 l3_len, l3_off;
	int proto;

	int eth_type = parse_ethhdr(&nh, data_end);
	if (eth_type < 0)
		return COUNTER_PARSE_ERROR;
	l3_off = nh.pos - data;
	__u32 big_len = gso && skb_len > l3_off ? skb_len - l3_off : 0;

	if (eth_type == ETH_P_IP_BE) {
		struct iphdr *iph = nh.pos;

		/* The prefilter before anything else: most traffic leaves here. */
		if ((void *)(iph + 1) > data_end)
			return COUNTER_PARSE_ERROR;
		__be32 vip = dir == DIRECTION_INGRESS ? iph->daddr : iph->saddr;
		if (!prefiltered && !vip_maybe(vip))
			return COUNTER_OTHER;
		proto = parse_iphdr(&nh, data_end, &iph, &l3_len, big_len);
		if (proto == PARSE_ERROR)
			return COUNTER_PARSE_ERROR;
		if (vip_fenced(&vip, FSHA_AF_INET, vip, UNTIL_IP))
			return COUNTER_FENCED;
		if (proto == PARSE_FRAGMENT)
			return COUNTER_FRAGMENT;
		if (proto != IPPROTO_TCP_)
			return COUNTER_OTHER;
		__builtin_memset(&pkt->key, 0, sizeof(pkt->key));
		pkt->key.family = FSHA_AF_INET;
		__be32 client = dir == DIRECTION_INGRESS ? iph->saddr : iph->daddr;
		__builtin_memcpy(pkt->key.vip, &vip, 4);
		__builtin_memcpy(pkt->key.client, &client, 4);
	} else if (eth_type == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h;

		proto = parse_ip6hdr(&nh, data_end, &ip6h, &l3_len, big_len);
		if (proto == PARSE_ERROR)
			return COUNTER_PARSE_ERROR;
		struct in6_addr *vip = dir == DIRECTION_INGRESS ? &ip6h->daddr : &ip6h->saddr;
		struct in6_addr *client = dir == DIRECTION_INGRESS ? &ip6h->saddr : &ip6h->daddr;
		if (proto == IPPROTO_ICMPV6_ && fencing_now()) {
			int res = fence_ndp(&nh, data_end, dir, vip);
			if (res != CANDIDATE)
				return res;
		}
		if (!prefiltered && !vip_maybe(vip6_hash(vip)))
			return COUNTER_OTHER;
		if (vip_fenced(vip, FSHA_AF_INET6, vip6_hash(vip), UNTIL_IP))
			return COUNTER_FENCED;
		if (proto == PARSE_FRAGMENT)
			return COUNTER_FRAGMENT;
		if (proto != IPPROTO_TCP_)
			return COUNTER_OTHER;
		__builtin_memset(&pkt->key, 0, sizeof(pkt->key));
		pkt->key.family = FSHA_AF_INET6;
		__builtin_memcpy(pkt->key.vip, vip, 16);
		__builtin_memcpy(pkt->key.client, client, 16);
	} else if (eth_type == ETH_P_ARP_BE && fencing_now()) {
		return fence_arp(&nh, data_end, dir);
	} else {
		return COUNTER_OTHER;
	}

	__u32 l4_off = nh.pos - data;
	int tcp_len = parse_tcphdr(&nh, data_end, &tcp);
	if (tcp_len < 0)
		return COUNTER_PARSE_ERROR;
	/* A new connection (SYN, SYN-ACK) is for the VIP's owner only: a node
	 * that drains the VIP serves its old connections (IP traffic passes)
	 * but must not take a new one from a client with a stale neighbour
	 * entry. The owner's deadline (arp_until) applies. */
	if ((((__u8 *)tcp)[13] & TCP_SYN) && fencing_now()) {
		int owner_gone = pkt->key.family == FSHA_AF_INET
				     ? vip_fenced(pkt->key.vip, FSHA_AF_INET, 0, UNTIL_ARP)
				     : vip_fenced(pkt->key.vip, FSHA_AF_INET6, 0, UNTIL_ARP);
		if (owner_gone)
			return COUNTER_FENCED;
	}

	__u16 sport = bpf_ntohs(tcp->source);
	__u16 dport = bpf_ntohs(tcp->dest);
	pkt->key.vport = dir == DIRECTION_INGRESS ? dport : sport;
	pkt->key.cport = dir == DIRECTION_INGRESS ? sport : dport;
	if (!port_tracked(pkt->key.vport))
		return COUNTER_OTHER;

	/* IP length covers header + TCP; below it is an inconsistent packet. */
	__u32 l4_len = l3_len - (l4_off - l3_off);
	if (l3_len < (l4_off - l3_off) + tcp_len)
		return COUNTER_PARSE_ERROR;
	pkt->payload = l4_length(l4_len, skb_len, l4_off) - tcp_len;
	pkt->seq = bpf_ntohl(tcp->seq);
	pkt->ack = bpf_ntohl(tcp->ack_seq);
	pkt->window = bpf_ntohs(tcp->window);
	pkt->flags = ((__u8 *)tcp)[13];
	return CANDIDATE;
}

#include "track.h"

#include "steer.h"

/*
 * The common case first, with nothing else live: untagged IPv4, and
 * untagged IPv6 carrying TCP without extension headers. parse_packet would
 * reach the same answers after more work (and register spills); these two
 * keep non-VIP traffic within a few instructions of an empty program and a
 * tracked segment of a cached flow (see fsha.h) within a few dozen.
 */
#define PREFILTER_NONE	  0 /* anything else: parse_packet decides */
#define PREFILTER_OTHER	  1 /* the VIP side's address is no VIP: let it pass */
#define PREFILTER_MAYBE_4 2 /* IPv4, maybe to or from a VIP */
#define PREFILTER_MAYBE_6 3 /* IPv6 TCP, maybe to or from a VIP */

static __always_inline int prefilter(void *data, void *data_end, int dir)
{
	struct ethhdr *eth = data;
	struct iphdr *iph = (void *)(eth + 1);

	if ((void *)(iph + 1) > data_end)
		return PREFILTER_NONE;
	if (eth->h_proto == ETH_P_IP_BE)
		return vip_maybe(dir == DIRECTION_INGRESS ? iph->daddr : iph->saddr)
			   ? PREFILTER_MAYBE_4
			   : PREFILTER_OTHER;
	struct ipv6hdr *ip6h = (void *)(eth + 1);
	if (eth->h_proto != ETH_P_IPV6_BE || (void *)(ip6h + 1) > data_end ||
	    ip6h->nexthdr != IPPROTO_TCP_)
		return PREFILTER_NONE;
	return vip_maybe(vip6_hash(dir == DIRECTION_INGRESS ? &ip6h->daddr : &ip6h->saddr))
		   ? PREFILTER_MAYBE_6
		   : PREFILTER_OTHER;
}

/* The last word of a flow_key: ports and family. */
static __always_inline __u64 key_tail(__u16 vport, __u16 cport, __u8 family)
{
	union {
		struct {
			__u16 vport;
			__u16 cport;
			__u8 family;
			__u8 pad[3];
		} f;
		__u64 w;
	} t = {.f = {.vport = vport, .cport = cport, .family = family}};

	return t.w;
}

/*
 * The fast path of a tracked segment (prefilter said MAYBE_4 or MAYBE_6):
 * a data or ACK segment, without IP options or extension headers, of a flow
 * this CPU's cache took in this jiffy. Returns whether it took the packet;
 * if not, parse_packet and the flows map decide, as for any packet. The
 * key is built in registers, in the words of struct flow_key.
 */
static __always_inline int fast_track(void *data, void *data_end, int dir, __u32 skb_len, int pre)
{
	struct tcphdr *tcp;
	__u32 l4_off, l4_len;
	__u64 w[5];
	__u8 family;

	if (pre == PREFILTER_MAYBE_4) {
		struct iphdr *iph = data + sizeof(struct ethhdr);
		tcp = (void *)(iph + 1);
		if ((void *)(tcp + 1) > data_end)
			return 0;
		if (*(__u8 *)iph != 0x45 /* version 4, no options */ ||
		    iph->protocol != IPPROTO_TCP_ ||
		    (iph->frag_off & bpf_htons(IP_MF_ | IP_OFFSET_)))
			return 0;
		__u32 tot_len = bpf_ntohs(iph->tot_len);
		if (tot_len < sizeof(*iph))
			return 0;
		l4_off = sizeof(struct ethhdr) + sizeof(*iph);
		l4_len = tot_len - sizeof(*iph);
		w[0] = dir == DIRECTION_INGRESS ? iph->daddr : iph->saddr;
		w[2] = dir == DIRECTION_INGRESS ? iph->saddr : iph->daddr;
		w[1] = w[3] = 0;
		family = FSHA_AF_INET;
	} else {
		struct ipv6hdr *ip6h = data + sizeof(struct ethhdr);
		tcp = (void *)(ip6h + 1);
		if ((void *)(tcp + 1) > data_end)
			return 0;
		const u64_alias *vip =
		    (const void *)(dir == DIRECTION_INGRESS ? &ip6h->daddr : &ip6h->saddr);
		const u64_alias *client =
		    (const void *)(dir == DIRECTION_INGRESS ? &ip6h->saddr : &ip6h->daddr);
		l4_off = sizeof(struct ethhdr) + sizeof(*ip6h);
		l4_len = bpf_ntohs(ip6h->payload_len);
		w[0] = vip[0];
		w[1] = vip[1];
		w[2] = client[0];
		w[3] = client[1];
		family = FSHA_AF_INET6;
	}
	__u8 flags = ((__u8 *)tcp)[13];
	__u32 doff = tcp->doff * 4;
	if ((flags & (TCP_SYN | TCP_FIN | TCP_RST)) || doff < sizeof(*tcp) ||
	    (void *)tcp + doff > data_end || l4_len < doff)
		return 0;
	l4_len = l4_length(l4_len, skb_len, l4_off);
	__u16 sport = bpf_ntohs(tcp->source), dport = bpf_ntohs(tcp->dest);
	w[4] = dir == DIRECTION_INGRESS ? key_tail(dport, sport, family)
					: key_tail(sport, dport, family);

	struct flow_cache_slot *c = cache_slot_of(w, dir);
	__u64 j = bpf_jiffies64();
	if (!slot_holds(c, w, j) || !may_answer(vip_words_hash(w[0], w[1]), j))
		return 0;
	slot_add(c, bpf_ntohl(tcp->seq), bpf_ntohl(tcp->ack_seq), l4_len - doff,
		 bpf_ntohs(tcp->window), flags);
	return 1;
}

SEC("xdp")
int fsha_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet pkt; /* parse_packet fills what is read */

	int pre = prefilter(data, data_end, DIRECTION_INGRESS);
	if (pre == PREFILTER_OTHER) {
		count(DIRECTION_INGRESS, COUNTER_OTHER);
		return XDP_PASS;
	}
	if (pre != PREFILTER_NONE && fast_track(data, data_end, DIRECTION_INGRESS, 0, pre)) {
		count(DIRECTION_INGRESS, COUNTER_TRACKED);
		return XDP_PASS;
	}
	int res =
	    parse_packet(data, data_end, DIRECTION_INGRESS, 0, 0, pre != PREFILTER_NONE, &pkt);
	if (res == CANDIDATE)
		res = track_ingress(&pkt);
	if (res == COUNTER_UNTRACKED)
		res = steer_xdp(ctx, &pkt);
	count(DIRECTION_INGRESS, res);
	if (res == COUNTER_FENCED)
		return XDP_DROP;
	return res == COUNTER_STEERED ? XDP_TX : XDP_PASS;
}

SEC("tc")
int fsha_tc_egress(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct packet pkt; /* parse_packet fills what is read */

	int pre = prefilter(data, data_end, DIRECTION_EGRESS);
	if (pre == PREFILTER_OTHER) {
		count(DIRECTION_EGRESS, COUNTER_OTHER);
		return TCX_NEXT;
	}
	if (pre != PREFILTER_NONE && fast_track(data, data_end, DIRECTION_EGRESS, skb->len, pre)) {
		count(DIRECTION_EGRESS, COUNTER_TRACKED);
		return TCX_NEXT;
	}
	/* headers of a locally built segment are linear; pull them if not */
	if (data_end - data < 128 && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	/* a pull moved the data: the prefilter's answer still holds */
	int res = parse_packet(data, data_end, DIRECTION_EGRESS, skb->len, skb->gso_size != 0,
			       pre != PREFILTER_NONE, &pkt);
	if (res == CANDIDATE)
		res = track_egress(&pkt);
	count(DIRECTION_EGRESS, res);
	return res == COUNTER_FENCED ? TCX_DROP : TCX_NEXT;
}

/*
 * TC ingress, attached only on interfaces in STEER_MODE_TC: steers what
 * XDP ingress passed up to it (COUNTER_STEER_HANDOFF), deciding again as
 * XDP did: a packet of a peer flow to steer, of no local flow (XDP
 * tracked the local ones). Everything else, and everything while no VIP
 * is being drained, goes on untouched and uncounted: XDP counted it.
 */
SEC("tc")
int fsha_tc_ingress(struct __sk_buff *skb)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&steering, &zero);

	if (!active || !*active)
		return TCX_NEXT;
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	int pre = prefilter(data, data_end, DIRECTION_INGRESS);
	if (pre == PREFILTER_OTHER)
		return TCX_NEXT;
	/* GRO may have left the headers outside the linear part */
	if (data_end - data < 128 && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	struct packet pkt;
	int res = parse_packet(data, data_end, DIRECTION_INGRESS, skb->len, skb->gso_size != 0,
			       pre != PREFILTER_NONE, &pkt);
	if (res != CANDIDATE || bpf_map_lookup_elem(&flows, &pkt.key))
		return TCX_NEXT;
	const __u8 *mac = 0;
	if (steer_target(&pkt, skb->ifindex, &mac) != COUNTER_STEERED ||
	    steer_mode_of(skb->ifindex) != STEER_MODE_TC)
		return TCX_NEXT;
	if (steer_rewrite(data, data_end, mac))
		return TCX_NEXT;
	count(DIRECTION_INGRESS, COUNTER_TC_STEERED);
	return bpf_redirect(skb->ifindex, 0);
}

/*
 * Never attached: the loader runs it once with BPF_PROG_RUN on a 24-byte
 * packet to read jiffies and CLOCK_MONOTONIC (coarse) at the same tick, and
 * sets ns_per_jiffy and jiffies_offset_ns from them. The packet comes back
 * as three u64: coarse ns, jiffies, coarse ns again (equal unless a tick
 * fell in between: the loader then asks again).
 */
SEC("xdp")
int fsha_clock(struct xdp_md *ctx)
{
	__u64 *p = (void *)(long)ctx->data;

	if ((void *)(p + 3) > (void *)(long)ctx->data_end)
		return XDP_ABORTED;
	p[0] = bpf_ktime_get_coarse_ns();
	p[1] = bpf_jiffies64();
	p[2] = bpf_ktime_get_coarse_ns();
	return XDP_PASS;
}
