package dataplane

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
)

// FlowState is the TCP state of a tracked connection.
type FlowState uint8

// Flow states, as bpf/fsha.h defines them.
const (
	StateEstablished = FlowState(fshaFlowStateFLOW_STATE_ESTABLISHED)
	StateFinClient   = FlowState(fshaFlowStateFLOW_STATE_FIN_CLIENT)
	StateFinServer   = FlowState(fshaFlowStateFLOW_STATE_FIN_SERVER)
	StateClosed      = FlowState(fshaFlowStateFLOW_STATE_CLOSED)
)

func (s FlowState) String() string {
	switch s {
	case StateEstablished:
		return "established"
	case StateFinClient:
		return "fin-client"
	case StateFinServer:
		return "fin-server"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("state-%d", uint8(s))
}

// Flow is one tracked TCP connection to a VIP. "In" is client to VIP.
type Flow struct {
	VIP        netip.Addr
	VIPPort    uint16
	Client     netip.Addr
	ClientPort uint16
	FirstSeen  time.Time
	LastSeen   time.Time
	BytesIn    uint64 // TCP payload bytes
	BytesOut   uint64
	PacketsIn  uint64
	PacketsOut uint64
	SeqIn      uint32 // next sequence number expected from the client
	AckIn      uint32
	SeqOut     uint32 // next sequence number the VIP side sends
	AckOut     uint32
	WindowIn   uint16
	WindowOut  uint16
	State      FlowState
}

// FlowRecord is the stable JSON form of a flow: what `fsha flows --json`
// prints for scripts, and what the lab reads back.
type FlowRecord struct {
	VIP        netip.Addr `json:"vip"`
	VPort      uint16     `json:"vport"`
	Client     netip.Addr `json:"client"`
	CPort      uint16     `json:"cport"`
	Proto      string     `json:"proto"`
	State      string     `json:"state"`
	BytesIn    uint64     `json:"bytes_in"`
	BytesOut   uint64     `json:"bytes_out"`
	PacketsIn  uint64     `json:"packets_in"`
	PacketsOut uint64     `json:"packets_out"`
	FirstSeen  time.Time  `json:"first_seen"`
	LastSeen   time.Time  `json:"last_seen"`
	SeqIn      uint32     `json:"seq_in"`
	AckIn      uint32     `json:"ack_in"`
	SeqOut     uint32     `json:"seq_out"`
	AckOut     uint32     `json:"ack_out"`
	WindowIn   uint16     `json:"window_in"`
	WindowOut  uint16     `json:"window_out"`
	// With `fsha flows --all`: the node holding the socket, and whether
	// this node steers the connection's packets to it (a draining VIP).
	Owner string `json:"owner,omitempty"`
	Steer bool   `json:"steer,omitempty"`
}

// Record returns f in its JSON form, times in UTC.
func (f Flow) Record() FlowRecord {
	return FlowRecord{
		VIP: f.VIP, VPort: f.VIPPort, Client: f.Client, CPort: f.ClientPort,
		Proto: Proto(f.VIPPort), State: f.State.String(),
		BytesIn: f.BytesIn, BytesOut: f.BytesOut, PacketsIn: f.PacketsIn, PacketsOut: f.PacketsOut,
		FirstSeen: utc(f.FirstSeen), LastSeen: utc(f.LastSeen),
		SeqIn: f.SeqIn, AckIn: f.AckIn, SeqOut: f.SeqOut, AckOut: f.AckOut,
		WindowIn: f.WindowIn, WindowOut: f.WindowOut,
	}
}

// Key names the connection as client -> vip.
func (r FlowRecord) Key() string {
	return netip.AddrPortFrom(r.Client, r.CPort).String() + "->" + netip.AddrPortFrom(r.VIP, r.VPort).String()
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

// Proto names the service behind a VIP port.
func Proto(port uint16) string {
	switch port {
	case 445, 139:
		return "smb"
	case 2049:
		return "nfs"
	case 111:
		return "rpcbind"
	}
	return "tcp"
}

// clock converts the programs' CLOCK_MONOTONIC timestamps to wall time.
type clock struct {
	wall time.Time
	mono uint64
}

func newClock() clock {
	return clock{wall: time.Now(), mono: MonotonicNow()}
}

func (c clock) time(mono uint64) time.Time {
	if mono == 0 {
		return time.Time{}
	}
	return c.wall.Add(-time.Duration(int64(c.mono) - int64(mono)))
}

func flowOf(k *fshaFlowKey, v *fshaFlow, c clock) Flow {
	return Flow{
		VIP:        bytesAddr(k.Vip, k.Family),
		VIPPort:    k.Vport,
		Client:     bytesAddr(k.Client, k.Family),
		ClientPort: k.Cport,
		FirstSeen:  c.time(v.FirstSeenNs),
		LastSeen:   c.time(v.LastSeenNs),
		BytesIn:    v.BytesIn,
		BytesOut:   v.BytesOut,
		PacketsIn:  v.PacketsIn,
		PacketsOut: v.PacketsOut,
		SeqIn:      v.SeqIn,
		AckIn:      v.AckIn,
		SeqOut:     v.SeqOut,
		AckOut:     v.AckOut,
		WindowIn:   v.WindowIn,
		WindowOut:  v.WindowOut,
		State:      FlowState(v.State),
	}
}

// flowBatch is how many flows one batch lookup syscall returns.
const flowBatch = 4096

// ForEachFlow calls fn for every tracked flow, reading the map in batches;
// fn returns false to stop. Flows created or closed meanwhile may or may
// not be seen, as with any walk of a live hash map. The counts include what
// the programs' per-CPU flow cache holds and has not yet folded into the
// flows map (see pending).
func (m *Maps) ForEachFlow(fn func(Flow) bool) error {
	m.indexes().walks.Add(1)
	c := newClock()
	pend, err := m.pending()
	if err != nil {
		return err
	}
	visit := func(k *fshaFlowKey, v *fshaFlow) bool {
		pend.apply(k, v)
		return fn(flowOf(k, v, c))
	}
	keys := make([]fshaFlowKey, flowBatch)
	vals := make([]fshaFlow, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.Flows.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if !visit(&keys[i], &vals[i]) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return m.iterateFlows(visit)
		}
		if err != nil {
			return fmt.Errorf("read flows: %w", err)
		}
	}
}

// iterateFlows is the one-by-one walk for kernels without batch lookups.
func (m *Maps) iterateFlows(visit func(*fshaFlowKey, *fshaFlow) bool) error {
	var (
		k fshaFlowKey
		v fshaFlow
	)
	it := m.Flows.Iterate()
	for it.Next(&k, &v) {
		if !visit(&k, &v) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
}

// lookupFlow returns one flow with its pending counts, or ErrKeyNotExist.
func (m *Maps) lookupFlow(k fshaFlowKey) (fshaFlow, error) {
	var v fshaFlow
	if err := m.Flows.Lookup(&k, &v); err != nil {
		return v, err
	}
	pend, err := m.pending()
	if err != nil {
		return v, err
	}
	pend.apply(&k, &v)
	return v, nil
}

// pendingCounts are what the flow cache holds for one flow: per direction,
// the slots of every CPU that hold packets not yet in the flows map.
type pendingCounts map[fshaFlowKey]*[directionMax][]fshaFlowCacheSlot

// directionMax is the number of directions (ingress, egress).
const directionMax = int(fshaDirectionDIRECTION_MAX)

// pending reads the programs' flow cache (bpf/fsha.h): a per-CPU array
// whose slots hold the packets a CPU saw of a flow after its first one in
// the same jiffy. The programs fold them into the flows map at that flow's
// next packet on that CPU, so what a reader adds is exact for an idle flow.
// For a busy one, a fold between this read and the read of its flow counts
// one jiffy's packets of one CPU twice (sequence numbers only move forward,
// so they stay right); once the flow is idle, reads are exact.
func (m *Maps) pending() (pendingCounts, error) {
	if m.FlowCache == nil {
		return nil, nil // the pins of an older fsha: no cache
	}
	perDir := int(m.FlowCache.MaxEntries()) / directionMax // ingress first, then egress
	pend := pendingCounts{}
	err := m.forEachCacheSlot(func(k uint32, perCPU []fshaFlowCacheSlot) {
		pend.add(int(k)/perDir, perCPU)
	})
	return pend, err
}

// forEachCacheSlot calls fn with every slot number of the flow cache and
// that slot's value on each CPU, in one batch read where the kernel can.
func (m *Maps) forEachCacheSlot(fn func(k uint32, perCPU []fshaFlowCacheSlot)) error {
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return fmt.Errorf("count cpus: %w", err)
	}
	n := int(m.FlowCache.MaxEntries())
	keys := make([]uint32, n)
	slots := make([]fshaFlowCacheSlot, n*ncpu)
	var cursor ebpf.MapBatchCursor
	got, err := m.FlowCache.BatchLookup(&cursor, keys, slots, nil)
	switch {
	case errors.Is(err, ebpf.ErrNotSupported):
		var k uint32
		var perCPU []fshaFlowCacheSlot
		it := m.FlowCache.Iterate()
		for it.Next(&k, &perCPU) {
			fn(k, perCPU)
		}
		if err := it.Err(); err != nil {
			return fmt.Errorf("read flow cache: %w", err)
		}
		return nil
	case err != nil && !errors.Is(err, ebpf.ErrKeyNotExist):
		return fmt.Errorf("read flow cache: %w", err)
	}
	for i := range got {
		fn(keys[i], slots[i*ncpu:(i+1)*ncpu])
	}
	return nil
}

func (p pendingCounts) add(dir int, slots []fshaFlowCacheSlot) {
	if dir < 0 || dir >= directionMax {
		return
	}
	for _, s := range slots {
		if s.Packets == 0 {
			continue
		}
		e := p[s.Key]
		if e == nil {
			e = new([directionMax][]fshaFlowCacheSlot)
			p[s.Key] = e
		}
		e[dir] = append(e[dir], s)
	}
}

// apply adds what the cache holds for flow k to v, as the programs fold a
// slot: counts add up, the sequence number only moves forward, and the
// acknowledgement and window are those of the latest slot.
func (p pendingCounts) apply(k *fshaFlowKey, v *fshaFlow) {
	e := p[*k]
	if e == nil {
		return
	}
	for dir, slots := range e {
		packets, bytes, seq, ack, window := &v.PacketsIn, &v.BytesIn, &v.SeqIn, &v.AckIn, &v.WindowIn
		if dir == int(fshaDirectionDIRECTION_EGRESS) {
			packets, bytes, seq, ack, window = &v.PacketsOut, &v.BytesOut, &v.SeqOut, &v.AckOut, &v.WindowOut
		}
		var latest uint64
		for _, s := range slots {
			*packets += s.Packets
			*bytes += s.Bytes
			if int32(s.NextSeq-*seq) > 0 {
				*seq = s.NextSeq
			}
			if s.Jiffies >= latest {
				latest = s.Jiffies
				if s.Acked != 0 {
					*ack = s.Ack
				}
				*window = s.Window
			}
		}
	}
}

// AllFlows returns every tracked flow.
func (m *Maps) AllFlows() ([]Flow, error) {
	var out []Flow
	err := m.ForEachFlow(func(f Flow) bool {
		out = append(out, f)
		return true
	})
	return out, err
}
