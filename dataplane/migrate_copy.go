package dataplane

// Copying a pinned map's entries into its new map, converted to the new
// layout (convert.go), as the migration (migrate.go) fills it.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

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

// converters returns the conversions of mm's keys and values into those
// of to.
func (mm *migratingMap) converters(to *ebpf.MapSpec) (key, value *converter, err error) {
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
	if key, err = build(mm.oldKey, to.Key, mm.old.KeySize(), to.KeySize, "key"); err != nil {
		return nil, nil, err
	}
	value, err = build(mm.oldValue, to.Value, mm.old.ValueSize(), to.ValueSize, "value")
	return key, value, err
}

// copyEntries converts every entry of the old map into the new one; remap,
// when set, moves array indexes. A new map with less room keeps the most
// recently seen entries (by a last_seen_ns member of the value, if any).
func (mm *migratingMap) copyEntries(remap func(uint32) (uint32, bool)) error {
	return mm.copyInto(mm.new, mm.spec, remap)
}

// copyInto is copyEntries into dst, a map of spec to.
func (mm *migratingMap) copyInto(dst *ebpf.Map, to *ebpf.MapSpec, remap func(uint32) (uint32, bool)) error {
	oldType, newType := mm.old.Type(), dst.Type()
	if isPerCPU(oldType) != isPerCPU(newType) {
		n, err := countEntries(mm.old)
		mm.dropped = n
		mm.fields = append(mm.fields, zap.String("dropped_because", fmt.Sprintf("%s cannot be converted into %s", oldType, newType)))
		return err
	}
	kc, vc, err := mm.converters(to)
	if err != nil {
		return err
	}
	if isArray(newType) && kc.to != 4 {
		return fmt.Errorf("array with a key of %d bytes", kc.to)
	}
	w := &entryWriter{m: dst, array: isArray(newType), lru: newType == ebpf.LRUHash || newType == ebpf.LRUCPUHash,
		room: int(dst.MaxEntries()), keySize: kc.to, valueSize: vc.to}
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
