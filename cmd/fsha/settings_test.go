package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// runUpSettings runs `fsha up` with args up to its settings (the Before
// that reads --config) and returns the ports and checks it would use.
func runUpSettings(t *testing.T, file string, args ...string) (ports string, checks []string, err error) {
	t.Helper()
	var out bytes.Buffer
	app := newApp(env{stdout: &out, stderr: &out})
	i := slices.IndexFunc(app.Commands, func(c *cli.Command) bool { return c.Name == "up" })
	app.Commands[i].Action = func(c *cli.Context) error {
		ports, checks = c.String("ports"), c.StringSlice("check")
		return nil
	}
	path := filepath.Join(t.TempDir(), "fsha.conf")
	if err := os.WriteFile(path, []byte(file), 0o644); err != nil {
		t.Fatal(err)
	}
	err = app.Run(append([]string{"fsha", "up", "--config", path}, args...))
	return ports, checks, err
}

// A settings file's values are taken whole: a port list is one value, a
// check command keeps its commas, and checks are one per line.
func TestSettingsFileWholeValues(t *testing.T) {
	ports, checks, err := runUpSettings(t, "ports = 445,2049\ncheck = cmd:/bin/sh -c 'test -e /a, b'\ncheck = tcp:445\n")
	if err != nil {
		t.Fatal(err)
	}
	if ports != "445,2049" {
		t.Errorf("ports %q, want 445,2049", ports)
	}
	if want := []string{"cmd:/bin/sh -c 'test -e /a, b'", "tcp:445"}; !slices.Equal(checks, want) {
		t.Errorf("checks %q, want %q", checks, want)
	}
	// the command line wins over the file, and a check given there keeps
	// its commas too
	ports, checks, err = runUpSettings(t, "ports = 445,2049\ncheck = tcp:445\n", "--ports", "2049", "--check", "cmd:echo a,b")
	if err != nil {
		t.Fatal(err)
	}
	if ports != "2049" || !slices.Equal(checks, []string{"cmd:echo a,b"}) {
		t.Errorf("with flags: ports %q checks %q, want 2049 and [cmd:echo a,b]", ports, checks)
	}
	if _, _, err := runUpSettings(t, "ports = 445\nports = 2049\n"); err == nil {
		t.Error("ports given twice in the file was accepted")
	}
}

// A cmd: check's words are split as a shell would; a quote left open is
// refused while the file is read, naming the file, the line and the
// column of the quote.
func TestSettingsFileCheckQuoting(t *testing.T) {
	_, checks, err := runUpSettings(t, "check = cmd:/bin/sh -c \"test -e '/srv/a b'\"\ncheck = \"tcp:445\"\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{`cmd:/bin/sh -c "test -e '/srv/a b'"`, "tcp:445"}; !slices.Equal(checks, want) {
		t.Errorf("checks %q, want %q", checks, want)
	}
	_, _, err = runUpSettings(t, "ports = 445\ncheck = cmd:/bin/sh -c 'test -e /a\n")
	if err == nil {
		t.Fatal("an unterminated quote was accepted")
	}
	want := `fsha.conf:2: setting check: check "cmd:/bin/sh -c 'test -e /a": unterminated single quote at column 16`
	if !strings.HasSuffix(err.Error(), want) {
		t.Errorf("error %q, want it to end with %q", err, want)
	}
}
