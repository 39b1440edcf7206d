package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Fault accounting and false failovers.
//
// Every fault the lab injects is recorded with the hosts it hits and when
// it starts and ends: Freeze/Thaw, NetworkDown/Up (any eth0 down),
// PowerDown/Up, KillFsha, StopFsha (a stop for a restart), signals and
// stops of a node's daemons (fsha, smbd, nfs-ganesha, ctdbd), Partition/Heal,
// PartitionOneWay, Loss, Duplicate, Cut, Unplug and with them Flap, each
// until HealFaults or its undo. A test that injects a fault by other means
// (its own BPF program, iptables...) records it with NoteFault.
//
// At Close (before anything is torn down) the lab reads the log of every
// `fsha up` it ran on a node and finds the failover events: a node losing
// or giving up a VIP, or taking one from a node it believes dead (see
// FailoverEvent). An event is explained by a fault whose window, from
// faultLead before its start to FaultGrace after its end, covers it, and
// that hits the node of the event or the node its reason names, or any
// node at all while the lab has at most smallCluster nodes (there a fault
// of one node moves VIPs on the others: one node cut off from three is a
// majority lost for the VIPs it voted for), or the whole lab (Partition).
// An event nothing explains is a false failover: the cluster moved a VIP
// that no injected fault asked it to move.

// FaultGrace is how long after a fault ends its consequences still count
// as explained: a thawed node learning that its VIPs moved, a healed
// partition settling.
const FaultGrace = 3 * time.Second

const (
	// faultLead covers a log line stamped up to a millisecond early
	// (zap's ISO 8601 time has millisecond precision).
	faultLead = 20 * time.Millisecond
	// smallCluster: up to this many nodes, a fault of any node explains
	// an event of any node.
	smallCluster = 3
)

// A Fault is one fault injected in the lab.
type Fault struct {
	// What the fault is, e.g. "freeze n2" or "loss 40% both-ways on n1".
	What string
	// Hosts are the roles of the hosts it hits; none: the whole lab.
	Hosts []string
	// Start and End bound it; a zero End: on until the lab closed.
	Start, End time.Time
}

func (f Fault) String() string {
	end := "the end"
	if !f.End.IsZero() {
		end = f.End.Format(stampLayout)
	}
	return fmt.Sprintf("%s from %s to %s", f.What, f.Start.Format(stampLayout), end)
}

const stampLayout = "15:04:05.000"

// faultLog holds the lab's faults; open maps the key of a fault still on
// to its index.
type faultLog struct {
	mu     sync.Mutex
	faults []Fault
	open   map[string]int
}

// NoteFault records a fault the test injected without the lab's methods,
// on hosts (none: the whole lab) from start to end (zero: until the lab
// closes), so that the failovers it causes count as explained.
func (l *Lab) NoteFault(what string, hosts []*Host, start, end time.Time) {
	var roles []string
	for _, h := range hosts {
		roles = append(roles, h.Role)
	}
	l.flog.mu.Lock()
	l.flog.faults = append(l.flog.faults, Fault{What: what, Hosts: roles, Start: start, End: end})
	l.flog.mu.Unlock()
	l.log.Info("fault noted by the test: " + what)
}

// Faults returns the faults recorded so far, in order of start.
func (l *Lab) Faults() []Fault {
	l.flog.mu.Lock()
	defer l.flog.mu.Unlock()
	out := slices.Clone(l.flog.faults)
	for i := range out {
		out[i].Hosts = slices.Clone(out[i].Hosts)
	}
	slices.SortStableFunc(out, func(a, b Fault) int { return a.Start.Compare(b.Start) })
	return out
}

// beginFault records that the fault key starts now, unless it is on
// already. Nothing is recorded once the lab closes: its teardown is no
// fault.
func (l *Lab) beginFault(key, what string, roles ...string) {
	l.beginFaultAt(key, what, time.Now(), roles...)
}

