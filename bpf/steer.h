/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Steering of a drained VIP's old connections to the node that holds
 * their sockets. Included by fsha.c after flow tracking. Moved unchanged
 * from fsha.c.
 */
#pragma once

/*
 * Steering (drain): a packet of a connection whose socket is on another
 * node goes back out to that node, with the Ethernet addresses rewritten;
 * that node keeps the VIP as a local, unannounced address and answers the
 * client directly. XDP ingress (STEER_MODE_XDP: XDP_TX) or TC ingress
 * (STEER_MODE_TC: bpf_redirect to the same interface's egress) sends it,
 * as the interface's mode says; both decide with steer_target and
 * steer_mode_of alone, so that they cannot diverge.
 *
 * steer_target: for a parsed packet of no local flow that came in on
 * ifindex, returns COUNTER_STEERED with *mac set to the owner's MAC on that
 * interface's network (peer_macs, else node_macs), COUNTER_STEER_ERRORS
 * for a flow to steer whose owner has no known MAC, or COUNTER_UNTRACKED
 * when the packet is not ours to steer.
 */
static __always_inline int steer_target(struct packet *pkt, __u32 ifindex, const __u8 **mac)
{
	__u32 zero = 0;
	__u32 *active = bpf_map_lookup_elem(&steering, &zero);

	if (!active || !*active)
		return COUNTER_UNTRACKED;
	void *peers = bpf_map_lookup_elem(&peer_flows, &zero);

	if (!peers)
		return COUNTER_UNTRACKED;
	struct peer_flow *pf = bpf_map_lookup_elem(peers, &pkt->key);
	if (!pf || !(pf->flags & PEER_F_STEER))
		return COUNTER_UNTRACKED;
	__u32 owner = pf->owner;
	struct node_mac *nm = bpf_map_lookup_elem(&node_macs, &owner);
	if (!nm)
		return COUNTER_STEER_ERRORS;
	if (nm->valid & NODE_MAC_PER_IFACE) {
		struct peer_mac_key pk = {.owner = owner, .ifindex = ifindex};
		struct node_mac *im = bpf_map_lookup_elem(&peer_macs, &pk);
		if (im && (im->valid & NODE_MAC_VALID)) {
			*mac = im->mac;
			return COUNTER_STEERED;
		}
	}
	if (!(nm->valid & NODE_MAC_VALID))
		return COUNTER_STEER_ERRORS;
	*mac = nm->mac;
	return COUNTER_STEERED;
}

static __always_inline __u32 steer_mode_of(__u32 ifindex)
{
	__u32 *m = bpf_map_lookup_elem(&steer_modes, &ifindex);

	return m ? *m : STEER_MODE_XDP;
}

/* Addresses a frame that was sent to us to mac: our address becomes the
 * source. Returns 0, or -1 when the frame is too short. */
static __always_inline int steer_rewrite(void *data, void *data_end, const __u8 *mac)
{
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return -1;
	__builtin_memcpy(eth->h_source, eth->h_dest, 6);
	__builtin_memcpy(eth->h_dest, mac, 6);
	return 0;
}

/* XDP ingress's steering: returns COUNTER_STEERED when the frame is
 * rewritten for XDP_TX, COUNTER_STEER_HANDOFF when TC ingress steers it. */
static __always_inline int steer_xdp(struct xdp_md *ctx, struct packet *pkt)
{
	const __u8 *mac = 0;
	int res = steer_target(pkt, ctx->ingress_ifindex, &mac);

	if (res != COUNTER_STEERED)
		return res;
	if (steer_mode_of(ctx->ingress_ifindex) == STEER_MODE_TC)
		return COUNTER_STEER_HANDOFF;
	if (steer_rewrite((void *)(long)ctx->data, (void *)(long)ctx->data_end, mac))
		return COUNTER_PARSE_ERROR;
	return COUNTER_STEERED;
}
