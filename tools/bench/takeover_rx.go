package main

// The takeover suite's receiver: a TCX ingress program on veth b that
// counts the tickles (IPv4 TCP segments from the VIP) and takes the
// kernel's monotonic clock (bpf_ktime_get_ns, the clock of the daemon's
// ownership.Mono) at the first one and at the one that makes the count
// reach a target, then drops them, as the tickle suite's tc-drop receiver
// does: the clients' answers are not the node's work.

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
)

// tickleRx is the receiver's one map value.
type tickleRx struct {
	Count   uint64 // tickles seen
	FirstNs uint64 // when the first was seen
	NthNs   uint64 // when the Target-th was seen
	Target  uint64 // written by the harness
}

// Offsets in tickleRx and in struct __sk_buff.
const (
	rxCount   = 0
	rxFirst   = 8
	rxNth     = 16
	rxTarget  = 24
	skbData   = 76
	skbDataEn = 80
)

func newTickleRxMap() (*ebpf.Map, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Name: "takeover_rx", Type: ebpf.Array, KeySize: 4, ValueSize: 32, MaxEntries: 1})
	if err != nil {
		return nil, fmt.Errorf("create receiver map: %w", err)
	}
	return m, nil
}

// tickleRxProgram returns the SchedCLS program counting the IPv4 TCP
// segments from vip into m and dropping them; other frames (the
// announcements' ARP) pass.
func tickleRxProgram(m *ebpf.Map, vip netip.Addr) (*ebpf.Program, error) {
	if !vip.Is4() {
		return nil, fmt.Errorf("receiver: %s is not IPv4", vip)
	}
	v4 := vip.As4()
	src := int32(binary.LittleEndian.Uint32(v4[:])) // as a u32 load reads it
	insns := asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, skbData, asm.Word),
		asm.LoadMem(asm.R3, asm.R1, skbDataEn, asm.Word),
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 14+20),
		asm.JGT.Reg(asm.R4, asm.R3, "pass"),
		asm.LoadMem(asm.R4, asm.R2, 12, asm.Half),
		asm.JNE.Imm(asm.R4, 0x0008, "pass"), // ETH_P_IP, big-endian
		asm.LoadMem(asm.R4, asm.R2, 14+9, asm.Byte),
		asm.JNE.Imm(asm.R4, 6, "pass"), // IPPROTO_TCP
		asm.LoadMem(asm.R4, asm.R2, 14+12, asm.Word),
		asm.JNE.Imm32(asm.R4, src, "pass"),

		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, m.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Reg(asm.R6, asm.R0),
		asm.Mov.Imm(asm.R7, 1),
		fetchAdd(asm.R6, asm.R7, rxCount), // R7 = the count before
		asm.FnKtimeGetNs.Call(),
		asm.JNE.Imm(asm.R7, 0, "notfirst"),
		asm.StoreMem(asm.R6, rxFirst, asm.R0, asm.DWord),
		asm.Add.Imm(asm.R7, 1).WithSymbol("notfirst"),
		asm.LoadMem(asm.R1, asm.R6, rxTarget, asm.DWord),
		asm.JNE.Reg(asm.R7, asm.R1, "drop"),
		asm.StoreMem(asm.R6, rxNth, asm.R0, asm.DWord),
		asm.Mov.Imm(asm.R0, 2).WithSymbol("drop"), // TC_ACT_SHOT
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("pass"), // TCX_PASS
		asm.Return(),
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Name: "takeover_rx", Type: ebpf.SchedCLS, License: "GPL", Instructions: insns})
	if err != nil {
		return nil, fmt.Errorf("load receiver program: %w", err)
	}
	return prog, nil
}

// fetchAdd is asm.FetchAdd.Mem(dst, src, asm.DWord, off) with its
// immediate set: cilium/ebpf v0.22's Marshal writes the immediate it had
// before moving the atomic operation there, which drops BPF_FETCH (a
// plain atomic add, src unchanged).
func fetchAdd(dst, src asm.Register, off int16) asm.Instruction {
	ins := asm.FetchAdd.Mem(dst, src, asm.DWord, off)
	ins.Constant = int64(asm.FetchAdd >> 8)
	return ins
}
