/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The maps of fsha's programs (fsha.c), shared with the daemon through
 * their pins: what each holds, who writes it and who reads it. */
#ifndef __FSHA_MAPS_H__
#define __FSHA_MAPS_H__

/* pin_format: [0] -> the format of the pinned maps (PIN_FORMAT_VERSION), as the
 * loader that last loaded them wrote it after migrating them. Written and
 * read by the loader only; the programs never read it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} pin_format SEC(".maps");

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

/* lease: [0] -> struct node_lease. Written by the daemon (renewal, mode),
 * read by both programs for packets to or from a VIP. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lease SEC(".maps");

/* vip_leases: vip_key -> vip_lease. Written by the daemon (the leases this
 * node holds), read by both programs with LEASE_MODE_VIP: for ARP and
 * neighbour discovery, and for IP traffic to or from a VIP whose
 * vip_deadlines bucket has passed. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vip_key);
	__type(value, struct vip_lease);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_leases SEC(".maps");

/* vip_deadlines: bucket (the prefilter's bit of an address) -> the earliest
 * ip_until_ns of the VIPs in it (0 for a VIP without a lease, U64_MAX for a
 * bucket without VIPs). Written by the daemon, which keeps every bucket at
 * or below the ip_until_ns of each of its VIPs; read by both programs with
 * LEASE_MODE_VIP for every packet to or from a VIP: an inlined array
 * lookup that spares the hash lookup of vip_leases while the bucket's
 * deadline has not passed. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, VIP_FILTER_BITS);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_deadlines SEC(".maps");

/* vip_grants: vip_key -> vip_grant. Written and read by the daemon only (its
 * promises as a voter, kept across restarts); the programs never read it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct vip_key);
	__type(value, struct vip_grant);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} vip_grants SEC(".maps");

/* peer_flows_inner: the map in peer_flows' slot, flow_key -> peer_flow:
 * the other nodes' flows. The daemon creates these maps (this type, flags,
 * key and value; max_entries is the first one's, they grow) and swaps a
 * bigger one into the slot as the flows grow (dataplane/peergrow.go). Not
 * preallocated: entries take memory as they come, buckets as it grows. */
struct peer_flows_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct peer_flow);
};

/* peer_flows: [0] -> the current peer_flows_inner map. Written by the
 * daemon (replication from the other nodes), read by XDP and TC ingress to
 * steer a draining VIP's old connections. An empty slot: no peer flows. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__array(values, struct peer_flows_inner);
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

/* peer_macs: (PNN, ifindex) -> node_mac: the node's MAC on that interface's
 * network, from its heartbeats. Written by the daemon, read when a packet
 * is steered to a node whose node_macs entry has NODE_MAC_PER_IFACE; no
 * entry: the node's MAC in node_macs. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct peer_mac_key);
	__type(value, struct node_mac);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} peer_macs SEC(".maps");

/* flow_cache: direction * FLOW_CACHE_SLOTS + slot -> flow_cache_slot, per
 * CPU (see fsha.h). Written by both programs, each in its own half; read by
 * userspace, which adds the pending counts to what the flows map says. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DIRECTION_MAX *FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct flow_cache_slot);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} flow_cache SEC(".maps");

/* steering: [0] -> number of VIPs being drained to or from this node. Written
 * by the daemon; XDP ingress looks up peer flows only while it is non-zero. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} steering SEC(".maps");

/* steer_modes: ifindex -> enum steer_mode. Written by the loader when it
 * attaches to an interface, before the programs; read by both ingress
 * programs when a packet is to be steered. No entry: STEER_MODE_XDP. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} steer_modes SEC(".maps");

#endif /* __FSHA_MAPS_H__ */
