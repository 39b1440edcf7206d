package membership

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Meta is what a node tells the others about itself, carried in
// memberlist's node metadata so that every alive message refreshes it.
type Meta struct {
	Flags Flags
	// ConfigHash identifies the public addresses configuration: VIP indexes
	// only mean the same thing on nodes with the same hash.
	ConfigHash uint64
	// Held and Draining are bitmaps over the VIP indexes of the
	// public_addresses file: the VIPs this node holds (announced) and the
	// VIPs it still serves for old connections after a planned move.
	Held     Bitmap
	Draining Bitmap
	// MAC is the hardware address of the node's public interface: where
	// the new owner of a draining VIP steers the old connections.
	MAC [6]byte
}

// Flags is the node's state as it sees it.
type Flags uint8

const (
	FlagHealthy  Flags = 1 << iota // interfaces up, services answer
	FlagDisabled                   // maintenance: holds no VIPs
	FlagBanned                     // banned for a while: holds no VIPs
	FlagQuorum                     // sees a quorum
	FlagStarting                   // released stale VIPs, not yet settled
)

// MetaLimit is memberlist's limit on node metadata.
const MetaLimit = 512

const (
	metaVersion    = 1
	metaHeaderSize = 1 + 1 + 8 + 6 + 2
	// MaxVIPs is how many VIPs fit twice (held, draining) in the metadata.
	MaxVIPs = (MetaLimit - metaHeaderSize) / 2 * 8
)

// ErrBadMeta is wrapped by every decoding error: a peer whose metadata does
// not decode is treated as holding nothing and able to hold nothing.
var ErrBadMeta = errors.New("bad node metadata")

// MarshalBinary encodes m: version, flags, config hash, MAC, VIP count, then the
// two bitmaps. Encoding is total; its size is bounded by MaxVIPs.
func (m Meta) MarshalBinary() ([]byte, error) {
	n := max(m.Held.Len(), m.Draining.Len())
	if n > MaxVIPs {
		return nil, fmt.Errorf("%d VIPs do not fit in node metadata (max %d)", n, MaxVIPs)
	}
	size := (n + 7) / 8
	b := make([]byte, metaHeaderSize, metaHeaderSize+2*size)
	b[0] = metaVersion
	b[1] = byte(m.Flags)
	binary.BigEndian.PutUint64(b[2:10], m.ConfigHash)
	copy(b[10:16], m.MAC[:])
	binary.BigEndian.PutUint16(b[16:18], uint16(n))
	b = append(b, m.Held.bytes(size)...)
	b = append(b, m.Draining.bytes(size)...)
	return b, nil
}

// UnmarshalBinary decodes and checks a peer's metadata.
func (m *Meta) UnmarshalBinary(b []byte) error {
	if len(b) < metaHeaderSize {
		return fmt.Errorf("%w: %d bytes, header needs %d", ErrBadMeta, len(b), metaHeaderSize)
	}
	if b[0] != metaVersion {
		return fmt.Errorf("%w: version %d, this fsha speaks %d", ErrBadMeta, b[0], metaVersion)
	}
	n := int(binary.BigEndian.Uint16(b[16:18]))
	if n > MaxVIPs {
		return fmt.Errorf("%w: %d VIPs, max %d", ErrBadMeta, n, MaxVIPs)
	}
	size := (n + 7) / 8
	if len(b) != metaHeaderSize+2*size {
		return fmt.Errorf("%w: %d bytes for %d VIPs, want %d", ErrBadMeta, len(b), n, metaHeaderSize+2*size)
	}
	m.Flags = Flags(b[1])
	m.ConfigHash = binary.BigEndian.Uint64(b[2:10])
	copy(m.MAC[:], b[10:16])
	m.Held = bitmapFrom(b[metaHeaderSize:metaHeaderSize+size], n)
	m.Draining = bitmapFrom(b[metaHeaderSize+size:], n)
	return nil
}

// Bitmap is a set of VIP indexes.
type Bitmap struct {
	bits []bool
}

// NewBitmap returns an empty set over n VIPs.
func NewBitmap(n int) Bitmap { return Bitmap{bits: make([]bool, n)} }

// Len is the number of VIPs the set ranges over.
func (b Bitmap) Len() int { return len(b.bits) }

// Has reports whether VIP i is in the set.
func (b Bitmap) Has(i int) bool { return i >= 0 && i < len(b.bits) && b.bits[i] }

// Set adds or removes VIP i; indexes out of range are ignored.
func (b Bitmap) Set(i int, on bool) {
	if i >= 0 && i < len(b.bits) {
		b.bits[i] = on
	}
}

// Count is the number of VIPs in the set.
func (b Bitmap) Count() int {
	n := 0
	for _, v := range b.bits {
		if v {
			n++
		}
	}
	return n
}

// Clone returns an independent copy.
func (b Bitmap) Clone() Bitmap { return Bitmap{bits: append([]bool(nil), b.bits...)} }

func (b Bitmap) bytes(size int) []byte {
	out := make([]byte, size)
	for i, v := range b.bits {
		if v {
			out[i/8] |= 1 << (i % 8)
		}
	}
	return out
}

func bitmapFrom(raw []byte, n int) Bitmap {
	bm := NewBitmap(n)
	for i := range n {
		bm.bits[i] = raw[i/8]&(1<<(i%8)) != 0
	}
	return bm
}
