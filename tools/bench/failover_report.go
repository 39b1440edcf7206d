package main

// The failover suite's report: each run's measures against fsha's targets,
// the notes on what may have skewed a run (stalls, lapses, set-up retries,
// how a link cut was timed), and where fsha's time goes.

import (
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// fshaTargets are the bounds on the p95 of both measures after a
// power cut, by fsha's --failover profile.
var fshaTargets = map[string]time.Duration{
	"default": 350 * time.Millisecond,
	"fast":    100 * time.Millisecond,
}

// report prints the tables.
func (b *failoverBench) report(out io.Writer, c *lab.Cluster, runs []*failoverRun, took time.Duration) error {
	fmt.Fprintf(out, "\nfailover of a VIP owner, %d-node lab (smbd + nfs-ganesha on every node, %d VIPs, 1 client), one run of %s\n",
		len(c.Nodes), len(c.VIPs), took.Round(time.Second))
	fmt.Fprintf(out, "VIP answers = failure -> first new TCP connection to VIP:445 accepted (a connect every %v, each\n", b.probe.Interval)
	fmt.Fprintf(out, "given %v); blocked reset = failure -> ECONNRESET in an idle SMB client blocked in read (bound %v).\n", b.probe.AttemptTTL, b.blockTimeout)
	fmt.Fprintf(out, "power cut = owner's eth0 down, then SIGKILL to all its processes; network cut = owner's eth0 down\n")
	fmt.Fprintf(out, "(its processes run on); link cut = every frame to and from the owner dropped at the switch, links up.\n")
	fmt.Fprintf(out, "p50 = median (nearest rank), p95 = nearest rank (%s of %d); trials alternate the failures and\n",
		ordinal(int(math.Ceil(0.95*float64(b.trials)))), b.trials)
	fmt.Fprintf(out, "rotate over the VIPs. Targets (the issue's, fsha only, power cut): p95 of both measures <= %s\n",
		fmtDur(fshaTargets["default"].Seconds(), 0))
	fmt.Fprintf(out, "with --failover default, <= %s with --failover fast, from this run's trials. A link cut's clock\n", fmtDur(fshaTargets["fast"].Seconds(), 0))
	fmt.Fprintf(out, "starts at the last frame the switch delivered to the owner (a frame every 1 ms from the client).\n")
	fmt.Fprintf(out, "machine during the run: %s\n\n", b.load.summary())
	t := &table{header: []string{"system", "failure", "metric", "n", "p50", "p95", "max", "target", "result"}}
	var notes, verdicts []string
	for _, r := range runs {
		var connect, reset []float64
		outcomes := map[string]int{}
		for _, tr := range r.trials {
			connect = append(connect, tr.connect)
			reset = append(reset, tr.reset)
			outcomes[tr.outcome]++
		}
		if r.failed != "" && r.failure == failures0(runs, r.system) {
			notes = append(notes, fmt.Sprintf("%s: STOPPED EARLY, after %d trials of %d per failure: %s", r.system, len(r.trials), b.trials, r.failed))
		}
		if len(r.trials) == 0 {
			continue
		}
		for _, m := range []struct {
			name  string
			xs    []float64
			bound time.Duration
		}{
			{"VIP answers", connect, b.probe.Limit},
			{"blocked client reset", reset, b.blockTimeout},
		} {
			tgt, result := "baseline", "-"
			if r.profile != "" {
				tgt = "-"
				if bound, ok := fshaTargets[r.profile]; ok && r.failure == failPower {
					p95 := percentile(m.xs, 95)
					tgt = "p95 <= " + fmtDur(bound.Seconds(), 0)
					result = "MISS"
					if p95 <= bound.Seconds() {
						result = "PASS"
					}
					if len(r.trials) < 20 {
						result += " (n < 20)"
					}
					verdicts = append(verdicts, fmt.Sprintf("%s, %s, %s: p95 %s, target <= %s: %s",
						r.system, failureNames[r.failure], m.name, fmtDur(p95, m.bound), fmtDur(bound.Seconds(), 0), result))
				}
			}
			t.add(r.system, failureNames[r.failure], m.name, fmt.Sprint(len(m.xs)),
				fmtDur(percentile(m.xs, 50), m.bound), fmtDur(percentile(m.xs, 95), m.bound),
				fmtDur(slices.Max(m.xs), m.bound), tgt, result)
		}
		var hostStalls, daemonStalls, lapseTrials, lapses, notHeld, late, retries int
		var worstHost time.Duration
		var worstDaemon float64
		for _, tr := range r.trials {
			if tr.hostStall > 0 {
				hostStalls++
				worstHost = max(worstHost, tr.hostStall)
			}
			if tr.holders != 1 {
				notHeld++
			}
			if tr.preWait > 0 {
				late++
			}
			retries += tr.setupRetries
			if len(tr.daemonStalls) > 0 {
				daemonStalls++
				worstDaemon = max(worstDaemon, slices.Max(tr.daemonStalls))
			}
			if tr.lapses > 0 {
				lapseTrials++
				lapses += tr.lapses
			}
		}
		if hostStalls > 0 || daemonStalls > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials with this process stalled >= 100 ms (worst %v); %d with a survivor's fsha reporting \"control loop slow\" (worst %.0f ms)",
				r.system, failureNames[r.failure], hostStalls, worstHost.Round(time.Millisecond), daemonStalls, worstDaemon*1000))
		}
		if lapseTrials > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which a survivor's own VIP lapsed (no renewal from a majority in time: it stopped answering for it), %d lapses",
				r.system, failureNames[r.failure], lapseTrials, lapses))
		}
		if late > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which the VIP, stable on its node, did not answer the client for more than 1 s before the failure",
				r.system, failureNames[r.failure], late))
		}
		if notHeld > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trials in which, at their end, the VIP was not on exactly one surviving node (it answered, then was dropped or moved again)",
				r.system, failureNames[r.failure], notHeld))
		}
		if r.failure == failLink {
			var calls, windows []float64
			untimed := 0
			for _, tr := range r.trials {
				calls = append(calls, tr.cutCall.Seconds())
				windows = append(windows, tr.cutWindow.Seconds())
				if tr.cutUntimed {
					untimed++
				}
			}
			if untimed > 0 {
				notes = append(notes, fmt.Sprintf("%s, %s: %d trials timed from the start of the `nft -f` call: the frames through the switch port did not time the cut",
					r.system, failureNames[r.failure], untimed))
			}
			notes = append(notes, fmt.Sprintf("%s, %s: clock from the last frame through the switch port; the cut fell within %.1f ms (p50), %.1f ms (max) after it; the `nft -f` call took %s (p50), %s (max)",
				r.system, failureNames[r.failure], percentile(windows, 50)*1000, slices.Max(windows)*1000,
				fmtDur(percentile(calls, 50), 0), fmtDur(slices.Max(calls), 0)))
		}
		if retries > 0 {
			notes = append(notes, fmt.Sprintf("%s, %s: %d trial set-ups failed before the failure (the VIP moved, was dropped or the blocked client was reset): waited for a stable system and started over",
				r.system, failureNames[r.failure], retries))
		}
		if len(outcomes) > 1 || outcomes[outcomeReset] == 0 {
			var parts []string
			for _, o := range slices.Sorted(maps.Keys(outcomes)) {
				parts = append(parts, fmt.Sprintf("%s %d", o, outcomes[o]))
			}
			notes = append(notes, fmt.Sprintf("%s, %s: blocked client reads ended with %s", r.system, failureNames[r.failure], strings.Join(parts, ", ")))
		}
	}
	if err := t.write(out); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, "  "+n)
	}
	if len(verdicts) > 0 {
		fmt.Fprintf(out, "\ntargets (power cut, p95 of this run's trials, %d nodes):\n", len(c.Nodes))
		for _, v := range verdicts {
			fmt.Fprintln(out, "  "+v)
		}
	}

	// Where fsha's time goes: its own timeline against the client's view.
	bt := &table{header: []string{"system", "failure", "n", "decision", "first GARP sent", "tickles sent", "ARP at client", "tickle at client", "VIP answers", "client reset"}}
	for _, r := range runs {
		if r.profile == "" || len(r.trials) == 0 {
			continue
		}
		col := func(get func(trialResult) float64) string {
			var xs []float64
			for _, tr := range r.trials {
				if v := get(tr); !math.IsNaN(v) {
					xs = append(xs, v)
				}
			}
			if len(xs) == 0 {
				return "-"
			}
			return fmtDur(percentile(xs, 50), b.blockTimeout) + " / " + fmtDur(percentile(xs, 95), b.blockTimeout)
		}
		bt.add("fsha --failover "+r.profile, failureNames[r.failure], fmt.Sprint(len(r.trials)),
			col(func(t trialResult) float64 { return t.decision }), col(func(t trialResult) float64 { return t.announce }),
			col(func(t trialResult) float64 { return t.tickled }), col(func(t trialResult) float64 { return t.garpSeen }),
			col(func(t trialResult) float64 { return t.tickleSeen }),
			col(func(t trialResult) float64 { return t.connect }), col(func(t trialResult) float64 { return t.reset }))
	}
	if len(bt.rows) > 0 {
		fmt.Fprintf(out, "\nfsha: where the time goes, p50 / p95 since the failure. From the new owner's `fsha timeline`:\n")
		fmt.Fprintf(out, "decision = its worker starts the takeover (the majority's promises are in); first GARP sent;\n")
		fmt.Fprintf(out, "tickles sent = its record of the first round of tickle ACKs. From the client's eth0 (packet socket,\n")
		fmt.Fprintf(out, "kernel time): the first ARP for the VIP and the first segment from VIP:445 to the blocked client\n\n")
		if err := bt.write(out); err != nil {
			return err
		}
	}
	return b.reportConns(out, runs)
}

// failures0 is the first failure of system's runs (its notes come once).
func failures0(runs []*failoverRun, system string) string {
	for _, r := range runs {
		if r.system == system {
			return r.failure
		}
	}
	return ""
}

func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return fmt.Sprint(n) + suffix
}
