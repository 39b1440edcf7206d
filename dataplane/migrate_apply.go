package dataplane

// Carrying out a planned migration (migrate.go): filling the new maps,
// rebuilding the derived ones, pinning the new maps over the old and
// finishing once the new programs run.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"go.uber.org/zap"
)

// fill fills the new maps, the loaded programs' maps being m (the new ones
// and the reused pins): first the copies, then what derives from them.
func (mg *migration) fill(m *Maps) error {
	for _, mm := range mg.maps {
		var err error
		switch mm.how {
		case migrateCopy:
			err = mm.copyEntries(nil)
		case migrateCounters:
			err = mm.copyEntries(counterIndex(mm.old.MaxEntries(), mm.new.MaxEntries()))
		case migratePeerFlows:
			err = mm.copyPeerFlows(mg.peerFirst, mg.peerMax)
		}
		if err != nil {
			return fmt.Errorf("migrate pinned map %s: %w", mm.name, err)
		}
	}
	for _, mm := range mg.maps {
		if mm.how != migrateDerive {
			continue
		}
		var err error
		switch mm.name {
		case fshaMapVipFilter:
			err = deriveVIPFilter(m.Vips, mm.new)
		case fshaMapVipDeadlines:
			err = deriveDeadlines(m, mm.new)
		case fshaMapFlowCount:
			n := 0
			if flows := mg.lookup(fshaMapFlows); flows != nil {
				n = flows.copied
			} else {
				n, err = countEntries(m.Flows)
			}
			if err == nil {
				mm.copied = n
				err = mm.new.Put(uint32(0), uint64(n))
			}
		default:
			err = errors.New("no rule to derive it")
		}
		if err != nil {
			return fmt.Errorf("rebuild map %s: %w", mm.name, err)
		}
	}
	return nil
}

// pin puts each new map in place of the old one: pinned under a temporary
// name, then renamed over the old pin.
func (mg *migration) pin() error {
	for _, mm := range mg.maps {
		path := filepath.Join(mg.pinPath, mm.name)
		tmp := path + tempPinSuffix
		if err := mm.new.Pin(tmp); err != nil {
			return fmt.Errorf("pin migrated map %s: %w", mm.name, err)
		}
		if err := os.Rename(tmp, path); err != nil {
			_ = os.Remove(tmp)
			return fmt.Errorf("replace pinned map %s: %w", mm.name, err)
		}
	}
	return nil
}

// finish runs once the new programs replaced the old ones: it folds what
// the old flow cache still held into the flows, records the format of the
// pins, logs what the migration did and lets the old maps go.
func (mg *migration) finish(m *Maps) error {
	if mm := mg.lookup(fshaMapFlowCache); mm != nil && mm.old != nil {
		n, err := foldFlowCache(mm, m)
		if err != nil {
			return fmt.Errorf("fold the old flow cache into the flows: %w", err)
		}
		mm.copied = n
	}
	if m.PinFormat != nil {
		if err := m.PinFormat.Put(uint32(0), pinFormat); err != nil {
			return fmt.Errorf("write pin format: %w", err)
		}
	}
	for _, mm := range mg.maps {
		fields := append([]zap.Field{zap.String("map", mm.name), zap.Stringer("how", mm.how), zap.String("differs", mm.why)}, mm.fields...)
		switch mm.how {
		case migrateCopy, migrateCounters, migratePeerFlows:
			fields = append(fields, zap.Int("entries", mm.copied), zap.Int("dropped", mm.dropped))
		case migrateFresh:
			if mm.name == fshaMapFlowCache {
				fields = append(fields, zap.Int("flows_folded", mm.copied))
			}
		}
		if mm.dropped > 0 {
			mg.log.Warn("migrated pinned map: entries dropped", fields...)
		} else {
			mg.log.Info("migrated pinned map", fields...)
		}
	}
	if len(mg.maps) > 0 {
		mg.log.Info("pinned maps migrated", zap.Uint32("pin_format", pinFormat), zap.Duration("took", time.Since(mg.start)))
	}
	return mg.Close()
}

