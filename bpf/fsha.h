/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Structures shared between the eBPF programs and Go. bpf2go generates the Go
 * mirror of every struct and enum here (see dataplane/gen.go): never copy them
 * by hand. The maps are pinned and outlive the programs: a change of a pinned
 * map's type, capacity, key or value layout is migrated by the next loader
 * (dataplane/migrate.go), which converts every entry member by member, by
 * name. Bump PIN_FORMAT_VERSION with any such change, and with any change of
 * what a member means.
 */
#pragma once

/*
 * The format of the pinned maps, kept in the pin_format map: the version of
 * the layouts and meanings of every pinned map. 0 (no pin_format map): the
 * pins of an fsha from before the marker.
 */
enum pin_format_version {
	/* 2: steer_modes map, counters 13 and 14; 3: peer_macs map, counter 15;
	 * 4: peer_flows an array of one hash map, grown by the daemon */
	PIN_FORMAT_VERSION = 4,
};

#define FSHA_AF_INET  2
#define FSHA_AF_INET6 10

/*
 * One TCP connection to a VIP, as seen from the server: the VIP side is the
 * local socket, the client side is the peer. Addresses are in network byte
 * order (IPv4 in the first four bytes, the rest zero); ports in host order so
 * that bpftool's BTF dump prints them readably.
 */
struct flow_key {
	__u8 vip[16];
	__u8 client[16];
	__u16 vport;
	__u16 cport;
	__u8 family;
	__u8 pad[3];
};

enum flow_state {
	FLOW_STATE_ESTABLISHED = 1,
	FLOW_STATE_FIN_CLIENT = 2, /* the client sent FIN, the server not yet */
	FLOW_STATE_FIN_SERVER = 3, /* the server sent FIN, the client not yet */
	FLOW_STATE_CLOSED = 4,	   /* only ever seen in close events */
};

enum flow_fin {
	FLOW_FIN_IN = 1,  /* FIN seen from the client */
	FLOW_FIN_OUT = 2, /* FIN seen from the VIP */
};

/*
 * What we know of a connection. "in" is client -> VIP (XDP ingress), "out" is
 * VIP -> client (TC egress): each direction writes only its own fields, so the
 * two programs never race on a counter. Bytes are TCP payload bytes. Times are
 * CLOCK_MONOTONIC (coarse, jiffy resolution) nanoseconds.
 */
struct flow {
	__u64 first_seen_ns;
	__u64 last_seen_ns;
	__u64 bytes_in;
	__u64 bytes_out;
	__u64 packets_in;
	__u64 packets_out;
	__u32 seq_in;  /* next sequence number expected from the client */
	__u32 ack_in;  /* last acknowledgement sent by the client */
	__u32 seq_out; /* next sequence number the VIP side will send */
	__u32 ack_out; /* last acknowledgement sent by the VIP side */
	__u16 window_in;
	__u16 window_out;
	__u8 state; /* enum flow_state */
	__u8 fin;   /* enum flow_fin bits */
	__u8 pad[2];
};

enum flow_event_type {
	FLOW_EVENT_OPEN = 1,
	FLOW_EVENT_CLOSE = 2,
};

enum flow_close_reason {
	FLOW_CLOSE_NONE = 0,
	FLOW_CLOSE_RST_IN = 1,	/* the client reset the connection */
	FLOW_CLOSE_RST_OUT = 2, /* the server reset the connection */
	FLOW_CLOSE_FIN = 3,	/* both sides sent FIN */
};

/* Ring buffer record: a flow opened or closed, with its state at that time. */
struct flow_event {
	struct flow_key key;
	struct flow flow;
	__u64 time_ns;
	__u8 type;   /* enum flow_event_type */
	__u8 reason; /* enum flow_close_reason */
	__u8 pad[6];
};

/* Value of the vips map. */
struct vip_info {
	__u32 flags; /* enum vip_flags */
	__u32 reserved;
};

enum vip_flags {
	VIP_F_TRACK = 1, /* track connections to this address */
};

/* Key of the vips map. */
struct vip_key {
	__u8 addr[16];
	__u8 family;
	__u8 pad[3];
};

/*
 * Per-CPU counters, indexed by direction * COUNTER_MAX + counter. The first
 * group partitions packets (each packet counts exactly one outcome, so their
 * sum is the number of packets seen); the second counts table events.
 */
