package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fsha check-config reads what fsha up would (files, settings file,
// flags), says what it found, and refuses a bad file naming it, without
// starting anything.
func TestCheckConfigCommand(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	nodes := write("nodes", "198.18.0.1\n198.18.0.2\n198.18.0.3\n")
	vips := write("public_addresses", "198.18.1.10/24 eth0\n198.18.1.11/24 eth0\n")
	key := write("key", "0123456789abcdef0123\n")
	settings := write("fsha.conf", "nodes = "+nodes+"\ngossip-key = "+key+"\nnode-address = 198.18.0.2\n")
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := newApp(env{stdout: &out, stderr: &out}).Run(append([]string{"fsha", "check-config"}, args...))
		return out.String(), err
	}
	out, err := run("--config", settings, "--public-addresses", vips)
	if err != nil {
		t.Fatalf("a good configuration refused: %v\n%s", err, out)
	}
	for _, want := range []string{"configuration OK", "2 public addresses", "3 nodes; this node is pnn 1 (198.18.0.2)", "no cluster lock"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	out, err = run("--public-addresses", vips)
	if err != nil || !strings.Contains(out, "standalone tracking") {
		t.Errorf("standalone: %v\n%s", err, out)
	}
	bad := write("bad_addresses", "198.18.1.10/24 eth0\nnot-an-address eth0\n")
	if _, err := run("--config", settings, "--public-addresses", bad); err == nil ||
		!strings.Contains(err.Error(), "configuration refused") || !strings.Contains(err.Error(), bad) {
		t.Errorf("bad public_addresses: %v; want a refusal naming the file", err)
	}
	if _, err := run("--config", settings, "--public-addresses", vips, "--lease", "0"); err == nil || !strings.Contains(err.Error(), "--lease 0s: must be positive") {
		t.Errorf("--lease 0: %v", err)
	}
	out, err = run("--config", settings, "--public-addresses", vips, "--admin-group", "nogroup")
	if err != nil || !strings.Contains(out, "admin socket readable by group nogroup (gid 65534)") {
		t.Errorf("--admin-group nogroup: %v\n%s", err, out)
	}
	if _, err := run("--config", settings, "--public-addresses", vips, "--admin-group", "no-such-group-fsha"); err == nil ||
		!strings.Contains(err.Error(), `--admin-group: no group "no-such-group-fsha" on this machine`) {
		t.Errorf("an unknown group: %v", err)
	}
}

// check-config checks --steer-mode and says, per public interface, the
// steering path fsha up would take, or that the interface is missing.
func TestCheckConfigSteering(t *testing.T) {
	vips := filepath.Join(t.TempDir(), "public_addresses")
	if err := os.WriteFile(vips, []byte("198.18.1.10/24 lo,fsha-nosuch0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := newApp(env{stdout: &out, stderr: &out}).Run(append([]string{"fsha", "check-config", "--public-addresses", vips}, args...))
		return out.String(), err
	}
	out, err := run("--steer-mode", "tc")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	for _, want := range []string{
		"interface lo (driver none): steering tc (--steer-mode tc: forced by --steer-mode tc)",
		"interface fsha-nosuch0: missing (fsha up starts without it and attaches when it appears)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if _, err := run("--steer-mode", "fast"); err == nil || !strings.Contains(err.Error(), `--steer-mode: steer mode "fast": want auto, xdp or tc`) {
		t.Errorf("--steer-mode fast: %v, want a refusal", err)
	}
}
