package node

import (
	"context"
	"fmt"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/ownership"
)

// steering keeps the data plane steering the old connections of every VIP
// this node holds that another node still drains (a planned move), to that
// node; when a draining node dies, its clients are tickled to reconnect
// here. It works from the engine's snapshots, off the loop: Steer may
// touch every connection of a VIP.
type steering struct {
	n    *Node
	kick chan struct{}

	mu   sync.Mutex
	want map[steerKey][6]byte
	have map[steerKey]bool
	// mac is the MAC each steering in have was applied with: a drainer
	// whose MAC changed (its first public interface lost link) is steered
	// to again with the new one
	mac  map[steerKey][6]byte
	dead map[steerKey]bool // drainers that died: tickle their clients
	// ifWant, ifHave: each steered drainer's MACs by interface name, as
	// its heartbeats say them and as the data plane has them
	ifWant map[int]map[string][6]byte
	ifHave map[int]map[string][6]byte
}

type steerKey struct{ vip, owner int }

func newSteering(n *Node) *steering {
	return &steering{n: n, kick: make(chan struct{}, 1), want: map[steerKey][6]byte{}, have: map[steerKey]bool{}, mac: map[steerKey][6]byte{}, dead: map[steerKey]bool{},
		ifWant: map[int]map[string][6]byte{}, ifHave: map[int]map[string][6]byte{}}
}

// ifaceMACs is what a snapshot says of owner's MACs by interface name.
func ifaceMACs(sn ownership.Snapshot, owner int) map[string][6]byte {
	m := map[string][6]byte{}
	for _, f := range sn.Ifaces[owner] {
		m[f.Name] = f.MAC
	}
	return m
}

// update computes what to steer from a snapshot.
func (s *steering) update(sn ownership.Snapshot) {
	want := map[steerKey][6]byte{}
	ifWant := map[int]map[string][6]byte{}
	alive := map[int]bool{}
	for _, nv := range sn.Nodes {
		alive[nv.PNN] = nv.Alive
	}
	for i, v := range sn.VIPs {
		if v.Holder != s.n.cfg.Self {
			continue
		}
		for _, d := range v.Drainers {
			if d != s.n.cfg.Self {
				want[steerKey{i, d}] = sn.MACs[d]
				ifWant[d] = ifaceMACs(sn, d)
			}
		}
	}
	s.mu.Lock()
	changed := len(want) != len(s.want)
	for k, mac := range want {
		if old, ok := s.want[k]; !ok || old != mac {
			changed = true
		}
	}
	for owner, m := range ifWant {
		if !maps.Equal(m, s.ifWant[owner]) {
			changed = true
		}
	}
	for k := range s.have {
		if _, ok := want[k]; !ok && !alive[k.owner] {
			s.dead[k] = true
		}
	}
	s.want, s.ifWant = want, ifWant
	s.mu.Unlock()
	if changed {
		select {
		case s.kick <- struct{}{}:
		default:
		}
	}
}

// ensure steers owner's connections to VIP i now (a takeover from a
// draining node, before the address is up).
func (s *steering) ensure(i, owner int) error {
	k := steerKey{i, owner}
	s.mu.Lock()
	mac := s.want[k]
	s.mu.Unlock()
	s.n.mu.Lock()
	if mac == ([6]byte{}) {
		mac = s.n.snap.MACs[owner]
	}
	ifaces := ifaceMACs(s.n.snap, owner)
	s.n.mu.Unlock()
	if mac == ([6]byte{}) {
		return fmt.Errorf("no MAC known for node %d", owner)
	}
	// the interface MACs first: the first packet steered goes right
	if err := s.n.dp.SetPeerMACs(owner, ifaces); err != nil {
		s.n.log.Warn("steer: interface MACs", zap.Int("node", owner), zap.Error(err))
	} else {
		s.mu.Lock()
		s.ifHave[owner] = ifaces
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.want[k] = mac
	if s.ifWant[owner] == nil {
		s.ifWant[owner] = ifaces
	}
	s.have[k], s.mac[k] = true, mac
	active := len(s.have)
	s.mu.Unlock()
	return s.n.dp.Steer(s.n.cfg.VIPs[i].VIP(), owner, mac, true, active)
}

func (s *steering) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-t.C:
			s.refreshIfaces()
		}
		s.apply(ctx)
	}
}