func (l *Lab) beginFaultAt(key, what string, at time.Time, roles ...string) {
	if l.isClosed() {
		return
	}
	f := &l.flog
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, on := f.open[key]; on {
		return
	}
	if f.open == nil {
		f.open = map[string]int{}
	}
	f.open[key] = len(f.faults)
	f.faults = append(f.faults, Fault{What: what, Hosts: roles, Start: at})
}

// endFault records that the fault key, if on, ends now.
func (l *Lab) endFault(key string) {
	now := time.Now()
	f := &l.flog
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, on := f.open[key]; on {
		f.faults[i].End = now
		delete(f.open, key)
	}
}

// daemonStems are the names of the node processes whose death or stop is
// a fault (a CPU hog or a test's helper stopping is none). ctdbd's is one:
// a clustered smbd exits with it, and its peers freeze their databases.
var daemonStems = []string{"fsha-up", "smbd", "ganesha", "ctdbd"}

// processFault records a signal the lab sends to a node's daemon outside
// the teardown: SIGSTOP until SIGCONT, anything that ends it until the
// daemon starts again (StartFsha, FshaUp, StartSmbd, StartGanesha,
// StartCTDB).
func (p *Process) processFault(sig syscall.Signal) {
	h := p.host
	stem, _, _ := strings.Cut(p.Name, ".")
	if !h.node || !slices.Contains(daemonStems, stem) {
		return
	}
	switch sig {
	case 0, syscall.SIGWINCH, syscall.SIGUSR1, syscall.SIGUSR2:
		// a probe or a request, not a fault
	case syscall.SIGCONT:
		h.lab.endFault("stop/" + h.Role + "/" + stem)
	case syscall.SIGHUP:
		// fsha restarts in place: a moment, covered by the grace
		h.lab.beginFault("hup/"+h.Role+"/"+stem, "SIGHUP "+stem+" on "+h.Role, h.Role)
		h.lab.endFault("hup/" + h.Role + "/" + stem)
	case syscall.SIGSTOP, syscall.SIGTSTP:
		h.lab.beginFault("stop/"+h.Role+"/"+stem, unix.SignalName(sig)+" "+stem+" on "+h.Role, h.Role)
	default:
		h.lab.beginFault("proc/"+h.Role+"/"+stem, unix.SignalName(sig)+" "+stem+" on "+h.Role, h.Role)
	}
}

// daemonBack ends the faults of a node daemon that runs again.
func (h *Host) daemonBack(stem string) {
	h.lab.endFault("proc/" + h.Role + "/" + stem)
	if stem == "fsha-up" {
		h.lab.endFault("fsha/" + h.Role)
	}
}

// syncNetFaults records the start (at start, before the change) and the
// end (now, after it) of the switch faults (faults.go) from the wanted
// sets before and after a change.
func (l *Lab) syncNetFaults(prev, next *faultSet, start time.Time) {
	keys := func(f *faultSet) map[string]Fault {
		m := map[string]Fault{}
		for p := range f.oneWay {
			m["oneway/"+p[0]+"/"+p[1]] = Fault{What: "one-way partition " + p[0] + " -> " + p[1], Hosts: []string{p[0], p[1]}}
		}
		for port, r := range f.loss {
			m["loss/"+port] = Fault{What: fmt.Sprintf("loss %d%% to, %d%% from %s", r.to, r.from, port), Hosts: []string{port}}
		}
		for port, r := range f.dup {
			m["dup/"+port] = Fault{What: fmt.Sprintf("duplication %d%% to, %d%% from %s", r.to, r.from, port), Hosts: []string{port}}
		}
		for port := range f.cut {
			m["cut/"+port] = Fault{What: "cut " + port + " at the switch", Hosts: []string{port}}
		}
		return m
	}
	before, after := keys(prev), keys(next)
	for k := range before {
		if _, on := after[k]; !on {
			l.endFault(k)
		}
	}
	for _, k := range sortedKeys(after, strings.Compare) {
		if _, on := before[k]; !on {
			l.beginFaultAt(k, after[k].What, start, after[k].Hosts...)
		}
	}
}

