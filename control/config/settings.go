package config

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// Setting is one "name = value" line of an fsha settings file. Names are
// the long flag names of `fsha up` (e.g. gossip-key, failback); flags given
// on the command line or in FSHA_* variables win over the file.
type Setting struct {
	Name  string
	Value string
	File  string
	Line  int
}

// Names tells ParseSettings which names are settings (Known), so that a
// typo is refused with its line rather than silently ignored, and which
// of them take several values (Multi: one line per value, as the flag is
// repeated on the command line). Check, if set, refuses a value at once,
// so its error names the file and line (a cmd: check with an
// unterminated quote) rather than a flag.
type Names struct {
	Known, Multi func(string) bool
	Check        func(name, value string) error
}

// ParseSettings reads a settings file: "name = value" lines, '#' comments,
// blank lines. A value is taken whole (commas included: "ports = 445,2049",
// "check = cmd:/bin/sh -c 'a, b'"); a pair of double quotes around the whole
// value is removed (failback = "sticky"), quotes inside it stay, for the
// setting to read (a cmd: check splits its words as a shell would). A name
// given twice is refused unless it takes several values.
func ParseSettings(name string, r io.Reader, names Names) ([]Setting, error) {
	var (
		out  []Setting
		errs []error
		seen = map[string]int{}
	)
	sc := bufio.NewScanner(r)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fail := func(format string, args ...any) {
			errs = append(errs, &LineError{File: name, Line: lineNo, Reason: fmt.Sprintf(format, args...)})
		}
		k, v, ok := strings.Cut(line, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
			fail("want name = value, got %q", line)
		case k == "":
			fail("missing name before '='")
		case !names.Known(k):
			fail("unknown setting %q", k)
		case seen[k] != 0 && (names.Multi == nil || !names.Multi(k)):
			fail("setting %q given twice (first on line %d)", k, seen[k])
		default:
			seen[k] = lineNo
			v = unquoteValue(v)
			if names.Check != nil {
				if err := names.Check(k, v); err != nil {
					errs = append(errs, &LineError{File: name, Line: lineNo, Reason: "setting " + k, Err: err})
					continue
				}
			}
			out = append(out, Setting{Name: k, Value: v, File: name, Line: lineNo})
		}
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, fmt.Errorf("read %s: %w", name, err))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}

// unquoteValue removes one pair of double quotes around a whole value. Only
// a pair: trimming every quote at either end would cut the closing quote
// of `cmd:sh -c "test -e /x"`.
func unquoteValue(v string) string {
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		return v[1 : len(v)-1]
	}
	return v
}

// LoadSettings reads a settings file from disk.
func LoadSettings(path string, names Names) ([]Setting, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("settings: %w", err)
	}
	defer f.Close()
	return ParseSettings(path, f, names)
}
