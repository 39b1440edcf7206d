// Command testsummary reads `go test -json` on stdin and prints what plain
// `go test` would (the output of failed tests, each package's ok/FAIL
// line), then, last, how many tests passed, failed and were skipped, and
// why each skipped one skipped. A run that passes by skipping must say so
// where a reader looks: at the end.
//
//	go test -json ./... | go run ./tools/testsummary
//
// It exits 1 when a test or a package failed, whatever go test's own exit
// status (the Makefile keeps that too, with pipefail). The Makefile runs
// it twice: with -report=false on each go test as it runs (the output
// streams), and with -output=false over all the runs' JSON at the end.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
)

func main() {
	output := flag.Bool("output", true, "print what plain go test prints")
	report := flag.Bool("report", true, "print the counts and the skipped tests at the end")
	flag.Parse()
	out := io.Discard
	if *output {
		out = os.Stdout
	}
	s := newSummary(out)
	if err := s.read(os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "testsummary: %v\n", err)
		os.Exit(2)
	}
	if *report {
		s.out = os.Stdout
		s.report()
	}
	if s.failed() {
		os.Exit(1)
	}
}

// read feeds every event of r to the summary.
func (s *summary) read(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		s.line(sc.Bytes())
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read go test -json: %w", err)
	}
	return nil
}
