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
 * when the node is fenced (its lease ran out): then they drop what would
 * make it answer for a VIP.
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

/* Capacity of the flows map, set by the loader: used to count evictions. */
volatile const __u64 flows_max = 1048576;

/* flows: flow_key -> flow. Written by both programs (egress creates),
 * deleted on close by either; read by userspace (fsha flows, replication). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct flow_key);
	__type(value, struct flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flows SEC(".maps");

/* flow_count: [0] -> number of live flows (approximate, see COUNTER_EVICTED).
 * Written by both programs and by userspace deletes; read by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_count SEC(".maps");

/* closed_flows: flow_key -> the VIP side's next sequence number after its
 * FIN. Written on a FIN close, read when egress would create a flow, so the
 * last ACKs of a closed connection do not bring it back. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} closed_flows SEC(".maps");

/* handshakes: flow_key -> the client's initial sequence number + 1, as the
 * SYN-ACK of a local socket acknowledges it. Written by egress on SYN-ACK,
 * read and deleted when egress creates the flow, so that bytes_in also
 * counts what the client sent before the server's first segment (for SMB
 * and NFS, the first request). A SYN flood can only churn this LRU. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} handshakes SEC(".maps");

/* events: ring buffer of struct flow_event (open, close). Written by both
 * programs, read by the daemon. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/* vips: vip_key -> vip_info. Written by userspace, read by egress before it
 * creates a flow (the authoritative VIP check). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vip_key);
	__type(value, struct vip_info);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vips SEC(".maps");

/* vip_filter: word -> 64 bits of a bitmap of hashed VIP addresses. Written by
 * userspace, read by both programs on every packet: an inlined array lookup
 * that lets non-VIP traffic leave after the IP header at almost no cost. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_FILTER_WORDS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_filter SEC(".maps");

/* ports: TCP port (host order) -> 1 when tracked. Written by userspace, read
 * by both programs. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} ports SEC(".maps");

/* counters: direction * COUNTER_MAX + enum counter -> count, per CPU.
 * Written by both programs, read by userspace. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIRECTION_MAX *COUNTER_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} counters SEC(".maps");

/* lease: [0] -> struct node_lease. Written by the daemon (renewal), read by both
 * programs for packets to or from a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lease SEC(".maps");

/* peer_flows: flow_key -> peer_flow. Written by the daemon (replication from
 * the other nodes), read by XDP ingress to steer a draining VIP's old
 * connections. Not preallocated: memory grows with the cluster's flows. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4194304);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct peer_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peer_flows SEC(".maps");

/* node_macs: PNN -> node_mac. Written by the daemon, read by XDP ingress
 * when it steers. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_NODES);
	__type(key, __u32);
	__type(value, struct node_mac);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} node_macs SEC(".maps");

/* steering: [0] -> number of VIPs being drained to or from this node. Written
 * by the daemon; XDP ingress looks up peer flows only while it is non-zero. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} steering SEC(".maps");

/* An ingress RST closes a flow only with a sequence number in
 * [seq_in - RST_SLACK, seq_in + RST_WINDOW): the receive window of the
 * server, whose scale we do not see, bounded generously. */
#define RST_SLACK  65536
#define RST_WINDOW (1 << 24)

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

/* What the programs need of one TCP segment, oriented from the server. */
struct packet {
	struct flow_key key;
	__u32 seq;
	__u32 ack;
	__u32 payload;
	__u16 window;
	__u8 flags;
	__u64 now; /* the clock, read at most once per packet (0: not yet) */
};

