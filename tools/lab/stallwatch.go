package lab

import (
	"fmt"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The lab's nodes share one kernel. A stall of that kernel (seen on a
// small VM while another node loads and attaches its programs) stops
// every node's daemon at once, real-time or not, and each one's leases
// lapse together: an artifact of the lab, not a failure a real cluster
// (one kernel per node) would see as a whole. A thread of the test at
// fsha's real-time priority naps 5 ms at a time; a nap that ends more than
// machineStall late is recorded as a fault of the whole lab ("machine
// stall"), so that the failover accounting explains what it caused and
// nothing else. It is an independent witness: it sees the stall only if
// the kernel kept a real-time thread off every CPU.
const machineStall = 150 * time.Millisecond

// machineStallWhat starts the What of a fault the stall watch records.
const machineStallWhat = "machine stall"

// MachineStall tells whether the fault is a stall of the lab's kernel that
// the stall watch witnessed (not one a test injected).
func (f Fault) MachineStall() bool { return strings.HasPrefix(f.What, machineStallWhat+":") }

// watchStalls runs until stop is closed.
func (l *Lab) watchStalls(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	attr := &unix.SchedAttr{Policy: unix.SCHED_RR, Priority: 1}
	if err := unix.SchedSetAttr(0, attr, 0); err != nil {
		l.log.Info("stall watch without real-time priority: it records nothing")
		<-stop
		return
	}
	const nap = 5 * time.Millisecond
	for {
		select {
		case <-stop:
			return
		default:
		}
		t := time.Now()
		time.Sleep(nap)
		if late := time.Since(t) - nap; late > machineStall {
			l.NoteFault(fmt.Sprintf(machineStallWhat+": a real-time thread of the test ran %v late", late.Round(time.Millisecond)),
				nil, t, t.Add(nap+late))
		}
	}
}