// refreshIfaces makes the next apply write every steered drainer's
// interface MACs again: the data plane keys them by this node's ifindex,
// which a deleted and recreated interface changes while the drainer's
// heartbeats do not (a few small map writes a second while draining).
func (s *steering) refreshIfaces() {
	s.mu.Lock()
	defer s.mu.Unlock()
	clear(s.ifHave)
}

// apply makes the data plane steer what is wanted. Steer may walk many
// connections: it runs without the lock that update (the loop) takes.
func (s *steering) apply(ctx context.Context) {
	type change struct {
		k    steerKey
		mac  [6]byte
		on   bool
		dead bool
	}
	var changes []change
	type ifChange struct {
		owner int
		macs  map[string][6]byte // nil: forget
	}
	var ifChanges []ifChange
	s.mu.Lock()
	for owner, m := range s.ifWant {
		if have, ok := s.ifHave[owner]; !ok || !maps.Equal(have, m) {
			ifChanges = append(ifChanges, ifChange{owner, m})
			s.ifHave[owner] = m
		}
	}
	for owner := range s.ifHave {
		if _, ok := s.ifWant[owner]; !ok {
			ifChanges = append(ifChanges, ifChange{owner, nil})
			delete(s.ifHave, owner)
		}
	}
	for k := range s.have {
		if _, ok := s.want[k]; !ok {
			changes = append(changes, change{k: k, dead: s.dead[k]})
			delete(s.have, k)
			delete(s.mac, k)
			delete(s.dead, k)
		}
	}
	for k, mac := range s.want {
		if !s.have[k] || s.mac[k] != mac {
			changes = append(changes, change{k: k, mac: mac, on: true})
			s.have[k], s.mac[k] = true, mac
		}
	}
	active := len(s.want)
	s.mu.Unlock()
	// the interface MACs before the flows: the first packet steered goes
	// to the right network
	for _, c := range ifChanges {
		if err := s.n.dp.SetPeerMACs(c.owner, c.macs); err != nil {
			s.n.log.Warn("steer: interface MACs", zap.Int("node", c.owner), zap.Error(err))
			s.mu.Lock()
			delete(s.ifHave, c.owner) // try again next time
			s.mu.Unlock()
		}
	}
	for _, c := range changes {
		vip := s.n.cfg.VIPs[c.k.vip]
		if err := s.n.dp.Steer(vip.VIP(), c.k.owner, c.mac, c.on, active); err != nil {
			s.n.log.Warn("steer", zap.Bool("on", c.on), zap.Error(err))
			if c.on {
				s.mu.Lock()
				delete(s.have, c.k) // try again next time
				s.mu.Unlock()
			}
			continue
		}
		if !c.dead {
			continue
		}
		if held, iface := s.n.workers[c.k.vip].held(); held {
			s.n.log.Info("draining node died: tickling its connections", zap.Stringer("vip", vip.Prefix), zap.Int("node", c.k.owner))
			t0 := time.Now()
			s.n.record(admin.Takeover{VIP: vip.Prefix.String(), Iface: iface, Kind: "takeover",
				Reason: "draining node " + s.n.cfg.Nodes[c.k.owner].Addr.String() + " died",
				From:   s.n.cfg.Nodes[c.k.owner].Addr.String(), Steps: []admin.TimelineStep{{Step: "decision", At: t0}}})
			go s.n.tickle(ctx, vip, iface, []int{c.k.owner}, t0)
		}
	}
}

// steered tells replication whether a connection of owner's to VIP i must
// be steered.
func (s *steering) steered(i, owner int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.have[steerKey{i, owner}]
}
