// Package membership tells which nodes are alive and what state they
// announce, over hashicorp/memberlist: SWIM probing for liveness, node
// metadata for each node's state and held VIPs, and a broadcast queue for
// small cluster-wide messages. It decides nothing.
package membership

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	stdlog "log"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/memberlist"
	"go.uber.org/zap"
)

// DefaultPort is the gossip port (TCP and UDP) on every node address.
const DefaultPort = 4380

// Timing trades failure-detection speed against tolerance of a slow or
// lossy network. A dead node is declared after a failed probe plus the
// suspicion timeout, SuspicionMult * max(1, log10(nodes)) * ProbeInterval,
// which may grow to SuspicionMaxTimeoutMult times that while nobody else
// confirms the suspicion.
type Timing struct {
	ProbeInterval           time.Duration
	ProbeTimeout            time.Duration
	SuspicionMult           int
	SuspicionMaxTimeoutMult int
	GossipInterval          time.Duration
	PushPullInterval        time.Duration
}

// FastTiming is the default: a dead node is declared in about half a second
// on a LAN (100 ms probes, 50 ms probe timeout, 300 ms suspicion).
func FastTiming() Timing {
	return Timing{
		ProbeInterval: 100 * time.Millisecond, ProbeTimeout: 50 * time.Millisecond,
		SuspicionMult: 3, SuspicionMaxTimeoutMult: 2,
		GossipInterval: 50 * time.Millisecond, PushPullInterval: 5 * time.Second,
	}
}

// TolerantTiming is memberlist's LAN default: about five seconds to declare
// a node dead, for networks that drop packets under load.
func TolerantTiming() Timing {
	c := memberlist.DefaultLANConfig()
	return Timing{
		ProbeInterval: c.ProbeInterval, ProbeTimeout: c.ProbeTimeout,
		SuspicionMult: c.SuspicionMult, SuspicionMaxTimeoutMult: c.SuspicionMaxTimeoutMult,
		GossipInterval: c.GossipInterval, PushPullInterval: c.PushPullInterval,
	}
}

// Delegate is what the control layer gives the membership: its own state
// to announce and the handlers of what others send. Its methods are called
// from memberlist's goroutines and must not block.
type Delegate interface {
	LocalMeta() Meta
	// NotifyMsg receives a broadcast; msg is only valid during the call.
	NotifyMsg(msg []byte)
	// LocalState and MergeRemoteState carry a full state exchange on join
	// and every push/pull interval.
	LocalState() []byte
	MergeRemoteState(buf []byte)
}

// Config configures New.
type Config struct {
	// Addr is this node's address as listed in the nodes file; it is also
	// the node's name in the cluster.
	Addr netip.Addr
	Port int
	// Key is the shared secret; nil runs unencrypted and unauthenticated,
	// which the caller must have allowed explicitly.
	Key    []byte
	Timing Timing
}

// State is a member's liveness.
type State int

const (
	Alive State = iota
	Suspect
	Dead
	Left
)

func (s State) String() string {
	return [...]string{"alive", "suspect", "dead", "left"}[s]
}

// Member is one node as the membership sees it.
type Member struct {
	Addr    netip.Addr
	State   State
	Meta    Meta
	MetaErr error // the metadata did not decode: treat as holding nothing
}

// Membership runs memberlist for this node.
type Membership struct {
	log      *zap.Logger
	ml       *memberlist.Memberlist
	tr       *transport
	delegate Delegate
	queue    *memberlist.TransmitLimitedQueue
	changed  chan struct{}
	port     int

	mu       sync.Mutex
	badMetas map[string]string
	stopped  bool
}

