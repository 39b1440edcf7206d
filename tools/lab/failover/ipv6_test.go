package failover

import (
	"testing"

	"github.com/fsha/fsha/tools/lab"
)

// TestIPv6DualStack runs a cluster whose public_addresses has IPv4 and
// IPv6 VIPs, on a dual-stack lab, and does to an IPv6 VIP what the IPv4
// tests do: a planned move under real smbclient and nfs-cat transfers and
// raw SMB and NFS sessions (0 dropped, no RST on a capture of the IPv6
// VIP that saw frames both ways and lost none; the connections were
// replicated and are steered back as IPv6 flows), then a power cut of
// another IPv6 VIP's holder: its blocked raw SMB and NFS clients are
// reset (the tickles of IPv6 clients) and a new connection is answered
// by the node that announced it with an unsolicited NA.
func TestIPv6DualStack(t *testing.T) {
	e := newEnvWith(t, lab.Options{IPv6: true}, lab.ClusterOptions{Nodes: 3, IPv6VIPs: 3,
		FshaArgs: []string{"--drain-timeout", drainTimeout}})
	v6 := e.c.VIPs[3:]
	for _, v := range v6 {
		if !v.Addr().Is6() {
			t.Fatalf("VIP %s: want the IPv6 ones after the IPv4 ones", v)
		}
	}
	e.move(v6[0])
	e.waitConverged(e.c.Nodes...)
	e.powerCutResets(v6[1], "a dual-stack lab (IPv6 VIP)")
}
