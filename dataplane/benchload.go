package dataplane

// Helpers for benchmarks and tests: they load fsha's programs into the
// kernel without touching bpffs or any interface, so a harness can run them
// with BPF_PROG_RUN or attach them itself, and fill the flows map in bulk.
// The daemon never uses them.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Unpinned is a data plane loaded without pins or attachments. Everything
// it holds is freed by Close.
type Unpinned struct {
	Maps
	// XDP is fsha_xdp (ingress).
	XDP *ebpf.Program
	// TCEgress is fsha_tc_egress (SchedCLS, returns TCX_NEXT).
	TCEgress *ebpf.Program
	// TCIngress is fsha_tc_ingress (SchedCLS): steering on the tc path.
	TCIngress *ebpf.Program

	objs fshaObjects
}

// UnpinnedOptions configure LoadUnpinnedWith.
type UnpinnedOptions struct {
	// FlowsMax is the capacity of the flows map; 0 means DefaultFlowsMax.
	FlowsMax uint32
	// NoFlowCache turns the programs' per-CPU flow cache off, so that
	// every tracked packet goes to the flows map (benchmarks measure both).
	NoFlowCache bool
}

// LoadUnpinned loads the programs and fresh, unpinned maps, with a flows map
// of flowsMax entries (DefaultFlowsMax when 0). It is a test and benchmark
// helper: the maps vanish with Close.
func LoadUnpinned(flowsMax uint32) (*Unpinned, error) {
	return LoadUnpinnedWith(UnpinnedOptions{FlowsMax: flowsMax})
}

// LoadUnpinnedWith is LoadUnpinned with options.
func LoadUnpinnedWith(opts UnpinnedOptions) (*Unpinned, error) {
	flowsMax := opts.FlowsMax
	if flowsMax == 0 {
		flowsMax = DefaultFlowsMax
	}
	spec, err := newSpec(flowsMax)
	if err != nil {
		return nil, err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinNone
	}
	if opts.NoFlowCache {
		if err := spec.Variables[fshaVarFlowCacheOn].Set(uint32(0)); err != nil {
			return nil, fmt.Errorf("set flow_cache_on: %w", err)
		}
	}
	u := &Unpinned{}
	if err := spec.LoadAndAssign(&u.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load bpf programs: verifier rejected them:\n%+v", verr)
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	u.Maps = mapsOf(&u.objs.fshaMaps)
	if err := u.initPeer(); err != nil { // the first peer flows map, as Load makes it
		u.objs.Close()
		return nil, err
	}
	u.XDP = u.objs.FshaXdp
	u.TCEgress = u.objs.FshaTcEgress
	u.TCIngress = u.objs.FshaTcIngress
	return u, nil
}

// SetSteerPath is a test and benchmark helper: it writes how the
// programs steer on ifindex (SteerXDP or SteerTC), as the loader does
// once it has chosen, without attaching anything.
func (u *Unpinned) SetSteerPath(ifindex int, path SteerMode) error {
	switch path {
	case SteerXDP:
		return u.SetSteerMode(ifindex, fshaSteerModeSTEER_MODE_XDP)
	case SteerTC:
		return u.SetSteerMode(ifindex, fshaSteerModeSTEER_MODE_TC)
	}
	return fmt.Errorf("steer path %q: want xdp or tc", path)
}

// Close frees the programs and maps.
func (u *Unpinned) Close() error { return u.objs.Close() }

// FillFlows is a test and benchmark helper: it inserts n established flows
// to vip with BatchUpdate, the i-th (0 <= i < n) from client(i), and adds n
// to the live flow count as if the programs had created them. Counters and
// sequence numbers start at zero; both timestamps are now. Existing entries
// with the same key are overwritten (and counted twice).
func (m *Maps) FillFlows(vip netip.AddrPort, n int, client func(i int) netip.AddrPort) error {
	const batch = 8192
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return fmt.Errorf("read clock: %w", err)
	}
	now := uint64(ts.Nano())
	vipAddr, family := addrBytes(vip.Addr())
	keys := make([]fshaFlowKey, 0, batch)
	vals := make([]fshaFlow, 0, batch)
	flow := fshaFlow{
		FirstSeenNs: now,
		LastSeenNs:  now,
		State:       uint8(fshaFlowStateFLOW_STATE_ESTABLISHED),
	}
	flush := func() error {
		if len(keys) == 0 {
			return nil
		}
		if _, err := m.Flows.BatchUpdate(keys, vals, nil); err != nil {
			return fmt.Errorf("insert %d flows: %w", len(keys), err)
		}
		keys, vals = keys[:0], vals[:0]
		return nil
	}
	for i := range n {
		c := client(i)
		cAddr, cFamily := addrBytes(c.Addr())
		if cFamily != family {
			return fmt.Errorf("flow %d: client %s and vip %s differ in family", i, c, vip)
		}
		keys = append(keys, fshaFlowKey{
			Vip: vipAddr, Client: cAddr, Vport: vip.Port(), Cport: c.Port(), Family: family,
		})
		vals = append(vals, flow)
		if len(keys) == batch {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	var count uint64
	if err := m.FlowCount.Lookup(uint32(0), &count); err != nil {
		return fmt.Errorf("read flow count: %w", err)
	}
	if err := m.FlowCount.Put(uint32(0), count+uint64(n)); err != nil {
		return fmt.Errorf("write flow count: %w", err)
	}
	return nil
}
