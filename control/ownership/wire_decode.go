package ownership

// Decoding of the messages (wire.go has their types and encoding): every
// field is checked as it is read, the first error is kept, and a message
// is either decoded whole or refused with ErrBadMessage.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
)

// reader consumes a message, remembering the first error.
type reader struct {
	b   []byte
	err error
}

// take consumes the next n bytes; it returns nil (and keeps the first
// error) when fewer are left.
func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < n {
		r.err = fmt.Errorf("%w: truncated at %s", ErrBadMessage, what)
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8(what string) uint8 {
	if b := r.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) u64(what string) uint64 {
	if b := r.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (r *reader) addr(what string) netip.Addr {
	switch fam := r.u8(what); {
	case r.err != nil:
		return netip.Addr{}
	case fam == 4:
		if b := r.take(4, what); b != nil {
			return netip.AddrFrom4([4]byte(b))
		}
		return netip.Addr{}
	case fam == 6:
		if b := r.take(16, what); b != nil {
			return netip.AddrFrom16([16]byte(b)).Unmap()
		}
		return netip.Addr{}
	default:
		r.err = fmt.Errorf("%w: address family %d in %s", ErrBadMessage, fam, what)
		return netip.Addr{}
	}
}

func (r *reader) count(what string, limit int) int {
	n := int(r.u16(what))
	if r.err == nil && n > limit {
		r.err = fmt.Errorf("%w: %d %s, at most %d", ErrBadMessage, n, what, limit)
	}
	return n
}

func (r *reader) pnn(what string) int {
	v := int(int16(r.u16(what)))
	if r.err == nil && (v < -1 || v >= maxNodes) {
		r.err = fmt.Errorf("%w: node %d in %s", ErrBadMessage, v, what)
	}
	return v
}

// ifaces reads a heartbeat's interface MACs section.
func (r *reader) ifaces() []IfaceMAC {
	n := int(r.u8("interfaces"))
	if r.err == nil && n > MaxIfaces {
		r.err = fmt.Errorf("%w: %d interfaces, at most %d", ErrBadMessage, n, MaxIfaces)
	}
	var out []IfaceMAC
	for i := 0; i < n && r.err == nil; i++ {
		l := int(r.u8("interface name"))
		if r.err == nil && (l == 0 || l > maxIfaceName) {
			r.err = fmt.Errorf("%w: interface name of %d bytes", ErrBadMessage, l)
		}
		b := r.take(l+6, "interface")
		if b == nil {
			break
		}
		f := IfaceMAC{Name: string(b[:l])}
		copy(f.MAC[:], b[l:])
		out = append(out, f)
	}
	return out
}

// checkHeader reads the header of a message of type typ.
func checkHeader(b []byte, typ byte) (*reader, int, error) {
	if len(b) < headerSize {
		return nil, 0, fmt.Errorf("%w: %d bytes", ErrBadMessage, len(b))
	}
	if b[0] != typ {
		return nil, 0, fmt.Errorf("%w: type %d, want %d", ErrBadMessage, b[0], typ)
	}
	if b[1] != WireVersion {
		return nil, 0, fmt.Errorf("%w: wire version %d, this fsha speaks %d", ErrBadMessage, b[1], WireVersion)
	}
	from := int(binary.BigEndian.Uint16(b[2:4]))
	if from >= maxNodes {
		return nil, 0, fmt.Errorf("%w: sender %d", ErrBadMessage, from)
	}
	return &reader{b: b[headerSize:]}, from, nil
}

// UnmarshalBinary decodes a heartbeat; bytes after the known fields are
// ignored (a newer release's additions).
func (h *Heartbeat) UnmarshalBinary(b []byte) error {
	r, from, err := checkHeader(b, TypeHeartbeat)
	if err != nil {
		return err
	}
	out := Heartbeat{From: from}
	out.Incarnation = r.u64("incarnation")
	out.Seq = r.u64("sequence")
	out.Proto = r.u16("protocol")
	out.Flags = NodeFlags(r.u16("flags"))
	out.Fingerprint.Nodes = r.u64("fingerprint")
	out.Fingerprint.VIPs = r.u64("fingerprint")
	out.Fingerprint.NVIPs = r.u16("fingerprint")
	out.Lease = fromMicros(r.u32("lease"))
	if b := r.take(6, "mac"); b != nil {
		copy(out.MAC[:], b)
	}
	n := r.count("hears", maxNodes)
	for i := 0; i < n && r.err == nil; i++ {
		out.Hears = append(out.Hears, r.pnn("hears"))
	}
	n = r.count("claims", maxList)
	for i := 0; i < n && r.err == nil; i++ {
		c := Claim{VIP: r.addr("claim"), Epoch: r.u64("claim epoch"), State: ClaimState(r.u8("claim state"))}
		if r.err == nil && (c.State < ClaimHeld || c.State > ClaimLapsed) {
			r.err = fmt.Errorf("%w: claim state %d", ErrBadMessage, c.State)
		}
		out.Claims = append(out.Claims, c)
	}
	n = r.count("draining", maxList)
	for i := 0; i < n && r.err == nil; i++ {
		out.Draining = append(out.Draining, r.addr("draining"))
	}
	if r.err == nil && out.Proto >= protoIfaces {
		out.Ifaces = r.ifaces()
	}
	if r.err != nil {
		return r.err
	}
	*h = out
	return nil
}

// UnmarshalBinary decodes a reply.
func (rp *Reply) UnmarshalBinary(b []byte) error {
	r, from, err := checkHeader(b, TypeReply)
	if err != nil {
		return err
	}
	out := Reply{From: from, Seq: r.u64("sequence")}
	n := r.count("answers", maxList)
	for i := 0; i < n && r.err == nil; i++ {
		a := Answer{VIP: r.addr("answer"), Epoch: r.u64("answer epoch"), Verdict: Verdict(r.u8("verdict"))}
		a.Granted = fromMicros(r.u32("granted"))
		a.CurEpoch = r.u64("current epoch")
		a.CurHolder = r.pnn("current holder")
		a.Remaining = fromMicros(r.u32("remaining"))
		a.PrevEpoch = r.u64("previous epoch")
		a.PrevHolder = r.pnn("previous holder")
		a.PrevDrains = r.u8("answer flags")&1 != 0
		if r.err == nil && (a.Verdict < Granted || a.Verdict > Quiet) {
			r.err = fmt.Errorf("%w: verdict %d", ErrBadMessage, a.Verdict)
		}
		out.Answers = append(out.Answers, a)
	}
	if r.err != nil {
		return r.err
	}
	*rp = out
	return nil
}

// UnmarshalBinary decodes a release.
func (rl *Release) UnmarshalBinary(b []byte) error {
	r, from, err := checkHeader(b, TypeRelease)
	if err != nil {
		return err
	}
	out := Release{From: from}
	n := r.count("items", maxList)
	for i := 0; i < n && r.err == nil; i++ {
		out.Items = append(out.Items, Released{VIP: r.addr("item"), Epoch: r.u64("item epoch"), Drain: r.u8("item flags")&1 != 0})
	}
	if r.err != nil {
		return r.err
	}
	*rl = out
	return nil
}

// Decode decodes any ownership message: *Heartbeat, *Reply or *Release.
func Decode(b []byte) (any, error) {
	switch MessageType(b) {
	case TypeHeartbeat:
		var h Heartbeat
		return &h, h.UnmarshalBinary(b)
	case TypeReply:
		var r Reply
		return &r, r.UnmarshalBinary(b)
	case TypeRelease:
		var r Release
		return &r, r.UnmarshalBinary(b)
	}
	return nil, fmt.Errorf("%w: type %d", ErrBadMessage, MessageType(b))
}