/* The clock costs ~13 ns a read: each packet reads it once, if at all. */
static __always_inline __u64 pkt_now(struct packet *pkt)
{
	if (!pkt->now)
		pkt->now = bpf_ktime_get_coarse_ns();
	return pkt->now;
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

/* Must match dataplane.vipFilterBit: fold the address into 16 bits. */
static __always_inline int vip_maybe(__u32 h)
{
	h ^= h >> 16;
	__u32 bit = h & (VIP_FILTER_BITS - 1);
	__u32 word = bit / 64;
	__u64 *w = bpf_map_lookup_elem(&vip_filter, &word);

	return w && (*w & (1ULL << (bit % 64)));
}

/* Reports whether the lease has run out: the node must not answer for VIPs. */
static __always_inline int fenced(struct packet *pkt)
{
	__u32 zero = 0;
	struct node_lease *l = bpf_map_lookup_elem(&lease, &zero);

	return l && l->enabled && pkt_now(pkt) > l->expires_ns;
}

/* The authoritative VIP check, behind the prefilter. */
static __always_inline int is_vip(const void *addr, __u8 family)
{
	struct vip_key vk = {};

	__builtin_memcpy(vk.addr, addr, family == FSHA_AF_INET ? 4 : 16);
	vk.family = family;
	return bpf_map_lookup_elem(&vips, &vk) != NULL;
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

/* While fenced, drop ARP asking for a VIP (ingress) or speaking for one
 * (egress), so that neighbours stop sending the VIP's traffic here. */
static __always_inline int fence_arp(struct hdr_cursor *nh, void *data_end, int dir)
{
	struct arp_eth_ *arp = nh->pos;

	if ((void *)(arp + 1) > data_end)
		return COUNTER_PARSE_ERROR;
	if (arp->hln != 6 || arp->pln != 4)
		return COUNTER_OTHER;
	const __u8 *addr = dir == DIRECTION_INGRESS ? arp->tpa : arp->spa;
	return is_vip(addr, FSHA_AF_INET) ? COUNTER_FENCED : COUNTER_OTHER;
}

struct nd_msg_ {
	__u8 type;
	__u8 code;
	__sum16 csum;
	__u32 reserved;
	struct in6_addr target;
};

/* While fenced, drop neighbour solicitations for a VIP. */
static __always_inline int fence_ndp(struct hdr_cursor *nh, void *data_end)
{
	struct nd_msg_ *nd = nh->pos;

	if ((void *)(nd + 1) > data_end)
		return COUNTER_PARSE_ERROR;
	if (nd->type != ND_NEIGHBOR_SOLICIT_)
		return COUNTER_OTHER;
	return is_vip(&nd->target, FSHA_AF_INET6) ? COUNTER_FENCED : COUNTER_OTHER;
}

static __always_inline int port_tracked(__u16 port)
{
	__u32 key = port;
	__u8 *v = bpf_map_lookup_elem(&ports, &key);

	return v && *v;
}

/*
 * Parses one frame and fills pkt oriented from the server: on ingress the
 * VIP is the destination, on egress the source. l4_len_hint, when non-zero,
 * is the length from the TCP header to the end of the packet as the skb
 * knows it (a GSO packet on egress is longer than one IP datagram says).
 */
static __always_inline int parse_packet(void *data, void *data_end, int dir, __u32 skb_len,
					struct packet *pkt)
{
	struct hdr_cursor nh = {.pos = data};
	struct tcphdr *tcp;
	__u32 l3_len, l3_off;
	int proto;

	int eth_type = parse_ethhdr(&nh, data_end);
	if (eth_type < 0)
		return COUNTER_PARSE_ERROR;
	l3_off = nh.pos - data;

	if (eth_type == ETH_P_IP_BE) {
		struct iphdr *iph;

		proto = parse_iphdr(&nh, data_end, &iph, &l3_len);
		if (proto == PARSE_ERROR)
			return COUNTER_PARSE_ERROR;
		__be32 vip = dir == DIRECTION_INGRESS ? iph->daddr : iph->saddr;
		if (!vip_maybe(vip))
			return COUNTER_OTHER;
		if (fenced(pkt) && is_vip(&vip, FSHA_AF_INET))
			return COUNTER_FENCED;
		if (proto == PARSE_FRAGMENT)
			return COUNTER_FRAGMENT;
		if (proto != IPPROTO_TCP_)
			return COUNTER_OTHER;
		pkt->key.family = FSHA_AF_INET;
		__be32 client = dir == DIRECTION_INGRESS ? iph->saddr : iph->daddr;
		__builtin_memcpy(pkt->key.vip, &vip, 4);
		__builtin_memcpy(pkt->key.client, &client, 4);
	} else if (eth_type == ETH_P_IPV6_BE) {
		struct ipv6hdr *ip6h;

		proto = parse_ip6hdr(&nh, data_end, &ip6h, &l3_len);
		if (proto == PARSE_ERROR)
			return COUNTER_PARSE_ERROR;
		struct in6_addr *vip = dir == DIRECTION_INGRESS ? &ip6h->daddr : &ip6h->saddr;
		struct in6_addr *client = dir == DIRECTION_INGRESS ? &ip6h->saddr : &ip6h->daddr;
		if (proto == IPPROTO_ICMPV6_ && dir == DIRECTION_INGRESS && fenced(pkt))
			return fence_ndp(&nh, data_end);
		if (!vip_maybe(vip->in6_u.u6_addr32[0] ^ vip->in6_u.u6_addr32[1] ^
			       vip->in6_u.u6_addr32[2] ^ vip->in6_u.u6_addr32[3]))
			return COUNTER_OTHER;
		if (fenced(pkt) && is_vip(vip, FSHA_AF_INET6))
			return COUNTER_FENCED;
		if (proto == PARSE_FRAGMENT)
			return COUNTER_FRAGMENT;
		if (proto != IPPROTO_TCP_)
			return COUNTER_OTHER;
		pkt->key.family = FSHA_AF_INET6;
		__builtin_memcpy(pkt->key.vip, vip, 16);
		__builtin_memcpy(pkt->key.client, client, 16);
	} else if (eth_type == ETH_P_ARP_BE && fenced(pkt)) {
		return fence_arp(&nh, data_end, dir);
	} else {
		return COUNTER_OTHER;
	}

	__u32 l4_off = nh.pos - data;
	int tcp_len = parse_tcphdr(&nh, data_end, &tcp);
	if (tcp_len < 0)
		return COUNTER_PARSE_ERROR;

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
	if (skb_len > l4_off && skb_len - l4_off > l4_len)
		l4_len = skb_len - l4_off;
	pkt->payload = l4_len - tcp_len;
	pkt->seq = bpf_ntohl(tcp->seq);
	pkt->ack = bpf_ntohl(tcp->ack_seq);
	pkt->window = bpf_ntohs(tcp->window);
	pkt->flags = ((__u8 *)tcp)[13];
	return CANDIDATE;
}

/*
 * Removes a flow and reports it. The event is filled before the delete so
 * that it never reads an element another CPU may already reuse, and is only
 * sent by the CPU whose delete succeeded.
 */
static __always_inline void close_flow(int dir, struct packet *pkt, struct flow *f, __u8 reason,
				       __u64 now)
{
	struct flow_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);

	if (ev) {
		ev->key = pkt->key;
		ev->flow = *f;
		ev->flow.state = FLOW_STATE_CLOSED;
		ev->time_ns = now;
		ev->type = FLOW_EVENT_CLOSE;
		ev->reason = reason;
	}
	if (reason == FLOW_CLOSE_FIN) {
		__u32 seq_out = f->seq_out;
		bpf_map_update_elem(&closed_flows, &pkt->key, &seq_out, BPF_ANY);
	}
	if (bpf_map_delete_elem(&flows, &pkt->key) != 0) {
		if (ev)
			bpf_ringbuf_discard(ev, 0);
		return;
	}
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&flow_count, &zero);
	if (n)
		__sync_fetch_and_add(n, -1);
	count(dir, COUNTER_CLOSED);
	if (ev)
		bpf_ringbuf_submit(ev, 0);
	else
		count(dir, COUNTER_EVENTS_LOST);
}

