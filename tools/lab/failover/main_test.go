// Package failover runs fsha clusters in a netns lab and checks what the
// clients see when a node fails or a VIP moves: after a power cut the
// clients of the dead node are reset at once (tickle ACKs) and reconnect;
// a planned move, a maintenance (disable) and an automatic failback drain
// the old connections (steered by the new owner to the old one) without
// dropping a single session; and a peer sending garbage on the
// replication port is refused and counted.
package failover

import (
	"os"
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// fshaBin is the fsha binary TestMain builds once for every test.
var fshaBin string

func TestMain(m *testing.M) {
	os.Exit(lab.RunWithFsha(m, "failover", &fshaBin))
}