// New starts memberlist on cfg.Addr:cfg.Port. It joins nobody yet: see Join.
func New(log *zap.Logger, cfg Config, d Delegate) (*Membership, error) {
	log = log.Named("membership")
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("gossip port %d: want 1 to 65535", cfg.Port)
	}
	m := &Membership{log: log, delegate: d, changed: make(chan struct{}, 1), port: cfg.Port, badMetas: map[string]string{}}

	mc := memberlist.DefaultLANConfig()
	mc.Name = cfg.Addr.String()
	mc.BindAddr = cfg.Addr.String()
	mc.BindPort = cfg.Port
	mc.AdvertiseAddr = cfg.Addr.String()
	mc.AdvertisePort = cfg.Port
	t := cfg.Timing
	mc.ProbeInterval, mc.ProbeTimeout = t.ProbeInterval, t.ProbeTimeout
	mc.SuspicionMult, mc.SuspicionMaxTimeoutMult = t.SuspicionMult, t.SuspicionMaxTimeoutMult
	mc.GossipInterval, mc.PushPullInterval = t.GossipInterval, t.PushPullInterval
	mc.TCPTimeout = 2 * time.Second
	mc.IndirectChecks = 2
	mc.RetransmitMult = 3
	// Backing off probes under load would slow failure detection, which is
	// the one thing this cluster must keep fast.
	mc.AwarenessMaxMultiplier = 1
	// The messages are small (heartbeats every 50 ms to every node):
	// compressing each costs more CPU than it saves bytes. Receivers
	// read both forms, so nodes that compress and nodes that do not mix.
	mc.EnableCompression = false
	if cfg.Key != nil {
		mc.SecretKey = cfg.Key
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	mc.Delegate = (*delegate)(m)
	mc.Events = (*events)(m)
	mc.Logger = stdlog.New(zapWriter{log}, "", 0)
	m.queue = &memberlist.TransmitLimitedQueue{
		NumNodes:       func() int { return m.ml.NumMembers() },
		RetransmitMult: mc.RetransmitMult,
	}
	tr, err := newTransport(log, netip.AddrPortFrom(cfg.Addr, uint16(cfg.Port)))
	if err != nil {
		return nil, err
	}
	mc.Transport, m.tr = tr, tr
	ml, err := memberlist.Create(mc)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("start gossip on %s:%d: %w", cfg.Addr, cfg.Port, err), tr.Shutdown())
	}
	m.ml = ml
	return m, nil
}

// KeyFromSecret derives the gossip encryption key (AES-256) from the
// contents of the key file.
func KeyFromSecret(secret []byte) []byte {
	secret = bytes.TrimSpace(secret)
	sum := sha256.Sum256(secret)
	return sum[:]
}

// Join contacts the given peers (node addresses); it returns how many
// answered. Nodes start in any order, so callers retry it (RejoinLoop).
func (m *Membership) Join(peers []netip.Addr) (int, error) {
	addrs := make([]string, 0, len(peers))
	for _, p := range peers {
		addrs = append(addrs, net.JoinHostPort(p.String(), strconv.Itoa(m.port)))
	}
	if len(addrs) == 0 {
		return 0, nil
	}
	return m.ml.Join(addrs)
}

// Members returns the alive and suspect members, this node included.
func (m *Membership) Members() []Member {
	var out []Member
	for _, n := range m.ml.Members() {
		out = append(out, m.member(n))
	}
	return out
}

func (m *Membership) member(n *memberlist.Node) Member {
	addr, _ := netip.ParseAddr(n.Name)
	mem := Member{Addr: addr}
	switch n.State {
	case memberlist.StateAlive:
		mem.State = Alive
	case memberlist.StateSuspect:
		mem.State = Suspect
	case memberlist.StateDead:
		mem.State = Dead
	default:
		mem.State = Left
	}
	if err := mem.Meta.UnmarshalBinary(n.Meta); err != nil {
		mem.MetaErr = err
		m.noteBadMeta(n.Name, err)
	}
	return mem
}

// noteBadMeta logs a peer's bad metadata once per distinct error.
func (m *Membership) noteBadMeta(name string, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.badMetas[name] == err.Error() {
		return
	}
	m.badMetas[name] = err.Error()
	m.log.Warn("peer metadata rejected", zap.String("peer", name), zap.Error(err))
}

// Changed is signalled (coalesced) whenever a member joins, leaves, dies or
// changes its metadata.
func (m *Membership) Changed() <-chan struct{} { return m.changed }

func (m *Membership) signal() {
	select {
	case m.changed <- struct{}{}:
	default:
	}
}

// UpdateMeta announces this node's new metadata (LocalMeta) to the cluster.
func (m *Membership) UpdateMeta(timeout time.Duration) error {
	return m.ml.UpdateNode(timeout)
}

// Broadcast queues msg for every member; it is retransmitted a few times.
func (m *Membership) Broadcast(msg []byte) {
	m.queue.QueueBroadcast(broadcast(append([]byte(nil), msg...)))
}

// SendAll sends msg to every other live member over memberlist's reliable
// (TCP) channel, waiting for each; failures are logged, the gossip
// broadcast and push/pull are the second chance.
func (m *Membership) SendAll(msg []byte) {
	for _, n := range m.ml.Members() {
		if n.Name == m.ml.LocalNode().Name {
			continue
		}
		if err := m.ml.SendReliable(n, msg); err != nil {
			m.log.Warn("send to member", zap.String("node", n.Name), zap.Error(err))
		}
	}
}

