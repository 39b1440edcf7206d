package dataplane

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The programs read time as jiffies, the one clock the verifier inlines
// (bpf/fsha.c, ns_per_jiffy). setClock measures jiffies against
// CLOCK_MONOTONIC and sets the constants that turn one into the other, so
// that every timestamp the programs write is CLOCK_MONOTONIC nanoseconds,
// as the rest of fsha reads them (flows, lease).
func setClock(spec *ebpf.CollectionSpec) error {
	tick, err := jiffyLength()
	if err != nil {
		return err
	}
	jiffies, mono, err := sampleJiffies(spec.Programs[fshaProgFshaClock])
	if err != nil {
		return err
	}
	offset := jiffies*tick - mono
	if err := spec.Variables[fshaVarNsPerJiffy].Set(tick); err != nil {
		return fmt.Errorf("set ns_per_jiffy: %w", err)
	}
	if err := spec.Variables[fshaVarJiffiesOffsetNs].Set(offset); err != nil {
		return fmt.Errorf("set jiffies_offset_ns: %w", err)
	}
	return nil
}

// jiffyLength is the kernel's tick (1/HZ) in nanoseconds: the resolution of
// CLOCK_MONOTONIC_COARSE, which advances once a jiffy.
func jiffyLength() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGetres(unix.CLOCK_MONOTONIC_COARSE, &ts); err != nil {
		return 0, fmt.Errorf("read the tick length: %w", err)
	}
	tick := uint64(ts.Nano())
	if tick < uint64(time.Millisecond/10) || tick > uint64(100*time.Millisecond) {
		return 0, fmt.Errorf("CLOCK_MONOTONIC_COARSE resolution %d ns is not a jiffy (HZ from 10 to 10000)", tick)
	}
	return tick, nil
}

// sampleJiffies runs fsha_clock once and returns jiffies and the coarse
// CLOCK_MONOTONIC it read in the same jiffy.
func sampleJiffies(ps *ebpf.ProgramSpec) (jiffies, mono uint64, err error) {
	if ps == nil {
		return 0, 0, errors.New("program fsha_clock missing from the bpf object")
	}
	prog, err := ebpf.NewProgram(ps)
	if err != nil {
		return 0, 0, fmt.Errorf("load fsha_clock: %w", err)
	}
	defer prog.Close()
	out := make([]byte, 24)
	// A tick between the two reads of the coarse clock makes them differ:
	// ask again. Ticks are milliseconds apart, the reads nanoseconds.
	for range 10 {
		if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, len(out)), DataOut: out}); err != nil {
			return 0, 0, fmt.Errorf("run fsha_clock: %w", err)
		}
		before, j, after := binary.NativeEndian.Uint64(out), binary.NativeEndian.Uint64(out[8:]), binary.NativeEndian.Uint64(out[16:])
		if before == after {
			return j, before, nil
		}
	}
	return 0, 0, errors.New("run fsha_clock: the clock kept ticking between reads")
}
