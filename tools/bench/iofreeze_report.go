package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// The iofreeze suite's tables: one row per system and test, then one per
// trial.

func (b *iofreezeBench) report(out io.Writer, systems, tests []string, results map[string]freezeSystemRun) error {
	storage := "a replica 3 GlusterFS volume (a brick per node, FUSE-mounted on each; CTDB's cluster lock and fsha's --lock on it)"
	if b.storage == "local" {
		storage = "the lab's shared directory (the locks too)"
	} else if b.keepalive {
		storage += ", the bricks' TCP keepalive 2 s, 1 s x 2, user timeout 5 s"
	}
	fmt.Fprintf(out, "\n## I/O freeze of an application on an SMB mount (smbnetfs), 3 nodes, clustered Samba on CTDB, share on %s\n\n", storage)
	fmt.Fprintf(out, "%d trials per row; freeze = longest time without a good write or read (every 20 ms), from the fault to the node's return (at least %v out).\n", b.trials, b.outage)
	fmt.Fprintf(out, "data back = the file written through the VIP while the node was out reads back identical through the node after its return")
	if b.storage == "gluster" {
		fmt.Fprintf(out, ", once self-heal put it on its brick")
	}
	fmt.Fprintf(out, " (OVD Test 5).\n")
	victim := "the node that holds the application's VIP"
	if b.victim == "leader" {
		victim = "CTDB's leader (move: the VIP's holder)"
	}
	fmt.Fprintf(out, "The failed node is %s.\n", victim)
	for _, sys := range systems {
		r := results[sys]
		fmt.Fprintf(out, "%s: cluster start %s, all its trials %s; with no fault (%v): longest gap %s, an operation p50 %s, p99 %s.\n",
			sys, seconds(r.start), seconds(r.took), quietWindow, fmtDur(r.quiet.Freeze.Seconds(), 0), fmtDur(r.quietP50.Seconds(), 0), fmtDur(r.quietP99.Seconds(), 0))
	}
	fmt.Fprintln(out)
	t := &table{header: []string{"system", "test", "freeze p50", "p95", "max", "errors", "bad reads", "not resumed", "failback freeze p95", "failback errors", "data back", "victim led CTDB", "target", ""}}
	for _, sys := range systems {
		for _, test := range tests {
			trs := results[sys].trials[test]
			var fz, fb []float64
			var errs, bad, stuck, fbErrs, led, known, dataOK, dataN, held int
			for _, tr := range trs {
				fz = append(fz, seconds64(tr.fault.Freeze))
				errs += tr.fault.Errors
				bad += tr.fault.Mismatches + tr.failback.Mismatches
				if !tr.resumed {
					stuck++
				}
				if test != "move" {
					fb = append(fb, seconds64(tr.failback.Freeze))
					fbErrs += tr.failback.Errors
					dataN++
					if tr.data.ok() {
						dataOK++
					}
				}
				if tr.ctdb.known {
					known++
					if tr.ctdb.led {
						led++
					}
				}
				if tr.cutOff != nil && (tr.cutOff.heldVIP || tr.cutOff.tookLock || tr.cutOff.linkBack) {
					held++
				}
			}
			target, verdict := "-", ""
			if sys == "fsha" {
				bound := time.Second
				if test == "move" {
					bound = 100 * time.Millisecond
				}
				target = "p95 <= " + fmtDur(bound.Seconds(), 0)
				verdict = "PASS"
				if percentile(fz, 95) > bound.Seconds() || bad > 0 || stuck > 0 || held > 0 || dataOK < dataN || (test == "move" && errs > 0) {
					verdict = "MISS"
				}
			}
			fbCell, dataCell := "-", "-"
			if len(fb) > 0 {
				fbCell = fmtDur(percentile(fb, 95), b.resume)
				dataCell = fmt.Sprintf("%d/%d", dataOK, dataN)
			}
			ledCell := fmt.Sprintf("%d/%d", led, len(trs))
			if known < len(trs) {
				ledCell += fmt.Sprintf(" (%d unknown)", len(trs)-known)
			}
			t.add(sys, test, fmtDur(percentile(fz, 50), b.resume), fmtDur(percentile(fz, 95), b.resume), fmtDur(percentile(fz, 100), b.resume),
				fmt.Sprint(errs), fmt.Sprint(bad), fmt.Sprint(stuck), fbCell, fmt.Sprint(fbErrs), dataCell, ledCell, target, verdict)
		}
	}
	if err := t.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nPer trial. CTDB lock: from the fault to a survivor's ctdbd taking CTDB's cluster lock (a new leader), before the node's return; CTDB recovered: to the last recovery a survivor's ctdbd ended before then; election: a survivor's fsha called CTDB's election. Cut-off node: what it had just before its return. Healed: from the node's power-up or link up to the file on its brick.\n\n")
	t = &table{header: []string{"system", "test", "trial", "victim", "led CTDB", "CTDB lock", "CTDB recovered", "election", "freeze", "errors", "bad reads", "failback freeze", "cut-off node", "data written during the outage"}}
	for _, sys := range systems {
		for _, test := range tests {
			for i, tr := range results[sys].trials[test] {
				lock, rec, asked := "-", "-", "-"
				if tr.ctdb.tookLock > 0 {
					lock = fmtDur(tr.ctdb.tookLock.Seconds(), 0)
				}
				if tr.ctdb.recovered > 0 {
					rec = fmtDur(tr.ctdb.recovered.Seconds(), 0)
				}
				if strings.HasPrefix(sys, "fsha") && test != "move" {
					asked = "no"
					if tr.ctdb.asked {
						asked = "yes"
					}
				}
				fb := "-"
				if test != "move" {
					fb = fmtDur(seconds64(tr.failback.Freeze), b.resume)
				}
				t.add(sys, test, fmt.Sprint(i+1), tr.victim, tr.ctdb.String(), lock, rec, asked,
					fmtDur(seconds64(tr.fault.Freeze), b.resume), fmt.Sprint(tr.fault.Errors), fmt.Sprint(tr.fault.Mismatches+tr.failback.Mismatches),
					fb, tr.cutOff.String(), tr.data.String())
			}
		}
	}
	return t.write(out)
}

// String is whether the victim led CTDB: yes, no or ? (the ctdbd did not
// agree on a leader before the fault).
func (v ctdbView) String() string {
	switch {
	case !v.known:
		return "?"
	case v.led:
		return "yes"
	}
	return "no"
}
