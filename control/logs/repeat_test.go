package logs

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// fakeClock is the time the core reads, moved by the test, and the
// sweeps the core asked for.
type fakeClock struct {
	now    time.Time
	timers []fakeTimer
}

type fakeTimer struct {
	at time.Time
	f  func()
}

func (c *fakeClock) Now() time.Time { return c.now }

func (c *fakeClock) AfterFunc(d time.Duration, f func()) {
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), f: f})
}

// advance moves the clock, firing each timer that falls due on the way at
// its own time, as time.AfterFunc would.
func (c *fakeClock) advance(d time.Duration) {
	end := c.now.Add(d)
	for {
		i := -1
		for j, t := range c.timers {
			if !t.at.After(end) && (i < 0 || t.at.Before(c.timers[i].at)) {
				i = j
			}
		}
		if i < 0 {
			break
		}
		t := c.timers[i]
		c.timers = slices.Delete(c.timers, i, i+1)
		if t.at.After(c.now) {
			c.now = t.at
		}
		t.f()
	}
	c.now = end
}

func newTestLogger(t *testing.T) (*zap.Logger, *observer.ObservedLogs, *fakeClock) {
	t.Helper()
	inner, logs := observer.New(zapcore.DebugLevel)
	clock := &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	core := NewRepeatCore(inner, RepeatOptions{Window: 10 * time.Second, Now: clock.Now, AfterFunc: clock.AfterFunc})
	return zap.New(core, zap.WithClock(clock)), logs, clock
}

// NewTicker makes fakeClock a zapcore.Clock, so entries carry its time.
func (c *fakeClock) NewTicker(d time.Duration) *time.Ticker { return time.NewTicker(d) }

// The lock-check loop of the issue: 85 failures in 4 s are one line at
// once and one summary when the window ends, with the count and the
// latest occurrence's fields.
func TestRepeatedErrorSummarised(t *testing.T) {
	log, logs, clock := newTestLogger(t)
	lockErr := errors.New("open /clusterfs/.fsha.lock: no such file or directory")
	for i := range 86 {
		log.Warn("lock check", zap.Error(lockErr), zap.Int("attempt", i))
		clock.advance(47 * time.Millisecond)
	}
	if got := logs.Len(); got != 1 {
		t.Fatalf("%d lines during the loop, want 1: %v", got, logs.All())
	}
	if first := logs.All()[0]; first.ContextMap()["attempt"] != int64(0) {
		t.Errorf("first line %v, want attempt 0", first.ContextMap())
	}
	clock.advance(10 * time.Second) // the sweep the core scheduled runs
	all := logs.All()
	if len(all) != 2 {
		t.Fatalf("%d lines after the window, want the first and a summary: %v", len(all), all)
	}
	sum := all[1]
	m := sum.ContextMap()
	if sum.Message != "lock check" || sum.Level != zapcore.WarnLevel || m["repeated"] != int64(85) || m["attempt"] != int64(85) ||
		m["error"] != lockErr.Error() || m["repeated_seconds"] != 10.0 {
		t.Errorf("summary %s %q %v, want warn \"lock check\" repeated 85 in 10 s with attempt 85", sum.Level, sum.Message, m)
	}
	if want := all[0].Time.Add(10 * time.Second); !sum.Time.Equal(want) {
		t.Errorf("summary stamped %v, want %v (the window's end)", sum.Time, want)
	}

	// quiet for a whole window: the next failure is written again
	clock.advance(11 * time.Second)
	log.Warn("lock check", zap.Error(lockErr), zap.Int("attempt", 86))
	if logs.Len() != 3 {
		t.Fatalf("after a quiet window: %d lines, want 3", logs.Len())
	}
}

// A failure that goes on for minutes is one summary per window.
func TestRepeatedErrorOneSummaryPerWindow(t *testing.T) {
	log, logs, clock := newTestLogger(t)
	for range 300 { // 30 s at 10 a second
		log.Error("run hook", zap.String("event", "monitor"), zap.Error(errors.New("exit status 1")))
		clock.advance(100 * time.Millisecond)
	}
	clock.advance(10 * time.Second)
	var counts []any
	for _, e := range logs.All()[1:] {
		counts = append(counts, e.ContextMap()["repeated"])
	}
	// the first written, then 99 + 100 + 100 counted in three windows
	if want := []any{int64(99), int64(100), int64(100)}; fmt.Sprint(counts) != fmt.Sprint(want) {
		t.Errorf("summaries %v, want %v", counts, want)
	}
}

