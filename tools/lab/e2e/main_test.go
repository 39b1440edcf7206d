// Package e2e runs the real fsha binary in a netns lab: tracking of real
// TCP connections to a VIP, restarts, floods and real SMB and NFS clients.
package e2e

import (
	"os"
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// fshaBin is the fsha binary TestMain builds once for every test.
var fshaBin string

func TestMain(m *testing.M) {
	os.Exit(lab.RunWithFsha(m, "e2e", &fshaBin))
}
