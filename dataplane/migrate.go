package dataplane

// Migration of the pins of another fsha. The maps outlive the programs
// (that is how a restart keeps every flow), so a release that changes a
// pinned map (its type, capacity, flags, key or value layout) finds the
// maps of the previous one under the pin path. Load never refuses them:
//
//  1. planMigration compares every pinned map with this release's spec:
//     kernel attributes (ebpf.MapSpec.Compatible) and the BTF layouts of
//     key and value, member by member (the kernel keeps the BTF its
//     creator gave). A map that matches is reused as it is. For each one
//     that does not, it creates a new, unpinned map of this release's
//     spec, which the new programs are loaded with (MapReplacements).
//  2. fill copies the old map's entries into the new one, converting
//     each member by name (convert.go): state the daemon cannot rebuild
//     (flows, peer flows, leases, grants) and what the programs read
//     from the first packet on (VIPs, ports, steering, node MACs), so
//     that no packet meets a half-configured data plane. Maps derived
//     from others (the VIP prefilter, the deadline buckets, the flow
//     count) are recomputed from the migrated maps; the ring buffer and
//     the flow cache start empty. Meanwhile the old programs run on with
//     the old maps.
//  3. pin pins each new map under a temporary name and renames it over
//     the old pin (atomic on bpffs, like cloudflare/tubular's upgrades):
//     a reader of the pins sees the old map or the new one.
//  4. Load attaches the new programs, atomically replacing the old ones
//     in their pinned links (link.Update): from then on every packet
//     meets the new maps. finish folds the old flow cache's pending
//     counts into the flows and writes the format (pin_format).
//
// What the old programs write between the copy and the swap (about a
// second for a million flows on a two-CPU machine) is lost: the counts and sequence
// numbers of those packets, the flows created then (egress recreates
// each at its next segment, with its counts from then on), the closes
// (PruneFlows, at the daemon's start, removes those flows), tombstones
// and handshakes. A smaller capacity keeps the most recently seen
// entries and counts the others as dropped.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// pinFormat is the format of the pinned maps this fsha writes
// (bpf/fsha.h, PIN_FORMAT_VERSION). Pins of another format are migrated
// by their layouts, which BTF tells; a change of meaning that leaves a
// layout alone bumps the version and adds its conversion to fill.
const pinFormat = uint32(fshaPinFormatVersionPIN_FORMAT_VERSION)

// migrateHow is how a pinned map whose layout changed is carried over.
type migrateHow uint8

const (
	// migrateCopy converts every entry into the new map.
	migrateCopy migrateHow = iota
	// migrateCounters converts the per-CPU counters by (direction,
	// counter): a new counter moves the index of every egress one.
	migrateCounters
	// migrateDerive recomputes the map from the migrated ones.
	migrateDerive
	// migrateFresh starts the map empty.
	migrateFresh
)

func (h migrateHow) String() string {
	return [...]string{"copied", "counters copied", "rebuilt", "new and empty"}[h]
}

// pinMigrations says how each pinned map is migrated. Every pinned map of
// the spec must be listed (TestPinMigrationsCoverSpec).
var pinMigrations = map[string]migrateHow{
	// state only the maps hold
	fshaMapFlows:       migrateCopy,
	fshaMapClosedFlows: migrateCopy,
	fshaMapHandshakes:  migrateCopy,
	fshaMapPeerFlows:   migrateCopy, // the other nodes resend what differs, but only in a digest round
	fshaMapVipLeases:   migrateCopy,
	fshaMapVipGrants:   migrateCopy,
	fshaMapLease:       migrateCopy,
	// the daemon writes them again once it runs, but the new programs
	// fence, track and steer with them from their first packet
	fshaMapVips:     migrateCopy,
	fshaMapPorts:    migrateCopy,
	fshaMapNodeMacs: migrateCopy,
	fshaMapSteering: migrateCopy,
	fshaMapCounters: migrateCounters,
	// derived from the maps above
	fshaMapVipFilter:    migrateDerive,
	fshaMapVipDeadlines: migrateDerive,
	fshaMapFlowCount:    migrateDerive,
	// the ring buffer's unread events are lost (the daemon reads the
	// flows map whole at its start); the flow cache's pending counts are
	// folded into the flows once the old programs are gone (finish)
	fshaMapEvents:    migrateFresh,
	fshaMapFlowCache: migrateFresh,
	fshaMapPinFormat: migrateFresh,
}