/* Applies a FIN seen in direction dir; closes the flow once both sides sent one. */
static __always_inline void track_fin(int dir, struct packet *pkt, struct flow *f, __u64 now)
{
	f->fin |= dir == DIRECTION_INGRESS ? FLOW_FIN_IN : FLOW_FIN_OUT;
	if ((f->fin & (FLOW_FIN_IN | FLOW_FIN_OUT)) == (FLOW_FIN_IN | FLOW_FIN_OUT)) {
		close_flow(dir, pkt, f, FLOW_CLOSE_FIN, now);
		return;
	}
	f->state = dir == DIRECTION_INGRESS ? FLOW_STATE_FIN_CLIENT : FLOW_STATE_FIN_SERVER;
}

/* Updates the fields of the side of a flow that sent pkt. */
static __always_inline void update_side(struct packet *pkt, __u64 *packets, __u64 *bytes,
					__u32 *next_seq, __u32 *last_ack, __u16 *window)
{
	*packets += 1;
	*bytes += pkt->payload;
	__u32 end = pkt->seq + pkt->payload + ((pkt->flags & (TCP_SYN | TCP_FIN)) ? 1 : 0);
	if (seq_after(end, *next_seq))
		*next_seq = end;
	if (pkt->flags & TCP_ACK)
		*last_ack = pkt->ack;
	*window = pkt->window;
}

