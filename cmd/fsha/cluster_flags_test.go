package main

import (
	"bytes"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// Values that would leave a node unable to work are refused, naming the
// flag; the defaults and sane values pass.
func TestCheckRanges(t *testing.T) {
	dir := t.TempDir()
	run := func(args ...string) error {
		var out bytes.Buffer
		app := newApp(env{stdout: &out, stderr: &out})
		i := slices.IndexFunc(app.Commands, func(c *cli.Command) bool { return c.Name == "up" })
		app.Commands[i].Before = nil
		app.Commands[i].Action = checkRanges
		return app.Run(append([]string{"fsha", "up"}, args...))
	}
	for _, ok := range [][]string{
		nil,
		{"--lease", "300ms", "--renew-interval", "50ms", "--drain-timeout", "0", "--hook-timeout", "5s"},
		{"--gossip-port", "65535", "--lock", filepath.Join(dir, "lock")},
		{"--ctdb-port", "0"},
		{"--ctdb-port", "4379"},
		{"--dead-peer-ports", ""},
		{"--dead-peer-ports", "24007, 49152-49251,7000"},
	} {
		if err := run(ok...); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--lease", "0"}, "--lease 0s: must be positive"},
		{[]string{"--renew-interval", "-10ms"}, "--renew-interval -10ms: must be positive"},
		{[]string{"--hook-timeout", "0"}, "--hook-timeout 0s: must be positive"},
		{[]string{"--suspicion-mult", "0"}, "--suspicion-mult 0: must be positive"},
		{[]string{"--drain-timeout", "-1s"}, "--drain-timeout -1s: must be 0"},
		{[]string{"--gossip-port", "0"}, "--gossip-port 0: want 1 to 65535"},
		{[]string{"--gossip-port", "70000"}, "--gossip-port 70000"},
		{[]string{"--ctdb-port", "65536"}, "--ctdb-port 65536: want 1 to 65535, or 0"},
		{[]string{"--lock", filepath.Join(dir, "missing", "lock")}, "its directory does not exist"},
		{[]string{"--dead-peer-ports", "49251-49152"}, `--dead-peer-ports: "49251-49152": the range runs backwards`},
		{[]string{"--dead-peer-ports", "24007,0"}, `--dead-peer-ports: "0": "0" is not a port`},
	} {
		err := run(tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one saying %q", tc.args, err, tc.want)
		}
	}
}
