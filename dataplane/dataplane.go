package dataplane

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where the maps and links live unless told otherwise.
const DefaultPinPath = "/sys/fs/bpf/fsha"

// DefaultFlowsMax is the default capacity of the flows map.
const DefaultFlowsMax = 1 << 20

// DefaultPeerFlowsMax is the default largest capacity of the peer flows
// map: the flows of 16 nodes at 1M each (16,777,216), or fewer nodes with
// more. The map starts at 65,536 entries and grows as it fills
// (peergrow.go), so only the flows that exist take memory, and buckets in
// proportion.
const DefaultPeerFlowsMax = 1 << 24

// Options configures Load.
type Options struct {
	// PinPath is the bpffs directory holding maps and links.
	PinPath string
	// FlowsMax is the capacity of the flows map.
	FlowsMax uint32
	// PeerFlowsMax is the largest capacity of the map of the other nodes'
	// flows, which grows up to it.
	PeerFlowsMax uint32
	// PeerFlowsFirst is that map's first capacity (0: PeerFlowsFirst);
	// tests make it small to see it grow.
	PeerFlowsFirst uint32
	// Interfaces to attach to, by name. Links pinned for interfaces not in
	// this list are detached.
	Interfaces []string
	// ReplyInterfaces are interfaces besides Interfaces through which
	// answers to VIP clients leave (reply.go): TC egress alone runs
	// there. Their links are pinned and pruned like the others'.
	ReplyInterfaces []string
	// SteerMode is how interfaces steer a drain's old connections
	// (steermode.go); "" is auto.
	SteerMode SteerMode
	// XDPAttach is how XDP attaches (native, generic); "" is auto.
	XDPAttach XDPAttach
}

// Dataplane is the loaded and attached set of programs and maps.
type Dataplane struct {
	Maps
	log     *zap.Logger
	pinPath string
	objs    fshaObjects
	lock    *os.File
	// attachMu guards attach and steer: an interface that appears later
	// is attached while the node runs (AttachInterface)
	attachMu sync.Mutex
	attach   []attachment
	// steerWant is the operator's steering wish, steer what each
	// interface got (attachSteering)
	steerWant SteerMode
	steer     []SteerState
	// xdpWant is the operator's XDP attach mode wish
	xdpWant XDPAttach
}

// Load loads the programs, reuses the maps pinned under opts.PinPath (so a
// restart keeps every flow), migrates those of another layout or capacity
// (an upgrade, another --flows-max: migrate.go), and attaches to
// opts.Interfaces, atomically replacing the programs of a previous fsha.
// The programs stay attached after Close: tracking goes on while the
// daemon is down.
func Load(log *zap.Logger, opts Options) (_ *Dataplane, err error) {
	if opts.PinPath == "" {
		opts.PinPath = DefaultPinPath
	}
	if opts.FlowsMax == 0 {
		opts.FlowsMax = DefaultFlowsMax
	}
	if opts.PeerFlowsMax == 0 {
		opts.PeerFlowsMax = DefaultPeerFlowsMax
	}
	log = log.Named("dataplane")

	if err := EnsureBPFFS(opts.PinPath); err != nil {
		return nil, err
	}
	lock, err := lockDir(opts.PinPath)
	if err != nil {
		return nil, err
	}
	steerWant, err := ParseSteerMode(string(opts.SteerMode))
	if err != nil {
		lock.Close()
		return nil, err
	}
	xdpWant, err := ParseXDPAttach(string(opts.XDPAttach))
	if err != nil {
		lock.Close()
		return nil, err
	}
	dp := &Dataplane{log: log, pinPath: opts.PinPath, lock: lock, steerWant: steerWant, xdpWant: xdpWant}
	defer func() {
		if err != nil {
			err = errors.Join(err, dp.Close())
		}
	}()

	spec, err := newSpec(opts.FlowsMax)
	if err != nil {
		return nil, err
	}
	mig, err := planMigration(log, spec, opts.PinPath, opts.PeerFlowsFirst, opts.PeerFlowsMax)
	if err != nil {
		return nil, err
	}
	defer mig.Close()
	err = spec.LoadAndAssign(&dp.objs, &ebpf.CollectionOptions{
		Maps:            ebpf.MapOptions{PinPath: opts.PinPath},
		MapReplacements: mig.replacements(),
	})
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load bpf programs: verifier rejected them:\n%+v", verr)
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	dp.Maps = mapsOf(&dp.objs.fshaMaps)
	dp.indexes().setPeerLimits(opts.PeerFlowsFirst, opts.PeerFlowsMax)
	dp.indexes().setPeerGrowthLog(func(from, to uint32, n int, took time.Duration, err error) {
		if err != nil {
			log.Error("peer flows map could not grow: it stays as it is", zap.Uint32("capacity", from),
				zap.Uint32("to", to), zap.Error(err))
			return
		}
		log.Info("peer flows map grew", zap.Uint32("from", from), zap.Uint32("to", to),
			zap.Int("entries_copied", n), zap.Duration("took", took))
	})
	// the new programs' maps of another layout than the pins: filled and
	// pinned in place of the old ones, which the old programs use until
	// attachAll replaces them
	if err := mig.fill(&dp.Maps); err != nil {
		return nil, err
	}
	if err := mig.pin(); err != nil {
		return nil, err
	}
	if err := dp.initPeer(); err != nil {
		return nil, err
	}
	// index the other nodes' flows (kept from an earlier run) now, in the
	// background; the local flows are indexed when the event reader starts
	dp.indexes().ensurePeer(&dp.Maps)

	if err := dp.attachAll(opts.Interfaces, opts.ReplyInterfaces); err != nil {
		return nil, err
	}
	if err := mig.finish(&dp.Maps); err != nil {
		return nil, err
	}
	log.Info("data plane loaded", zap.String("pin_path", opts.PinPath),
		zap.Uint32("flows_max", opts.FlowsMax), zap.Uint32("peer_flows_max", opts.PeerFlowsMax), zap.Strings("interfaces", opts.Interfaces),
		zap.Strings("reply_interfaces", dp.ReplyInterfaces()))
	return dp, nil
}