static __always_inline int track_ingress(struct packet *pkt)
{
	struct flow *f = bpf_map_lookup_elem(&flows, &pkt->key);

	if (!f)
		return COUNTER_UNTRACKED;

	__u64 now = pkt_now(pkt);
	if (pkt->flags & TCP_RST) {
		/* Like the kernel, believe only a RST near the expected sequence
		 * number: a blind or spoofed one must not make us forget a
		 * connection (and skip its tickle at failover). */
		__s32 off = (__s32)(pkt->seq - f->seq_in);
		if (off >= -RST_SLACK && off < RST_WINDOW)
			close_flow(DIRECTION_INGRESS, pkt, f, FLOW_CLOSE_RST_IN, now);
		return COUNTER_TRACKED;
	}
	f->last_seen_ns = now;
	update_side(pkt, &f->packets_in, &f->bytes_in, &f->seq_in, &f->ack_in, &f->window_in);
	if (pkt->flags & TCP_FIN)
		track_fin(DIRECTION_INGRESS, pkt, f, now);
	return COUNTER_TRACKED;
}

/* Creates the flow for a segment a local socket sends: see the file comment. */
static __always_inline int create_flow(struct packet *pkt)
{
	struct vip_key vk = {};

	__builtin_memcpy(vk.addr, pkt->key.vip, 16);
	vk.family = pkt->key.family;
	struct vip_info *vi = bpf_map_lookup_elem(&vips, &vk);
	if (!vi || !(vi->flags & VIP_F_TRACK))
		return COUNTER_OTHER;

	__u32 *closed_seq = bpf_map_lookup_elem(&closed_flows, &pkt->key);
	if (closed_seq) {
		/* the final ACK or a retransmitted FIN of a connection that closed */
		if (pkt->seq == *closed_seq || pkt->seq + 1 == *closed_seq)
			return COUNTER_UNTRACKED;
		bpf_map_delete_elem(&closed_flows, &pkt->key);
	}

	/* what the client sent before this segment, if we saw the handshake */
	__u64 bytes_in = 0;
	__u32 *isn = bpf_map_lookup_elem(&handshakes, &pkt->key);
	if (isn) {
		__u32 sent = pkt->ack - *isn;
		if (sent < (1U << 30))
			bytes_in = sent;
		bpf_map_delete_elem(&handshakes, &pkt->key);
	}

	__u64 now = pkt_now(pkt);
	struct flow f = {
	    .first_seen_ns = now,
	    .last_seen_ns = now,
	    .bytes_in = bytes_in,
	    .bytes_out = pkt->payload,
	    .packets_out = 1,
	    .seq_out = pkt->seq + pkt->payload,
	    .ack_out = pkt->ack,
	    /* what the server acknowledged is what the client sends next */
	    .seq_in = pkt->ack,
	    .ack_in = pkt->seq,
	    .window_out = pkt->window,
	    .state = FLOW_STATE_ESTABLISHED,
	};
	long err = bpf_map_update_elem(&flows, &pkt->key, &f, BPF_NOEXIST);
	if (err == -17 /* EEXIST: another CPU created it first */)
		return CANDIDATE;
	if (err) {
		count(DIRECTION_EGRESS, COUNTER_MAP_ERRORS);
		return COUNTER_UNTRACKED;
	}

	count(DIRECTION_EGRESS, COUNTER_CREATED);
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&flow_count, &zero);
	if (n && __sync_fetch_and_add(n, 1) >= flows_max) {
		/* the LRU made room by dropping the least recently used flow */
		__sync_fetch_and_add(n, -1);
		count(DIRECTION_EGRESS, COUNTER_EVICTED);
	}

	struct flow_event *ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		count(DIRECTION_EGRESS, COUNTER_EVENTS_LOST);
		return COUNTER_TRACKED;
	}
	ev->key = pkt->key;
	ev->flow = f;
	ev->time_ns = now;
	ev->type = FLOW_EVENT_OPEN;
	ev->reason = FLOW_CLOSE_NONE;
	bpf_ringbuf_submit(ev, 0);
	return COUNTER_TRACKED;
}