// Different problems are not merged: another error text, another
// identifying field (a check name, a VIP from With), another message or
// logger; a number or duration alone does not make a new one. Info lines
// are never held back.
func TestRepeatKeys(t *testing.T) {
	log, logs, clock := newTestLogger(t)
	e1, e2 := errors.New("connection refused"), errors.New("timeout")
	vip := log.With(zap.Stringer("vip", stringer("198.18.1.10")))
	lines := []func(){
		func() { log.Warn("check failed", zap.String("check", "tcp:445"), zap.Error(e1)) },
		func() { log.Warn("check failed", zap.String("check", "tcp:445"), zap.Error(e2)) },
		func() { log.Warn("check failed", zap.String("check", "tcp:2049"), zap.Error(e1)) },
		func() { log.Warn("check failed again", zap.String("check", "tcp:445"), zap.Error(e1)) },
		func() { log.Named("metrics").Warn("check failed", zap.String("check", "tcp:445"), zap.Error(e1)) },
		func() { vip.Warn("check failed", zap.String("check", "tcp:445"), zap.Error(e1)) },
		func() { log.Error("check failed", zap.String("check", "tcp:445"), zap.Error(e1)) },
	}
	for round := range 3 {
		for _, l := range lines {
			l()
			log.Warn("check failed", zap.String("check", "tcp:445"), zap.Error(e1), zap.Duration("took", time.Duration(round)))
		}
		log.Info("renewed", zap.Int("round", round))
		clock.advance(time.Second)
	}
	// each distinct line once, the first line once, the info line 3 times
	if got, want := logs.Len(), len(lines)+3; got != want {
		for _, e := range logs.All() {
			t.Log(e.LoggerName, e.Level, e.Message, e.ContextMap())
		}
		t.Fatalf("%d lines, want %d", got, want)
	}
	if n := logs.FilterMessage("renewed").Len(); n != 3 {
		t.Errorf("%d info lines, want 3", n)
	}
}

type stringer string

func (s stringer) String() string { return string(s) }

// A state change marked EveryTime is written every time, from the entry
// or from the logger's With; the marker writes no field.
func TestRepeatEveryTime(t *testing.T) {
	log, logs, _ := newTestLogger(t)
	node := log.With(EveryTime())
	for range 3 {
		log.Warn("lease lapsed", zap.String("vip", "198.18.1.10/24"), EveryTime())
		node.Warn("control loop slow", zap.Duration("took", time.Second))
		log.Warn("lock check", zap.Error(errors.New("gone")))
	}
	if n := logs.FilterMessage("lease lapsed").Len(); n != 3 {
		t.Errorf("lease lapsed written %d times, want 3", n)
	}
	if n := logs.FilterMessage("control loop slow").Len(); n != 3 {
		t.Errorf("control loop slow written %d times, want 3", n)
	}
	if n := logs.FilterMessage("lock check").Len(); n != 1 {
		t.Errorf("lock check written %d times, want 1", n)
	}
	var out bytes.Buffer
	enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
	plain := zap.New(NewRepeatCore(zapcore.NewCore(enc, zapcore.AddSync(&out), zapcore.DebugLevel), RepeatOptions{}))
	plain.Warn("lease lapsed", EveryTime())
	if strings.Contains(out.String(), `"":`) || !strings.Contains(out.String(), `"msg":"lease lapsed"}`) {
		t.Errorf("the marker shows in the line: %s", out.String())
	}
}

// Sync, as the daemon calls it on its way out, writes the pending
// summaries before their window ends.
func TestRepeatSyncFlushes(t *testing.T) {
	log, logs, clock := newTestLogger(t)
	for range 5 {
		log.Error("hooks not run", zap.Error(errors.New("permission denied")))
		clock.advance(time.Second)
	}
	if err := log.Sync(); err != nil {
		t.Fatal(err)
	}
	all := logs.All()
	if len(all) != 2 || all[1].ContextMap()["repeated"] != int64(4) || all[1].ContextMap()["repeated_seconds"] != 5.0 {
		t.Fatalf("after Sync: %v, want the first line and a summary of 4 over 5 s", all)
	}
	clock.advance(time.Minute)
	if logs.Len() != 2 {
		t.Errorf("a summary written twice: %v", logs.All())
	}
}
