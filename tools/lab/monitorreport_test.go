package lab_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

var (
	macA   = lab.MAC{2, 0, 0, 0, 0, 0xa}
	macB   = lab.MAC{2, 0, 0, 0, 0, 0xb}
	t0     = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	vipOne = netip.MustParseAddr("198.18.0.201")
)

// script builds the records of one ARP channel: one round per
// space-separated word, each letter a MAC that answered it ("-": nobody),
// rounds 10 ms apart, answers 1 ms after their probe.
func script(s string) ([]lab.SentProbe, []lab.Reply) {
	var probes []lab.SentProbe
	var replies []lab.Reply
	for i, w := range strings.Fields(s) {
		at := t0.Add(time.Duration(i) * 10 * time.Millisecond)
		probes = append(probes, lab.SentProbe{Seq: uint32(i), Round: uint32(i), VIP: vipOne, Kind: lab.ProbeARP, At: at})
		for _, c := range w {
			m := map[rune]lab.MAC{'A': macA, 'B': macB}[c]
			if c == '-' {
				continue
			}
			replies = append(replies, lab.Reply{At: at.Add(time.Millisecond), VIP: vipOne, Kind: lab.ProbeARP,
				MAC: m, Node: string(c), Seq: uint32(i), Round: uint32(i)})
		}
	}
	return probes, replies
}

type overlapSummary struct {
	typ         lab.OverlapType
	nodes       string
	first, last uint32
}

func summarize(os []lab.Overlap) []overlapSummary {
	var out []overlapSummary
	for _, o := range os {
		out = append(out, overlapSummary{o.Type, strings.Join(o.Nodes, ""), o.FirstRound, o.LastRound})
	}
	return out
}

func TestFindOverlaps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string
		window time.Duration
		want   []overlapSummary
	}{
		{"one holder", "A A A A", time.Minute, nil},
		{"switch-over", "A A B B", time.Minute, nil},
		{"switch-over with a gap", "A - - B", time.Minute, nil},
		{"same probe", "A AB B", time.Minute, []overlapSummary{{lab.OverlapSameProbe, "AB", 1, 1}}},
		{"same probe whatever the window", "AB", 0, []overlapSummary{{lab.OverlapSameProbe, "AB", 0, 0}}},
		{"back and forth", "A B A", time.Minute, []overlapSummary{{lab.OverlapInterleaved, "AB", 0, 2}}},
		{"back and forth at the window", "A B A", 20 * time.Millisecond, []overlapSummary{{lab.OverlapInterleaved, "AB", 0, 2}}},
		{"switch back beyond the window", "A B A", 19 * time.Millisecond, nil},
		{"flip-flop", "A B A B", time.Minute, []overlapSummary{
			{lab.OverlapInterleaved, "AB", 0, 2}, {lab.OverlapInterleaved, "BA", 1, 3}}},
		{"back after a gap", "A - B - A", time.Minute, []overlapSummary{{lab.OverlapInterleaved, "AB", 0, 4}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			probes, replies := script(tc.script)
			got := summarize(lab.FindOverlaps(probes, replies, tc.window))
			if !slices.Equal(got, tc.want) {
				t.Errorf("%q window %v: overlaps %+v, want %+v", tc.script, tc.window, got, tc.want)
			}
		})
	}
}

// A late answer belongs to the round it answers: A's answer to round 0
// arriving after B's answer to round 1 is a switch-over, not A again.
func TestFindOverlapsLateAnswer(t *testing.T) {
	probes, replies := script("A B B")
	replies[0].At = replies[1].At.Add(time.Millisecond)
	slices.SortFunc(replies, func(a, b lab.Reply) int { return a.At.Compare(b.At) })
	if got := lab.FindOverlaps(probes, replies, time.Minute); len(got) != 0 {
		t.Errorf("late answer taken for an overlap: %v", got)
	}
}

