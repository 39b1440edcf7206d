package main

import (
	"math"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// The verdict is the median of the per-trial p95s; a connection not reset
// (timeout or another error) counts as +Inf, so a trial with more than 5%
// of them has an infinite p95.
func TestSummarizeConns(t *testing.T) {
	trial := func(resets []float64, timeouts, others int) trialResult {
		cr := &connsResult{n: len(resets) + timeouts + others}
		for _, at := range resets {
			cr.ends = append(cr.ends, connEnd{at: at, kind: outcomeReset})
		}
		for range timeouts {
			cr.ends = append(cr.ends, connEnd{at: math.Inf(1), kind: outcomeTimeout})
		}
		for range others {
			cr.ends = append(cr.ends, connEnd{at: 0.2, kind: "error: EPIPE"})
		}
		return trialResult{conns: cr}
	}
	ramp := func(from float64, n int) []float64 { // from, from+1ms, ...
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = from + float64(i)/1000
		}
		return xs
	}
	for _, tc := range []struct {
		name        string
		trials      []trialResult
		wantTrials  int
		wantReset   int
		wantTimeout int
		wantOther   int
		wantResult  string
		wantMedian  float64
	}{
		{
			name:       "all reset",
			trials:     []trialResult{trial(ramp(0.200, 100), 0, 0), trial(ramp(0.300, 100), 0, 0), trial(ramp(0.250, 100), 0, 0)},
			wantTrials: 3, wantReset: 300, wantResult: "PASS", wantMedian: 0.250 + 0.094,
		},
		{
			name:       "one slow trial does not decide",
			trials:     []trialResult{trial(ramp(0.200, 100), 0, 0), trial(ramp(0.900, 100), 0, 0), trial(ramp(0.210, 100), 0, 0)},
			wantTrials: 3, wantReset: 300, wantResult: "PASS", wantMedian: 0.210 + 0.094,
		},
		{
			name:       "more than 5% not reset",
			trials:     []trialResult{trial(ramp(0.200, 90), 10, 0), trial(ramp(0.200, 94), 0, 6)},
			wantTrials: 2, wantReset: 184, wantTimeout: 10, wantOther: 6, wantResult: "MISS", wantMedian: math.Inf(1),
		},
		{
			name:       "trials without connections are left out",
			trials:     []trialResult{{}, trial(ramp(0.340, 20), 0, 0)},
			wantTrials: 1, wantReset: 20, wantResult: "MISS", wantMedian: 0.340 + 0.018,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := summarizeConns(tc.trials)
			if s.trials != tc.wantTrials || s.reset != tc.wantReset || s.timeout != tc.wantTimeout || s.other != tc.wantOther {
				t.Errorf("trials %d reset %d timeout %d other %d, want %d %d %d %d",
					s.trials, s.reset, s.timeout, s.other, tc.wantTrials, tc.wantReset, tc.wantTimeout, tc.wantOther)
			}
			result, med := s.verdict(350 * time.Millisecond)
			if result != tc.wantResult || math.Abs(med-tc.wantMedian) > 1e-9 && !(math.IsInf(med, 1) && math.IsInf(tc.wantMedian, 1)) {
				t.Errorf("verdict %s (median %v), want %s (%v)", result, med, tc.wantResult, tc.wantMedian)
			}
		})
	}
}

func TestParseNetCounters(t *testing.T) {
	const netstat = `TcpExt: SyncookiesSent TCPChallengeACK TCPACKSkippedSeq
TcpExt: 0 7 3
IpExt: InNoRoutes InOctets
IpExt: 1 2048
`
	const snmp = `Tcp: RtoAlgorithm OutRsts EstabResets
Tcp: 1 12 -1
`
	got := netCounters{}
	parseNetCounters(netstat, got)
	parseNetCounters(snmp, got)
	want := map[string]int64{"TcpExtSyncookiesSent": 0, "TcpExtTCPChallengeACK": 7, "TcpExtTCPACKSkippedSeq": 3,
		"IpExtInNoRoutes": 1, "IpExtInOctets": 2048, "TcpRtoAlgorithm": 1, "TcpOutRsts": 12, "TcpEstabResets": -1}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %d, want %d", k, got[k], v)
		}
	}
	if d := (netCounters{"TcpOutRsts": 20}).sub(netCounters{"TcpOutRsts": 12}); d["TcpOutRsts"] != 8 {
		t.Errorf("sub: %v", d)
	}
}

// The capture keeps, per connection of ours, its first tickle and first
// RST from VIP:port after the failure; other ports, other connections and
// frames before the failure do not count.
func TestCaptureConns(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	frames := []lab.Frame{
		{At: at(-5), SrcPort: 139, DstPort: 40001, Flags: lab.FlagACK}, // before the failure
		{At: at(250), ARP: true}, // GARP
		{At: at(260), SrcPort: 139, DstPort: 40001, Flags: lab.FlagACK},               // tickle
		{At: at(262), SrcPort: 139, DstPort: 40001, Flags: lab.FlagRST | lab.FlagACK}, // its RST
		{At: at(270), SrcPort: 139, DstPort: 40002, Flags: lab.FlagACK},
		{At: at(280), SrcPort: 139, DstPort: 40002, Flags: lab.FlagRST},
		{At: at(281), SrcPort: 139, DstPort: 40002, Flags: lab.FlagRST}, // second RST: the first counts
		{At: at(290), SrcPort: 445, DstPort: 40003, Flags: lab.FlagACK}, // another port
		{At: at(295), SrcPort: 139, DstPort: 50000, Flags: lab.FlagRST}, // not ours
		{At: at(560), SrcPort: 139, DstPort: 40001, Flags: lab.FlagACK}, // repeat
	}
	cc := captureConns(frames, 139, []uint16{40001, 40002, 40003}, t0, 4)
	if cc.tickled != 2 || cc.rst != 2 || cc.drops != 4 {
		t.Errorf("tickled %d rst %d drops %d, want 2 2 4", cc.tickled, cc.rst, cc.drops)
	}
	near := func(got float64, ms int) bool { return math.Abs(got-float64(ms)/1000) < 1e-9 }
	if !near(cc.firstTickle, 260) || !near(cc.lastTickle, 270) || !near(cc.rstP50, 262) || !near(cc.rstMax, 280) {
		t.Errorf("tickles %v..%v, rst p50 %v max %v", cc.firstTickle, cc.lastTickle, cc.rstP50, cc.rstMax)
	}
	if !near(cc.turnP50, 2) || !near(cc.turnMax, 10) {
		t.Errorf("tickle -> RST p50 %v max %v, want 2 ms and 10 ms", cc.turnP50, cc.turnMax)
	}
}
