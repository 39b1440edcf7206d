package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"github.com/fsha/fsha/dataplane"
)

// Wire format of a replication message (one frame of a stream):
//
//	header, 16 bytes: version u8 | kind u8 | reserved u16 | owner u16 |
//	                  reserved u16 | generation u32 | count u32
//
// then count entries whose layout the kind gives. Version 1 (kinds 1-4,
// every release):
//
//	record, 48 bytes: op u8 | family u8 | vport u16 | cport u16 |
//	                  reserved u16 | vip [16] | client [16] | last seen i64
//
// Version 2 (kinds 5-9, only on streams that negotiated version 2 in the
// hello, see stream.go):
//
//	digest, 48 bytes: family u8 | reserved [7] | vip [16] | count u64 |
//	                  xor u64 | sum u64
//	scope, 24 bytes:  family u8 | reserved [7] | vip [16]
//
// A message's version is the one its kind needs, so that an older peer
// keeps understanding the kinds it knows. Big-endian. Sizes are fixed, so
// a message is valid only if its length is exactly 16 + count * the
// entry size and count is within its kind's bound: anything else is
// rejected before a single entry is applied.
const (
	wireVersion1 = 1
	wireVersion2 = 2
	// wireVersion is the newest version this fsha speaks.
	wireVersion = wireVersion2
	headerSize  = 16
	recordSize  = 48
	digestSize  = 48
	scopeSize   = 24
	// MaxRecords bounds one message (768 KiB of records).
	MaxRecords = 16384
	// MaxDigests bounds the VIPs of one digest or resync request.
	MaxDigests = 16384
	// MaxMessage is the largest valid message.
	MaxMessage = headerSize + recordSize*MaxRecords
)

// Kind is what a message carries.
type Kind uint8

const (
	// KindDelta carries opens and closes since the last message.
	KindDelta Kind = 1
	// KindSnapBegin starts a full copy of the owner's flows (anti-entropy).
	KindSnapBegin Kind = 2
	// KindSnapChunk is part of a full copy, or of one VIP's copy: every
	// record is an open.
	KindSnapChunk Kind = 3
	// KindSnapEnd ends a full copy: flows of the owner not in it are stale.
	KindSnapEnd Kind = 4
	// KindDigest (version 2, owner to peer) carries the digest of the
	// owner's flows to each VIP that has some, as of its place in the
	// stream: the peer compares it with what it holds.
	KindDigest Kind = 5
	// KindVIPSnapBegin (version 2) starts a copy of the owner's flows to
	// one VIP (its scope), sent as KindSnapChunk messages of the same
	// generation.
	KindVIPSnapBegin Kind = 6
	// KindVIPSnapEnd (version 2) ends it: the owner's flows to that VIP
	// not in the copy are stale.
	KindVIPSnapEnd Kind = 7
	// KindResync (version 2, peer to owner) answers a digest, echoing its
	// generation, with the VIPs whose digests differ (none: in sync).
	KindResync Kind = 8
	// KindNotReady (version 2, peer to owner) answers a digest the peer
	// cannot compare yet (its index is being built): ask again later.
	KindNotReady Kind = 9
)

func (k Kind) String() string {
	switch k {
	case KindDelta:
		return "delta"
	case KindSnapBegin:
		return "snapshot begin"
	case KindSnapChunk:
		return "snapshot chunk"
	case KindSnapEnd:
		return "snapshot end"
	case KindDigest:
		return "digest"
	case KindVIPSnapBegin:
		return "vip snapshot begin"
	case KindVIPSnapEnd:
		return "vip snapshot end"
	case KindResync:
		return "resync"
	case KindNotReady:
		return "not ready"
	}
	return fmt.Sprintf("kind %d", uint8(k))
}

// version is the wire version a kind needs (0: unknown kind).
func (k Kind) version() byte {
	switch {
	case k >= KindDelta && k <= KindSnapEnd:
		return wireVersion1
	case k >= KindDigest && k <= KindNotReady:
		return wireVersion2
	}
	return 0
}

// Op is what happened to a connection.
type Op uint8

const (
	OpOpen  Op = 1
	OpClose Op = 2
)

// Record is one connection in a message.
type Record struct {
	Op         Op
	VIP        netip.Addr
	VIPPort    uint16
	Client     netip.Addr
	ClientPort uint16
	LastSeen   int64 // Unix nanoseconds, the owner's clock
}

// VIPDigest is the digest of an owner's flows to one VIP.
type VIPDigest struct {
	VIP netip.Addr
	dataplane.Digest
}

// Message is one decoded frame. Which of Records, Digests and VIPs it
// carries depends on its kind: records for deltas and snapshot chunks,
// digests for KindDigest, VIPs for KindResync (the VIPs to resend) and
// KindVIPSnapBegin/End (exactly one: the scope).
type Message struct {
	Kind    Kind
	Owner   uint16
	Gen     uint32
	Records []Record
	Digests []VIPDigest
	VIPs    []netip.Addr
}

