package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Wire format of a replication message (one frame of a stream):
//
//	header, 16 bytes: version u8 | kind u8 | reserved u16 | owner u16 |
//	                  reserved u16 | generation u32 | count u32
//	count records, 48 bytes each: op u8 | family u8 | vport u16 | cport u16 |
//	                  reserved u16 | vip [16] | client [16] | last seen i64
//
// Big-endian. Sizes are fixed, so a message is valid only if its length is
// exactly 16 + 48*count and count <= MaxRecords: anything else is rejected
// before a single record is applied.
const (
	wireVersion = 1
	headerSize  = 16
	recordSize  = 48
	// MaxRecords bounds one message (768 KiB of records).
	MaxRecords = 16384
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
	// KindSnapChunk is part of a full copy: every record is an open.
	KindSnapChunk Kind = 3
	// KindSnapEnd ends a full copy: flows of the owner not in it are stale.
	KindSnapEnd Kind = 4
)

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

// Message is one decoded frame.
type Message struct {
	Kind    Kind
	Owner   uint16
	Gen     uint32
	Records []Record
}

// ErrBadMessage wraps every reason a message is rejected.
var ErrBadMessage = errors.New("bad replication message")

// AppendMessage encodes m onto b.
func AppendMessage(b []byte, m *Message) ([]byte, error) {
	if len(m.Records) > MaxRecords {
		return b, fmt.Errorf("%d records in one message, max %d", len(m.Records), MaxRecords)
	}
	b = append(b, wireVersion, byte(m.Kind), 0, 0)
	b = binary.BigEndian.AppendUint16(b, m.Owner)
	b = append(b, 0, 0)
	b = binary.BigEndian.AppendUint32(b, m.Gen)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Records)))
	for i := range m.Records {
		r := &m.Records[i]
		vip, client := r.VIP.Unmap(), r.Client.Unmap()
		family := byte(familyV4)
		if vip.Is6() {
			family = familyV6
		}
		if !vip.IsValid() || vip.Is4() != client.Is4() {
			return b, fmt.Errorf("record %d: vip %v and client %v", i, r.VIP, r.Client)
		}
		b = append(b, byte(r.Op), family)
		b = binary.BigEndian.AppendUint16(b, r.VIPPort)
		b = binary.BigEndian.AppendUint16(b, r.ClientPort)
		b = append(b, 0, 0)
		v16, c16 := vip.As16(), client.As16()
		b = append(b, v16[:]...)
		b = append(b, c16[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(r.LastSeen))
	}
	return b, nil
}

const (
	familyV4 = 4
	familyV6 = 6
)

// DecodeMessage checks and decodes one message. It never panics and
// returns ErrBadMessage for anything malformed.
func DecodeMessage(b []byte) (*Message, error) {
	if len(b) < headerSize {
		return nil, fmt.Errorf("%w: %d bytes, header is %d", ErrBadMessage, len(b), headerSize)
	}
	if b[0] != wireVersion {
		return nil, fmt.Errorf("%w: version %d, this fsha speaks %d", ErrBadMessage, b[0], wireVersion)
	}
	if b[2]|b[3]|b[6]|b[7] != 0 {
		return nil, fmt.Errorf("%w: reserved header bytes set", ErrBadMessage)
	}
	m := &Message{Kind: Kind(b[1]), Owner: binary.BigEndian.Uint16(b[4:6]), Gen: binary.BigEndian.Uint32(b[8:12])}
	if m.Kind < KindDelta || m.Kind > KindSnapEnd {
		return nil, fmt.Errorf("%w: kind %d", ErrBadMessage, m.Kind)
	}
	n := binary.BigEndian.Uint32(b[12:16])
	if n > MaxRecords {
		return nil, fmt.Errorf("%w: %d records, max %d", ErrBadMessage, n, MaxRecords)
	}
	if len(b) != headerSize+int(n)*recordSize {
		return nil, fmt.Errorf("%w: %d bytes for %d records", ErrBadMessage, len(b), n)
	}
	if (m.Kind == KindSnapBegin || m.Kind == KindSnapEnd) && n != 0 {
		return nil, fmt.Errorf("%w: %d records in a snapshot marker", ErrBadMessage, n)
	}
	m.Records = make([]Record, n)
	for i := range m.Records {
		rb := b[headerSize+i*recordSize:]
		r := &m.Records[i]
		r.Op = Op(rb[0])
		if r.Op != OpOpen && r.Op != OpClose || (m.Kind == KindSnapChunk && r.Op != OpOpen) {
			return nil, fmt.Errorf("%w: record %d: op %d in a %d message", ErrBadMessage, i, r.Op, m.Kind)
		}
		if rb[6]|rb[7] != 0 {
			return nil, fmt.Errorf("%w: record %d: reserved bytes set", ErrBadMessage, i)
		}
		r.VIPPort = binary.BigEndian.Uint16(rb[2:4])
		r.ClientPort = binary.BigEndian.Uint16(rb[4:6])
		vip, client := netip.AddrFrom16([16]byte(rb[8:24])), netip.AddrFrom16([16]byte(rb[24:40]))
		switch rb[1] {
		case familyV4:
			if !vip.Is4In6() || !client.Is4In6() {
				return nil, fmt.Errorf("%w: record %d: IPv4 record with IPv6 addresses", ErrBadMessage, i)
			}
			vip, client = vip.Unmap(), client.Unmap()
		case familyV6:
			if vip.Is4In6() || client.Is4In6() {
				return nil, fmt.Errorf("%w: record %d: IPv6 record with IPv4 addresses", ErrBadMessage, i)
			}
		default:
			return nil, fmt.Errorf("%w: record %d: family %d", ErrBadMessage, i, rb[1])
		}
		if vip.IsUnspecified() || client.IsUnspecified() || r.VIPPort == 0 || r.ClientPort == 0 {
			return nil, fmt.Errorf("%w: record %d: %v:%d <- %v:%d", ErrBadMessage, i, vip, r.VIPPort, client, r.ClientPort)
		}
		r.VIP, r.Client = vip, client
		r.LastSeen = int64(binary.BigEndian.Uint64(rb[40:48]))
	}
	return m, nil
}
