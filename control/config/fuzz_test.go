package config

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// The config files come from operators and shared storage, so the parsers
// must never panic, must explain every refusal with a LineError, and must
// agree with the formatters: what they accept, written back out, reads back
// the same. Seeds are in testdata/fuzz/<FuzzName>/.

func FuzzParsePublicAddresses(f *testing.F) {
	f.Add([]byte("198.18.1.10/24 eth0\n"))
	f.Add([]byte("2001:2::10/64 eth0,bond0 0,198.18.0.2 # smb\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		addrs, err := ParsePublicAddresses("fuzz", bytes.NewReader(data))
		if err != nil {
			checkFuzzError(t, err)
			return
		}
		for _, a := range addrs {
			if len(a.Interfaces) == 0 || !a.Prefix.IsValid() || a.Prefix.Bits() == 0 {
				t.Fatalf("accepted incomplete entry %#v", a)
			}
			for _, r := range a.Nodes {
				if (r.PNN >= 0) == r.Addr.IsValid() {
					t.Fatalf("node ref %#v sets both or neither of PNN and Addr", r)
				}
			}
		}
		var out bytes.Buffer
		if err := FormatPublicAddresses(&out, addrs); err != nil {
			t.Fatalf("format accepted entries: %v", err)
		}
		again, err := ParsePublicAddresses("fuzz", &out)
		if err != nil {
			t.Fatalf("re-parse of\n%s\nfailed: %v", out.String(), err)
		}
		if !reflect.DeepEqual(withoutLines(addrs), withoutLines(again)) {
			t.Fatalf("round trip changed entries:\n%#v\n%#v", addrs, again)
		}
	})
}

func FuzzParseNodes(f *testing.F) {
	f.Add([]byte("198.18.0.1\n#198.18.0.2\n198.18.0.3\n"))
	f.Add([]byte("2001:2::1\n[2001:2::2]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		nodes, err := ParseNodes("fuzz", bytes.NewReader(data))
		if err != nil {
			checkFuzzError(t, err)
			return
		}
		for i, n := range nodes {
			if n.PNN != i || n.Deleted == n.Addr.IsValid() {
				t.Fatalf("node %d is %#v", i, n)
			}
		}
		var out bytes.Buffer
		if err := FormatNodes(&out, nodes); err != nil {
			t.Fatalf("format accepted nodes: %v", err)
		}
		again, err := ParseNodes("fuzz", &out)
		if err != nil {
			t.Fatalf("re-parse of\n%s\nfailed: %v", out.String(), err)
		}
		if !reflect.DeepEqual(withoutLines(nodes), withoutLines(again)) {
			t.Fatalf("round trip changed nodes:\n%#v\n%#v", nodes, again)
		}
	})
}

// checkFuzzError checks that a refusal is a join of LineErrors on the file.
func checkFuzzError(t *testing.T, err error) {
	t.Helper()
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %q is not joined", err)
	}
	for _, e := range joined.Unwrap() {
		var le *LineError
		if !errors.As(e, &le) || le.File != "fuzz" || le.Line < 0 || le.Reason == "" {
			t.Fatalf("error %q is not a LineError on file fuzz", e)
		}
	}
}

// withoutLines returns a copy of xs with source lines cleared, since
// formatting drops comments and blank lines and so renumbers.
func withoutLines[T PublicAddress | Node](xs []T) []T {
	out := make([]T, len(xs))
	for i, x := range xs {
		switch v := any(&x).(type) {
		case *PublicAddress:
			v.Line = 0
		case *Node:
			v.Line = 0
		}
		out[i] = x
	}
	return out
}
