package main

import (
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
)

func TestPrintIPInfo(t *testing.T) {
	now := time.Date(2026, 12, 6, 6, 0, 0, 0, time.UTC)
	var b strings.Builder
	err := printIPInfo(&b, IPInfo{
		IP: admin.IP{VIP: "198.18.1.10/24", Iface: "eth0", Owner: "198.18.0.1", PNN: 0, Target: "198.18.0.1",
			State: "draining", DrainingFrom: "198.18.0.2", Epoch: 7, LeaseLeft: 212 * time.Millisecond},
		Conns: 12, Replicated: map[string]int{"198.18.0.3": 2, "198.18.0.2": 30},
		Steering: []dataplane.SteerState{{Interface: "eth0", Ifindex: 2, Driver: "veth", XDPMode: "native", Steer: "tc"}},
		Last: &admin.Takeover{Kind: "takeover", From: "198.18.0.2", Reason: "move", Steps: []admin.TimelineStep{
			{Step: "decision", At: now.Add(-90 * time.Second)},
			{Step: "announced", At: now.Add(-90 * time.Second), Took: 41 * time.Millisecond}}},
	}, now)
	if err != nil {
		t.Fatal(err)
	}
	want := `VIP:           198.18.1.10/24
Interfaces:    eth0
Owner:         198.18.0.1 (pnn 0), epoch 7, lease left 212ms
State:         draining
Steering:      eth0 by tc (xdp native, driver veth)
Draining on:   198.18.0.2 (serves the old connections, steered to it)
Connections:   12 tracked here; replicated: 2 of 198.18.0.3, 30 of 198.18.0.2
Last change:   takeover 1m30s ago from 198.18.0.2 (move), announced after 41ms
`
	if b.String() != want {
		t.Errorf("ipinfo:\n%s\nwant:\n%s", b.String(), want)
	}
}

// Through the admin API: a VIP the cluster does not have is an error that
// says where to look; the connections cannot be counted without pins.
func TestIPInfoCommand(t *testing.T) {
	dir := serve(t, &fakeBackend{})
	out, err := runAdmin(t, "ipinfo", "--run-dir", dir, "--pin-path", t.TempDir(), "198.18.1.10")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Owner:         198.18.0.1 (pnn 0), epoch 3, lease left 212ms", "Connections:   unknown: "} {
		if !strings.Contains(out, want) {
			t.Errorf("ipinfo output lacks %q:\n%s", want, out)
		}
	}
	if _, err := runAdmin(t, "ipinfo", "--run-dir", dir, "198.18.9.9"); err == nil || !strings.Contains(err.Error(), "not a public address of this cluster") {
		t.Errorf("unknown VIP: %v", err)
	}
}
