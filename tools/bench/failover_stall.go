package main

import (
	"bufio"
	"encoding/json"
	"fmt"
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
// "control loop stalled" means the machine (or the VM) stalled, not fsha.
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

// fshaStalls returns the "control loop stalled" reports (seconds) that
// n's current fsha logged between from and to.
func fshaStalls(n *lab.ClusterNode, from, to time.Time) ([]float64, error) {
	p := n.FshaProcess()
	if p == nil {
		return nil, nil
	}
	f, err := os.Open(p.StderrPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []float64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if !strings.Contains(string(line), "control loop stalled") {
			continue
		}
		var rec struct {
			TS    time.Time `json:"ts"`
			Stall float64   `json:"stall"`
		}
		if json.Unmarshal(line, &rec) != nil || rec.TS.Before(from) || rec.TS.After(to) {
			continue
		}
		out = append(out, rec.Stall)
	}
	return out, sc.Err()
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
