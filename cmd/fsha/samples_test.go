package main

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/hooks"
)

// The configuration the Debian package installs (packaging/, linked from
// testdata/samples) read by fsha's own parsers, so that it stays valid as
// the flags change.

const samples = "../../testdata/samples"

// runUpStubbed runs `fsha ARGS...` with up's action replaced by check:
// the settings file is applied (Before) as a real start would.
func runUpStubbed(t *testing.T, check func(c *cli.Context) error, args ...string) error {
	t.Helper()
	var out bytes.Buffer
	app := newApp(env{stdout: &out, stderr: &out})
	found := false
	for _, c := range app.Commands {
		if c.Name == "up" {
			c.Action = check
			found = true
		}
	}
	if !found {
		t.Fatal("no up command")
	}
	err := app.RunContext(context.Background(), append([]string{"fsha"}, args...))
	if err != nil {
		t.Logf("output: %s", out.String())
	}
	return err
}

// uncomment writes path's lines that match re without their leading '#'
// (and every other line as it is) to a new file.
func uncomment(t *testing.T, path string, re *regexp.Regexp) (string, int) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	n := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if re.MatchString(line) {
			line = strings.TrimPrefix(line, "#")
			n++
		}
		out.WriteString(line + "\n")
	}
	p := filepath.Join(t.TempDir(), filepath.Base(path))
	if err := os.WriteFile(p, []byte(out.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, n
}

// execStart returns the arguments of fsha.service's ExecStart after the
// binary.
func execStart(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../packaging/fsha.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "ExecStart=/usr/bin/fsha "); ok {
			return strings.Fields(rest)
		}
	}
	t.Fatal("fsha.service has no ExecStart=/usr/bin/fsha")
	return nil
}

