package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Actions is everything the control layer asks of the data plane when it
// takes over or releases a VIP: the address, its announcement and the
// fencing lease. It implements control/node.DataPlane.
type Actions struct {
	log   *zap.Logger
	maps  *Maps
	addrs *VIPAddrs

	mu         sync.Mutex
	announcers map[string]*Announcer
}

// NewActions returns the actions over maps, for VIPs on the given interfaces.
func NewActions(log *zap.Logger, maps *Maps) *Actions {
	return &Actions{log: log.Named("dataplane"), maps: maps, addrs: NewVIPAddrs(log), announcers: map[string]*Announcer{}}
}

// AddVIP puts the VIP on iface.
func (a *Actions) AddVIP(iface string, p netip.Prefix) error { return a.addrs.AddVIP(iface, p) }

// RemoveVIP stops announcing the VIP on iface and removes it.
func (a *Actions) RemoveVIP(iface string, p netip.Prefix) error {
	a.mu.Lock()
	an := a.announcers[iface]
	a.mu.Unlock()
	if an != nil {
		an.Stop(p.Addr())
	}
	return a.addrs.RemoveVIP(iface, p)
}

// Announce sends the first gratuitous ARP / unsolicited NA for addr on
// iface and returns when it left; the repeats go on until ctx ends.
func (a *Actions) Announce(ctx context.Context, iface string, addr netip.Addr) (time.Time, error) {
	an, err := a.announcer(iface)
	if err != nil {
		return time.Time{}, err
	}
	ann, err := an.Announce(ctx, addr, 0, 0)
	if err != nil {
		return time.Time{}, err
	}
	return ann.First, nil
}

func (a *Actions) announcer(iface string) (*Announcer, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if an := a.announcers[iface]; an != nil {
		return an, nil
	}
	an, err := NewAnnouncer(a.log, iface)
	if err != nil {
		return nil, fmt.Errorf("announcer on %s: %w", iface, err)
	}
	a.announcers[iface] = an
	return an, nil
}

// RenewLease lets the programs answer for the VIPs for d more.
func (a *Actions) RenewLease(d time.Duration) error { return a.maps.RenewLease(d) }

// ExpireLease fences the node at once.
func (a *Actions) ExpireLease() error { return a.maps.ExpireLease() }

// Close stops every announcement.
func (a *Actions) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, an := range a.announcers {
		errs = append(errs, an.Close())
	}
	a.announcers = map[string]*Announcer{}
	return errors.Join(errs...)
}