enum counter {
	COUNTER_OTHER = 0,	 /* not TCP to/from a VIP on a tracked port */
	COUNTER_PARSE_ERROR = 1, /* truncated or malformed, maybe VIP traffic */
	COUNTER_FRAGMENT = 2,	 /* IP fragments: never tracked */
	COUNTER_UNTRACKED = 3,	 /* VIP traffic without a flow (SYN, ingress-only) */
	COUNTER_TRACKED = 4,	 /* updated, created or closed a flow */
	COUNTER_CREATED = 5,
	COUNTER_CLOSED = 6,
	COUNTER_EVICTED = 7,	 /* created while the table was full: LRU evicted one */
	COUNTER_EVENTS_LOST = 8, /* ring buffer full, event dropped */
	COUNTER_MAP_ERRORS = 9,	 /* a map update failed */
	COUNTER_FENCED = 10,	 /* outcome: dropped, for a VIP this node may not answer for now */
	COUNTER_STEERED = 11,	 /* outcome: sent on to the node that holds the socket (drain) */
	COUNTER_STEER_ERRORS = 12, /* a flow to steer whose node has no known MAC: passed */
	/* outcome (XDP): a packet to steer on an interface whose steering mode is
	 * STEER_MODE_TC: passed up, for TC ingress to steer */
	COUNTER_STEER_HANDOFF = 13,
	/* event (ingress): TC ingress sent a packet on to the node that holds
	 * its socket (bpf_redirect to the interface's egress) */
	COUNTER_TC_STEERED = 14,
	/* outcome (egress): an ARP request speaking for a VIP this node may not
	 * answer for (a drain's: the VIP on loopback is the only address the
	 * kernel found to ask with), sent as a probe, sender 0.0.0.0, instead
	 * of dropped: the node learns its drained clients' MACs, and the
	 * clients learn nothing of the VIP */
	COUNTER_ARP_PROBED = 15,
	COUNTER_MAX = 16,
};

enum direction {
	DIRECTION_INGRESS = 0,
	DIRECTION_EGRESS = 1,
	DIRECTION_MAX = 2,
};

/*
 * Value of the lease map: self-fencing in the data plane. enabled is a
 * bitmask of enum lease_mode; 0 turns fencing off (standalone tracking).
 * LEASE_MODE_NODE: the daemon renews expires_ns while it holds VIPs with
 * quorum; if it dies, hangs or the node freezes, the lease runs out and the
 * programs stop the node from answering for every VIP (ARP, neighbour
 * discovery, traffic both ways) before the cluster declares it dead and
 * another node takes the VIPs over. LEASE_MODE_VIP: each VIP (in the vips
 * map) is answered for only until the deadlines of its own lease (struct
 * vip_lease); a VIP without one is fenced. Both bits: both rules apply.
 */
struct node_lease {
	__u64 expires_ns; /* CLOCK_MONOTONIC; read with LEASE_MODE_NODE only */
	__u32 enabled;	  /* enum lease_mode bits */
	__u32 pad;
};

enum lease_mode {
	LEASE_MODE_NODE = 1, /* node-wide: every VIP until expires_ns */
	LEASE_MODE_VIP = 2,  /* per VIP: each until its vip_lease's deadlines */
};

enum vip_lease_state {
	VIP_LEASE_NONE = 0,	/* not held here: fenced */
	VIP_LEASE_HELD = 1,	/* held: answered for until the deadline */
	VIP_LEASE_DRAINING = 2, /* moved away: old connections still served, never announced */
};

/*
 * Value of the vip_leases map: a VIP's lease as this node holds it, granted
 * by a majority for one epoch. Deadlines are CLOCK_MONOTONIC ns, written one
 * jiffy early (the programs' clock lags by up to a jiffy, see ns_per_jiffy).
 * ip_until_ns: until when IP traffic to or from the VIP (any protocol,
 * either direction) may pass. arp_until_ns: until when ARP requests for it
 * (ingress, target) and ARP speaking for it (egress, sender), neighbour
 * solicitations for it (ingress, target), neighbour advertisements for it
 * (egress, target) and solicitations from it (egress, source) may pass.
 * Held: both the deadline. Draining: ip_until_ns U64_MAX, arp_until_ns 0.
 */
struct vip_lease {
	__u64 epoch;
	__u64 ip_until_ns;
	__u64 arp_until_ns;
	__u32 state;  /* enum vip_lease_state */
	__u32 holder; /* PNN of the holder (this node): informational */
};

