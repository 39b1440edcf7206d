package dataplane

import "fmt"

// DirectionCounters are the counters of one program. Packets is the sum of
// the outcomes (Other to Tracked, Fenced, Steered, SteerErrors,
// SteerHandoffs, ARPProbed); the rest count table events.
type DirectionCounters struct {
	Packets     uint64 `json:"packets"`
	Other       uint64 `json:"other"`
	ParseErrors uint64 `json:"parse_errors"`
	Fragments   uint64 `json:"fragments"`
	Untracked   uint64 `json:"untracked"`
	Tracked     uint64 `json:"tracked"`
	Fenced      uint64 `json:"fenced"`
	Steered     uint64 `json:"steered"`
	SteerErrors uint64 `json:"steer_errors"`
	// SteerHandoffs: packets to steer that XDP passed up to TC ingress
	// (interfaces in tc mode), TCSteered: those TC ingress sent on
	SteerHandoffs uint64 `json:"steer_handoffs"`
	TCSteered     uint64 `json:"tc_steered"`
	// ARPProbed: ARP requests speaking for a VIP this node may not answer
	// for (a drain's), sent as probes (sender 0.0.0.0) instead of dropped
	ARPProbed  uint64 `json:"arp_probed"`
	Created    uint64 `json:"created"`
	Closed     uint64 `json:"closed"`
	Evicted    uint64 `json:"evicted"`
	EventsLost uint64 `json:"events_lost"`
	MapErrors  uint64 `json:"map_errors"`
}

// Counters are the data plane's counters summed over CPUs.
type Counters struct {
	Ingress DirectionCounters `json:"ingress"`
	Egress  DirectionCounters `json:"egress"`
	// Flows is the number of live flows as the programs count them: exact
	// until the table first fills, approximate after LRU evictions.
	Flows uint64 `json:"flows"`
}

// ReadCounters reads and sums the per-CPU counters.
func (m *Maps) ReadCounters() (Counters, error) {
	var c Counters
	for dir, dc := range []*DirectionCounters{&c.Ingress, &c.Egress} {
		fields := map[fshaCounter]*uint64{
			fshaCounterCOUNTER_OTHER:         &dc.Other,
			fshaCounterCOUNTER_PARSE_ERROR:   &dc.ParseErrors,
			fshaCounterCOUNTER_FRAGMENT:      &dc.Fragments,
			fshaCounterCOUNTER_UNTRACKED:     &dc.Untracked,
			fshaCounterCOUNTER_TRACKED:       &dc.Tracked,
			fshaCounterCOUNTER_FENCED:        &dc.Fenced,
			fshaCounterCOUNTER_STEERED:       &dc.Steered,
			fshaCounterCOUNTER_STEER_ERRORS:  &dc.SteerErrors,
			fshaCounterCOUNTER_STEER_HANDOFF: &dc.SteerHandoffs,
			fshaCounterCOUNTER_TC_STEERED:    &dc.TCSteered,
			fshaCounterCOUNTER_ARP_PROBED:    &dc.ARPProbed,
			fshaCounterCOUNTER_CREATED:       &dc.Created,
			fshaCounterCOUNTER_CLOSED:        &dc.Closed,
			fshaCounterCOUNTER_EVICTED:       &dc.Evicted,
			fshaCounterCOUNTER_EVENTS_LOST:   &dc.EventsLost,
			fshaCounterCOUNTER_MAP_ERRORS:    &dc.MapErrors,
		}
		for ctr, dst := range fields {
			var perCPU []uint64
			idx := uint32(dir)*uint32(fshaCounterCOUNTER_MAX) + uint32(ctr)
			if err := m.Counters.Lookup(idx, &perCPU); err != nil {
				return c, fmt.Errorf("read counter %d: %w", idx, err)
			}
			for _, v := range perCPU {
				*dst += v
			}
		}
		dc.Packets = dc.Other + dc.ParseErrors + dc.Fragments + dc.Untracked + dc.Tracked + dc.Fenced + dc.Steered + dc.SteerErrors + dc.SteerHandoffs + dc.ARPProbed
	}
	var n uint64
	if err := m.FlowCount.Lookup(uint32(0), &n); err != nil {
		return c, fmt.Errorf("read flow count: %w", err)
	}
	if int64(n) > 0 { // transiently negative while a close races a create
		c.Flows = n
	}
	return c, nil
}
