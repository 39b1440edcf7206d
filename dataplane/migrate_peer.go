package dataplane

// The migration of the peer flows map (migrate.go): since pin format 4 the
// pinned peer_flows is an array whose slot holds the hash map of the
// flows, which the daemon grows (peergrow.go). Before, it was that hash
// itself, of --peer-flows-max entries.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
)

// peerDifferences says how the pinned peer_flows (mm.old) differs from
// this release's (mm.why, "" when it can be reused as it is): the array
// itself, or the map in its slot (type, flags, key and value layouts, a
// capacity above peerMax). When the array is of this release's kind, the
// map in the slot becomes mm.old, what a migration copies, and the array
// mm.oldOuter.
func (mm *migratingMap) peerDifferences(peerMax uint32) error {
	why, key, value, err := differences(mm.spec, mm.old)
	if err != nil {
		return err
	}
	if why != "" || mm.spec.InnerMap == nil {
		mm.why, mm.oldKey, mm.oldValue = why, key, value
		return nil
	}
	in, err := peerSlot(mm.old)
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		// nothing to keep: a new array costs nothing, and its inner map
		// template is surely this release's
		mm.why = "no map in its slot"
		return nil
	}
	if err != nil {
		return fmt.Errorf("read its slot: %w", err)
	}
	mm.oldOuter, mm.old = mm.old, in
	inner := mm.spec.InnerMap.Copy()
	inner.MaxEntries = in.MaxEntries() // it grows: any capacity is this release's
	why, key, value, err = differences(inner, in)
	if err != nil {
		return err
	}
	var diffs []string
	if why != "" {
		diffs = append(diffs, "the map in its slot: "+why)
	}
	if in.MaxEntries() > peerMax {
		diffs = append(diffs, fmt.Sprintf("the map in its slot holds up to %d entries, above --peer-flows-max %d", in.MaxEntries(), peerMax))
	}
	mm.why, mm.oldKey, mm.oldValue = strings.Join(diffs, ", "), key, value
	return nil
}

// closeOld releases the handles of the pinned map (and its array).
func (mm *migratingMap) closeOld() {
	for _, m := range []**ebpf.Map{&mm.old, &mm.oldOuter} {
		if *m != nil {
			(*m).Close()
			*m = nil
		}
	}
}

// copyPeerFlows copies the old peer flows into a new map of the capacity
// the growth rule gives their number (at most peerMax: past it, the most
// recently seen are kept), put in the new array's slot.
func (mm *migratingMap) copyPeerFlows(peerFirst, peerMax uint32) error {
	n, err := countEntries(mm.old)
	if err != nil {
		return err
	}
	in, err := newPeerInner(peerCapacityFor(n, peerFirst, peerMax))
	if err != nil {
		return err
	}
	defer in.Close()
	if err := mm.copyInto(in, mm.spec.InnerMap, nil); err != nil {
		return err
	}
	if err := mm.new.Put(uint32(0), in); err != nil {
		return fmt.Errorf("put the peer flows map in its slot: %w", err)
	}
	return nil
}
