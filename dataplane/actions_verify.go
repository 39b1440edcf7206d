package dataplane

import "net/netip"

// HasVIP reports whether addr is on iface: the control layer reads back
// every address it adds or removes.
func (a *Actions) HasVIP(iface string, addr netip.Addr) (bool, error) {
	return a.addrs.HasVIP(iface, addr)
}
