package dataplane

import (
	"fmt"

	"github.com/cilium/ebpf"
)

// MapDump is one map's metadata and raw entries, as `fsha maps` prints them.
type MapDump struct {
	Name       string     `json:"name"`
	Type       string     `json:"type"`
	KeySize    uint32     `json:"key_size"`
	ValueSize  uint32     `json:"value_size"`
	MaxEntries uint32     `json:"max_entries"`
	Entries    []MapEntry `json:"entries"`
}

// MapEntry is a raw key and value; per-CPU maps have one value per CPU
// instead: a number for the counters, raw bytes for the flow cache.
type MapEntry struct {
	Key          []byte   `json:"key"`
	Value        []byte   `json:"value,omitempty"`
	PerCPU       []uint64 `json:"per_cpu,omitempty"`
	PerCPUValues [][]byte `json:"per_cpu_values,omitempty"`
}

// Dump returns the named map, or all of them when name is empty. The ring
// buffer has no entries to dump and is left out, and so are the flow
// cache's slots that are empty on every CPU (most of them, most of the
// time) and the vip_deadlines buckets without a VIP (U64_MAX, all but a
// few).
func (m *Maps) Dump(name string) ([]MapDump, error) {
	var out []MapDump
	found := false
	for _, nm := range m.byName() {
		if name != "" && nm.name != name {
			continue
		}
		found = true
		if nm.m == nil || nm.m.Type() == ebpf.RingBuf {
			continue
		}
		d := MapDump{
			Name: nm.name, Type: nm.m.Type().String(), KeySize: nm.m.KeySize(),
			ValueSize: nm.m.ValueSize(), MaxEntries: nm.m.MaxEntries(),
		}
		var (
			key       []byte
			value     []byte
			perCPU    []uint64
			perCPURaw [][]byte
		)
		it := nm.m.Iterate()
		switch {
		case nm.m.Type() == ebpf.PerCPUArray && nm.m.ValueSize() == 8:
			for it.Next(&key, &perCPU) {
				d.Entries = append(d.Entries, MapEntry{Key: clone(key), PerCPU: append([]uint64(nil), perCPU...)})
			}
		case nm.m.Type() == ebpf.PerCPUArray:
			for it.Next(&key, &perCPURaw) {
				if allZero(perCPURaw) {
					continue
				}
				e := MapEntry{Key: clone(key)}
				for _, v := range perCPURaw {
					e.PerCPUValues = append(e.PerCPUValues, clone(v))
				}
				d.Entries = append(d.Entries, e)
			}
		case nm.name == fshaMapVipDeadlines:
			for it.Next(&key, &value) {
				if !allFF(value) {
					d.Entries = append(d.Entries, MapEntry{Key: clone(key), Value: clone(value)})
				}
			}
		default:
			for it.Next(&key, &value) {
				d.Entries = append(d.Entries, MapEntry{Key: clone(key), Value: clone(value)})
			}
		}
		if err := it.Err(); err != nil {
			return nil, fmt.Errorf("dump map %s: %w", nm.name, err)
		}
		out = append(out, d)
	}
	if !found {
		return nil, fmt.Errorf("no map named %q", name)
	}
	return out, nil
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

func allFF(v []byte) bool {
	for _, b := range v {
		if b != 0xff {
			return false
		}
	}
	return true
}

func allZero(vs [][]byte) bool {
	for _, v := range vs {
		for _, b := range v {
			if b != 0 {
				return false
			}
		}
	}
	return true
}

// MapNames lists the names of the pinned maps.
func MapNames() []string {
	var m Maps
	var names []string
	for _, nm := range m.byName() {
		names = append(names, nm.name)
	}
	return names
}