// FailoverEvent is a line of an fsha log where a node lost or gave up a
// VIP, or took one from a node it believed dead:
//
//   - "lapse": "lease lapsed ...": no renewal from a majority, the data
//     plane stopped answering;
//   - "takeover": "took over" with a reason other than "unassigned",
//     "released by ...", "held before the restart" and "renewed after
//     ..." (so: "node N died");
//   - "release": "released" with the reason "lost quorum" or one that
//     mentions a newer epoch;
//   - "draining node died": a node steering a drain decided the node
//     draining it died and tickled its connections.
type FailoverEvent struct {
	At time.Time
	// Node is the role of the node whose log has the line.
	Node string
	Kind string
	VIP  string
	// Reason is the line's reason field ("" for a lapse).
	Reason string
	// Peer is the role of the node the reason names ("node 1 died": n2),
	// "" when it names none.
	Peer string
	// Line is the log line as written.
	Line string
	// SlowLoop is the longest "control loop slow" the node's daemon
	// logged in the second before the event (0: none): a daemon that was
	// not scheduled (or blocked) while its renewals were due.
	SlowLoop time.Duration
	// By is the fault that explains the event; nil: a false failover.
	By *Fault
}

// slowLoopWindow is how far before an event FailoverEvent.SlowLoop looks.
const slowLoopWindow = time.Second

func (e FailoverEvent) String() string {
	s := fmt.Sprintf("%s %s: %s of %s", e.At.Format(stampLayout), e.Node, e.Kind, e.VIP)
	if e.Reason != "" {
		s += " (" + e.Reason + ")"
	}
	if e.SlowLoop > 0 {
		s += fmt.Sprintf(" [its control loop took up to %v in the second before]", e.SlowLoop.Round(time.Millisecond))
	}
	if e.By != nil {
		s += ", explained by " + e.By.String()
	}
	return s
}

// FailoverReport is what the fsha logs of a lab say about failovers.
type FailoverReport struct {
	// Events are every failover event, explained or not, in order.
	Events []FailoverEvent
	// Faults are the faults recorded.
	Faults []Fault
	// Daemons counts the fsha daemons whose logs were read.
	Daemons int
	// Until is the end of what was judged: events later (the teardown)
	// are left out.
	Until time.Time
}

// False returns the events no fault explains.
func (r FailoverReport) False() []FailoverEvent {
	var out []FailoverEvent
	for _, e := range r.Events {
		if e.By == nil {
			out = append(out, e)
		}
	}
	return out
}

// Failovers reads the logs of every fsha daemon run on a node of the lab
// so far and judges their failover events against the faults recorded.
// After Close it returns what Close found before the teardown.
func (l *Lab) Failovers() (FailoverReport, error) {
	l.mu.Lock()
	if l.closed {
		defer l.mu.Unlock()
		if l.failovers == nil {
			return FailoverReport{}, errors.New("lab closed before its logs were read")
		}
		return *l.failovers, l.failoversErr
	}
	l.mu.Unlock()
	return l.readFailovers(time.Now())
}

// readFailovers judges the events logged before until.
func (l *Lab) readFailovers(until time.Time) (FailoverReport, error) {
	r := FailoverReport{Faults: l.Faults(), Until: until}
	nodes := l.Nodes()
	names := map[string]string{}
	isNode := map[string]bool{}
	for _, n := range nodes {
		names[strconv.Itoa(n.Index-1)] = n.Role
		names[n.IP().String()] = n.Role
		isNode[n.Role] = true
	}
	var errs []error
	for _, p := range l.Processes() {
		if !p.host.node || !strings.HasPrefix(p.Name, "fsha-up") {
			continue
		}
		r.Daemons++
		evs, err := readFailoverEvents(p.StderrPath, p.host.Role, names)
		if err != nil {
			errs = append(errs, err)
		}
		for _, e := range evs {
			if e.At.Before(until) {
				r.Events = append(r.Events, e)
			}
		}
	}
	slices.SortStableFunc(r.Events, func(a, b FailoverEvent) int { return a.At.Compare(b.At) })
	for i := range r.Events {
		r.Events[i].By = explain(r.Events[i], r.Faults, len(nodes), isNode, until)
	}
	return r, errors.Join(errs...)
}

