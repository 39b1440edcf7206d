package ownership

import (
	"net/netip"
	"testing"
)

// The heartbeats and the snapshot carry the node's MAC now (Local.MAC, a
// second interface after the first lost link) or, without it, the
// configured one.
func TestLocalMACReplacesConfigured(t *testing.T) {
	configured, linked := [6]byte{2, 0, 0, 0, 0, 1}, [6]byte{2, 0, 0, 0, 0, 9}
	e, err := New(Config{Self: 0, Nodes: []int{0, 1, 2}, VIPs: []VIP{{Addr: netip.MustParseAddr("198.18.0.201")}},
		Timing: DefaultTiming(), MAC: configured, Start: 1})
	if err != nil {
		t.Fatal(err)
	}
	sent := func(now Mono) [6]byte {
		t.Helper()
		e.Tick(now)
		for _, env := range e.Ready().Send {
			if hb, ok := env.Msg.(*Heartbeat); ok {
				return hb.MAC
			}
		}
		t.Fatalf("no heartbeat sent at %v", now)
		return [6]byte{}
	}
	if got := sent(Mono(DefaultTiming().Renew) * 2); got != configured || e.Snapshot().MACs[0] != configured {
		t.Errorf("without a local MAC: heartbeat %x snapshot %x, want the configured %x", got, e.Snapshot().MACs[0], configured)
	}
	e.SetLocal(Mono(DefaultTiming().Renew)*3, Local{Healthy: true, MAC: linked})
	if got := sent(Mono(DefaultTiming().Renew) * 5); got != linked || e.Snapshot().MACs[0] != linked {
		t.Errorf("with a local MAC: heartbeat %x snapshot %x, want %x", got, e.Snapshot().MACs[0], linked)
	}
}
