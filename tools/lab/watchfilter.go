package lab

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// watchSnap is what a Watch's socket keeps of a frame: its read buffer.
const watchSnap = 2048

// watchFilter is the socket filter of a Watch of addr: the kernel queues
// only the frames the Watch reads (ARP, or ICMPv6 for NDP; TCP to or
// from addr), so a busy client's other traffic is never cloned to the
// socket, which cannot then fall behind for it.
func watchFilter(addr netip.Addr) ([]bpf.RawInstruction, error) {
	if addr.Is4() {
		a := binary.BigEndian.Uint32(addr.AsSlice())
		const keep, drop = 7, 8
		return bpf.Assemble([]bpf.Instruction{
			bpf.LoadAbsolute{Off: 12, Size: 2}, // ethertype
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.ETH_P_ARP, SkipTrue: keep - 1 - 1},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.ETH_P_IP, SkipTrue: drop - 2 - 1},
			bpf.LoadAbsolute{Off: 14 + 12, Size: 4}, // source
			bpf.JumpIf{Cond: bpf.JumpEqual, Val: a, SkipTrue: keep - 4 - 1},
			bpf.LoadAbsolute{Off: 14 + 16, Size: 4}, // destination
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: a, SkipTrue: drop - 6 - 1},
			bpf.RetConstant{Val: watchSnap},
			bpf.RetConstant{Val: 0},
		})
	}
	b := addr.As16()
	var w [4]uint32
	for k := range w {
		w[k] = binary.BigEndian.Uint32(b[4*k:])
	}
	const dstStart, keep, drop = 13, 21, 22
	ins := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 12, Size: 2}, // ethertype
		bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: unix.ETH_P_IPV6, SkipTrue: drop - 1 - 1},
		bpf.LoadAbsolute{Off: 14 + 6, Size: 1}, // next header
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.IPPROTO_ICMPV6, SkipTrue: keep - 3 - 1},
	}
	for k := range w { // the source, from index 4
		at := uint8(len(ins) + 1)
		ins = append(ins, bpf.LoadAbsolute{Off: uint32(14 + 8 + 4*k), Size: 4},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: w[k], SkipTrue: dstStart - at - 1})
	}
	ins = append(ins, bpf.Jump{Skip: keep - 12 - 1})
	for k := range w { // the destination, from index dstStart
		at := uint8(len(ins) + 1)
		ins = append(ins, bpf.LoadAbsolute{Off: uint32(14 + 24 + 4*k), Size: 4},
			bpf.JumpIf{Cond: bpf.JumpNotEqual, Val: w[k], SkipTrue: drop - at - 1})
	}
	ins = append(ins, bpf.RetConstant{Val: watchSnap}, bpf.RetConstant{Val: 0})
	return bpf.Assemble(ins)
}