// Close releases the handles of the old and new maps (the programs and
// pins hold what they use).
func (mg *migration) Close() error {
	var errs []error
	for _, mm := range mg.maps {
		for _, m := range []**ebpf.Map{&mm.old, &mm.oldOuter, &mm.new} {
			if *m != nil {
				errs = append(errs, (*m).Close())
				*m = nil
			}
		}
	}
	return errors.Join(errs...)
}

// deriveVIPFilter writes the prefilter of the VIPs in vips into filter.
func deriveVIPFilter(vips, filter *ebpf.Map) error {
	keys, err := readAll[fshaVipKey, fshaVipInfo](vips)
	if err != nil {
		return fmt.Errorf("list vips: %w", err)
	}
	words := make([]uint64, filter.MaxEntries())
	bits := uint32(len(words)) * 64
	for k := range keys {
		if bit := vipFilterBit(k.Addr, k.Family); bit < bits {
			words[bit/64] |= 1 << (bit % 64)
		}
	}
	idx := make([]uint32, len(words))
	for i := range idx {
		idx[i] = uint32(i)
	}
	return batchPut(filter, idx, words)
}

// deriveDeadlines writes into buckets the deadline of every bucket, from
// the VIPs and leases of m, as SetVIPs and SetVIPLease keep them.
func deriveDeadlines(m *Maps, buckets *ebpf.Map) error {
	if m.Vips == nil || m.VipLeases == nil {
		return errors.New("no vips or vip_leases map")
	}
	view, err := m.readLeaseView()
	if err != nil {
		return err
	}
	d := view.deadlines()
	vals := make([]uint64, buckets.MaxEntries())
	idx := make([]uint32, len(vals))
	for i := range vals {
		idx[i] = uint32(i)
		vals[i] = math.MaxUint64
		if v, ok := d[uint32(i)]; ok {
			vals[i] = v
		}
	}
	return batchPut(buckets, idx, vals)
}

func batchPut[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	_, err := m.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := m.Put(keys[i], vals[i]); err != nil {
				return err
			}
		}
		return nil
	}
	return err
}

// foldFlowCache adds what the old flow cache held (the packets of a
// jiffy the old programs had not folded into the flows yet) to the
// flows of m, as the programs fold a slot; it returns how many flows it
// changed. It runs once the new programs replaced the old ones, so the
// old cache no longer changes; a packet the new programs count in a flow
// between its read and its write here is lost (one update of one flow).
func foldFlowCache(mm *migratingMap, m *Maps) (int, error) {
	var slot fshaFlowCacheSlot
	size := binary.Size(slot)
	if int(mm.spec.ValueSize) != size {
		return 0, fmt.Errorf("flow cache slot of %d bytes, want %d", mm.spec.ValueSize, size)
	}
	_, vc, err := mm.converters(mm.spec)
	if err != nil {
		return 0, err
	}
	perDir := int(mm.old.MaxEntries()) / directionMax
	if perDir == 0 {
		return 0, nil
	}
	pend := pendingCounts{}
	var (
		k  []byte
		vs [][]byte
	)
	buf := make([]byte, size)
	it := mm.old.Iterate()
	for it.Next(&k, &vs) {
		slots := make([]fshaFlowCacheSlot, 0, len(vs))
		for _, v := range vs {
			vc.convert(buf, v)
			if _, err := binary.Decode(buf, binary.LittleEndian, &slot); err != nil {
				return 0, err
			}
			slots = append(slots, slot)
		}
		pend.add(int(binary.LittleEndian.Uint32(k))/perDir, slots)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read the old flow cache: %w", err)
	}
	n := 0
	for key := range pend {
		var f fshaFlow
		if err := m.Flows.Lookup(&key, &f); err != nil {
			continue // closed meanwhile, or never in the flows
		}
		pend.apply(&key, &f)
		if err := m.Flows.Update(&key, &f, ebpf.UpdateExist); err == nil {
			n++
		}
	}
	return n, nil
}
