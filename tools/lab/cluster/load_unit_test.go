package cluster

import "testing"

// TestStealShare: the steal share of the CPUs' time between two readings
// of /proc/stat, and none when the clock did not move.
func TestStealShare(t *testing.T) {
	a := [3]uint64{1000, 400, 10}
	if got := stealShare(a, [3]uint64{2000, 500, 260}); got != 0.25 {
		t.Errorf("steal share %v, want 0.25", got)
	}
	if got := stealShare(a, a); got != 0 {
		t.Errorf("no time passed: steal share %v, want 0", got)
	}
	now, err := cpuTimes()
	if err != nil {
		t.Fatal(err)
	}
	if now[0] == 0 || now[1] > now[0] || now[2] > now[0] {
		t.Errorf("/proc/stat read as total %d, idle %d, steal %d", now[0], now[1], now[2])
	}
}