// derivedFrom lists the maps each derived map is computed from: it is
// rebuilt when any of them is migrated, as well as when its own layout
// changed.
var derivedFrom = map[string][]string{
	fshaMapVipFilter:    {fshaMapVips},
	fshaMapVipDeadlines: {fshaMapVips, fshaMapVipLeases},
	fshaMapFlowCount:    {fshaMapFlows},
}

// migration is the migration of one pin path, from planMigration to finish.
type migration struct {
	log     *zap.Logger
	pinPath string
	// found is the format of the pins (0: an fsha from before the
	// marker, or no pins at all)
	found uint32
	maps  []*migratingMap
	start time.Time
}

// migratingMap is one pinned map being replaced.
type migratingMap struct {
	name string
	how  migrateHow
	why  string
	spec *ebpf.MapSpec
	// old is the pinned map (nil for a derived map); oldKey and oldValue
	// its BTF types (nil without BTF)
	old              *ebpf.Map
	oldKey, oldValue btf.Type
	new              *ebpf.Map

	copied, dropped int
	fields          []zap.Field // what the conversion did, for the log
}

// tempPinSuffix names a new map's pin until it is renamed over the old
// one; a crash can leave one behind, which the next planMigration removes.
// Map names are C identifiers, so none ends so (bpffs refuses dots).
const tempPinSuffix = "-new"