// explain returns the fault that explains e, preferring one that hits
// its node or peer, or nil.
func explain(e FailoverEvent, faults []Fault, nodes int, isNode map[string]bool, until time.Time) *Fault {
	covers := func(f Fault) bool {
		end := f.End
		if end.IsZero() {
			end = until
		}
		return !e.At.Before(f.Start.Add(-faultLead)) && !e.At.After(end.Add(FaultGrace))
	}
	for i, f := range faults {
		if !covers(f) {
			continue
		}
		if len(f.Hosts) == 0 || slices.Contains(f.Hosts, e.Node) || (e.Peer != "" && slices.Contains(f.Hosts, e.Peer)) {
			return &faults[i]
		}
	}
	if nodes > smallCluster {
		return nil
	}
	for i, f := range faults {
		if covers(f) && slices.ContainsFunc(f.Hosts, func(h string) bool { return isNode[h] }) {
			return &faults[i]
		}
	}
	return nil
}

var (
	// nodeRE finds the node a reason names, by number or address:
	// "node 1 died", "draining node 198.18.0.12 died".
	nodeRE = regexp.MustCompile(`\bnode ([0-9a-fA-F.:]+)(?:\s|$)`)
	// benignTakeovers are the reasons of takeovers that are no failover:
	// a VIP nobody held, one handed over, one kept across a restart, one
	// renewed (after a lapse, which counts itself).
	benignTakeovers = []string{"unassigned", "released by ", "held before the restart", "renewed after"}
)

