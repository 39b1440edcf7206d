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
	return clock{wall: time.Now(), mono: monotonicNow()}
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
// not be seen, as with any walk of a live hash map.
func (m *Maps) ForEachFlow(fn func(Flow) bool) error {
	c := newClock()
	keys := make([]fshaFlowKey, flowBatch)
	vals := make([]fshaFlow, flowBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.Flows.BatchLookup(&cursor, keys, vals, nil)
		for i := 0; i < n; i++ {
			if !fn(flowOf(&keys[i], &vals[i], c)) {
				return nil
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			return m.iterateFlows(c, fn)
		}
		if err != nil {
			return fmt.Errorf("read flows: %w", err)
		}
	}
}

// iterateFlows is the one-by-one walk for kernels without batch lookups.
func (m *Maps) iterateFlows(c clock, fn func(Flow) bool) error {
	var (
		k fshaFlowKey
		v fshaFlow
	)
	it := m.Flows.Iterate()
	for it.Next(&k, &v) {
		if !fn(flowOf(&k, &v, c)) {
			return nil
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
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
