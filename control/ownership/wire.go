package ownership

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Messages between nodes. Every node sends a Heartbeat to every other node
// each Timing.Renew: it is the liveness signal and carries the node's claims
// (the VIPs it holds or wants, each with its epoch); each voter answers the
// claims with a Reply. A Release gives an epoch up before its promises run
// out, for planned moves.
//
// Format: [type u8][version u8][from u16] then the body, big-endian. A
// decoder refuses another major version and ignores bytes after the fields
// it knows, so that release N+1 may append fields that release N skips: a
// cluster running both during a rolling upgrade keeps working.

// WireVersion is the major version of the messages; bumped only for a change
// that older releases cannot skip.
const WireVersion = 1

// ProtoVersion is this release's protocol revision, reported in heartbeats
// (fsha status shows it): minor revisions only append fields. 2: the
// heartbeat's interface MACs (Heartbeat.Ifaces).
const ProtoVersion = 2

// protoIfaces is the first revision whose heartbeats always carry the
// interface MACs section (empty or not): a decoder knows from Proto
// whether the bytes after Draining are that section.
const protoIfaces = 2

// Message types; the node package owns types 1 and 2 (operator moves), the
// remote package 32 and 33 (forwarded admin requests).
const (
	TypeHeartbeat = 16
	TypeReply     = 17
	TypeRelease   = 18
)

// MaxMessage is the size a message must fit in: one UDP datagram with room
// for the gossip layer's encryption and framing.
const MaxMessage = 1200

// ErrBadMessage is wrapped by every decoding error.
var ErrBadMessage = errors.New("bad ownership message")

// NodeFlags is a node's state as it reports it.
type NodeFlags uint16

const (
	FlagHealthy    NodeFlags = 1 << iota // interfaces up, services answer
	FlagDisabled                         // maintenance: holds no VIPs
	FlagBanned                           // banned for a while
	FlagStarting                         // just started: learning who holds what
	FlagStopping                         // shutting down: hands its VIPs over
	FlagRestarting                       // restarting: keeps its VIPs for the grace
	FlagLockHeld                         // holds the cluster lock
	// FlagShortLeases: for every VIP this heartbeat renews (ClaimHeld),
	// the sender's data plane answers no later than the heartbeat's
	// sending plus a lease, as after any renewal; a voter may then
	// promise it a lease from now and no more, giving back what it
	// promised before (a restart's grace). Releases that do not know the
	// flag ignore it and keep the longer promise.
	FlagShortLeases
)

// Fingerprint identifies the cluster configuration a node runs: nodes that
// disagree must not hold VIPs (see View.Agreed).
type Fingerprint struct {
	Nodes uint64 // the nodes file, in PNN order
	VIPs  uint64 // the public addresses and their node lists, sorted
	NVIPs uint16
}

// ClaimState says what a claim is for.
type ClaimState uint8

const (
	ClaimHeld   ClaimState = 1 // renewal of a VIP the node answers for
	ClaimTaking ClaimState = 2 // the node wants the VIP: not answering yet
	ClaimLapsed ClaimState = 3 // held, but the deadline passed without renewal
)

// Claim asks for (or renews) the promise of a VIP at an epoch.
type Claim struct {
	VIP   netip.Addr
	Epoch uint64
	State ClaimState
}

// Heartbeat is a node's periodic message to every other node.
type Heartbeat struct {
	From int
	// Incarnation tells this run of the sender from earlier ones (its
	// start time); Seq counts its heartbeats within the run.
	Incarnation uint64
	Seq         uint64
	Proto       uint16
	Flags       NodeFlags
	Fingerprint Fingerprint
	// Lease is how long the sender asks each voter to promise its claims.
	Lease time.Duration
	// Hears lists the nodes the sender heard from lately, itself included.
	Hears []int
	// MAC is the sender's public interface address: where the holder of a
	// VIP the sender drains steers the old connections.
	MAC      [6]byte
	Claims   []Claim
	Draining []netip.Addr
	// Ifaces is the sender's MAC on each of its public interfaces with
	// link (protocol 2): a node steering the sender's connections sends
	// each packet to the sender's MAC on the network of the interface
	// the packet came in on, taken to be the sender's interface of the
	// same name. MAC stays the fallback.
	Ifaces []IfaceMAC
}

