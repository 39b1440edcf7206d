package dataplane

import "net/netip"

// The per-VIP leases and grants, for the control layer (see vipleases.go
// and vipgrants.go).

// SetFencingMode says which leases the programs enforce: the node's
// (RenewLease) and each VIP's own (SetVIPLease).
func (a *Actions) SetFencingMode(nodeWide, perVIP bool) error {
	return a.maps.SetFencingMode(nodeWide, perVIP)
}

// SetVIPLease makes l the lease the data plane enforces for vip.
func (a *Actions) SetVIPLease(vip netip.Addr, l VIPLease) error { return a.maps.SetVIPLease(vip, l) }

// VIPLeases returns the leases the data plane enforces now.
func (a *Actions) VIPLeases() (map[netip.Addr]VIPLease, error) { return a.maps.VIPLeases() }

// SetVIPGrant records this node's promise as a voter for vip.
func (a *Actions) SetVIPGrant(vip netip.Addr, g VIPGrant) error { return a.maps.SetVIPGrant(vip, g) }

// DeleteVIPGrant forgets the promise for vip.
func (a *Actions) DeleteVIPGrant(vip netip.Addr) error { return a.maps.DeleteVIPGrant(vip) }

// VIPGrants returns the recorded promises.
func (a *Actions) VIPGrants() (map[netip.Addr]VIPGrant, error) { return a.maps.VIPGrants() }
