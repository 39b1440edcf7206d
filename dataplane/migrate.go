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
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"go.uber.org/zap"
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
	// migratePeerFlows converts every entry of the peer flows map (a
	// hash of an fsha before pin format 4, else the map in the slot) into
	// a new map sized for them, put in a new peer_flows array.
	migratePeerFlows
)

func (h migrateHow) String() string {
	return [...]string{"copied", "counters copied", "rebuilt", "new and empty", "copied into a map sized for them"}[h]
}

// pinMigrations says how each pinned map is migrated. Every pinned map of
// the spec must be listed (TestPinMigrationsCoverSpec).
var pinMigrations = map[string]migrateHow{
	// state only the maps hold
	fshaMapFlows:       migrateCopy,
	fshaMapClosedFlows: migrateCopy,
	fshaMapHandshakes:  migrateCopy,
	fshaMapPeerFlows:   migratePeerFlows, // the other nodes resend what differs, but only in a digest round
	fshaMapVipLeases:   migrateCopy,
	fshaMapVipGrants:   migrateCopy,
	fshaMapLease:       migrateCopy,
	// the daemon writes them again once it runs, but the new programs
	// fence, track and steer with them from their first packet
	fshaMapVips:     migrateCopy,
	fshaMapPorts:    migrateCopy,
	fshaMapNodeMacs: migrateCopy,
	fshaMapPeerMacs: migrateCopy,
	fshaMapSteering: migrateCopy,
	// the loader writes it at attach, but the new programs steer with it
	// from their first packet, before
	fshaMapSteerModes: migrateCopy,
	fshaMapCounters:   migrateCounters,
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
	// peerFirst, peerMax: the first and largest capacity of the peer
	// flows map
	peerFirst, peerMax uint32
}

// migratingMap is one pinned map being replaced.
type migratingMap struct {
	name string
	how  migrateHow
	why  string
	spec *ebpf.MapSpec
	// old is the pinned map (nil for a derived map; for peer_flows of
	// pin format 4 on, the map in its slot); oldKey and oldValue its BTF
	// types (nil without BTF)
	old              *ebpf.Map
	oldOuter         *ebpf.Map // the pinned peer_flows array, if old is its map
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
func planMigration(log *zap.Logger, spec *ebpf.CollectionSpec, pinPath string, peerFirst, peerMax uint32) (_ *migration, err error) {
	if peerMax == 0 {
		peerMax = DefaultPeerFlowsMax
	}
	if peerFirst == 0 {
		peerFirst = PeerFlowsFirst
	}
	mg := &migration{log: log, pinPath: pinPath, start: time.Now(), peerFirst: peerFirst, peerMax: peerMax}
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
		mm := &migratingMap{name: name, how: pinMigrations[name], spec: ms, old: old}
		if name == fshaMapPeerFlows {
			err = mm.peerDifferences(peerMax)
		} else {
			mm.why, mm.oldKey, mm.oldValue, err = differences(ms, old)
		}
		if err != nil {
			mm.closeOld()
			return nil, fmt.Errorf("compare pinned map %s: %w", name, err)
		}
		if mm.why == "" {
			mm.closeOld()
			continue
		}
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
