package remote

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/fsha/fsha/control/admin"
)

func TestRoundTrip(t *testing.T) {
	for _, req := range []Request{
		{From: 0, ID: 1, ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/v1/status"}},
		{From: 65535, ID: ^uint64(0), ForwardRequest: admin.ForwardRequest{Method: "POST", Path: "/v1/ban", Body: []byte(`{"seconds":5}`), Full: true}},
	} {
		b, err := req.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if !IsRemote(b) {
			t.Errorf("%x: not a remote message", b)
		}
		got, err := DecodeRequest(b)
		if err != nil || !reflect.DeepEqual(got, req) {
			t.Errorf("request %+v came back as %+v, %v", req, got, err)
		}
		// a later release's appended fields are skipped
		if got, err := DecodeRequest(append(b, 1, 2, 3)); err != nil || !reflect.DeepEqual(got, req) {
			t.Errorf("request with a longer tail: %+v, %v", got, err)
		}
	}
	for _, resp := range []Response{
		{From: 2, ID: 7, ForwardResponse: admin.ForwardResponse{Code: 204}},
		{From: 1, ID: 8, ForwardResponse: admin.ForwardResponse{Code: 200, Body: bytes.Repeat([]byte("x"), 70000)}},
	} {
		b, err := resp.Encode()
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeResponse(b)
		if err != nil || !reflect.DeepEqual(got, resp) {
			t.Errorf("response %d came back as %d, %v", resp.ID, got.ID, err)
		}
	}
}

func TestEncodeRefuses(t *testing.T) {
	for name, req := range map[string]Request{
		"method":    {ForwardRequest: admin.ForwardRequest{Method: "DELETE", Path: "/v1/status"}},
		"path":      {ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/etc/passwd"}},
		"long path": {ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/v1/" + string(bytes.Repeat([]byte("a"), maxPath))}},
		"body":      {ForwardRequest: admin.ForwardRequest{Method: "POST", Path: "/v1/move", Body: make([]byte, admin.MaxForwardBody+1)}},
		"from":      {From: -1, ForwardRequest: admin.ForwardRequest{Method: "GET", Path: "/v1/status"}},
	} {
		if _, err := req.Encode(); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: %v, want ErrBadMessage", name, err)
		}
	}
	for name, resp := range map[string]Response{
		"code": {ForwardResponse: admin.ForwardResponse{Code: 0}},
		"body": {ForwardResponse: admin.ForwardResponse{Code: 200, Body: make([]byte, admin.MaxForwardBody+1)}},
	} {
		if _, err := resp.Encode(); !errors.Is(err, ErrBadMessage) {
			t.Errorf("%s: %v, want ErrBadMessage", name, err)
		}
	}
}

// head is a request header: type, version, from 1, id 1.
func head(typ, version byte) []byte { return []byte{typ, version, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1} }

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestDecodeRefuses(t *testing.T) {
	get := []byte{0, 3, 'G', 'E', 'T', 0, 10, '/', 'v', '1', '/', 's', 't', 'a', 't', 'u', 's', 0, 0, 0, 0}
	if _, err := DecodeRequest(cat(head(TypeRequest, WireVersion), get)); err != nil {
		t.Fatalf("the good request: %v", err)
	}
	for name, msg := range map[string][]byte{
		"empty":         nil,
		"short header":  {TypeRequest, WireVersion, 0},
		"version":       cat(head(TypeRequest, 2), get),
		"type":          cat(head(TypeResponse, WireVersion), get),
		"no fields":     head(TypeRequest, WireVersion),
		"method length": cat(head(TypeRequest, WireVersion), []byte{0, 200, 'G', 'E', 'T', 0, 0, 0, 0, 0, 0}),
		"path length":   cat(head(TypeRequest, WireVersion), []byte{0, 3, 'G', 'E', 'T', 0xff, 0xff, 0, 0, 0, 0}),
		"no body len":   cat(head(TypeRequest, WireVersion), get[:len(get)-4]),
		"body length":   cat(head(TypeRequest, WireVersion), get[:len(get)-4], []byte{0, 0, 0, 9, '{', '}'}),
		"huge body":     cat(head(TypeRequest, WireVersion), get[:len(get)-4], []byte{0xff, 0xff, 0xff, 0xff}),
		"bad path":      cat(head(TypeRequest, WireVersion), []byte{0, 3, 'G', 'E', 'T', 0, 2, '/', 'x', 0, 0, 0, 0}),
		"bad method":    cat(head(TypeRequest, WireVersion), []byte{0, 3, 'P', 'U', 'T', 0, 4, '/', 'v', '1', '/', 0, 0, 0, 0}),
	} {
		if _, err := DecodeRequest(msg); !errors.Is(err, ErrBadMessage) {
			t.Errorf("request %s: %v, want ErrBadMessage", name, err)
		}
	}
	for name, msg := range map[string][]byte{
		"short":       head(TypeResponse, WireVersion),
		"code":        cat(head(TypeResponse, WireVersion), []byte{0, 99, 0, 0, 0, 0}),
		"code high":   cat(head(TypeResponse, WireVersion), []byte{0x02, 0x58, 0, 0, 0, 0}),
		"body length": cat(head(TypeResponse, WireVersion), []byte{0, 200, 0, 0, 0, 5, '{'}),
		"huge body":   cat(head(TypeResponse, WireVersion), []byte{0, 200, 0xff, 0xff, 0xff, 0xff}),
		"version":     cat(head(TypeResponse, 0), []byte{0, 200, 0, 0, 0, 0}),
	} {
		if _, err := DecodeResponse(msg); !errors.Is(err, ErrBadMessage) {
			t.Errorf("response %s: %v, want ErrBadMessage", name, err)
		}
	}
}

// FuzzDecode: whatever a peer sends, decoding returns a message or
// ErrBadMessage, never panics, and what decodes encodes and decodes to
// the same.
func FuzzDecode(f *testing.F) {
	req, _ := Request{From: 1, ID: 42, ForwardRequest: admin.ForwardRequest{Method: "POST", Path: "/v1/move", Body: []byte(`{"vip":"198.18.1.10","node":"2"}`), Full: true}}.Encode()
	resp, _ := Response{From: 2, ID: 42, ForwardResponse: admin.ForwardResponse{Code: 200, Body: []byte(`[]`)}}.Encode()
	f.Add(req)
	f.Add(resp)
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := DecodeRequest(b); err == nil {
			again, err := r.Encode()
			if err != nil {
				t.Fatalf("decoded request does not encode: %v", err)
			}
			if r2, err := DecodeRequest(again); err != nil || !reflect.DeepEqual(r, r2) {
				t.Fatalf("request %+v re-decoded as %+v, %v", r, r2, err)
			}
		} else if !errors.Is(err, ErrBadMessage) {
			t.Fatalf("request error %v is not ErrBadMessage", err)
		}
		if r, err := DecodeResponse(b); err == nil {
			again, err := r.Encode()
			if err != nil {
				t.Fatalf("decoded response does not encode: %v", err)
			}
			if r2, err := DecodeResponse(again); err != nil || !reflect.DeepEqual(r, r2) {
				t.Fatalf("response %+v re-decoded as %+v, %v", r, r2, err)
			}
		} else if !errors.Is(err, ErrBadMessage) {
			t.Fatalf("response error %v is not ErrBadMessage", err)
		}
	})
}

// TestFuzzSeedsPresent keeps the committed seed corpus in step with the
// format: every seed file must still parse as a Go fuzz corpus entry.
func TestFuzzSeedsPresent(t *testing.T) {
	seeds, err := filepath.Glob("testdata/fuzz/FuzzDecode/*")
	if err != nil || len(seeds) == 0 {
		t.Fatalf("no seeds in testdata/fuzz/FuzzDecode (%v)", err)
	}
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil || !bytes.HasPrefix(b, []byte("go test fuzz v1\n")) {
			t.Errorf("%s: not a fuzz seed (%v)", s, err)
		}
	}
}
