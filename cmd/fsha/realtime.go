package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// realtimePriority is the SCHED_RR priority fsha runs at: the lowest, so
// that it wins over every normal process of a busy machine (a starved
// daemon renews no lease and its node's VIPs fail over) yet yields to any
// other real-time task. ctdbd and keepalived run real-time for the same
// reason.
const realtimePriority = 1

// schedFlagResetOnFork (sched_setattr's SCHED_FLAG_RESET_ON_FORK) keeps
// the real-time policy from the processes fsha starts (event hooks, health
// check commands). It also resets threads the Go runtime creates later,
// which keepRealtime picks up again.
const schedFlagResetOnFork = 0x01

// setRealtime puts every thread of this process in SCHED_RR; it returns
// how many it changed.
func setRealtime() (int, error) {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0, fmt.Errorf("real-time scheduling: list threads: %w", err)
	}
	n := 0
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		cur, err := unix.SchedGetAttr(tid, 0)
		if err == nil && cur.Policy == unix.SCHED_RR {
			continue
		}
		attr := &unix.SchedAttr{Policy: unix.SCHED_RR, Flags: schedFlagResetOnFork, Priority: realtimePriority}
		if err := unix.SchedSetAttr(tid, attr, 0); err != nil {
			if err == unix.ESRCH {
				continue // the thread ended meanwhile
			}
			return n, fmt.Errorf("real-time scheduling of thread %d: %w", tid, err)
		}
		n++
	}
	return n, nil
}

// keepRealtime makes fsha real-time now and keeps its new threads so.
func keepRealtime(ctx context.Context, log *zap.Logger) {
	if _, err := setRealtime(); err != nil {
		log.Warn("running without real-time scheduling: a busy machine may starve the lease renewals", zap.Error(err))
		return
	}
	log.Info("real-time scheduling (SCHED_RR)", zap.Int("priority", realtimePriority))
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := setRealtime(); err != nil {
					log.Debug("real-time scheduling", zap.Error(err))
				}
			}
		}
	}()
}