// readFailoverEvents parses one fsha log; names maps a node's number
// (PNN) and its address to its role.
func readFailoverEvents(path, role string, names map[string]string) ([]FailoverEvent, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read fsha log of %s: %w", role, err)
	}
	defer f.Close()
	var (
		out  []FailoverEvent
		slow []FailoverEvent // "control loop slow" lines: At and SlowLoop
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		e, ok := parseFailoverEvent(sc.Bytes(), role, names)
		switch {
		case !ok:
		case e.Kind == slowLoop:
			slow = append(slow, e)
		default:
			out = append(out, e)
		}
	}
	for i, e := range out {
		for _, l := range slow {
			if !l.At.After(e.At) && e.At.Sub(l.At) <= slowLoopWindow {
				out[i].SlowLoop = max(out[i].SlowLoop, l.SlowLoop)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return out, fmt.Errorf("read fsha log of %s: %w", role, err)
	}
	return out, nil
}

// slowLoop is the Kind parseFailoverEvent gives a "control loop slow"
// line, which is no failover.
const slowLoop = "slow loop"

// parseFailoverEvent tells whether a JSON log line is a failover event
// (or a slow control loop, of Kind slowLoop).
func parseFailoverEvent(line []byte, role string, names map[string]string) (FailoverEvent, bool) {
	var m struct {
		TS     string  `json:"ts"`
		Msg    string  `json:"msg"`
		VIP    string  `json:"vip"`
		Reason string  `json:"reason"`
		Node   *int    `json:"node"`
		Took   float64 `json:"took"` // seconds
	}
	if json.Unmarshal(line, &m) != nil {
		return FailoverEvent{}, false
	}
	e := FailoverEvent{Node: role, VIP: m.VIP, Reason: m.Reason, Line: string(line)}
	peer := ""
	switch {
	case strings.HasPrefix(m.Msg, "lease lapsed"):
		e.Kind = "lapse"
	case m.Msg == "took over":
		if slices.ContainsFunc(benignTakeovers, func(b string) bool { return strings.HasPrefix(m.Reason, b) }) {
			return FailoverEvent{}, false
		}
		e.Kind = "takeover"
	case m.Msg == "released":
		if m.Reason != "lost quorum" && !strings.Contains(m.Reason, "newer epoch") {
			return FailoverEvent{}, false
		}
		e.Kind = "release"
	case strings.HasPrefix(m.Msg, "draining node died"):
		e.Kind = "draining node died"
		if m.Node != nil {
			peer = strconv.Itoa(*m.Node)
		}
	case m.Msg == "control loop slow":
		e.Kind, e.Line = slowLoop, ""
		e.SlowLoop = time.Duration(m.Took * float64(time.Second))
		e.At, _ = parseLogTime(m.TS)
		return e, true
	default:
		return FailoverEvent{}, false
	}
	if s := nodeRE.FindStringSubmatch(m.Reason); s != nil {
		peer = s[1]
	}
	if peer != "" {
		e.Peer = names[peer]
		if e.Peer == "" {
			e.Peer = "node " + peer
		}
	}
	e.At, _ = parseLogTime(m.TS)
	return e, true
}

// parseLogTime reads fsha's log time: zap's ISO 8601 encoding
// (2006-01-02T15:04:05.000Z0700), or RFC 3339.
func parseLogTime(s string) (time.Time, error) {
	if t, err := time.Parse("2006-01-02T15:04:05.000Z0700", s); err == nil {
		return t, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// strictFailovers tells whether a false failover fails the test: under
// CI=true, or FSHA_LAB_FALSE_FAILOVERS=fail; FSHA_LAB_FALSE_FAILOVERS=log
// only logs it.
func strictFailovers() bool {
	switch os.Getenv("FSHA_LAB_FALSE_FAILOVERS") {
	case "fail":
		return true
	case "log":
		return false
	}
	return os.Getenv("CI") == "true"
}

// checkFailovers reports the failovers Close found to the test and to the
// package's tally.
func (l *Lab) checkFailovers(t TB) {
	t.Helper()
	rep, err := l.Failovers()
	if err != nil {
		t.Errorf("failover check of lab %s: %v", l.ID, err)
	}
	if rep.Daemons == 0 {
		return
	}
	for _, e := range rep.Events {
		if e.By != nil {
			t.Logf("failover %s", e)
		}
	}
	bad := rep.False()
	strict := strictFailovers()
	for _, e := range bad {
		if strict {
			t.Errorf("false failover (no fault the test injected explains it): %s\n\t%s", e, e.Line)
		} else {
			t.Logf("false failover (no fault the test injected explains it; CI=true fails the test): %s\n\t%s", e, e.Line)
		}
	}
	if len(bad) > 0 {
		t.Logf("faults recorded in lab %s: %d", l.ID, len(rep.Faults))
		for _, f := range rep.Faults {
			t.Logf("  %s", f)
		}
	}
	tally.add(t.Name(), rep)
}

// tally counts failovers per test for the summary of a test package
// (RunWithFsha): one test binary, one package.
var tally failoverTally

type failoverTally struct {
	mu     sync.Mutex
	tests  int
	events int
	bad    []string // "Test: event\n\tline"
}

func (ft *failoverTally) add(test string, r FailoverReport) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	ft.tests++
	ft.events += len(r.Events)
	for _, e := range r.False() {
		ft.bad = append(ft.bad, test+": "+e.String()+"\n\t"+e.Line)
	}
}

// maxSummaryEvents bounds the events a summary lists.
const maxSummaryEvents = 50

// summary is "false failovers: N in M tests ..." and one entry per false
// failover.
func (ft *failoverTally) summary() string {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "false failovers: %d in %d tests (%d failover events, %d explained by faults the tests injected)\n",
		len(ft.bad), ft.tests, ft.events, ft.events-len(ft.bad))
	for i, s := range ft.bad {
		if i == maxSummaryEvents {
			fmt.Fprintf(&b, "  ... and %d more\n", len(ft.bad)-i)
			break
		}
		fmt.Fprintf(&b, "  %s\n", s)
	}
	return b.String()
}