// ErrBadMessage wraps every reason a message is rejected.
var ErrBadMessage = errors.New("bad replication message")

// AppendMessage encodes m onto b.
func AppendMessage(b []byte, m *Message) ([]byte, error) {
	version := m.Kind.version()
	if version == 0 {
		return b, fmt.Errorf("unknown message kind %d", m.Kind)
	}
	var count int
	switch m.Kind {
	case KindDelta, KindSnapChunk:
		count = len(m.Records)
		if count > MaxRecords {
			return b, fmt.Errorf("%d records in one message, max %d", count, MaxRecords)
		}
	case KindDigest:
		count = len(m.Digests)
		if count > MaxDigests {
			return b, fmt.Errorf("%d digests in one message, max %d", count, MaxDigests)
		}
	case KindResync:
		count = len(m.VIPs)
		if count > MaxDigests {
			return b, fmt.Errorf("%d VIPs in one message, max %d", count, MaxDigests)
		}
	case KindVIPSnapBegin, KindVIPSnapEnd:
		count = len(m.VIPs)
		if count != 1 {
			return b, fmt.Errorf("%s with %d VIPs, want one", m.Kind, count)
		}
	}
	if (len(m.Records) > 0 && m.Kind != KindDelta && m.Kind != KindSnapChunk) ||
		(len(m.Digests) > 0 && m.Kind != KindDigest) ||
		(len(m.VIPs) > 0 && m.Kind != KindResync && m.Kind != KindVIPSnapBegin && m.Kind != KindVIPSnapEnd) {
		return b, fmt.Errorf("%s carrying entries of another kind", m.Kind)
	}
	b = append(b, version, byte(m.Kind), 0, 0)
	b = binary.BigEndian.AppendUint16(b, m.Owner)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint32(b, m.Gen)
	b = binary.BigEndian.AppendUint32(b, uint32(count))
	for i := range m.Records {
		r := &m.Records[i]
		vip, client := r.VIP.Unmap(), r.Client.Unmap()
		if !vip.IsValid() || vip.Is4() != client.Is4() {
			return b, fmt.Errorf("record %d: vip %v and client %v", i, r.VIP, r.Client)
		}
		b = append(b, byte(r.Op), familyOf(vip))
		b = binary.BigEndian.AppendUint16(b, r.VIPPort)
		b = binary.BigEndian.AppendUint16(b, r.ClientPort)
		b = append(b, 0, 0)
		v16, c16 := vip.As16(), client.As16()
		b = append(b, v16[:]...)
		b = append(b, c16[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(r.LastSeen))
	}
	for i := range m.Digests {
		d := &m.Digests[i]
		var err error
		if b, err = appendScope(b, d.VIP); err != nil {
			return b, fmt.Errorf("digest %d: %w", i, err)
		}
		b = binary.BigEndian.AppendUint64(b, d.Count)
		b = binary.BigEndian.AppendUint64(b, d.Xor)
		b = binary.BigEndian.AppendUint64(b, d.Sum)
	}
	for i, vip := range m.VIPs {
		var err error
		if b, err = appendScope(b, vip); err != nil {
			return b, fmt.Errorf("vip %d: %w", i, err)
		}
	}
	return b, nil
}

// appendScope appends family u8 | reserved [7] | vip [16].
func appendScope(b []byte, vip netip.Addr) ([]byte, error) {
	vip = vip.Unmap()
	if !vip.IsValid() || vip.IsUnspecified() {
		return b, fmt.Errorf("vip %v", vip)
	}
	b = append(b, familyOf(vip), 0, 0, 0, 0, 0, 0, 0)
	v16 := vip.As16()
	return append(b, v16[:]...), nil
}

const (
	familyV4 = 4
	familyV6 = 6
)

func familyOf(a netip.Addr) byte {
	if a.Is4() {
		return familyV4
	}
	return familyV6
}

// decodeAddr reads a 16-byte address of family (familyV4: IPv4-mapped).
func decodeAddr(family byte, b []byte) (netip.Addr, error) {
	a := netip.AddrFrom16([16]byte(b[:16]))
	switch family {
	case familyV4:
		if !a.Is4In6() {
			return a, errors.New("IPv4 entry with an IPv6 address")
		}
		return a.Unmap(), nil
	case familyV6:
		if a.Is4In6() {
			return a, errors.New("IPv6 entry with an IPv4 address")
		}
		return a, nil
	}
	return a, fmt.Errorf("family %d", family)
}

// decodeScope reads family u8 | reserved [7] | vip [16].
func decodeScope(b []byte) (netip.Addr, error) {
	if b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
		return netip.Addr{}, errors.New("reserved bytes set")
	}
	vip, err := decodeAddr(b[0], b[8:24])
	if err != nil {
		return vip, err
	}
	if vip.IsUnspecified() {
		return vip, fmt.Errorf("vip %v", vip)
	}
	return vip, nil
}