/*
 * Value of the vip_grants map: what this node, as a voter, promised for a
 * VIP (no other holder for another epoch before until_ns). The programs
 * never read it: the map only keeps the promises across daemon restarts.
 */
struct vip_grant {
	__u64 epoch;
	__u64 until_ns; /* CLOCK_MONOTONIC */
	__u32 holder;	/* PNN the grant is for */
	__u32 flags;	/* none yet: 0 */
};

/*
 * A connection of another node, replicated: every node knows the whole
 * cluster's connections, so that the node taking a VIP over can tickle its
 * clients, and the new owner of a VIP being drained can steer packets of the
 * old owner's connections to it.
 */
struct peer_flow {
	__u64 last_seen_ns; /* the owner's wall clock, Unix nanoseconds */
	__u32 gen;	    /* the owner's snapshot generation (anti-entropy sweeps) */
	__u16 owner;	    /* PNN of the node that holds the socket */
	__u8 flags;	    /* enum peer_flags */
	__u8 pad;
};

enum peer_flags {
	PEER_F_STEER = 1, /* XDP ingress sends this flow's packets to its owner */
};

/*
 * Value of the steer_modes map: how a draining VIP's old connections are
 * steered on an interface, chosen by the loader from what the interface
 * is (dataplane/steermode.go). No entry: STEER_MODE_XDP.
 */
enum steer_mode {
	/* XDP ingress rewrites the MACs and returns XDP_TX: for native XDP
	 * on drivers whose XDP_TX is known to work */
	STEER_MODE_XDP = 0,
	/* XDP ingress passes the packet and TC ingress rewrites the MACs and
	 * redirects it to the interface's egress: the skb keeps its checksum
	 * state and nothing is needed on the peer (veth, generic XDP, any
	 * other driver) */
	STEER_MODE_TC = 1,
};

/* Value of the node_macs and peer_macs maps: where to steer a node's
 * connections. */
struct node_mac {
	__u8 mac[6];
	__u16 valid; /* enum node_mac_flags */
};

enum node_mac_flags {
	NODE_MAC_VALID = 1, /* mac is set */
	/* node_macs only: peer_macs has entries for the node, to look up
	 * first; without the flag the steering pays no hash lookup for them */
	NODE_MAC_PER_IFACE = 2,
};

/*
 * Key of the peer_macs map: a node's MAC on the network of one of this
 * node's interfaces. A node with public interfaces on separate networks
 * (VLANs, a storage and a client network) is reached on each at another
 * MAC; a steered packet leaves by the interface it came in on, so it must
 * be addressed to the owner's MAC on that interface's network.
 */
struct peer_mac_key {
	__u32 owner;   /* PNN */
	__u32 ifindex; /* this node's interface */
};

#define MAX_NODES 256

/*
 * Flow cache: a per-CPU, direct-mapped cache in front of the flows map, one
 * half per direction. A tracked packet whose flow this CPU already looked up
 * in the same jiffy adds itself to the slot instead of looking the flow up
 * again: the flows map is a hash map, whose lookup is a kernel function call
 * that costs more than the rest of the program, while this is an inlined
 * array access. The first packet of a flow in each jiffy still goes to the
 * flows map (so last_seen there is exact) and folds in what the slot
 * gathered before; readers of the flows map add what slots still hold
 * (dataplane.Maps.ForEachFlow). SYN, FIN and RST always take the map.
 */
#define FLOW_CACHE_BITS	 10
#define FLOW_CACHE_SLOTS (1 << FLOW_CACHE_BITS) /* per direction and CPU */

struct flow_cache_slot {
	struct flow_key key;
	__u64 jiffies;	/* the jiffy of the slot's flow map update; 0: empty */
	__u64 packets;	/* pending: packets after that update, in that jiffy */
	__u64 bytes;	/* pending: their TCP payload bytes */
	__u32 next_seq; /* pending: the highest sequence number they end at */
	__u32 ack;	/* pending: the acknowledgement of the last of them */
	__u16 window;	/* pending: the window of the last of them */
	__u8 acked;	/* ack is set */
	__u8 pad[5];
};

/* The VIP prefilter is a bitmap of VIP_FILTER_BITS bits in u64 words; the
 * vip_deadlines map has one bucket per bit. */
#define VIP_FILTER_BITS	 65536
#define VIP_FILTER_WORDS (VIP_FILTER_BITS / 64)