// planMigration compares the maps pinned under pinPath with spec and
// prepares a new map for each one that differs. It returns an empty
// migration for a fresh pin path or pins of this very layout.
func planMigration(log *zap.Logger, spec *ebpf.CollectionSpec, pinPath string) (_ *migration, err error) {
	mg := &migration{log: log, pinPath: pinPath, start: time.Now()}
	defer func() {
		if err != nil {
			mg.Close()
		}
	}()
	if err := removeTempPins(pinPath); err != nil {
		return nil, err
	}
	byName := map[string]*migratingMap{}
	var names []string
	for name, ms := range spec.Maps {
		if ms.Pinning == ebpf.PinByName {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	pinned := map[string]bool{}
	for _, name := range names {
		ms := spec.Maps[name]
		old, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // new in this release: LoadAndAssign creates it
		}
		if err != nil {
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		pinned[name] = true
		why, key, value, err := differences(ms, old)
		if err != nil {
			old.Close()
			return nil, fmt.Errorf("compare pinned map %s: %w", name, err)
		}
		if why == "" {
			old.Close()
			continue
		}
		mm := &migratingMap{name: name, how: pinMigrations[name], why: why, spec: ms, old: old, oldKey: key, oldValue: value}
		byName[name] = mm
		mg.maps = append(mg.maps, mm)
	}
	// a derived map is rebuilt when what it derives from was migrated,
	// and filled when it is new in this release (not for a fresh pin
	// path: there is nothing to derive it from)
	for _, name := range names {
		if byName[name] != nil || len(pinned) == 0 || derivedFrom[name] == nil {
			continue
		}
		why := "new in this release"
		if pinned[name] {
			why = ""
			for _, src := range derivedFrom[name] {
				if byName[src] != nil {
					why = src + " migrated"
					break
				}
			}
		}
		if why != "" {
			mm := &migratingMap{name: name, how: migrateDerive, why: why, spec: spec.Maps[name]}
			byName[name] = mm
			mg.maps = append(mg.maps, mm)
		}
	}
	if pinned[fshaMapPinFormat] {
		if mg.found, err = readPinFormat(pinPath); err != nil {
			return nil, err
		}
	}
	for _, mm := range mg.maps {
		ms := mm.spec.Copy()
		ms.Pinning = ebpf.PinNone
		if mm.new, err = ebpf.NewMap(ms); err != nil {
			return nil, fmt.Errorf("create map %s to migrate the pinned one into: %w", mm.name, err)
		}
	}
	if len(mg.maps) > 0 {
		log.Info("pinned maps of another layout: migrating them", zap.String("pin_path", pinPath),
			zap.Uint32("pin_format", mg.found), zap.Uint32("to_pin_format", pinFormat),
			zap.Strings("maps", mg.names()))
		if mg.found > pinFormat {
			log.Warn("the pins are of a newer fsha: converting them by member names; members this release does not know are dropped",
				zap.Uint32("pin_format", mg.found), zap.Uint32("to_pin_format", pinFormat))
		}
	}
	return mg, nil
}

func (mg *migration) names() []string {
	var out []string
	for _, mm := range mg.maps {
		out = append(out, mm.name)
	}
	return out
}

func (mg *migration) lookup(name string) *migratingMap {
	for _, mm := range mg.maps {
		if mm.name == name {
			return mm
		}
	}
	return nil
}

// replacements are the new maps, for ebpf.CollectionOptions.MapReplacements.
func (mg *migration) replacements() map[string]*ebpf.Map {
	if len(mg.maps) == 0 {
		return nil
	}
	out := map[string]*ebpf.Map{}
	for _, mm := range mg.maps {
		out[mm.name] = mm.new
	}
	return out
}

// differences says how the pinned map m differs from ms ("" when it can be
// reused as it is), and returns m's BTF key and value types.
func differences(ms *ebpf.MapSpec, m *ebpf.Map) (why string, key, value btf.Type, err error) {
	var diffs []string
	if err := ms.Compatible(m); err != nil {
		if !errors.Is(err, ebpf.ErrMapIncompatible) {
			return "", nil, nil, err
		}
		diffs = append(diffs, strings.TrimSuffix(err.Error(), ": "+ebpf.ErrMapIncompatible.Error()))
	}
	if key, value, err = mapTypes(m); err != nil {
		return "", nil, nil, err
	}
	if ms.Key != nil && key != nil && !sameLayout(key, ms.Key) {
		diffs = append(diffs, "key layout")
	}
	if ms.Value != nil && value != nil && !sameLayout(value, ms.Value) {
		diffs = append(diffs, "value layout")
	}
	return strings.Join(diffs, ", "), key, value, nil
}

func removeTempPins(pinPath string) error {
	entries, err := os.ReadDir(pinPath)
	if err != nil {
		return fmt.Errorf("read pin path: %w", err)
	}
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), tempPinSuffix) {
			if err := os.Remove(filepath.Join(pinPath, e.Name())); err != nil {
				return fmt.Errorf("remove an unfinished migration's pin: %w", err)
			}
		}
	}
	return nil
}

func readPinFormat(pinPath string) (uint32, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, fshaMapPinFormat), &ebpf.LoadPinOptions{ReadOnly: true})
	if err != nil {
		return 0, fmt.Errorf("open pinned map %s: %w", fshaMapPinFormat, err)
	}
	defer m.Close()
	if m.KeySize() != 4 || m.ValueSize() < 4 {
		return 0, nil // a format of the format: newer than this fsha knows
	}
	v := make([]byte, m.ValueSize())
	if err := m.Lookup(uint32(0), &v); err != nil {
		return 0, fmt.Errorf("read pin format: %w", err)
	}
	return binary.LittleEndian.Uint32(v), nil
}

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
		case migrateCopy, migrateCounters:
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
		for _, m := range []**ebpf.Map{&mm.old, &mm.new} {
			if *m != nil {
				errs = append(errs, (*m).Close())
				*m = nil
			}
		}
	}
	return errors.Join(errs...)
}

// counterIndex maps an index of the old counters map to the new one: each
// is direction * counters per direction + counter (bpf/fsha.h).
func counterIndex(oldMax, newMax uint32) func(uint32) (uint32, bool) {
	oldPer, newPer := oldMax/uint32(directionMax), newMax/uint32(directionMax)
	return func(i uint32) (uint32, bool) {
		if oldPer == 0 {
			return 0, false
		}
		d, c := i/oldPer, i%oldPer
		if d >= uint32(directionMax) || c >= newPer {
			return 0, false
		}
		return d*newPer + c, true
	}
}

