/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Flow tracking: a parsed segment updates its flow (both directions),
 * closes it on FIN or RST, and egress creates it when a local socket
 * has it. Included by fsha.c after parse_packet and the maps; it
 * includes the flow cache. Moved unchanged from fsha.c.
 */
#pragma once

/* The fields of one direction of a flow. */
struct side {
	__u64 *packets;
	__u64 *bytes;
	__u32 *next_seq;
	__u32 *last_ack;
	__u16 *window;
};

static __always_inline struct side side_of(struct flow *f, int dir)
{
	if (dir == DIRECTION_INGRESS)
		return (struct side){&f->packets_in, &f->bytes_in, &f->seq_in, &f->ack_in,
				     &f->window_in};
	return (struct side){&f->packets_out, &f->bytes_out, &f->seq_out, &f->ack_out,
			     &f->window_out};
}

/* Where pkt ends in sequence space: SYN and FIN count one. */
static __always_inline __u32 seq_end(struct packet *pkt)
{
	return pkt->seq + pkt->payload + ((pkt->flags & (TCP_SYN | TCP_FIN)) ? 1 : 0);
}

/* Updates the side of a flow that sent pkt. */
static __always_inline void update_side(struct side s, struct packet *pkt)
{
	*s.packets += 1;
	*s.bytes += pkt->payload;
	__u32 end = seq_end(pkt);
	if (seq_after(end, *s.next_seq))
		*s.next_seq = end;
	if (pkt->flags & TCP_ACK)
		*s.last_ack = pkt->ack;
	*s.window = pkt->window;
}

#include "flowcache.h"

/*
 * Removes a flow and reports it. The event is filled before the delete so
 * that it never reads an element another CPU may already reuse, and is only
 * sent by the CPU whose delete succeeded.
 */
static __always_inline void close_flow(int dir, struct packet *pkt, struct flow *f, __u8 reason,
				       __u64 now)
{
	slot_forget(pkt, f, DIRECTION_INGRESS);
	slot_forget(pkt, f, DIRECTION_EGRESS);

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

/* Applies a FIN seen in direction dir; closes the flow once both sides sent
 * one. Returns whether it closed. */
static __always_inline int track_fin(int dir, struct packet *pkt, struct flow *f, __u64 now)
{
	f->fin |= dir == DIRECTION_INGRESS ? FLOW_FIN_IN : FLOW_FIN_OUT;
	if ((f->fin & (FLOW_FIN_IN | FLOW_FIN_OUT)) == (FLOW_FIN_IN | FLOW_FIN_OUT)) {
		close_flow(dir, pkt, f, FLOW_CLOSE_FIN, now);
		return 1;
	}
	f->state = dir == DIRECTION_INGRESS ? FLOW_STATE_FIN_CLIENT : FLOW_STATE_FIN_SERVER;
	return 0;
}

/* Updates flow f with pkt, sent in direction dir, and keeps the slot c for
 * it when it may (fill). */
static __always_inline int track(int dir, struct packet *pkt, struct flow *f,
				 struct flow_cache_slot *c, int fill, __u64 j)
{
	__u64 now = jiffies_ns(j);

	if (pkt->flags & TCP_RST) {
		if (dir == DIRECTION_INGRESS) {
			/* Like the kernel, believe only a RST near the expected
			 * sequence number: a blind or spoofed one must not make
			 * us forget a connection (and skip its tickle at
			 * failover). */
			__s32 off = (__s32)(pkt->seq - f->seq_in);
			if (off >= -RST_SLACK && off < RST_WINDOW)
				close_flow(dir, pkt, f, FLOW_CLOSE_RST_IN, now);
		} else {
			close_flow(dir, pkt, f, FLOW_CLOSE_RST_OUT, now);
		}
		return COUNTER_TRACKED;
	}
	f->last_seen_ns = now;
	update_side(side_of(f, dir), pkt);
	if ((pkt->flags & TCP_FIN) && track_fin(dir, pkt, f, now))
		return COUNTER_TRACKED;
	if (c && fill)
		slot_fill(c, pkt, j);
	return COUNTER_TRACKED;
}

static __always_inline int track_ingress(struct packet *pkt)
{
	__u64 j = bpf_jiffies64();
	struct flow_cache_slot *c = cache_slot(&pkt->key, DIRECTION_INGRESS);

	if (cached(c, pkt, j))
		return COUNTER_TRACKED;
	struct flow *f = bpf_map_lookup_elem(&flows, &pkt->key);
	int fill = c && slot_release(c, pkt, f, DIRECTION_INGRESS, j);
	if (!f)
		return COUNTER_UNTRACKED;
	return track(DIRECTION_INGRESS, pkt, f, c, fill, j);
}

/* Creates the flow for a segment a local socket sends: see the file comment. */
static __always_inline int create_flow(struct packet *pkt, __u64 now)
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
	__u64 j = bpf_jiffies64();
	struct flow_cache_slot *c = cache_slot(&pkt->key, DIRECTION_EGRESS);

	if (cached(c, pkt, j))
		return COUNTER_TRACKED;
	struct flow *f = bpf_map_lookup_elem(&flows, &pkt->key);
	int fill = c && slot_release(c, pkt, f, DIRECTION_EGRESS, j);
	if (!f) {
		if ((pkt->flags & (TCP_SYN | TCP_ACK | TCP_RST)) == (TCP_SYN | TCP_ACK)) {
			__u32 isn = pkt->ack;
			bpf_map_update_elem(&handshakes, &pkt->key, &isn, BPF_ANY);
			return COUNTER_UNTRACKED;
		}
		if (pkt->flags & (TCP_SYN | TCP_RST | TCP_FIN))
			return COUNTER_UNTRACKED;
		int res = create_flow(pkt, jiffies_ns(j));
		if (res == COUNTER_TRACKED && fill)
			slot_fill(c, pkt, j);
		if (res != CANDIDATE)
			return res;
		f = bpf_map_lookup_elem(&flows, &pkt->key);
		if (!f)
			return COUNTER_UNTRACKED;
	}
	return track(DIRECTION_EGRESS, pkt, f, c, fill, j);
}
