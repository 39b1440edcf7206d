package dataplane

import (
	"errors"
	"fmt"
	"math"
	"net/netip"

	"github.com/cilium/ebpf"
)

// VIPGrant is a promise this node made as a voter for a VIP (bpf/fsha.h,
// struct vip_grant): no other holder, for another epoch, before Until. The
// programs never read it; the vip_grants map only keeps the promises across
// a daemon restart (pinned maps survive it; a reboot or `fsha unload` loses
// them).
type VIPGrant struct {
	Epoch uint64
	// Until is CLOCK_MONOTONIC nanoseconds (MonotonicNow), kept as given.
	Until uint64
	// Holder is the PNN the grant is for.
	Holder int
}

// SetVIPGrant records g for vip and reads it back.
func (m *Maps) SetVIPGrant(vip netip.Addr, g VIPGrant) error {
	if !vip.IsValid() {
		return errors.New("set vip grant: invalid address")
	}
	if m.VipGrants == nil {
		return fmt.Errorf("set vip grant %s: %w", vip, errNoVIPLeaseMaps)
	}
	if g.Holder < 0 || int64(g.Holder) > math.MaxUint32 {
		return fmt.Errorf("set vip grant %s: holder %d out of range", vip, g.Holder)
	}
	k := vipKey(vip)
	e := fshaVipGrant{Epoch: g.Epoch, UntilNs: g.Until, Holder: uint32(g.Holder)}
	if err := m.VipGrants.Put(k, e); err != nil {
		return fmt.Errorf("write vip grant %s: %w", vip, err)
	}
	var got fshaVipGrant
	if err := m.VipGrants.Lookup(k, &got); err != nil {
		return fmt.Errorf("read back vip grant %s: %w", vip, err)
	}
	if got != e {
		return fmt.Errorf("read back vip grant %s: %+v, want %+v", vip, got, e)
	}
	return nil
}

// DeleteVIPGrant forgets the grant for vip; there being none is no error.
func (m *Maps) DeleteVIPGrant(vip netip.Addr) error {
	if m.VipGrants == nil {
		return fmt.Errorf("delete vip grant %s: %w", vip, errNoVIPLeaseMaps)
	}
	err := m.VipGrants.Delete(vipKey(vip))
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete vip grant %s: %w", vip, err)
	}
	return nil
}

// VIPGrants returns the recorded grants by VIP.
func (m *Maps) VIPGrants() (map[netip.Addr]VIPGrant, error) {
	out := map[netip.Addr]VIPGrant{}
	if m.VipGrants == nil {
		return out, nil // pins of an older fsha: no grants
	}
	grants, err := readAll[fshaVipKey, fshaVipGrant](m.VipGrants)
	if err != nil {
		return nil, fmt.Errorf("read vip grants: %w", err)
	}
	for k, g := range grants {
		out[vipKeyAddr(k)] = VIPGrant{Epoch: g.Epoch, Until: g.UntilNs, Holder: int(g.Holder)}
	}
	return out, nil
}