// IfaceMAC is a node's MAC on one of its interfaces.
type IfaceMAC struct {
	Name string
	MAC  [6]byte
}

// MaxIfaces is how many interface MACs a heartbeat carries at most.
const MaxIfaces = 16

// maxIfaceName is the kernel's limit on an interface name (IFNAMSIZ - 1).
const maxIfaceName = 15

// Verdict is a voter's answer to one claim.
type Verdict uint8

const (
	Granted Verdict = 1
	// Stale: the voter promised a higher epoch.
	Stale Verdict = 2
	// Taken: the voter promised this epoch to another node.
	Taken Verdict = 3
	// Busy: another node's lower epoch is still promised; retry later.
	Busy Verdict = 4
	// Unknown: the VIP is not in the voter's configuration.
	Unknown Verdict = 5
	// Quiet: the voter started without its promises and gives none yet.
	Quiet Verdict = 6
)

func (v Verdict) String() string {
	switch v {
	case Granted:
		return "granted"
	case Stale:
		return "stale"
	case Taken:
		return "taken"
	case Busy:
		return "busy"
	case Unknown:
		return "unknown"
	case Quiet:
		return "quiet"
	}
	return fmt.Sprintf("verdict(%d)", uint8(v))
}

// Promise is a voter's word that it grants a VIP's epoch to nobody else
// before Until (on the voter's clock).
type Promise struct {
	Epoch  uint64
	Holder int
	Until  Mono
	// Drained: its holder released it for a planned move and still
	// serves the VIP's old connections (the next holder steers them).
	Drained bool
}

// Answer is a voter's answer to one claim.
type Answer struct {
	VIP     netip.Addr
	Epoch   uint64 // as claimed
	Verdict Verdict
	// Granted is how long the voter promised (Granted verdict only): at
	// most what was asked and the voter's own maximum.
	Granted time.Duration
	// Current is the voter's promise after answering: who it is for and
	// how long it still runs (Remaining, clamped at 0).
	CurEpoch  uint64
	CurHolder int
	Remaining time.Duration
	// PrevEpoch and PrevHolder are the promise this grant superseded (a
	// takeover's previous holder, whose connections it may tickle).
	PrevEpoch  uint64
	PrevHolder int
	// PrevDrains: the previous holder released the VIP for a planned
	// move: its connections are steered to it, not orphaned.
	PrevDrains bool
}

// Reply answers the claims of one heartbeat.
type Reply struct {
	From    int
	Seq     uint64 // the heartbeat's
	Answers []Answer
}

// Release gives up the given epochs: the sender no longer answers for them.
type Release struct {
	From  int
	Items []Released
}

// Released is one epoch given up.
type Released struct {
	VIP   netip.Addr
	Epoch uint64
	// Drain: the sender keeps serving the VIP's existing connections
	// (a planned move): the next holder steers them back to it.
	Drain bool
}

const (
	headerSize = 4
	maxList    = 4096
	maxNodes   = 4096
)

// Encode encodes any ownership message: *Heartbeat, *Reply or *Release.
func Encode(msg any) ([]byte, error) {
	switch m := msg.(type) {
	case *Heartbeat:
		return m.MarshalBinary()
	case *Reply:
		return m.MarshalBinary()
	case *Release:
		return m.MarshalBinary()
	}
	return nil, fmt.Errorf("unknown message %T", msg)
}

// MessageType returns the type of an encoded message, or 0.
func MessageType(b []byte) byte {
	if len(b) == 0 {
		return 0
	}
	return b[0]
}

func header(typ byte, from int) []byte {
	b := make([]byte, headerSize, 256)
	b[0], b[1] = typ, WireVersion
	binary.BigEndian.PutUint16(b[2:], uint16(from))
	return b
}

func appendAddr(b []byte, a netip.Addr) []byte {
	a = a.Unmap()
	if a.Is4() {
		b = append(b, 4)
		v := a.As4()
		return append(b, v[:]...)
	}
	b = append(b, 6)
	v := a.As16()
	return append(b, v[:]...)
}

func micros(d time.Duration) uint32 {
	us := d.Microseconds()
	switch {
	case us < 0:
		return 0
	case us > 1<<32-1:
		return 1<<32 - 1
	}
	return uint32(us)
}

func fromMicros(v uint32) time.Duration { return time.Duration(v) * time.Microsecond }

