package main

// The failover suite's report of its many connections (-failover-conns):
// how many were reset, how fast, against the target, and where the time
// went trial by trial, with the client kernel's counters.

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"
)

// connsSummary is one run's connections over all its trials.
type connsSummary struct {
	conns, trials int
	reset, other  int
	timeout       int
	// kinds counts the other errors by kind.
	kinds map[string]int
	// all the reset times of every trial; trialP95 each trial's p95 of
	// its reset times (+Inf when fewer than 95% were reset)
	all      []float64
	trialP95 []float64
	// rst are the RSTs' arrival times at the client's eth0 (capture),
	// one per connection that got one
	rst []float64
}

// summarizeConns gathers the trials' connections (those with some).
func summarizeConns(trials []trialResult) connsSummary {
	s := connsSummary{kinds: map[string]int{}}
	for _, tr := range trials {
		if tr.conns == nil || len(tr.conns.ends) == 0 {
			continue
		}
		s.trials++
		s.conns = tr.conns.n
		// not reset in time counts as +Inf: a p95 that needs it is > bound
		var xs []float64
		for _, e := range tr.conns.ends {
			switch e.kind {
			case outcomeReset:
				s.reset++
				xs = append(xs, e.at)
			case outcomeTimeout:
				s.timeout++
				xs = append(xs, math.Inf(1))
			default:
				s.other++
				s.kinds[e.kind]++
				xs = append(xs, math.Inf(1))
			}
		}
		s.all = append(s.all, xs...)
		s.rst = append(s.rst, tr.conns.capture.rstAt...)
		s.trialP95 = append(s.trialP95, percentile(xs, 95))
	}
	return s
}

// verdict is PASS or MISS for the median of the per-trial p95s against
// bound, and that median.
func (s connsSummary) verdict(bound time.Duration) (string, float64) {
	med := percentile(s.trialP95, 50)
	if med <= bound.Seconds() {
		return "PASS", med
	}
	return "MISS", med
}

// connsCountersShown are the client's counters the report always names;
// others show up when they moved and name drops, skips or challenges.
var connsCountersShown = []string{
	"TcpInSegs", "TcpOutSegs", "TcpEstabResets", "TcpOutRsts", "TcpInErrs",
	"TcpExtTCPACKSkippedSeq", "TcpExtTCPChallengeACK", "TcpExtTCPACKSkippedChallenge",
}

