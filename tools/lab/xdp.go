package lab

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// newPassXDP loads the two-instruction program `return XDP_PASS`.
func newPassXDP() (*ebpf.Program, error) {
	const xdpPass = 2
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "fsha_lab_pass",
		Type: ebpf.XDP,
		Instructions: asm.Instructions{
			asm.Mov.Imm(asm.R0, xdpPass),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		return nil, fmt.Errorf("load xdp pass program: %w", err)
	}
	return prog, nil
}

// attachPassXDP attaches the XDP_PASS program to the bridge-side veth of a
// node. Pitfall: XDP_TX and XDP_REDIRECT out of a veth are dropped unless
// its peer runs an XDP program. The link lives as long as the lab holds its
// fd: a crashed test leaves nothing attached.
func (l *Lab) attachPassXDP(ifname string, ifindex int) error {
	var lk link.Link
	err := l.Switch.Do(func() error {
		var err error
		lk, err = link.AttachXDP(link.XDPOptions{Program: l.passXDP, Interface: ifindex})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach xdp pass to %s: %w", ifname, err)
	}
	l.push("detach xdp pass from "+ifname, lk.Close)
	return nil
}
