package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json's TestEvent).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

type testKey struct{ pkg, test string }

// summary keeps each running test's output until the test ends: printed
// if it failed, mined for the reason if it skipped, dropped if it passed.
type summary struct {
	out      io.Writer
	pending  map[testKey][]string
	skipped  map[testKey]string
	passes   int
	fails    int
	pkgFails int
}

func newSummary(out io.Writer) *summary {
	return &summary{out: out, pending: map[testKey][]string{}, skipped: map[testKey]string{}}
}

// line handles one line of input; a line that is not an event (go test
// prints some before the JSON starts, e.g. a vet failure) is passed on.
func (s *summary) line(b []byte) {
	var e event
	if err := json.Unmarshal(b, &e); err != nil || e.Action == "" {
		fmt.Fprintln(s.out, string(b))
		return
	}
	s.event(e)
}

func (s *summary) event(e event) {
	switch {
	case e.Action == "build-output":
		fmt.Fprint(s.out, e.Output)
	case e.Test == "":
		s.packageEvent(e)
	default:
		s.testEvent(e)
	}
}

// packageEvent prints what plain go test prints for a package: its
// output outside tests (TestMain's reports, panics) and its final line.
func (s *summary) packageEvent(e event) {
	switch e.Action {
	case "output":
		if e.Output != "PASS\n" {
			fmt.Fprint(s.out, e.Output)
		}
	case "fail":
		s.pkgFails++
	}
}

func (s *summary) testEvent(e event) {
	k := testKey{e.Package, e.Test}
	switch e.Action {
	case "output":
		s.pending[k] = append(s.pending[k], e.Output)
	case "pass":
		s.passes++
		delete(s.pending, k)
	case "fail":
		s.fails++
		// a failed subtest's parent fails too and repeats nothing new:
		// print each test's own lines once
		for _, l := range s.pending[k] {
			fmt.Fprint(s.out, l)
		}
		delete(s.pending, k)
	case "skip":
		s.skipped[k] = skipReason(s.pending[k])
		delete(s.pending, k)
	}
}

// skipReason is the last line a skipped test printed that is not the
// harness's own "--- SKIP" / "=== RUN" line: the t.Skip message.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || strings.HasPrefix(l, "--- SKIP") || strings.HasPrefix(l, "=== ") {
			continue
		}
		return l
	}
	return "(no reason given)"
}

func (s *summary) failed() bool { return s.fails > 0 || s.pkgFails > 0 }

// report prints the counts and every skip with its reason, last.
func (s *summary) report() {
	fmt.Fprintf(s.out, "\ntests: %d passed, %d failed, %d skipped; packages failed: %d\n", s.passes, s.fails, len(s.skipped), s.pkgFails)
	if len(s.skipped) == 0 {
		return
	}
	keys := make([]testKey, 0, len(s.skipped))
	for k := range s.skipped {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].pkg != keys[j].pkg {
			return keys[i].pkg < keys[j].pkg
		}
		return keys[i].test < keys[j].test
	})
	fmt.Fprintf(s.out, "skipped tests and why (as root, or with CI=true or FSHA_REQUIRE_PRIVILEGED=1, a missing privilege fails instead):\n")
	for _, k := range keys {
		fmt.Fprintf(s.out, "  SKIP %s %s: %s\n", strings.TrimPrefix(k.pkg, modulePrefix()), k.test, s.skipped[k])
	}
}

// modulePrefix shortens package paths in the list.
func modulePrefix() string {
	if m := os.Getenv("TESTSUMMARY_TRIM"); m != "" {
		return m
	}
	return "github.com/fsha/fsha/"
}
