package main

import (
	"strings"
	"testing"
)

// A stream as `go test -json` writes it: a passing test whose log is
// dropped, a failing one whose log is printed, a skipped one whose reason
// is listed last, and the package lines.
const stream = `{"Action":"start","Package":"example.com/m/a"}
{"Action":"run","Package":"example.com/m/a","Test":"TestOK"}
{"Action":"output","Package":"example.com/m/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"example.com/m/a","Test":"TestOK","Output":"    a_test.go:9: chatter of a passing test\n"}
{"Action":"pass","Package":"example.com/m/a","Test":"TestOK"}
{"Action":"run","Package":"example.com/m/a","Test":"TestBad"}
{"Action":"output","Package":"example.com/m/a","Test":"TestBad","Output":"    a_test.go:12: want 2, got 3\n"}
{"Action":"output","Package":"example.com/m/a","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"example.com/m/a","Test":"TestBad"}
{"Action":"run","Package":"example.com/m/a","Test":"TestRoot"}
{"Action":"output","Package":"example.com/m/a","Test":"TestRoot","Output":"    testenv.go:27: skipping: needs root\n"}
{"Action":"output","Package":"example.com/m/a","Test":"TestRoot","Output":"--- SKIP: TestRoot (0.00s)\n"}
{"Action":"skip","Package":"example.com/m/a","Test":"TestRoot"}
{"Action":"output","Package":"example.com/m/a","Output":"FAIL\n"}
{"Action":"output","Package":"example.com/m/a","Output":"FAIL\texample.com/m/a\t0.01s\n"}
{"Action":"fail","Package":"example.com/m/a"}
vet: something printed before the JSON
`

func TestSummary(t *testing.T) {
	var b strings.Builder
	s := newSummary(&b)
	t.Setenv("TESTSUMMARY_TRIM", "example.com/m/")
	if err := s.read(strings.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	s.report()
	out := b.String()
	for _, want := range []string{
		"want 2, got 3", "--- FAIL: TestBad", "FAIL\texample.com/m/a\t0.01s", "vet: something printed before the JSON",
		"tests: 1 passed, 1 failed, 1 skipped; packages failed: 1",
		"SKIP a TestRoot: testenv.go:27: skipping: needs root",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "chatter of a passing test") {
		t.Errorf("a passing test's log was printed:\n%s", out)
	}
	if !strings.HasSuffix(out, "needs root\n") {
		t.Errorf("the skips are not last:\n%s", out)
	}
	if !s.failed() {
		t.Error("a failed test did not fail the summary")
	}
}

func TestSummaryAllPass(t *testing.T) {
	var b strings.Builder
	s := newSummary(&b)
	s.read(strings.NewReader(`{"Action":"pass","Package":"p","Test":"T"}` + "\n"))
	if s.failed() {
		t.Error("a passing run failed")
	}
}
