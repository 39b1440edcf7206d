package replication

import (
	"bytes"
	"errors"
	"net/netip"
	"testing"

	"github.com/fsha/fsha/dataplane"
)

func TestWireVersion2RoundTrip(t *testing.T) {
	v4, v6 := netip.MustParseAddr("198.18.1.10"), netip.MustParseAddr("2001:2::10")
	for _, m := range []*Message{
		{Kind: KindDigest, Owner: 2, Gen: 7, Digests: []VIPDigest{
			{VIP: v4, Digest: dataplane.Digest{Count: 3, Xor: 1 << 63, Sum: 42}}, {VIP: v6, Digest: dataplane.Digest{Count: 1}}}},
		{Kind: KindDigest, Owner: 2, Gen: 8},
		{Kind: KindResync, Owner: 2, Gen: 7, VIPs: []netip.Addr{v6, v4}},
		{Kind: KindResync, Owner: 2, Gen: 7},
		{Kind: KindNotReady, Owner: 2, Gen: 7},
		{Kind: KindVIPSnapBegin, Owner: 2, Gen: 9, VIPs: []netip.Addr{v4}},
		{Kind: KindVIPSnapEnd, Owner: 2, Gen: 9, VIPs: []netip.Addr{v6}},
	} {
		b, err := AppendMessage(nil, m)
		if err != nil {
			t.Fatalf("%s: %v", m.Kind, err)
		}
		if b[0] != wireVersion2 {
			t.Errorf("%s: version %d", m.Kind, b[0])
		}
		got, err := DecodeMessage(b)
		if err != nil {
			t.Fatalf("%s: %v", m.Kind, err)
		}
		again, _ := AppendMessage(nil, got)
		if !bytes.Equal(again, b) || got.Kind != m.Kind || got.Gen != m.Gen || len(got.Digests) != len(m.Digests) || len(got.VIPs) != len(m.VIPs) {
			t.Errorf("%s: round trip %+v", m.Kind, got)
		}
	}
	// version 1 kinds keep version 1, so that older peers read them
	if b := mustEncode(&Message{Kind: KindSnapBegin, Owner: 1, Gen: 3}); b[0] != wireVersion1 {
		t.Errorf("snapshot begin encoded as version %d", b[0])
	}
	for name, m := range map[string]*Message{
		"VIP snapshot without its VIP": {Kind: KindVIPSnapBegin},
		"two VIPs in a VIP snapshot":   {Kind: KindVIPSnapEnd, VIPs: []netip.Addr{v4, v6}},
		"records in a digest":          {Kind: KindDigest, Records: []Record{{Op: OpOpen, VIP: v4, Client: v4, VIPPort: 1, ClientPort: 1}}},
		"VIPs in a delta":              {Kind: KindDelta, VIPs: []netip.Addr{v4}},
		"unspecified VIP":              {Kind: KindResync, VIPs: []netip.Addr{netip.IPv4Unspecified()}},
		"unknown kind":                 {Kind: 42},
	} {
		if _, err := AppendMessage(nil, m); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
}

func TestWireVersion2Rejects(t *testing.T) {
	v4 := netip.MustParseAddr("198.18.1.10")
	digest := mustEncode(&Message{Kind: KindDigest, Owner: 1, Digests: []VIPDigest{{VIP: v4, Digest: dataplane.Digest{Count: 1}}}})
	scope := mustEncode(&Message{Kind: KindVIPSnapBegin, Owner: 1, VIPs: []netip.Addr{v4}})
	resync := mustEncode(&Message{Kind: KindResync, Owner: 1, VIPs: []netip.Addr{v4, netip.MustParseAddr("198.18.1.11")}})
	edit := func(b []byte, f func(b []byte)) []byte { b = append([]byte(nil), b...); f(b); return b }
	for name, b := range map[string][]byte{
		"version 2 kind in version 1": edit(digest, func(b []byte) { b[0] = 1 }),
		"version 1 kind in version 2": edit(mustEncode(&Message{Kind: KindDelta}), func(b []byte) { b[0] = 2 }),
		"version 3":                   edit(digest, func(b []byte) { b[0] = 3 }),
		"kind 10":                     edit(digest, func(b []byte) { b[1] = 10 }),
		"digest truncated":            digest[:len(digest)-1],
		"digest reserved byte":        edit(digest, func(b []byte) { b[headerSize+3] = 1 }),
		"digest family":               edit(digest, func(b []byte) { b[headerSize] = 5 }),
		"digest IPv6 family, IPv4":    edit(digest, func(b []byte) { b[headerSize] = familyV6 }),
		"two VIPs in a VIP snapshot":  edit(append(scope, scope[headerSize:]...), func(b []byte) { b[15] = 2 }),
		"VIP snapshot without VIP":    edit(scope[:headerSize], func(b []byte) { b[15] = 0 }),
		"same VIP twice":              edit(resync, func(b []byte) { copy(b[headerSize+scopeSize:], b[headerSize:headerSize+scopeSize]) }),
		"not ready with a VIP":        edit(scope, func(b []byte) { b[1] = byte(KindNotReady) }),
	} {
		if _, err := DecodeMessage(b); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestHelloVersions(t *testing.T) {
	for v := range byte(4) {
		h, _ := newHello(v, 3, nil)
		var b bytes.Buffer
		writeHello(&b, h)
		got, err := readHello(&b)
		ok := v == streamVersion1 || v == streamVersion2
		if (err == nil) != ok || (ok && (got.version != v || got.pnn != 3)) {
			t.Errorf("version %d: %+v, %v", v, got, err)
		}
		if err != nil && !errors.Is(err, ErrHandshake) {
			t.Errorf("version %d: error without ErrHandshake: %v", v, err)
		}
	}
}

// FuzzDecodeHello: the first bytes any stranger may send.
func FuzzDecodeHello(f *testing.F) {
	for _, v := range []byte{streamVersion1, streamVersion2} {
		h, _ := newHello(v, 1, []byte("k"))
		var b bytes.Buffer
		writeHello(&b, h)
		f.Add(b.Bytes())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := decodeHello(b)
		if err != nil {
			if !errors.Is(err, ErrHandshake) {
				t.Fatalf("error without ErrHandshake: %v", err)
			}
			return
		}
		var again bytes.Buffer
		writeHello(&again, h)
		if !bytes.Equal(again.Bytes(), b) {
			t.Fatalf("re-encode differs")
		}
	})
}