// DecodeMessage checks and decodes one message. It never panics and
// returns ErrBadMessage for anything malformed.
func DecodeMessage(b []byte) (*Message, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("%w: %d bytes, header is %d", ErrBadMessage, len(b), headerSize)
	}
	if b[0] != wireVersion1 && b[0] != wireVersion2 {
		return nil, fmt.Errorf("%w: version %d, this fsha speaks %d to %d", ErrBadMessage, b[0], wireVersion1, wireVersion)
	}
	if b[2]|b[3]|b[6]|b[7] != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes set", ErrBadMessage)
	}
	m := &Message{Kind: Kind(b[1]), Owner: binary.BigEndian.Uint16(b[4:6]), Gen: binary.BigEndian.Uint32(b[8:12])}
	if v := m.Kind.version(); v == 0 || v != b[0] {
		return nil, fmt.Errorf("%w: kind %d in a version %d message", ErrBadMessage, m.Kind, b[0])
	}
	n := binary.BigEndian.Uint32(b[12:16])
	size, max := recordSize, uint32(MaxRecords)
	switch m.Kind {
	case KindDigest:
		size, max = digestSize, MaxDigests
	case KindResync:
		size, max = scopeSize, MaxDigests
	case KindVIPSnapBegin, KindVIPSnapEnd:
		size, max = scopeSize, 1
	case KindSnapBegin, KindSnapEnd, KindNotReady:
		max = 0
	}
	if n > max {
		return nil, fmt.Errorf("%w: %d records, max %d in a %s message", ErrBadMessage, n, max, m.Kind)
	}
	if (m.Kind == KindVIPSnapBegin || m.Kind == KindVIPSnapEnd) && n != 1 {
		return nil, fmt.Errorf("%w: %s of %d VIPs, want one", ErrBadMessage, m.Kind, n)
	}
	if len(b) != headerSize+int(n)*size {
		return nil, fmt.Errorf("%w: %d bytes for %d records", ErrBadMessage, len(b), n)
	}
	body := b[headerSize:]
	switch m.Kind {
	case KindDelta, KindSnapChunk:
		m.Records = make([]Record, n)
		for i := range m.Records {
			if err := decodeRecord(&m.Records[i], m.Kind, body[i*recordSize:]); err != nil {
				return nil, fmt.Errorf("%w: record %d: %v", ErrBadMessage, i, err)
			}
		}
	case KindDigest:
		m.Digests = make([]VIPDigest, n)
		seen := make(map[netip.Addr]bool, n)
		for i := range m.Digests {
			db := body[i*digestSize:]
			vip, err := decodeScope(db)
			if err == nil && seen[vip] {
				err = fmt.Errorf("vip %v twice", vip)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: digest %d: %v", ErrBadMessage, i, err)
			}
			seen[vip] = true
			m.Digests[i] = VIPDigest{VIP: vip, Digest: dataplane.Digest{
				Count: binary.BigEndian.Uint64(db[24:]), Xor: binary.BigEndian.Uint64(db[32:]), Sum: binary.BigEndian.Uint64(db[40:]),
			}}
		}
	case KindResync, KindVIPSnapBegin, KindVIPSnapEnd:
		m.VIPs = make([]netip.Addr, n)
		seen := make(map[netip.Addr]bool, n)
		for i := range m.VIPs {
			vip, err := decodeScope(body[i*scopeSize:])
			if err == nil && seen[vip] {
				err = fmt.Errorf("vip %v twice", vip)
			}
			if err != nil {
				return nil, fmt.Errorf("%w: vip %d: %v", ErrBadMessage, i, err)
			}
			seen[vip] = true
			m.VIPs[i] = vip
		}
	}
	return m, nil
}

func decodeRecord(r *Record, kind Kind, rb []byte) error {
	r.Op = Op(rb[0])
	if r.Op != OpOpen && r.Op != OpClose || (kind == KindSnapChunk && r.Op != OpOpen) {
		return fmt.Errorf("op %d in a %s message", r.Op, kind)
	}
	if rb[6]|rb[7] != 0 {
		return errors.New("reserved bytes set")
	}
	r.VIPPort = binary.BigEndian.Uint16(rb[2:4])
	r.ClientPort = binary.BigEndian.Uint16(rb[4:6])
	vip, err := decodeAddr(rb[1], rb[8:24])
	if err != nil {
		return err
	}
	client, err := decodeAddr(rb[1], rb[24:40])
	if err != nil {
		return err
	}
	if vip.IsUnspecified() || client.IsUnspecified() || r.VIPPort == 0 || r.ClientPort == 0 {
		return fmt.Errorf("%v:%d <- %v:%d", vip, r.VIPPort, client, r.ClientPort)
	}
	r.VIP, r.Client = vip, client
	r.LastSeen = int64(binary.BigEndian.Uint64(rb[40:48]))
	return nil
}
