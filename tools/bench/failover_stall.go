package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// stallMonitor notices when this machine stops running us: a thread that
// sleeps 5 ms at a time records every wake-up later than a threshold. A
// late wake-up of this process that coincides with the daemons' own
// "control loop slow" means the machine (or the VM) stalled, not fsha.
type stallMonitor struct {
	threshold time.Duration
	stop      chan struct{}
	done      chan struct{}

	mu     sync.Mutex
	events []stallEvent
}

type stallEvent struct {
	from time.Time // when the thread went to sleep
	late time.Duration
}

func startStallMonitor(threshold time.Duration) *stallMonitor {
	m := &stallMonitor{threshold: threshold, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		const nap = 5 * time.Millisecond
		for {
			select {
			case <-m.stop:
				return
			default:
			}
			t := time.Now()
			time.Sleep(nap)
			if late := time.Since(t) - nap; late > m.threshold {
				m.mu.Lock()
				m.events = append(m.events, stallEvent{t, late})
				m.mu.Unlock()
			}
		}
	}()
	return m
}

func (m *stallMonitor) Close() {
	close(m.stop)
	<-m.done
}

// worst is the longest stall that overlaps [from, to].
func (m *stallMonitor) worst(from, to time.Time) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	var w time.Duration
	for _, e := range m.events {
		if e.from.Before(to) && e.from.Add(e.late+5*time.Millisecond).After(from) {
			w = max(w, e.late)
		}
	}
	return w
}

// fshaEvent is a line of a daemon's log the failover suite counts.
type fshaEvent struct {
	at   time.Time
	slow float64 // "control loop slow": how long the loop's turn took (s); 0 for a lapse
}

// fshaLogs reads the survivors' `fsha up` logs as they grow and keeps the
// lines that tell that fsha itself stalled: "control loop slow" (one turn
// of the loop took more than half a renew interval, so heartbeats and
// renewals waited) and "lease lapsed" (a node's own VIP stopped being
// answered: no renewal from a majority). Each file is read once, from where
// the last read stopped.
type fshaLogs struct {
	files map[string]*fshaLogFile
}

type fshaLogFile struct {
	off    int64
	events []fshaEvent
}

func newFshaLogs() *fshaLogs { return &fshaLogs{files: map[string]*fshaLogFile{}} }

// events returns what n's current fsha logged between from and to: the
// slow turns (seconds) and how many of its VIPs lapsed.
func (l *fshaLogs) events(n *lab.ClusterNode, from, to time.Time) (slow []float64, lapses int, err error) {
	p := n.FshaProcess()
	if p == nil {
		return nil, 0, nil
	}
	lf := l.files[p.StderrPath]
	if lf == nil {
		lf = &fshaLogFile{}
		l.files[p.StderrPath] = lf
	}
	if err := lf.read(p.StderrPath); err != nil {
		return nil, 0, err
	}
	for _, e := range lf.events {
		if e.at.Before(from) || e.at.After(to) {
			continue
		}
		if e.slow > 0 {
			slow = append(slow, e.slow)
		} else {
			lapses++
		}
	}
	return slow, lapses, nil
}

// read parses the complete lines added to path since the last read.
func (lf *fshaLogFile) read(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Seek(lf.off, io.SeekStart); err != nil {
		return err
	}
	r := bufio.NewReaderSize(f, 64*1024)
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			// a last line without its newline is still being written
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		lf.off += int64(len(line))
		slow := bytes.Contains(line, []byte(`"control loop slow"`))
		if !slow && !bytes.Contains(line, []byte(`"msg":"lease lapsed`)) {
			continue
		}
		var rec struct {
			TS   string  `json:"ts"`
			Took float64 `json:"took"` // zap's production encoder: seconds
		}
		if json.Unmarshal(line, &rec) != nil {
			continue
		}
		at, err := parseLogTime(rec.TS)
		if err != nil {
			continue
		}
		e := fshaEvent{at: at}
		if slow {
			e.slow = max(rec.Took, 1e-9)
		}
		lf.events = append(lf.events, e)
	}
}

// parseLogTime reads fsha's log timestamps (zap's ISO 8601 encoder:
// 2006-01-02T15:04:05.000Z0700).
func parseLogTime(s string) (time.Time, error) {
	if t, err := time.Parse("2006-01-02T15:04:05.000Z0700", s); err == nil {
		return t, nil
	}
	return time.Parse(time.RFC3339Nano, s)
}

// cpuTimes reads the machine's CPU time counters (/proc/stat, in ticks):
// the total and the steal (time the hypervisor ran someone else).
func cpuTimes() (total, steal uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("unexpected /proc/stat: %q", line)
	}
	for i, s := range f[1:] {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		total += v
		if i == 7 {
			steal = v
		}
	}
	return total, steal, nil
}

// cpuPressure reads the total of /proc/pressure/cpu's "some" line: the
// microseconds during which some task waited for a CPU.
func cpuPressure() (uint64, error) {
	b, err := os.ReadFile("/proc/pressure/cpu")
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, "some ") {
			continue
		}
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "total="); ok {
				return strconv.ParseUint(v, 10, 64)
			}
		}
	}
	return 0, fmt.Errorf("no some total in /proc/pressure/cpu")
}

// machineLoad samples what else the machine did during a run.
type machineLoad struct {
	start        time.Time
	total, steal uint64
	pressure     uint64
	loadavg      string
}

func sampleLoad() machineLoad {
	l := machineLoad{start: time.Now()}
	l.total, l.steal, _ = cpuTimes()
	l.pressure, _ = cpuPressure()
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		l.loadavg = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return l
}

// summary says, since l was sampled: the share of CPU time stolen by the
// hypervisor, the share of wall time some task waited for a CPU, and the
// load averages then and now.
func (l machineLoad) summary() string {
	now := sampleLoad()
	var steal, psi float64
	if now.total > l.total {
		steal = float64(now.steal-l.steal) / float64(now.total-l.total) * 100
	}
	if wall := now.start.Sub(l.start); wall > 0 {
		psi = float64(now.pressure-l.pressure) / float64(wall.Microseconds()) * 100
	}
	return fmt.Sprintf("CPU steal %.1f%%, CPU pressure (PSI some) %.0f%%, load average %s at the start, %s at the end",
		steal, psi, l.loadavg, now.loadavg)
}