// PinPath returns the directory of the pins.
func (dp *Dataplane) PinPath() string { return dp.pinPath }

// Attachments describes where the programs are attached.
func (dp *Dataplane) Attachments() []Attachment {
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	out := make([]Attachment, 0, len(dp.attach))
	for _, a := range dp.attach {
		out = append(out, a.Attachment)
	}
	return out
}

// Steering says how each interface steers, and why (attachSteering).
func (dp *Dataplane) Steering() []SteerState {
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	return slices.Clone(dp.steer)
}

// Close releases this process's handles. Programs and maps stay pinned and
// attached: use Unload to remove them.
func (dp *Dataplane) Close() error {
	var errs []error
	dp.attachMu.Lock()
	defer dp.attachMu.Unlock()
	for _, a := range dp.attach {
		if a.link != nil {
			errs = append(errs, a.link.Close())
		}
	}
	dp.attach = nil
	errs = append(errs, dp.objs.Close())
	if dp.lock != nil {
		errs = append(errs, dp.lock.Close())
		dp.lock = nil
	}
	return errors.Join(errs...)
}

// lockDir takes an exclusive flock on the pin directory so that two fsha
// daemons never fight over the same maps and links.
func lockDir(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin path: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("pin path %s is in use by another fsha", dir)
		}
		return nil, fmt.Errorf("lock pin path %s: %w", dir, err)
	}
	return f, nil
}

// Unload detaches the programs and removes every pin under pinPath: the
// tracked flows are lost. It is what `fsha unload` runs.
func Unload(log *zap.Logger, pinPath string) error {
	if _, err := os.Stat(pinPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	lock, err := lockDir(pinPath)
	if err != nil {
		return err
	}
	defer lock.Close()
	var errs []error
	errs = append(errs, detachPinnedLinks(log.Named("dataplane"), pinPath, nil))
	errs = append(errs, detachLegacyTC(nil, netlink.HANDLE_MIN_EGRESS, legacyTCName),
		detachLegacyTC(nil, netlink.HANDLE_MIN_INGRESS, legacyTCIngressName))
	entries, err := os.ReadDir(pinPath)
	if err != nil {
		return fmt.Errorf("read pin path: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if err := os.Remove(filepath.Join(pinPath, e.Name())); err != nil {
			errs = append(errs, fmt.Errorf("remove pin: %w", err))
		}
	}
	return errors.Join(errs...)
}

// newSpec is fsha's bpf object as every loader starts from it: a flows map
// of flowsMax entries, the programs' flows_max to match, and their clock
// set (setClock).
func newSpec(flowsMax uint32) (*ebpf.CollectionSpec, error) {
	spec, err := loadFsha()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	spec.Maps[fshaMapFlows].MaxEntries = flowsMax
	if err := spec.Variables[fshaVarFlowsMax].Set(uint64(flowsMax)); err != nil {
		return nil, fmt.Errorf("set flows_max: %w", err)
	}
	if err := setClock(spec); err != nil {
		return nil, err
	}
	return spec, nil
}
