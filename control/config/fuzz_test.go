package config

import (
	"bytes"
	"errors"
	"reflect"
	"strings"
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

// FuzzSplitCommand: a cmd: check's words. Any text splits without a
// panic; a refusal points at the quote or backslash it is about; words
// that were accepted, quoted again, read back the same.
func FuzzSplitCommand(f *testing.F) {
	f.Add(`/bin/sh -c 'test -e /a, b'`)
	f.Add(`echo "a\"b" c\ d ''`)
	f.Fuzz(func(t *testing.T, line string) {
		words, err := SplitCommand(line)
		var ce *CommandError
		switch {
		case errors.Is(err, ErrEmptyCommand):
			if strings.Trim(strings.ReplaceAll(line, "\\\n", ""), " \t\n") != "" {
				t.Fatalf("%q: said empty", line)
			}
			return
		case errors.As(err, &ce):
			if ce.Offset < 0 || ce.Offset >= len(line) || !strings.ContainsRune(`'"\`, rune(line[ce.Offset])) {
				t.Fatalf("%q: %v points at no quote or backslash", line, err)
			}
			return
		case err != nil:
			t.Fatalf("%q: unexpected error type %T: %v", line, err, err)
		}
		if len(words) == 0 {
			t.Fatalf("%q: no words and no error", line)
		}
		quoted := QuoteCommand(words)
		again, err := SplitCommand(quoted)
		if err != nil || !reflect.DeepEqual(again, words) {
			t.Fatalf("%q: words %q quoted as %q read back as %q, %v", line, words, quoted, again, err)
		}
	})
}