// Unsolicited frames (a GARP), failed probes and duplicate answers never
// make an overlap or a round.
func TestFindOverlapsIgnores(t *testing.T) {
	probes, replies := script("A A A")
	replies = append(replies, lab.Reply{At: t0.Add(15 * time.Millisecond), VIP: vipOne, Kind: lab.ProbeARP, MAC: macB, Node: "B", Unsolicited: true})
	dup := replies[1]
	dup.At = dup.At.Add(time.Microsecond)
	replies = append(replies, dup)
	probes = append(probes, lab.SentProbe{Seq: 3, Round: 3, VIP: vipOne, Kind: lab.ProbeARP, At: t0.Add(30 * time.Millisecond), Failed: true})
	if got := lab.FindOverlaps(probes, replies, time.Minute); len(got) != 0 {
		t.Errorf("overlaps %v, want none", got)
	}
	st := lab.ComputeStats(probes, replies)
	if len(st) != 1 || st[0].Rounds != 3 || st[0].Answered != 3 || st[0].Replies != 4 || len(st[0].Gaps) != 0 || st[0].ByNode["A"] != 3 || st[0].ByNode["B"] != 0 {
		t.Errorf("stats %+v, want 3 rounds all answered by A, 4 replies, no gap", st)
	}
}

// Rounds of a TCP channel hold one SYN per node: two nodes answering
// their SYNs of one round is a same-probe overlap.
func TestFindOverlapsTCPRound(t *testing.T) {
	var probes []lab.SentProbe
	var replies []lab.Reply
	for i, m := range []lab.MAC{macA, macB} {
		probes = append(probes, lab.SentProbe{Seq: uint32(i), Round: 7, VIP: vipOne, Kind: lab.ProbeTCP, To: m, At: t0})
		replies = append(replies, lab.Reply{At: t0.Add(time.Millisecond), VIP: vipOne, Kind: lab.ProbeTCP, MAC: m, Seq: uint32(i), Round: 7, Flags: lab.FlagSYN | lab.FlagACK})
	}
	got := lab.FindOverlaps(probes, replies, 0)
	if len(got) != 1 || got[0].Type != lab.OverlapSameProbe || got[0].Kind != lab.ProbeTCP || len(got[0].MACs) != 2 {
		t.Errorf("overlaps %v, want one same-probe overlap of both MACs", got)
	}
	if s := got[0].String(); !strings.Contains(s, macA.String()) || !strings.Contains(s, "same probe") {
		t.Errorf("overlap reads %q", s)
	}
}

func TestComputeStatsGaps(t *testing.T) {
	probes, replies := script("- A - - B B - A -")
	st := lab.ComputeStats(probes, replies)
	if len(st) != 1 {
		t.Fatalf("stats of %d channels, want 1", len(st))
	}
	s := st[0]
	if s.Rounds != 9 || s.Answered != 4 || s.Unanswered() != 5 || s.ByNode["A"] != 2 || s.ByNode["B"] != 2 {
		t.Errorf("stats %+v", s)
	}
	type g struct {
		first  uint32
		rounds int
		dur    time.Duration
		open   bool
	}
	var got []g
	for _, x := range s.Gaps {
		got = append(got, g{x.FirstRound, x.Rounds, x.Duration(), x.Open})
	}
	want := []g{{0, 1, 10 * time.Millisecond, true}, {2, 2, 20 * time.Millisecond, false}, {6, 1, 10 * time.Millisecond, false}, {8, 1, 0, true}}
	if !slices.Equal(got, want) {
		t.Errorf("gaps %+v, want %+v", got, want)
	}
	if l := s.LongestGap; l.FirstRound != 2 || l.Rounds != 2 || l.Open || !l.Start.Equal(t0.Add(20*time.Millisecond)) || !l.End.Equal(t0.Add(40*time.Millisecond)) {
		t.Errorf("longest gap %+v, want rounds 2-3, closed, from +20ms to +40ms", l)
	}
	probes, replies = script("- - -")
	if s := lab.ComputeStats(probes, replies)[0]; s.LongestGap.Rounds != 0 || len(s.Gaps) != 1 || !s.Gaps[0].Open || s.Gaps[0].Rounds != 3 {
		t.Errorf("never answered: %+v, want one open gap and no longest (closed) gap", s)
	}
}
