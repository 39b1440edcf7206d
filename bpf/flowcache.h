/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The flow cache (see struct flow_cache_slot in fsha.h): per CPU and
 * direction, the slot of a flow absorbs its segments after the first one
 * in a jiffy, which went to the flows map; the flow's first segment in a
 * later jiffy folds the slot into the map. Included by fsha.c after the
 * maps (flows, flow_cache) and struct side it works on.
 */
#pragma once

/* Keys compare and hash as five u64 words. */
typedef __u64 __attribute__((may_alias)) u64_alias;

static __always_inline int words_equal(const u64_alias *x, const u64_alias *y)
{
	return !((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]));
}

static __always_inline int key_equal(const struct flow_key *a, const struct flow_key *b)
{
	return words_equal((const void *)a, (const void *)b);
}

/* Reports whether slot c holds the flow whose key is w, filled in jiffy j:
 * the flow's segments of that jiffy may go to the slot. */
static __always_inline int slot_holds(struct flow_cache_slot *c, const u64_alias *w, __u64 j)
{
	return c && c->jiffies == j && words_equal((const void *)&c->key, w);
}

/* Returns this CPU's cache slot for the flow whose key is w, in direction
 * dir. Clients choosing colliding tuples only send each other to the flows
 * map. */
static __always_inline struct flow_cache_slot *cache_slot_of(const u64_alias *w, int dir)
{
	__u64 h = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4];
	__u32 idx = ((__u32)(h ^ (h >> 32)) * 0x9e3779b1U) >> (32 - FLOW_CACHE_BITS);

	if (!flow_cache_on)
		return NULL;
	idx += dir * FLOW_CACHE_SLOTS;
	return bpf_map_lookup_elem(&flow_cache, &idx);
}

static __always_inline struct flow_cache_slot *cache_slot(const struct flow_key *k, int dir)
{
	return cache_slot_of((const void *)k, dir);
}

/* Adds a segment of the slot's flow, in the slot's jiffy, to the slot. */
static __always_inline void slot_add(struct flow_cache_slot *c, __u32 seq, __u32 ack, __u32 payload,
				     __u16 window, __u8 flags)
{
	__u32 end = seq + payload;

	if (!c->packets || seq_after(end, c->next_seq))
		c->next_seq = end;
	c->packets += 1;
	c->bytes += payload;
	if (flags & TCP_ACK) {
		c->ack = ack;
		c->acked = 1;
	}
	c->window = window;
}

/* Folds what a slot holds into side s of its flow (none: the flow is gone,
 * and so is what the slot held), and empties it. */
static __always_inline void slot_fold(struct flow_cache_slot *c, struct side *s)
{
	if (!c->packets)
		return;
	if (s) {
		*s->packets += c->packets;
		*s->bytes += c->bytes;
		if (seq_after(c->next_seq, *s->next_seq))
			*s->next_seq = c->next_seq;
		if (c->acked)
			*s->last_ack = c->ack;
		*s->window = c->window;
	}
	c->packets = 0;
	c->bytes = 0;
	c->acked = 0;
}

/*
 * Makes the slot ready for pkt's flow f (NULL: not tracked), found in the
 * flows map in jiffy j: what the slot holds goes to its flow first. Returns
 * whether pkt's flow may take the slot, which it may not when another flow
 * took it in this same jiffy.
 */
static __always_inline int slot_release(struct flow_cache_slot *c, struct packet *pkt,
					struct flow *f, int dir, __u64 j)
{
	if (key_equal(&c->key, &pkt->key)) {
		struct side s;
		if (f)
			s = side_of(f, dir);
		slot_fold(c, f ? &s : NULL);
		/* A flow another CPU closed in this jiffy: the slot must not
		 * take a new connection's segments as an existing flow's. */
		if (!f)
			c->jiffies = 0;
		return 1;
	}
	if (c->jiffies == j)
		return 0;
	if (c->packets) {
		struct flow *other = bpf_map_lookup_elem(&flows, &c->key);
		struct side s;
		if (other)
			s = side_of(other, dir);
		slot_fold(c, other ? &s : NULL);
	}
	return 1;
}

static __always_inline void slot_fill(struct flow_cache_slot *c, struct packet *pkt, __u64 j)
{
	c->key = pkt->key;
	c->jiffies = j;
	c->packets = 0;
	c->bytes = 0;
	c->acked = 0;
}

/* Before f closes: this CPU's slots of f, both directions, go into f and
 * forget it. Other CPUs' slots lose what they hold of it (at most a jiffy
 * of packets, and only while the flow closes). */
static __always_inline void slot_forget(struct packet *pkt, struct flow *f, int dir)
{
	struct flow_cache_slot *c = cache_slot(&pkt->key, dir);

	if (c && key_equal(&c->key, &pkt->key)) {
		struct side s = side_of(f, dir);
		slot_fold(c, &s);
		c->jiffies = 0;
	}
}

/*
 * The fast path of a tracked packet: a data or ACK segment of the flow this
 * CPU's slot took in this jiffy. Returns whether it took pkt.
 */
static __always_inline int cached(struct flow_cache_slot *c, struct packet *pkt, __u64 j)
{
	if ((pkt->flags & (TCP_SYN | TCP_FIN | TCP_RST)) ||
	    !slot_holds(c, (const void *)&pkt->key, j))
		return 0;
	slot_add(c, pkt->seq, pkt->ack, pkt->payload, pkt->window, pkt->flags);
	return 1;
}
