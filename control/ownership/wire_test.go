package ownership

import (
	"bytes"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"time"
)

func sampleMessages() []any {
	v4, v6 := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("2001:2::10")
	return []any{
		&Heartbeat{From: 3, Incarnation: 7, Seq: 99, Proto: ProtoVersion, Flags: FlagHealthy | FlagLockHeld,
			Fingerprint: Fingerprint{Nodes: 1, VIPs: 2, NVIPs: 3}, Lease: 250 * time.Millisecond,
			Hears: []int{0, 1, 3}, MAC: [6]byte{2, 0, 0, 0, 0, 3},
			Claims:   []Claim{{VIP: v4, Epoch: 5, State: ClaimHeld}, {VIP: v6, Epoch: 1, State: ClaimTaking}},
			Draining: []netip.Addr{v6},
			Ifaces:   []IfaceMAC{{Name: "eth0", MAC: [6]byte{2, 0, 0, 0, 0, 3}}, {Name: "bond0.100", MAC: [6]byte{2, 0, 0, 0, 1, 3}}}},
		&Reply{From: 1, Seq: 99, Answers: []Answer{
			{VIP: v4, Epoch: 5, Verdict: Granted, Granted: 250 * time.Millisecond, CurEpoch: 5, CurHolder: 3,
				Remaining: 250 * time.Millisecond, PrevEpoch: 4, PrevHolder: 2, PrevDrains: true},
			{VIP: v6, Epoch: 1, Verdict: Busy, CurEpoch: 9, CurHolder: 0, Remaining: time.Second, PrevHolder: -1}}},
		&Release{From: 2, Items: []Released{{VIP: v4, Epoch: 4, Drain: true}, {VIP: v6, Epoch: 8}}},
	}
}

func TestWireRoundTrip(t *testing.T) {
	for _, m := range sampleMessages() {
		b, err := Encode(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Decode(b)
		if err != nil {
			t.Fatalf("%T: %v", m, err)
		}
		if hb, ok := m.(*Heartbeat); ok && hb.size() != len(b) {
			t.Errorf("heartbeat size %d, encoded %d bytes", hb.size(), len(b))
		}
		if !reflect.DeepEqual(got, m) {
			t.Errorf("round trip of %T:\n got %+v\nwant %+v", m, got, m)
		}
		// a newer release appends fields: they are skipped
		if _, err := Decode(append(b, 1, 2, 3)); err != nil {
			t.Errorf("%T with trailing bytes: %v", m, err)
		}
		// every truncation is an error, never a panic or a half message
		for n := range len(b) {
			if _, err := Decode(b[:n]); err == nil {
				t.Errorf("%T truncated to %d of %d bytes decodes", m, n, len(b))
			} else if !errors.Is(err, ErrBadMessage) {
				t.Errorf("%T truncated to %d bytes: %v, not ErrBadMessage", m, n, err)
			}
		}
	}
}

func TestWireRejects(t *testing.T) {
	b, _ := sampleMessages()[0].(*Heartbeat).MarshalBinary()
	other := bytes.Clone(b)
	other[1] = WireVersion + 1
	for name, msg := range map[string][]byte{
		"empty": nil, "unknown type": {99, WireVersion, 0, 0}, "other major version": other,
		"bad family": {TypeRelease, WireVersion, 0, 1, 0, 1, 5, 1, 2, 3, 4},
		"too many":   {TypeRelease, WireVersion, 0, 1, 0xff, 0xff},
	} {
		if _, err := Decode(msg); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: %v, want ErrBadMessage", name, err)
		}
	}
}

// FuzzDecode: peer input never panics, and what decodes encodes back to
// something that decodes to the same.
func FuzzDecode(f *testing.F) {
	for _, m := range sampleMessages() {
		b, _ := Encode(m)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Encode(m)
		if err != nil {
			return // decodes, but is over the size a sender may send
		}
		m2, err := Decode(again)
		if err != nil || !reflect.DeepEqual(m, m2) {
			t.Fatalf("re-encoded %T does not decode the same: %v", m, err)
		}
	})
}

// TestWireIfacesAcrossVersions: a protocol-1 heartbeat (a release before
// the interface MACs) decodes with none; one of protocol 2 must carry the
// section, and bad interface entries are refused.
func TestWireIfacesAcrossVersions(t *testing.T) {
	hb := *sampleMessages()[0].(*Heartbeat)
	hb.Proto, hb.Ifaces = 1, nil
	b, err := hb.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	old := b[:len(b)-1] // what release 1 sent: no section at all
	var got Heartbeat
	if err := got.UnmarshalBinary(old); err != nil {
		t.Fatalf("protocol 1 heartbeat: %v", err)
	}
	if got.Ifaces != nil || got.MAC != hb.MAC || len(got.Draining) != 1 {
		t.Errorf("protocol 1 heartbeat decoded as %+v", got)
	}
	hb.Proto = 2
	b, _ = hb.MarshalBinary()
	if err := got.UnmarshalBinary(b[:len(b)-1]); !errors.Is(err, ErrBadMessage) {
		t.Errorf("protocol 2 heartbeat without its section: %v", err)
	}
	for name, f := range map[string]IfaceMAC{"empty name": {}, "long name": {Name: "a-very-long-name0"}} {
		hb.Ifaces = []IfaceMAC{f}
		if _, err := hb.MarshalBinary(); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	hb.Ifaces = []IfaceMAC{{Name: "eth0"}}
	b, _ = hb.MarshalBinary()
	bad := bytes.Clone(b)
	bad[len(bad)-6-4-1] = 0 // the name's length
	if err := got.UnmarshalBinary(bad); !errors.Is(err, ErrBadMessage) {
		t.Errorf("zero-length interface name: %v", err)
	}
	bad[len(bad)-6-4-1] = 16
	if err := got.UnmarshalBinary(bad); !errors.Is(err, ErrBadMessage) {
		t.Errorf("16-byte interface name: %v", err)
	}
	hb.Ifaces = make([]IfaceMAC, MaxIfaces+1)
	if _, err := hb.MarshalBinary(); err == nil {
		t.Error("too many interfaces encoded")
	}
}
