// Package testenv decides whether a test that needs root or BPF may run
// here. On a developer laptop (not root) such tests skip, and `make test`
// lists them at its end; as root, or where CI=true or
// FSHA_REQUIRE_PRIVILEGED=1, a missing privilege or tool fails the test
// instead, so neither CI nor a root run passes by skipping.
package testenv

import (
	"os"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"
)

// Strict reports whether missing privileges must fail tests: root was
// meant to run them all.
func Strict() bool {
	return os.Getenv("CI") == "true" || os.Getenv("FSHA_REQUIRE_PRIVILEGED") == "1" || os.Geteuid() == 0
}

// unavailable skips or fails t, depending on Strict.
func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Strict() {
		t.Fatalf("required but unavailable (root, CI=true or FSHA_REQUIRE_PRIVILEGED=1): "+format, args...)
	}
	t.Skipf("skipping: "+format, args...)
}

// RequireRoot needs uid 0 with CAP_SYS_ADMIN and CAP_NET_ADMIN.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		unavailable(t, "needs root")
	}
}

// RequireBPF needs root and a kernel that lets us load BPF programs.
func RequireBPF(t testing.TB) {
	t.Helper()
	RequireRoot(t)
	if err := rlimit.RemoveMemlock(); err != nil {
		unavailable(t, "remove memlock rlimit: %v", err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil {
		unavailable(t, "no /sys/fs/bpf: %v", err)
	}
}

// RequireCommand needs an executable in PATH (installed by make deps).
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		unavailable(t, "%s not installed (make deps installs it)", name)
	}
	return p
}