func isPerCPU(t ebpf.MapType) bool {
	return t == ebpf.PerCPUHash || t == ebpf.PerCPUArray || t == ebpf.LRUCPUHash
}

func isArray(t ebpf.MapType) bool { return t == ebpf.Array || t == ebpf.PerCPUArray }

// converters returns the conversions of mm's keys and values.
func (mm *migratingMap) converters() (key, value *converter, err error) {
	build := func(from, to btf.Type, fromSize, toSize uint32, what string) (*converter, error) {
		if from == nil || to == nil {
			mm.fields = append(mm.fields, zap.String(what, "no BTF: converted by position"))
			return prefixConverter(int(fromSize), int(toSize)), nil
		}
		c, err := newConverter(from, to)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for _, f := range []struct {
			name string
			l    []string
		}{{"new_" + what + "_fields", c.added}, {"dropped_" + what + "_fields", c.removed}, {"changed_" + what + "_fields", c.changed}} {
			if len(f.l) > 0 {
				mm.fields = append(mm.fields, zap.Strings(f.name, f.l))
			}
		}
		return c, nil
	}
	if key, err = build(mm.oldKey, mm.spec.Key, mm.old.KeySize(), mm.spec.KeySize, "key"); err != nil {
		return nil, nil, err
	}
	value, err = build(mm.oldValue, mm.spec.Value, mm.old.ValueSize(), mm.spec.ValueSize, "value")
	return key, value, err
}

// copyEntries converts every entry of the old map into the new one; remap,
// when set, moves array indexes. A new map with less room keeps the most
// recently seen entries (by a last_seen_ns member of the value, if any).
func (mm *migratingMap) copyEntries(remap func(uint32) (uint32, bool)) error {
	oldType, newType := mm.old.Type(), mm.new.Type()
	if isPerCPU(oldType) != isPerCPU(newType) {
		n, err := countEntries(mm.old)
		mm.dropped = n
		mm.fields = append(mm.fields, zap.String("dropped_because", fmt.Sprintf("%s cannot be converted into %s", oldType, newType)))
		return err
	}
	kc, vc, err := mm.converters()
	if err != nil {
		return err
	}
	if isArray(newType) && kc.to != 4 {
		return fmt.Errorf("array with a key of %d bytes", kc.to)
	}
	w := &entryWriter{m: mm.new, array: isArray(newType), lru: newType == ebpf.LRUHash || newType == ebpf.LRUCPUHash,
		room: int(mm.new.MaxEntries()), keySize: kc.to, valueSize: vc.to}
	if isPerCPU(oldType) {
		err = copyPerCPU(mm.old, kc, vc, remap, w)
	} else {
		err = copyBatches(mm.old, mm.oldValue, kc, vc, remap, w)
	}
	if err != nil {
		return err
	}
	if err := w.verify(); err != nil {
		return err
	}
	mm.copied, mm.dropped = w.written, w.dropped
	return nil
}

// entryWriter writes converted entries into a new map, counting what does
// not fit.
type entryWriter struct {
	m                  *ebpf.Map
	array, lru         bool
	room               int // entries the map holds (its capacity)
	keySize, valueSize int
	// accepted counts the entries keep let through, written and dropped
	// what became of them
	accepted, written, dropped int
}

// isFull tells whether a map update failed for want of room.
func isFull(err error) bool { return errors.Is(err, unix.E2BIG) }

// keep tells whether the converted entry can go into the map: an array
// index in range, a hash map with room left; it counts a drop if not.
func (w *entryWriter) keep(k []byte, value []byte, remap func(uint32) (uint32, bool)) bool {
	if !w.array {
		if w.accepted >= w.room {
			w.dropped++
			return false
		}
		w.accepted++
		return true
	}
	i := binary.LittleEndian.Uint32(k)
	ok := true
	if remap != nil {
		i, ok = remap(i)
		binary.LittleEndian.PutUint32(k, i)
	}
	if !ok || i >= uint32(w.room) {
		if !allZeroBytes(value) {
			w.dropped++
		}
		return false
	}
	return true
}