func TestSampleSettings(t *testing.T) {
	// the unit's command line, with the sample for /etc/fsha/fsha.conf
	args := execStart(t)
	if len(args) != 3 || args[0] != "up" || args[1] != "--config" || args[2] != "/etc/fsha/fsha.conf" {
		t.Fatalf("ExecStart arguments %q: want up --config /etc/fsha/fsha.conf", args)
	}
	conf := filepath.Join(samples, "fsha.conf")
	err := runUpStubbed(t, func(c *cli.Context) error {
		for name, want := range map[string]string{
			"nodes": "/etc/fsha/nodes", "public-addresses": "/etc/fsha/public_addresses",
			"gossip-key": "/etc/fsha/gossip.key", "hooks-dir": "/etc/fsha/events.d",
		} {
			if got := c.String(name); got != want {
				t.Errorf("%s = %q, want %q (where the package puts it)", name, got, want)
			}
		}
		return nil
	}, "up", "--config", conf)
	if err != nil {
		t.Fatalf("fsha.conf as shipped: %v", err)
	}

	// The whole configuration, as a node would start with it: the sample
	// nodes, the examples of public_addresses, a key.
	pa, n := uncomment(t, filepath.Join(samples, "public_addresses"), regexp.MustCompile(`^#[0-9a-fA-F]+[.:]`))
	if n == 0 {
		t.Fatal("public_addresses has no commented example")
	}
	key := filepath.Join(t.TempDir(), "gossip.key")
	if err := os.WriteFile(key, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	err = runUpStubbed(t, func(c *cli.Context) error {
		return checkConfig(c)
	}, "up", "--config", conf, "--nodes", filepath.Join(samples, "nodes"), "--public-addresses", pa,
		"--gossip-key", key, "--node-address", "192.0.2.1")
	if err != nil {
		t.Fatalf("fsha.conf with the sample nodes and the examples of public_addresses: %v", err)
	}

	// Every commented-out setting, once uncommented, is a setting of
	// fsha up with a value its flag takes.
	all, n := uncomment(t, conf, regexp.MustCompile(`^#[a-z][a-z-]* = `))
	if n < 10 {
		t.Fatalf("only %d commented settings found in fsha.conf", n)
	}
	err = runUpStubbed(t, func(c *cli.Context) error { return nil }, "up", "--config", all)
	if err != nil {
		t.Fatalf("fsha.conf with every setting uncommented: %v", err)
	}
}

func TestSampleCTDBFiles(t *testing.T) {
	nodes, err := config.LoadNodes(filepath.Join(samples, "nodes"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if n.Deleted {
			t.Errorf("line %d: the sample nodes file has a deleted node (a '#' line)", n.Line)
		}
	}
	// as shipped, every line is a comment: no VIP until the operator adds one
	addrs, err := config.LoadPublicAddresses(filepath.Join(samples, "public_addresses"))
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 0 {
		t.Errorf("public_addresses as shipped holds %d VIPs, want none", len(addrs))
	}
	pa, n := uncomment(t, filepath.Join(samples, "public_addresses"), regexp.MustCompile(`^#[0-9a-fA-F]+[.:]`))
	addrs, err = config.LoadPublicAddresses(pa)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != n {
		t.Errorf("%d examples, %d VIPs", n, len(addrs))
	}
	if err := config.ResolveNodeRefs(addrs, nodes); err != nil {
		t.Errorf("the examples' node lists against the sample nodes: %v", err)
	}
}

func TestSampleHooks(t *testing.T) {
	// The conffile directory ships no active hook: only its README,
	// which is not executable.
	r := hooks.NewRunner(zap.NewNop(), hooks.Config{Dir: "../../packaging/etc/fsha/events.d"})
	s, err := r.Scripts()
	if err != nil || len(s) != 0 {
		t.Fatalf("events.d as shipped runs %q (%v), want nothing", s, err)
	}
	// The samples run and do nothing on the events they do not handle
	// (monitor runs at every health check; 60.ganesha-grace handles
	// releaseip, run against a real Ganesha in tools/lab/failover).
	dir, err := filepath.Abs("../../packaging/events.d") // hooks run in /
	if err != nil {
		t.Fatal(err)
	}
	r = hooks.NewRunner(zap.NewNop(), hooks.Config{Dir: dir, Node: "192.0.2.1"})
	s, err = r.Scripts()
	if err != nil || len(s) != 2 {
		t.Fatalf("sample hooks: %q (%v), want 2", s, err)
	}
	for _, ev := range []hooks.Event{hooks.Monitor} {
		res := r.Run(context.Background(), ev, hooks.Vars{})
		if !res.OK() {
			t.Errorf("%s: %+v", ev, res)
		}
	}
}

// The unit tells a restart from a stop by the signal alone (systemd sends
// RestartKillSignal for a restart job, KillSignal otherwise): SIGTERM is
// fsha's restart in place, SIGINT its hand-over, and no ExecStop runs
// before either. systemd's SIGKILL (TimeoutStopSec) must come after
// fsha's own bound on a hand-over (--shutdown-timeout).
func TestUnitStopAndRestart(t *testing.T) {
	b, err := os.ReadFile("../../packaging/fsha.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			unit[k] = v
		}
	}
	if unit["KillSignal"] != "SIGINT" || unit["RestartKillSignal"] != "SIGTERM" {
		t.Errorf("KillSignal=%s RestartKillSignal=%s, want SIGINT (stop: hand over) and SIGTERM (restart in place)",
			unit["KillSignal"], unit["RestartKillSignal"])
	}
	if v, ok := unit["ExecStop"]; ok {
		t.Errorf("ExecStop=%s: it would run before either signal", v)
	}
	stopTimeout, err := time.ParseDuration(unit["TimeoutStopSec"] + "s")
	if err != nil {
		t.Fatalf("TimeoutStopSec=%s: %v", unit["TimeoutStopSec"], err)
	}
	err = runUpStubbed(t, func(c *cli.Context) error {
		if d := c.Duration("shutdown-timeout"); d <= 0 || d+10*time.Second > stopTimeout {
			t.Errorf("--shutdown-timeout %v: want it at least 10 s below TimeoutStopSec (%v)", d, stopTimeout)
		}
		return nil
	}, "up", "--config", filepath.Join(samples, "fsha.conf"))
	if err != nil {
		t.Fatal(err)
	}
}
