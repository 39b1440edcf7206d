package node

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A pin is an operator's move: VIP -> node, ordered by a Lamport version so
// that every node keeps the same latest move whatever order messages come in.
type pin struct {
	PNN     int // target node, or -1: cleared
	Version uint64
	Origin  int // node that made it; breaks version ties
	// Kill resets the VIP's connections on the old holder instead of
	// draining them (fsha move --kill).
	Kill bool
}

func (p pin) newer(q pin) bool {
	if p.Version != q.Version {
		return p.Version > q.Version
	}
	return p.Origin > q.Origin
}

// Wire format of cluster messages (broadcast and push/pull state). Every
// message starts with its type and the format version; sizes are fixed and
// checked, so a malformed message from a peer is rejected, never applied.
const (
	wireVersion  = 1
	msgPin       = 1
	msgPinState  = 2
	pinEntrySize = 2 + 2 + 8 + 2 + 1 // vip index, target, version, origin, flags
	maxPins      = 4096
)

var errBadMessage = errors.New("bad cluster message")

func encodePinEntry(b []byte, vip int, p pin) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(vip))
	b = binary.BigEndian.AppendUint16(b, uint16(int16(p.PNN)))
	b = binary.BigEndian.AppendUint64(b, p.Version)
	b = binary.BigEndian.AppendUint16(b, uint16(p.Origin))
	var flags byte
	if p.Kill {
		flags |= pinFlagKill
	}
	return append(b, flags)
}

const pinFlagKill = 1

func decodePinEntry(b []byte) (int, pin) {
	return int(binary.BigEndian.Uint16(b[0:2])), pin{
		PNN:     int(int16(binary.BigEndian.Uint16(b[2:4]))),
		Version: binary.BigEndian.Uint64(b[4:12]),
		Origin:  int(binary.BigEndian.Uint16(b[12:14])),
		Kill:    b[14]&pinFlagKill != 0,
	}
}

// encodePinMsg is one move, broadcast.
func encodePinMsg(vip int, p pin) []byte {
	return encodePinEntry([]byte{msgPin, wireVersion}, vip, p)
}

// encodePinState is every pin, for push/pull.
func encodePinState(pins map[int]pin) []byte {
	b := []byte{msgPinState, wireVersion}
	b = binary.BigEndian.AppendUint16(b, uint16(len(pins)))
	for vip, p := range pins {
		b = encodePinEntry(b, vip, p)
	}
	return b
}

// decodePins decodes either message into (vip, pin) pairs, checking that
// VIP indexes are below nVIPs.
func decodePins(b []byte, nVIPs int) (map[int]pin, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("%w: %d bytes", errBadMessage, len(b))
	}
	if b[1] != wireVersion {
		return nil, fmt.Errorf("%w: format version %d, want %d", errBadMessage, b[1], wireVersion)
	}
	var entries []byte
	switch b[0] {
	case msgPin:
		entries = b[2:]
		if len(entries) != pinEntrySize {
			return nil, fmt.Errorf("%w: pin message of %d bytes", errBadMessage, len(b))
		}
	case msgPinState:
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: short pin state", errBadMessage)
		}
		n := int(binary.BigEndian.Uint16(b[2:4]))
		entries = b[4:]
		if n > maxPins || len(entries) != n*pinEntrySize {
			return nil, fmt.Errorf("%w: pin state claims %d entries in %d bytes", errBadMessage, n, len(entries))
		}
	default:
		return nil, fmt.Errorf("%w: type %d", errBadMessage, b[0])
	}
	out := make(map[int]pin)
	for len(entries) > 0 {
		vip, p := decodePinEntry(entries)
		entries = entries[pinEntrySize:]
		if vip >= nVIPs {
			return nil, fmt.Errorf("%w: VIP index %d of %d", errBadMessage, vip, nVIPs)
		}
		out[vip] = p
	}
	return out, nil
}
