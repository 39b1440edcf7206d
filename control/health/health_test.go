package health

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

func TestParseCheck(t *testing.T) {
	for in, want := range map[string]string{
		"tcp:445":            "tcp:198.18.0.1:445",
		"tcp:127.0.0.1:2049": "tcp:127.0.0.1:2049",
		"cmd:/bin/true a b":  "cmd:/bin/true a b",
	} {
		c, err := ParseCheck(in, "198.18.0.1")
		if err != nil || c.Name() != want {
			t.Errorf("ParseCheck(%q) = %v, %v; want %s", in, c, err, want)
		}
	}
	for _, bad := range []string{"", "tcp", "tcp:", "udp:53", "cmd:", "cmd:   ", "tcp:host:port:x"} {
		if _, err := ParseCheck(bad, "198.18.0.1"); err == nil {
			t.Errorf("ParseCheck(%q) accepted", bad)
		}
	}
}

func TestServiceChecksNeedConsecutiveFailures(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	c := New(zaptest.NewLogger(t), Config{Checks: []Check{TCPCheck{Addr: ln.Addr().String()}}, Failures: 2, Timeout: 200 * time.Millisecond})
	if c.Healthy() {
		t.Fatal("healthy before any check ran")
	}
	ctx := context.Background()
	c.runChecks(ctx)
	if !c.Healthy() {
		t.Fatalf("unhealthy with a listening service: %v", c.failures)
	}
	ln.Close()
	c.runChecks(ctx)
	if !c.Healthy() {
		t.Fatal("one failure made the node unhealthy")
	}
	c.runChecks(ctx)
	if ok, why := c.State(); ok || len(why) != 1 {
		t.Fatalf("two failures: healthy=%v why=%v", ok, why)
	}
	select {
	case <-c.Changed():
	default:
		t.Fatal("no change signalled")
	}
}

func TestCommandCheck(t *testing.T) {
	c := New(zaptest.NewLogger(t), Config{Checks: []Check{CommandCheck{Argv: []string{"false"}}}, Failures: 1})
	c.runChecks(context.Background())
	if ok, why := c.State(); ok || len(why) == 0 {
		t.Fatalf("failing command: healthy=%v %v", ok, why)
	}
}

func TestLinkState(t *testing.T) {
	c := New(zaptest.NewLogger(t), Config{Interfaces: []string{"eth9"}})
	if c.Healthy() {
		t.Fatal("healthy with unknown link")
	}
	c.setLink("eth9", true)
	c.setLink("other", false) // not a public interface: ignored
	if !c.Healthy() || !c.LinkUp("eth9") {
		t.Fatal("link up not seen")
	}
	c.setLink("eth9", false)
	if c.Healthy() {
		t.Fatal("link down not seen")
	}
}

// The reason a node is unhealthy names the check and says what its last
// run said (the command's own output); Results gives each check's latest
// run; a check failing from its first run is logged (once) although its
// verdict did not change.
func TestCheckReasons(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	c := New(zap.New(core), Config{Failures: 2, Checks: []Check{
		CommandCheck{Argv: []string{"sh", "-c", "echo smbd is not running; exit 3"}},
		CommandCheck{Argv: []string{"true"}},
	}})
	if ok, why := c.State(); ok || len(why) != 2 || !strings.HasSuffix(why[0], " not run yet") || !strings.HasSuffix(why[1], " not run yet") {
		t.Fatalf("before any run: healthy=%v why=%q, want both checks not run yet", ok, why)
	}
	ctx := context.Background()
	c.runChecks(ctx)
	c.runChecks(ctx)
	ok, why := c.State()
	want := "cmd:sh -c 'echo smbd is not running; exit 3' failing (2 runs in a row): exit status 3: smbd is not running"
	if ok || len(why) != 1 || why[0] != want {
		t.Fatalf("healthy=%v why=%q, want [%q]", ok, why, want)
	}
	res := c.Results()
	if len(res) != 2 || res[0].Passing || res[0].Failures != 2 || res[0].At.IsZero() || !res[1].Passing || res[1].Error != "" {
		t.Fatalf("results %+v", res)
	}
	if n := logs.FilterMessage("check").FilterField(zap.Bool("passing", false)).Len(); n != 1 {
		t.Errorf("the check failing from the start was logged %d times, want once", n)
	}
	if n := logs.FilterMessage("check").FilterField(zap.Bool("passing", true)).Len(); n != 1 {
		t.Errorf("the passing check was logged %d times, want once", n)
	}
}

// A cmd: check runs with the words a shell would have given it: the
// command itself says whether it got them (sh compares its arguments).
func TestCommandCheckQuoting(t *testing.T) {
	c, err := ParseCheck(`cmd:/bin/sh -c 'test "$1" = "a, b" && test "$2" = "it'\''s"' sh "a, b" it\'s`, "198.18.0.1")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("%s: the command did not get its words: %v", c.Name(), err)
	}
	_, err = ParseCheck(`cmd:sh -c "exit 1`, "198.18.0.1")
	if err == nil || !strings.Contains(err.Error(), "unterminated double quote at column 11") {
		t.Errorf("unterminated quote: %v", err)
	}
}