// MarshalBinary encodes h.
func (h Heartbeat) MarshalBinary() ([]byte, error) {
	b := header(TypeHeartbeat, h.From)
	b = binary.BigEndian.AppendUint64(b, h.Incarnation)
	b = binary.BigEndian.AppendUint64(b, h.Seq)
	b = binary.BigEndian.AppendUint16(b, h.Proto)
	b = binary.BigEndian.AppendUint16(b, uint16(h.Flags))
	b = binary.BigEndian.AppendUint64(b, h.Fingerprint.Nodes)
	b = binary.BigEndian.AppendUint64(b, h.Fingerprint.VIPs)
	b = binary.BigEndian.AppendUint16(b, h.Fingerprint.NVIPs)
	b = binary.BigEndian.AppendUint32(b, micros(h.Lease))
	b = append(b, h.MAC[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Hears)))
	for _, p := range h.Hears {
		b = binary.BigEndian.AppendUint16(b, uint16(p))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Claims)))
	for _, c := range h.Claims {
		b = appendAddr(b, c.VIP)
		b = binary.BigEndian.AppendUint64(b, c.Epoch)
		b = append(b, byte(c.State))
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(h.Draining)))
	for _, a := range h.Draining {
		b = appendAddr(b, a)
	}
	if len(h.Ifaces) > MaxIfaces {
		return nil, fmt.Errorf("heartbeat with %d interfaces, at most %d", len(h.Ifaces), MaxIfaces)
	}
	b = append(b, byte(len(h.Ifaces)))
	for _, f := range h.Ifaces {
		if len(f.Name) == 0 || len(f.Name) > maxIfaceName {
			return nil, fmt.Errorf("heartbeat: interface name %q: 1 to %d bytes", f.Name, maxIfaceName)
		}
		b = append(b, byte(len(f.Name)))
		b = append(b, f.Name...)
		b = append(b, f.MAC[:]...)
	}
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("heartbeat of %d bytes over %d: split its claims", len(b), MaxMessage)
	}
	return b, nil
}

func addrSize(a netip.Addr) int {
	if a.Unmap().Is4() {
		return 1 + 4
	}
	return 1 + 16
}

// size is the length of h encoded.
func (h Heartbeat) size() int {
	n := headerSize + 8 + 8 + 2 + 2 + 8 + 8 + 2 + 4 + 6 + 2 + 2*len(h.Hears) + 2 + 2
	for _, c := range h.Claims {
		n += addrSize(c.VIP) + 8 + 1
	}
	for _, a := range h.Draining {
		n += addrSize(a)
	}
	n++
	for _, f := range h.Ifaces {
		n += 1 + len(f.Name) + 6
	}
	return n
}

// MarshalBinary encodes r.
func (r Reply) MarshalBinary() ([]byte, error) {
	b := header(TypeReply, r.From)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Answers)))
	for _, a := range r.Answers {
		b = appendAddr(b, a.VIP)
		b = binary.BigEndian.AppendUint64(b, a.Epoch)
		b = append(b, byte(a.Verdict))
		b = binary.BigEndian.AppendUint32(b, micros(a.Granted))
		b = binary.BigEndian.AppendUint64(b, a.CurEpoch)
		b = binary.BigEndian.AppendUint16(b, uint16(int16(a.CurHolder)))
		b = binary.BigEndian.AppendUint32(b, micros(a.Remaining))
		b = binary.BigEndian.AppendUint64(b, a.PrevEpoch)
		b = binary.BigEndian.AppendUint16(b, uint16(int16(a.PrevHolder)))
		var f byte
		if a.PrevDrains {
			f |= 1
		}
		b = append(b, f)
	}
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("reply of %d bytes over %d", len(b), MaxMessage)
	}
	return b, nil
}

// MarshalBinary encodes r.
func (r Release) MarshalBinary() ([]byte, error) {
	b := header(TypeRelease, r.From)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.Items)))
	for _, c := range r.Items {
		b = appendAddr(b, c.VIP)
		b = binary.BigEndian.AppendUint64(b, c.Epoch)
		var f byte
		if c.Drain {
			f = 1
		}
		b = append(b, f)
	}
	if len(b) > MaxMessage {
		return nil, fmt.Errorf("release of %d bytes over %d", len(b), MaxMessage)
	}
	return b, nil
}