// reportConns prints the connections' tables, when there are any.
func (b *failoverBench) reportConns(out io.Writer, runs []*failoverRun) error {
	var with []*failoverRun
	for _, r := range runs {
		if summarizeConns(r.trials).trials > 0 {
			with = append(with, r)
		}
	}
	if len(with) == 0 {
		return nil
	}
	bound := b.blockTimeout.String()
	fmt.Fprintf(out, "\n%d client connections on the failed node (-failover-conns): before each failure the client opens %d TCP\n", b.conns, b.conns)
	fmt.Fprintf(out, "connections to VIP:%d of the VIP's owner and sends %d bytes on each, so that the owner tracks them; for fsha the\n", b.connsPort, len(connsPayload))
	fmt.Fprintf(out, "trial then waits until every survivor's peer flows map has all of them. Port %d is one of fsha's tracked ports\n", b.connsPort)
	fmt.Fprintf(out, "(--ports, default 445,139,2049,111) that no lab server listens on: the connections are held not by smbd (a\n")
	fmt.Fprintf(out, "process per connection) but by a minimal accept-and-read listener (`bench %s`, a child of the bench in\n", holdConnsCmd)
	fmt.Fprintf(out, "the owner's namespace), which a power cut kills with the node's other processes. reset = failure -> the\n")
	fmt.Fprintf(out, "connection's read() fails with ECONNRESET (one thread waits on all of them with epoll), bound %s; other\n", bound)
	fmt.Fprintf(out, "error = the read failed otherwise (or saw EOF). p50/p95/max over every connection of every trial (not reset\n")
	fmt.Fprintf(out, "counts as > bound); the result compares the median of the per-trial p95s with the target. RST at client =\n")
	fmt.Fprintf(out, "when the RSTs reached the client's eth0 (packet socket, kernel time), before its reading thread ran.\n\n")

	t := &table{header: []string{"system", "failure", "conns", "trials", "reset", "other error", "not reset in " + bound, "p50", "p95", "max", "per-trial p95", "RST at client p95", "target", "result"}}
	var notes []string
	for _, r := range with {
		s := summarizeConns(r.trials)
		var per []string
		for _, p := range s.trialP95 {
			per = append(per, strings.TrimSuffix(fmtDur(p, b.blockTimeout), " ms"))
		}
		perStr := strings.Join(per, " / ")
		if !strings.Contains(perStr, "s") {
			perStr += " ms"
		}
		tgt, result := "baseline", "-"
		if r.profile != "" {
			tgt = "-"
			if bound, ok := fshaTargets[r.profile]; ok && r.failure == failPower {
				var med float64
				result, med = s.verdict(bound)
				tgt = "p95 <= " + fmtDur(bound.Seconds(), 0)
				notes = append(notes, fmt.Sprintf("%s, %s, %d connections: median of the per-trial p95s %s, target <= %s: %s",
					r.system, failureNames[r.failure], s.conns, fmtDur(med, b.blockTimeout), fmtDur(bound.Seconds(), 0), result))
			}
		}
		t.add(r.system, failureNames[r.failure], fmt.Sprint(s.conns), fmt.Sprint(s.trials),
			fmt.Sprint(s.reset), fmt.Sprint(s.other), fmt.Sprint(s.timeout),
			fmtDur(percentile(s.all, 50), b.blockTimeout), fmtDur(percentile(s.all, 95), b.blockTimeout),
			fmtDur(slices.Max(s.all), b.blockTimeout), perStr, fmtDur(percentile(s.rst, 95), b.blockTimeout), tgt, result)
		if len(s.kinds) > 0 {
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(s.kinds)) {
				parts = append(parts, fmt.Sprintf("%s %d", k, s.kinds[k]))
			}
			notes = append(notes, fmt.Sprintf("%s, %s: other errors: %s", r.system, failureNames[r.failure], strings.Join(parts, ", ")))
		}
	}
	if err := t.write(out); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, "  "+n)
	}

	fmt.Fprintf(out, "\nwhere the time goes, per trial, since the failure. opened = connecting all %d and sending their bytes;\n", b.conns)
	fmt.Fprintf(out, "replicated = from the last bytes until every survivor had them all. From the new owner's `fsha timeline`:\n")
	fmt.Fprintf(out, "decision, first GARP sent, takeip hooks done (the tickles wait for them), tickles sent = end of the first\n")
	fmt.Fprintf(out, "round (its \"tickled\" log line gives the round's length); survivor RSTs = what its stack sent during the tickles\n")
	fmt.Fprintf(out, "and their repeats. From the client's eth0 (packet socket, kernel time): the first tickle of any connection\n")
	fmt.Fprintf(out, "and the last connection's first one, the RSTs from the VIP (p50 / max, connections with one), and per\n")
	fmt.Fprintf(out, "connection from its first tickle to its RST (p50 / max: the client's dupack, the new owner's RST). From the\n")
	fmt.Fprintf(out, "client's reads: reset p50 / p95 / last; reader queued = how long the reading thread waited for a CPU\n")
	fmt.Fprintf(out, "(runnable, not running: /proc/thread-self/schedstat) from the failure until the last read ended.\n\n")
	d := func(v float64) string { return fmtDur(v, b.blockTimeout) }
	bt := &table{header: []string{"system", "trial", "owner", "opened", "replicated", "decision", "first GARP", "hooks done", "tickles sent", "first round",
		"tickle at client", "RST at client", "tickle -> RST", "read reset", "reader queued", "survivor RSTs"}}
	tot := netCounters{}
	links := map[string]uint64{}
	var rxDrops, softDrops, squeezed, capDrops uint64
	for _, r := range with {
		short := r.system
		if r.profile != "" {
			short = "fsha --failover " + r.profile
		}
		k := 0
		for _, tr := range r.trials {
			cr := tr.conns
			if cr == nil || len(cr.ends) == 0 {
				continue
			}
			k++
			var resets []float64
			for _, e := range cr.ends {
				if e.kind == outcomeReset {
					resets = append(resets, e.at)
				}
			}
			readCol := "-"
			if len(resets) > 0 {
				readCol = fmt.Sprintf("%s / %s / %s", d(percentile(resets, 50)), d(percentile(resets, 95)), d(slices.Max(resets)))
			}
			cc := cr.capture
			tickleCol, rstCol, turnCol := "-", "-", "-"
			if cc.tickled > 0 {
				tickleCol = fmt.Sprintf("%s / %s", d(cc.firstTickle), d(cc.lastTickle))
			}
			if cc.rst > 0 {
				rstCol = fmt.Sprintf("%s / %s (%d)", d(cc.rstP50), d(cc.rstMax), cc.rst)
			}
			if !math.IsNaN(cc.turnP50) {
				turnCol = fineDur(cc.turnP50) + " / " + fineDur(cc.turnMax)
			}
			repl := "-"
			if cr.replicated >= 0 {
				repl = d(cr.replicated.Seconds())
			}
			round := "-"
			if !math.IsNaN(cr.firstRound) {
				round = fmt.Sprintf("%.1f ms", cr.firstRound*1000)
			}
			survRST := "-"
			if r.profile != "" && !math.IsNaN(tr.tickled) {
				survRST = fmt.Sprint(tr.tickleResets)
			}
			bt.add(short, fmt.Sprint(k), tr.owner, fmtDur(cr.opened.Seconds(), 0), repl, d(tr.decision), d(tr.announce), d(tr.hooksDone),
				d(tr.tickled), round, tickleCol, rstCol, turnCol, readCol, fmt.Sprintf("%.0f ms", cr.queued.Seconds()*1000), survRST)
			for name, v := range cr.counters {
				tot[name] += v
			}
			rxDrops += cr.rxDropped
			for k, v := range cr.linkDrops {
				links[k] += v
			}
			softDrops += cr.softnetDrops
			squeezed += cr.softnetSqueezed
			capDrops += cc.drops
		}
	}
	if err := bt.write(out); err != nil {
		return err
	}
	var parts []string
	for _, name := range connsCountersShown {
		parts = append(parts, fmt.Sprintf("%s %d", name, tot[name]))
	}
	for _, name := range slices.Sorted(maps.Keys(tot)) {
		if tot[name] == 0 || slices.Contains(connsCountersShown, name) {
			continue
		}
		if l := strings.ToLower(name); strings.Contains(l, "drop") || strings.Contains(l, "skipped") || strings.Contains(l, "challenge") ||
			strings.Contains(l, "ratelimit") || strings.Contains(l, "overflow") {
			parts = append(parts, fmt.Sprintf("%s %d", name, tot[name]))
		}
	}
	fmt.Fprintf(out, "\nthe client's kernel over these trials (its namespace's counters as nstat names them, from just before each\n")
	fmt.Fprintf(out, "failure to the end of its measurement, summed):\n")
	for len(parts) > 0 {
		k := min(len(parts), 4)
		sep := ","
		if k == len(parts) {
			sep = ";"
		}
		fmt.Fprintf(out, "  %s%s\n", strings.Join(parts[:k], ", "), sep)
		parts = parts[k:]
	}
	fmt.Fprintf(out, "its eth0 dropped %d received frames; the machine's softnet backlog dropped %d and squeezed %d times (all\n", rxDrops, softDrops, squeezed)
	fmt.Fprintf(out, "namespaces and jobs); the capture lost %d frames.\n", capDrops)
	var ld []string
	for _, k := range slices.Sorted(maps.Keys(links)) {
		ld = append(ld, fmt.Sprintf("%s %d", k, links[k]))
	}
	if len(ld) == 0 {
		ld = []string{"none"}
	}
	fmt.Fprintf(out, "frames the lab's links dropped (rx/tx dropped of every interface of the nodes, client and switch): %s\n", strings.Join(ld, ", "))
	if len(b.connsSysctls) > 0 {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(b.connsSysctls)) {
			kv = append(kv, k+"="+b.connsSysctls[k])
		}
		fmt.Fprintf(out, "client sysctls (the lab's defaults, none raised): %s\n", strings.Join(kv, ", "))
	}
	return nil
}

// fineDur prints seconds in microseconds below a millisecond.
func fineDur(sec float64) string {
	if sec < 1e-3 {
		return fmt.Sprintf("%.0f us", sec*1e6)
	}
	return fmt.Sprintf("%.1f ms", sec*1e3)
}