// put writes n entries (keys and values back to back), in one call where
// the kernel can.
func (w *entryWriter) put(n int, keys, values []byte) error {
	done := 0
	if n > 1 {
		ks, vs := byteArrays(w.keySize, n), byteArrays(w.valueSize, n)
		copy(ks.bytes, keys)
		copy(vs.bytes, values)
		done, _ = w.m.BatchUpdate(ks.slice.Interface(), vs.slice.Interface(), nil) // the rest one by one
	}
	for i := done; i < n; i++ {
		err := w.m.Put(keys[i*w.keySize:(i+1)*w.keySize], values[i*w.valueSize:(i+1)*w.valueSize])
		switch {
		case isFull(err):
			w.dropped++
			continue
		case err != nil:
			return err
		}
		w.written++
	}
	w.written += done
	return nil
}

// lruLocalFree is how many free entries of an LRU hash each CPU may hold
// for itself (the kernel's LOCAL_FREE_TARGET).
const lruLocalFree = 128

// verify counts what an LRU map evicted while being filled: an LRU hash
// can evict before it is full, when the free entries left are held by
// other CPUs.
func (w *entryWriter) verify() error {
	if !w.lru {
		return nil
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		return err
	}
	if w.written+ncpu*lruLocalFree <= w.room {
		return nil // it never ran out of free entries
	}
	n, err := countEntries(w.m)
	if err != nil {
		return err
	}
	if n < w.written {
		w.dropped += w.written - n
		w.written = n
	}
	return nil
}

// copyBatches copies a map without per-CPU values in batches.
func copyBatches(old *ebpf.Map, oldValue btf.Type, kc, vc *converter, remap func(uint32) (uint32, bool), w *entryWriter) error {
	var keep func([]byte) bool // nil: all, as long as there is room
	if !w.array && int(old.MaxEntries()) > w.room {
		// maybe more entries than room: keep the most recently seen
		var err error
		if keep, err = newestFirst(old, oldValue, w.room); err != nil {
			return err
		}
	}
	ks, vs := make([]byte, 0, migrateBatch*kc.to), make([]byte, 0, migrateBatch*vc.to)
	return walkRaw(old, func(n int, keys, values []byte) error {
		ks, vs = ks[:0], vs[:0]
		m := 0
		for j := range n {
			k := keys[j*kc.from : (j+1)*kc.from]
			v := values[j*vc.from : (j+1)*vc.from]
			if keep != nil && !keep(v) {
				w.dropped++
				continue
			}
			ks = ks[:len(ks)+kc.to]
			vs = vs[:len(vs)+vc.to]
			nk, nv := ks[len(ks)-kc.to:], vs[len(vs)-vc.to:]
			kc.convert(nk, k)
			vc.convert(nv, v)
			if !w.keep(nk, nv, remap) {
				ks, vs = ks[:len(ks)-kc.to], vs[:len(vs)-vc.to]
				continue
			}
			m++
		}
		return w.put(m, ks, vs)
	})
}

// newestFirst returns a filter of old values that keeps the room entries
// seen last, by the value's last_seen_ns member, when old holds more; nil
// when it does not, or has no such member (then the first ones walked
// fill the room).
func newestFirst(old *ebpf.Map, oldValue btf.Type, room int) (func([]byte) bool, error) {
	off, ranked := lastSeenOffset(oldValue)
	if !ranked {
		return nil, nil
	}
	var seen []uint64
	vs := int(old.ValueSize())
	err := walkRaw(old, func(k int, _, values []byte) error {
		for j := range k {
			seen = append(seen, binary.LittleEndian.Uint64(values[j*vs+off:]))
		}
		return nil
	})
	if err != nil || len(seen) <= room {
		return nil, err
	}
	slices.Sort(seen)
	cutoff := seen[len(seen)-room] // the oldest one kept
	return func(v []byte) bool { return binary.LittleEndian.Uint64(v[off:]) >= cutoff }, nil
}

