package main

// Part 2 of suite "dataplane", steered: packets per second through the
// veth pair while b's fsha steers every frame it receives back out to
// another node (a drain's new holder). The frames are the tracked
// modes' (client benchClient(0)), here a peer flow of node ownerPNN
// marked to steer, with no local flow. On the xdp path b's XDP program
// rewrites the MACs and returns XDP_TX: the frame goes straight back to
// a, whose attached sender program (a veth's XDP_TX needs an XDP program
// on the peer) counts and drops frames to ownerMAC. On the tc path XDP
// passes the frame up, TC ingress rewrites it and redirects it to b's
// egress, and a counts it the same way. The share of b's received frames
// that came back says the path steered them all.

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/fsha/fsha/dataplane"
)

// loadPPSSteer loads the data plane of the steered modes: a clustered
// node's, with ownerPNN's MAC, the tracked modes' client as a peer flow
// of ownerPNN marked to steer, steering on, and no local flow.
func (b *dataplaneBench) loadPPSSteer() (*dataplane.Unpinned, error) {
	u, err := dataplane.LoadUnpinnedWith(dataplane.UnpinnedOptions{FlowsMax: dataplane.DefaultFlowsMax})
	if err != nil {
		return nil, err
	}
	err = func() error {
		if err := u.SetVIPs([]netip.Addr{benchVIP4, benchVIP6}); err != nil {
			return err
		}
		if err := u.SetPorts([]uint16{445, 139, 2049, 111}); err != nil {
			return err
		}
		if b.lease {
			if err := u.RenewLease(time.Hour); err != nil {
				return err
			}
		}
		if err := u.SetNodeMAC(ownerPNN, ownerMAC); err != nil {
			return err
		}
		c := benchClient(false, 0)
		if err := u.UpsertPeerFlows([]dataplane.PeerFlow{{VIP: benchVIP4, VIPPort: trackedPort,
			Client: c.Addr(), ClientPort: c.Port(), Owner: ownerPNN, LastSeen: time.Now(), Steer: true}}); err != nil {
			return err
		}
		return u.SetSteering(1)
	}()
	if err != nil {
		u.Close()
		return nil, fmt.Errorf("steered pps data plane: %w", err)
	}
	return u, nil
}

// steeredBack is the sender program's head: a frame to ownerMAC (b steered
// it back) is counted in state[1] and dropped; any other goes on at label
// "send". Every mode runs it, so their baselines pay it too. The frame's
// MACs are written back to the sender's first: the frame's page belongs
// to the live-frame run's page pool, whose frames are initialised once
// per page and reused as they come back, so a page dropped with b's
// rewrite in it would be sent again to ownerMAC and counted again.
func steeredBack(state *ebpf.Map) asm.Instructions {
	word := func(m []byte) int32 {
		return int32(uint32(m[0]) | uint32(m[1])<<8 | uint32(m[2])<<16 | uint32(m[3])<<24)
	} // as a little-endian load reads it
	half := func(m []byte) int32 { return int32(uint32(m[0]) | uint32(m[1])<<8) }
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R1, 0, asm.Word), // data
		asm.LoadMem(asm.R3, asm.R1, 4, asm.Word), // data_end
		asm.Mov.Reg(asm.R4, asm.R2),
		asm.Add.Imm(asm.R4, 12),
		asm.JGT.Reg(asm.R4, asm.R3, "send"),
		asm.LoadMem(asm.R4, asm.R2, 0, asm.Word),
		asm.JNE.Imm(asm.R4, word(ownerMAC[:4]), "send"),
		asm.LoadMem(asm.R4, asm.R2, 4, asm.Half),
		asm.JNE.Imm(asm.R4, half(ownerMAC[4:]), "send"),
		// dst macB, src macA again
		asm.StoreImm(asm.R2, 0, int64(word(macB[:4])), asm.Word),
		asm.StoreImm(asm.R2, 4, int64(half(macB[4:])), asm.Half),
		asm.StoreImm(asm.R2, 6, int64(word(macA[:4])), asm.Word),
		asm.StoreImm(asm.R2, 10, int64(half(macA[4:])), asm.Half),
		asm.StoreImm(asm.RFP, -4, 1, asm.Word),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.LoadMapPtr(asm.R1, state.FD()),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		asm.Mov.Imm(asm.R1, 1),
		asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("drop"), // XDP_DROP
		asm.Return(),
	}
}