static __always_inline int track_egress(struct packet *pkt)
{
	struct flow *f = bpf_map_lookup_elem(&flows, &pkt->key);

	if (!f) {
		if ((pkt->flags & (TCP_SYN | TCP_ACK | TCP_RST)) == (TCP_SYN | TCP_ACK)) {
			__u32 isn = pkt->ack;
			bpf_map_update_elem(&handshakes, &pkt->key, &isn, BPF_ANY);
			return COUNTER_UNTRACKED;
		}
		if (pkt->flags & (TCP_SYN | TCP_RST | TCP_FIN))
			return COUNTER_UNTRACKED;
		int res = create_flow(pkt);
		if (res != CANDIDATE)
			return res;
		f = bpf_map_lookup_elem(&flows, &pkt->key);
		if (!f)
			return COUNTER_UNTRACKED;
	}

	__u64 now = pkt_now(pkt);
	if (pkt->flags & TCP_RST) {
		close_flow(DIRECTION_EGRESS, pkt, f, FLOW_CLOSE_RST_OUT, now);
		return COUNTER_TRACKED;
	}
	f->last_seen_ns = now;
	update_side(pkt, &f->packets_out, &f->bytes_out, &f->seq_out, &f->ack_out, &f->window_out);
	if (pkt->flags & TCP_FIN)
		track_fin(DIRECTION_EGRESS, pkt, f, now);
	return COUNTER_TRACKED;
}

/*
 * Steering (drain): a packet of a connection whose socket is on another
 * node goes back out to that node, with the Ethernet addresses rewritten;
 * that node keeps the VIP as a local, unannounced address and answers the
 * client directly. Returns COUNTER_UNTRACKED when the packet is not ours to
 * steer.
 */
static __always_inline int steer(struct xdp_md *ctx, struct packet *pkt)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&steering, &zero);

	if (!active || !*active)
		return COUNTER_UNTRACKED;
	struct peer_flow *pf = bpf_map_lookup_elem(&peer_flows, &pkt->key);
	if (!pf || !(pf->flags & PEER_F_STEER))
		return COUNTER_UNTRACKED;
	__u32 owner = pf->owner;
	struct node_mac *nm = bpf_map_lookup_elem(&node_macs, &owner);
	if (!nm || !nm->valid)
		return COUNTER_STEER_ERRORS;

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return COUNTER_PARSE_ERROR;
	/* it was sent to us: our address becomes the source */
	__builtin_memcpy(eth->h_source, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, nm->mac, 6);
	return COUNTER_STEERED;
}

SEC("xdp")
int fsha_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct packet pkt = {};

	int res = parse_packet(data, data_end, DIRECTION_INGRESS, 0, &pkt);
	if (res == CANDIDATE)
		res = track_ingress(&pkt);
	if (res == COUNTER_UNTRACKED)
		res = steer(ctx, &pkt);
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
	struct packet pkt = {};

	/* headers of a locally built segment are linear; pull them if not */
	if (data_end - data < 128 && skb->len > data_end - data) {
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	int res = parse_packet(data, data_end, DIRECTION_EGRESS, skb->len, &pkt);
	if (res == CANDIDATE)
		res = track_egress(&pkt);
	count(DIRECTION_EGRESS, res);
	return res == COUNTER_FENCED ? TCX_DROP : TCX_NEXT;
}
