package ownership

import (
	"net/netip"
	"testing"
	"time"
)

func TestVoterRules(t *testing.T) {
	vip := netip.MustParseAddr("198.18.1.10")
	const L = 250 * time.Millisecond
	at := func(ms int) Mono { return Mono(time.Duration(ms) * time.Millisecond) }
	type step struct {
		at      int
		from    int
		epoch   uint64
		release bool
		want    Verdict
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"first claim", []step{{0, 1, 1, false, Granted}}},
		{"renewal extends", []step{{0, 1, 1, false, Granted}, {200, 1, 1, false, Granted}, {400, 2, 2, false, Busy}}},
		{"busy until the promise ends", []step{{0, 1, 1, false, Granted}, {100, 2, 2, false, Busy}, {250, 2, 2, false, Granted}}},
		{"same epoch other holder", []step{{0, 1, 1, false, Granted}, {300, 2, 1, false, Taken}}},
		{"older epoch", []step{{0, 1, 2, false, Granted}, {300, 2, 1, false, Stale}}},
		{"holder may raise its epoch", []step{{0, 1, 1, false, Granted}, {10, 1, 2, false, Granted}}},
		{"release frees at once", []step{{0, 1, 1, false, Granted}, {10, 1, 1, true, 0}, {11, 2, 2, false, Granted}}},
		{"release by another is ignored", []step{{0, 1, 1, false, Granted}, {10, 2, 1, true, 0}, {11, 2, 2, false, Busy}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := NewVoter(0, []netip.Addr{vip}, L, 0)
			for i, s := range tc.steps {
				if s.release {
					v.Release(at(s.at), s.from, vip, s.epoch, false)
					continue
				}
				a := v.Answer(at(s.at), s.from, Claim{VIP: vip, Epoch: s.epoch}, L, false)
				if a.Verdict != s.want {
					t.Fatalf("step %d (%+v): %v, want %v", i, s, a.Verdict, s.want)
				}
			}
		})
	}
}

func TestVoterNeverShortensAndQuiet(t *testing.T) {
	vip := netip.MustParseAddr("198.18.1.10")
	v := NewVoter(0, []netip.Addr{vip}, 10*time.Second, Mono(time.Second))
	if a := v.Answer(0, 1, Claim{VIP: vip, Epoch: 1}, time.Second, false); a.Verdict != Quiet {
		t.Fatalf("a starting voter granted: %v", a.Verdict)
	}
	v.Answer(Mono(time.Second), 1, Claim{VIP: vip, Epoch: 1}, 10*time.Second, false)
	v.Answer(Mono(2*time.Second), 1, Claim{VIP: vip, Epoch: 1}, time.Second, false)
	if p, _ := v.Promise(vip); p.Until != Mono(11*time.Second) {
		t.Errorf("a short renewal shortened the promise to %v", time.Duration(p.Until))
	}
	// the holder says its data plane has no more than a lease: the
	// promise follows, for the epoch it holds only
	v.Answer(Mono(2*time.Second), 1, Claim{VIP: vip, Epoch: 2, State: ClaimTaking}, time.Second, true)
	if p, _ := v.Promise(vip); p.Until != Mono(11*time.Second) {
		t.Errorf("a short claim of a newer epoch shortened the promise to %v", time.Duration(p.Until))
	}
	v.Answer(Mono(3*time.Second), 1, Claim{VIP: vip, Epoch: 2, State: ClaimHeld}, time.Second, true)
	if p, _ := v.Promise(vip); p.Until != Mono(4*time.Second) {
		t.Errorf("a short renewal: promise until %v, want 4s", time.Duration(p.Until))
	}
	if a := v.Answer(0, 1, Claim{VIP: netip.MustParseAddr("198.18.1.99"), Epoch: 1}, time.Second, false); a.Verdict != Unknown {
		t.Errorf("a VIP not in the configuration: %v", a.Verdict)
	}
	if got := v.Changed(); len(got) != 1 {
		t.Errorf("changed promises: %v", got)
	}
}
