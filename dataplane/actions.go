package dataplane

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
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
	ticklers   map[string]*Tickler
}

// NewActions returns the actions over maps, for VIPs on the given interfaces.
func NewActions(log *zap.Logger, maps *Maps) *Actions {
	return &Actions{log: log.Named("dataplane"), maps: maps, addrs: NewVIPAddrs(log), announcers: map[string]*Announcer{}, ticklers: map[string]*Tickler{}}
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

// ForgetInterface closes the announcer and the tickler of iface: the
// interface was created again (a new index), and their packet sockets
// still send through the old one. The next use opens new ones.
func (a *Actions) ForgetInterface(iface string) error {
	a.mu.Lock()
	an, t := a.announcers[iface], a.ticklers[iface]
	delete(a.announcers, iface)
	delete(a.ticklers, iface)
	a.mu.Unlock()
	var errs []error
	if an != nil {
		errs = append(errs, an.Close())
	}
	if t != nil {
		errs = append(errs, t.Close())
	}
	return errors.Join(errs...)
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
	for _, t := range a.ticklers {
		errs = append(errs, t.Close())
	}
	a.ticklers = map[string]*Tickler{}
	return errors.Join(errs...)
}

// TickleResult is what a takeover's tickle did.
type TickleResult struct {
	Conns      int
	Sent       int
	FirstRound time.Duration // sending the first round
	// FirstRoundAt is when the first round was out (for the timeline).
	FirstRoundAt time.Time
	// Resets is how many RSTs this node's stack sent during the tickle
	// (TcpOutRsts): the answers to the clients' challenge ACKs.
	Resets int64
}

// TickleVIP sends tickle ACKs for the replicated connections of vip owned
// by one of owners (every owner when owners is nil), out of iface, and
// waits for the repeats. With forget, the tickled connections are then
// removed from the peer map: after a takeover their owner's sockets are
// gone. Finding them costs O(connections of vip): one copy of their keys
// from the peer index, which the tickler converts as its first round
// sends (Tickler.tickle), so the first tickles leave before the last
// connection is even looked at.
func (a *Actions) TickleVIP(ctx context.Context, iface string, vip netip.Addr, owners []int, forget bool) (TickleResult, error) {
	pc, err := a.maps.tickleSetOf(vip, owners)
	if err != nil {
		return TickleResult{}, err
	}
	res := TickleResult{Conns: pc.len(), FirstRoundAt: time.Now()}
	if pc.len() == 0 {
		return res, nil
	}
	t, err := a.tickler(iface)
	if err != nil {
		return res, err
	}
	rstBefore := tcpOutRsts()
	start := time.Now()
	st, err := t.tickle(ctx, pc.len(), pc.conn, DefaultTickleRepeats, DefaultTickleSpacing)
	res.Sent, res.FirstRound, res.FirstRoundAt = st.Sent, st.FirstRound, start.Add(st.FirstRound)
	res.Resets = tcpOutRsts() - rstBefore
	if forget {
		err = errors.Join(err, a.maps.forgetTickleSet(pc))
	}
	return res, err
}

func (a *Actions) tickler(iface string) (*Tickler, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if t := a.ticklers[iface]; t != nil {
		return t, nil
	}
	t, err := NewTickler(a.log, iface)
	if err != nil {
		return nil, fmt.Errorf("tickler on %s: %w", iface, err)
	}
	a.ticklers[iface] = t
	return t, nil
}

// DropPeerFlows forgets the replicated connections of owner (of vip only,
// when vip is valid): those of a node dead for long. O(those connections).
func (a *Actions) DropPeerFlows(owner int, vip netip.Addr) (int, error) {
	return a.maps.DropPeerFlows(owner, vip)
}

// KillVIP ends every local connection to vip at once (SOCK_DESTROY, or
// precise RSTs), so that its clients reconnect to the VIP's new owner.
// Finding them costs O(connections of vip) (see Maps.vipConns).
func (a *Actions) KillVIP(vip netip.Addr) (KillStats, error) {
	conns, err := a.maps.vipConns(vip)
	if err != nil {
		return KillStats{}, err
	}
	if len(conns) == 0 {
		return KillStats{}, nil
	}
	return KillConns(a.log, conns)
}

// tcpOutRsts reads the RSTs this network namespace's TCP stack has sent.
func tcpOutRsts() int64 {
	b, err := os.ReadFile("/proc/net/snmp")
	if err != nil {
		return 0
	}
	var header []string
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "Tcp:") {
			continue
		}
		fields := strings.Fields(line)
		if header == nil {
			header = fields
			continue
		}
		for i, h := range header {
			if h == "OutRsts" && i < len(fields) {
				n, _ := strconv.ParseInt(fields[i], 10, 64)
				return n
			}
		}
	}
	return 0
}

// CountFlows counts this node's connections to vip (Maps.CountFlows):
// O(connections of vip); ErrIndexNotReady instead of a count of 0 that
// could be wrong.
func (a *Actions) CountFlows(vip netip.Addr) (int, error) { return a.maps.CountFlows(vip) }

// Steer marks (on) or unmarks owner's replicated connections to vip for
// XDP steering, records where owner is, and sets how many (VIP, owner)
// pairs are steered (0: the lookup is off). It reads and writes
// O(owner's connections to vip) entries.
func (a *Actions) Steer(vip netip.Addr, owner int, mac [6]byte, on bool, active int) error {
	if vip.IsValid() {
		if on {
			if err := a.maps.SetNodeMAC(owner, mac[:]); err != nil {
				return err
			}
		}
		if err := a.maps.steerPeerFlows(vip, owner, on); err != nil {
			return err
		}
	}
	return a.maps.SetSteering(active)
}

// LocalVIPs says on which interfaces the addresses of candidates are up
// (VIPAddrs.LocalVIPs).
func (a *Actions) LocalVIPs(ifaces []string, candidates []netip.Prefix) ([]LocalVIP, error) {
	return a.addrs.LocalVIPs(ifaces, candidates)
}

// SetVIPs makes addrs the tracked VIPs (Maps.SetVIPs).
func (a *Actions) SetVIPs(addrs []netip.Addr) error { return a.maps.SetVIPs(addrs) }

// SetDrainRoute adds (on) or removes the route a drain of p keeps
// through iface (VIPAddrs.SetDrainRoute).
func (a *Actions) SetDrainRoute(iface string, p netip.Prefix, on bool) error {
	return a.addrs.SetDrainRoute(iface, p, on)
}