// lastSeenOffset is where a value's last_seen_ns member is.
func lastSeenOffset(t btf.Type) (int, bool) {
	s, ok := btf.UnderlyingType(t).(*btf.Struct)
	if !ok {
		return 0, false
	}
	for _, m := range s.Members {
		if bits, _, ok := intLike(btf.UnderlyingType(m.Type)); ok && m.Name == "last_seen_ns" &&
			bits == 64 && m.BitfieldSize == 0 && m.Offset%8 == 0 {
			return int(m.Offset / 8), true
		}
	}
	return 0, false
}

// copyPerCPU copies a map of per-CPU values, entry by entry (fsha's are
// small).
func copyPerCPU(old *ebpf.Map, kc, vc *converter, remap func(uint32) (uint32, bool), w *entryWriter) error {
	var (
		k  []byte
		vs [][]byte
	)
	it := old.Iterate()
	for it.Next(&k, &vs) {
		nk := make([]byte, kc.to)
		kc.convert(nk, k)
		nvs := make([][]byte, len(vs))
		all := make([]byte, 0, len(vs)*vc.to)
		for i, v := range vs {
			nvs[i] = make([]byte, vc.to)
			vc.convert(nvs[i], v)
			all = append(all, nvs[i]...)
		}
		if !w.keep(nk, all, remap) {
			continue
		}
		err := w.m.Put(nk, nvs)
		switch {
		case isFull(err):
			w.dropped++
		case err != nil:
			return err
		default:
			w.written++
		}
	}
	return it.Err()
}

// migrateBatch is how many entries one batch syscall moves.
const migrateBatch = 4096

// rawArrays is a slice of n fixed-size byte arrays (what the batch calls
// take) and the bytes behind it.
type rawArrays struct {
	slice reflect.Value
	bytes []byte
}

func byteArrays(size, n int) rawArrays {
	s := reflect.MakeSlice(reflect.SliceOf(reflect.ArrayOf(size, reflect.TypeFor[byte]())), n, n)
	return rawArrays{slice: s, bytes: unsafe.Slice((*byte)(s.UnsafePointer()), size*n)}
}

// walkRaw calls fn with the raw entries of m (a map without per-CPU
// values), migrateBatch at a time, in batches where the kernel can.
func walkRaw(m *ebpf.Map, fn func(n int, keys, values []byte) error) error {
	ksz, vsz := int(m.KeySize()), int(m.ValueSize())
	ks, vs := byteArrays(ksz, migrateBatch), byteArrays(vsz, migrateBatch)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, ks.slice.Interface(), vs.slice.Interface(), nil)
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if n > 0 {
			if err := fn(n, ks.bytes[:n*ksz], vs.bytes[:n*vsz]); err != nil {
				return err
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", m.Type(), err)
		}
	}
	var k, v []byte
	keys, values := make([]byte, 0, migrateBatch*ksz), make([]byte, 0, migrateBatch*vsz)
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		keys, values, n = append(keys, k...), append(values, v...), n+1
		if n == migrateBatch {
			if err := fn(n, keys, values); err != nil {
				return err
			}
			keys, values, n = keys[:0], values[:0], 0
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read %s: %w", m.Type(), err)
	}
	if n > 0 {
		return fn(n, keys, values)
	}
	return nil
}

// countEntries counts the entries of a map.
func countEntries(m *ebpf.Map) (int, error) {
	if isPerCPU(m.Type()) {
		n := 0
		var (
			k  []byte
			vs [][]byte
		)
		it := m.Iterate()
		for it.Next(&k, &vs) {
			n++
		}
		return n, it.Err()
	}
	n := 0
	err := walkRaw(m, func(k int, _, _ []byte) error {
		n += k
		return nil
	})
	return n, err
}

func allZeroBytes(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
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
	_, vc, err := mm.converters()
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