// SendTo sends msg to the node at addr as one datagram (encrypted and
// authenticated like the gossip): the ownership protocol's heartbeats and
// answers, which the next ones replace if lost. The node need not be a
// live member: it is addressed by its address in the nodes file.
func (m *Membership) SendTo(addr netip.Addr, msg []byte) error {
	a := memberlist.Address{Addr: net.JoinHostPort(addr.String(), strconv.Itoa(m.port)), Name: addr.String()}
	return m.ml.SendToAddress(a, msg)
}

// SendReliableTo sends msg to the node at addr over memberlist's reliable
// (TCP) channel, encrypted and authenticated like the gossip: forwarded
// admin requests and their answers, which may be larger than a datagram.
// It blocks until sent (at most the TCP timeout to connect).
func (m *Membership) SendReliableTo(addr netip.Addr, msg []byte) error {
	n := &memberlist.Node{Name: addr.String(), Addr: addr.AsSlice(), Port: uint16(m.port)}
	return m.ml.SendReliable(n, msg)
}

// Traffic is what the gossip port carried since New, in bytes of UDP
// and TCP payload (no IP or Ethernet headers): datagrams (probes and
// their acks, gossip, and the ownership protocol's messages sent with
// SendTo) and streams (joins, push/pull state exchanges, reliable sends).
type Traffic struct {
	PacketsSent, PacketsReceived         uint64
	PacketBytesSent, PacketBytesReceived uint64
	StreamsOpened, StreamsAccepted       uint64
	StreamBytesSent, StreamBytesReceived uint64
}

// Traffic returns what the gossip port carried so far.
func (m *Membership) Traffic() Traffic { return m.tr.traffic() }

// Leave tells the cluster this node goes away, then stops gossip.
func (m *Membership) Leave(timeout time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopped {
		return nil
	}
	m.stopped = true
	return errors.Join(m.ml.Leave(timeout), m.ml.Shutdown())
}

// Shutdown stops gossip at once, as a crash would.
func (m *Membership) Shutdown() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.stopped = true
	return m.ml.Shutdown()
}

type broadcast []byte

func (b broadcast) Invalidates(memberlist.Broadcast) bool { return false }
func (b broadcast) Message() []byte                       { return b }
func (b broadcast) Finished()                             {}

// delegate adapts Membership to memberlist.Delegate.
type delegate Membership

func (d *delegate) NodeMeta(limit int) []byte {
	b, err := d.delegate.LocalMeta().MarshalBinary()
	if err != nil || len(b) > limit {
		d.log.Error("node metadata too large", zap.Error(err), zap.Int("limit", limit))
		return nil
	}
	return b
}

func (d *delegate) NotifyMsg(msg []byte) { d.delegate.NotifyMsg(msg) }

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.queue.GetBroadcasts(overhead, limit)
}

func (d *delegate) LocalState(bool) []byte { return d.delegate.LocalState() }

func (d *delegate) MergeRemoteState(buf []byte, _ bool) { d.delegate.MergeRemoteState(buf) }

// events adapts Membership to memberlist.EventDelegate: it only signals,
// never blocks, so gossip goes on whatever the control loop does.
type events Membership

func (e *events) NotifyJoin(n *memberlist.Node) {
	e.log.Info("node joined", zap.String("node", n.Name))
	(*Membership)(e).signal()
}

func (e *events) NotifyLeave(n *memberlist.Node) {
	e.log.Info("node left or died", zap.String("node", n.Name))
	(*Membership)(e).signal()
}

func (e *events) NotifyUpdate(*memberlist.Node) { (*Membership)(e).signal() }

// zapWriter turns memberlist's "[LEVEL] memberlist: ..." lines into zap
// entries at the matching level.
type zapWriter struct{ log *zap.Logger }

func (w zapWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	switch {
	case bytes.HasPrefix(p, []byte("[DEBUG]")):
		w.log.Debug(line[8:])
	case bytes.HasPrefix(p, []byte("[INFO]")):
		w.log.Info(line[7:])
	case bytes.HasPrefix(p, []byte("[WARN]")):
		w.log.Warn(line[7:])
	case bytes.HasPrefix(p, []byte("[ERR]")):
		w.log.Error(line[6:])
	default:
		w.log.Info(line)
	}
	return len(p), nil
}
