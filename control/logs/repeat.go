// Package logs holds what fsha's logger does beyond zap's own cores.
package logs

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// DefaultWindow is how long a repeated warning or error stays quiet
// before its summary.
const DefaultWindow = 10 * time.Second

// maxKeys bounds the messages tracked at once; beyond it a new message is
// written as it comes (no summary), so a storm of distinct errors cannot
// grow the table without limit.
const maxKeys = 1024

// RepeatOptions configure NewRepeatCore. Zero values take the defaults.
type RepeatOptions struct {
	// Window: after an entry is written, the same entry is counted, not
	// written, for this long; then one summary says how many there were.
	Window time.Duration
	// Now and AfterFunc are the clock (tests give a fake one).
	Now       func() time.Time
	AfterFunc func(d time.Duration, f func())
}

// NewRepeatCore wraps a core so that a warning or error that repeats (a
// lock on a dead file system failing every renewal, a hook failing every
// run, a metrics address that cannot be bound) is written once, then
// counted while it repeats, then summarised once per window with the
// fields of its latest occurrence plus repeated (how many were not
// written) and repeated_seconds (over how long): 85 failed lock checks in
// 10 s are two lines, not 85. Debug and info entries, and those above
// error (panic, fatal), pass untouched, and so does an entry that carries
// EveryTime(): a state change that tools and people count, each with its
// own time (a lease lapse, a stalled loop, a peer judged dead).
//
// Two entries are "the same" when their level, logger name, message, error text
// and identifying fields match: string, stringer, error and bool fields,
// the logger's own (With) and the entry's. Numbers, durations and times
// are left out of the key since they change from one occurrence to the
// next (an attempt count, how long it took) while the problem stays the
// same; a VIP, a path or a check name keeps two problems apart.
func NewRepeatCore(inner zapcore.Core, opts RepeatOptions) *RepeatCore {
	if opts.Window <= 0 {
		opts.Window = DefaultWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.AfterFunc == nil {
		opts.AfterFunc = func(d time.Duration, f func()) { time.AfterFunc(d, f) }
	}
	return &RepeatCore{inner: inner, shared: &repeatState{opts: opts, seen: map[string]*repeated{}}}
}

// RepeatCore is the core NewRepeatCore returns.
type RepeatCore struct {
	inner     zapcore.Core
	ctxKey    string // the identifying With fields of this core
	everyTime bool   // With(EveryTime()): nothing is held back
	shared    *repeatState
}

// EveryTime marks an entry (or, given to With, a logger) whose every
// occurrence is written: a state change, not an error in a loop. The
// field itself writes nothing.
func EveryTime() zap.Field {
	return zap.Field{Type: zapcore.SkipType, Interface: everyTimeMarker{}}
}

type everyTimeMarker struct{}

func hasEveryTime(fields []zapcore.Field) bool {
	for _, f := range fields {
		if _, ok := f.Interface.(everyTimeMarker); ok && f.Type == zapcore.SkipType {
			return true
		}
	}
	return false
}

type repeatState struct {
	opts RepeatOptions
	mu   sync.Mutex
	seen map[string]*repeated
}

// repeated is one entry seen in the current window.
type repeated struct {
	start      time.Time // the window's start: the written entry, or the last summary
	count      int       // occurrences not written since start
	core       zapcore.Core
	last       zapcore.Entry
	lastFields []zapcore.Field
	scheduled  bool // a Sweep is due at start+window
}

func (c *RepeatCore) Enabled(l zapcore.Level) bool { return c.inner.Enabled(l) }

func (c *RepeatCore) With(fields []zapcore.Field) zapcore.Core {
	key := c.ctxKey
	if k := identity(fields); k != "" {
		key += "\x00" + k
	}
	return &RepeatCore{inner: c.inner.With(fields), ctxKey: key, everyTime: c.everyTime || hasEveryTime(fields), shared: c.shared}
}

func (c *RepeatCore) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if !c.inner.Enabled(ent.Level) {
		return ce
	}
	if c.everyTime || ent.Level != zapcore.WarnLevel && ent.Level != zapcore.ErrorLevel {
		return c.inner.Check(ent, ce)
	}
	return ce.AddCore(ent, c)
}

func (c *RepeatCore) Write(ent zapcore.Entry, fields []zapcore.Field) error {
	if hasEveryTime(fields) {
		return c.inner.Write(ent, fields)
	}
	s := c.shared
	key := strings.Join([]string{ent.Level.String(), ent.LoggerName, ent.Message, c.ctxKey, identity(fields)}, "\x00")
	now := s.opts.Now()

	s.mu.Lock()
	r, ok := s.seen[key]
	var summary *repeated
	switch {
	case ok && now.Sub(r.start) < s.opts.Window:
		r.count++
		r.core, r.last, r.lastFields = c.inner, ent, fields
		if !r.scheduled {
			r.scheduled = true
			s.opts.AfterFunc(r.start.Add(s.opts.Window).Sub(now), c.Sweep)
		}
		s.mu.Unlock()
		return nil
	case ok:
		// the window ended before a Sweep ran: its summary first, then
		// this entry opens a new window
		if r.count > 0 {
			summary = &repeated{start: r.start, count: r.count, core: r.core, last: r.last, lastFields: r.lastFields}
		}
		r.start, r.count, r.scheduled = now, 0, false
	case len(s.seen) < maxKeys:
		s.seen[key] = &repeated{start: now}
	}
	s.mu.Unlock()

	if summary != nil {
		_ = summary.writeSummary(now)
	}
	return c.inner.Write(ent, fields)
}

// Sweep writes the summary of every entry whose window has ended and
// forgets those that did not repeat. It runs by itself at the end of a
// window in which an entry repeated; tests call it after moving the clock.
func (c *RepeatCore) Sweep() { c.sweep(false) }

// sweep writes the due summaries, or with all every pending one.
func (c *RepeatCore) sweep(all bool) {
	s := c.shared
	now := s.opts.Now()
	var due []*repeated
	s.mu.Lock()
	for key, r := range s.seen {
		if now.Sub(r.start) < s.opts.Window && (!all || r.count == 0) {
			continue
		}
		if r.count == 0 {
			delete(s.seen, key) // quiet for a window: the next one is written
			continue
		}
		due = append(due, &repeated{start: r.start, count: r.count, core: r.core, last: r.last, lastFields: r.lastFields})
		// still repeating, maybe: a new window starts at the summary, so
		// a loop that goes on gives one summary per window
		r.start, r.count, r.scheduled = now, 0, false
	}
	s.mu.Unlock()
	sort.Slice(due, func(i, j int) bool { return due[i].last.Time.Before(due[j].last.Time) })
	for _, r := range due {
		_ = r.writeSummary(now)
	}
}

func (r *repeated) writeSummary(now time.Time) error {
	ent := r.last
	ent.Time = now
	fields := append(r.lastFields[:len(r.lastFields):len(r.lastFields)],
		zap.Int("repeated", r.count),
		zap.Float64("repeated_seconds", now.Sub(r.start).Round(time.Millisecond).Seconds()))
	return r.core.Write(ent, fields)
}

// Sync writes the summaries still pending, whatever their window, so a
// daemon that exits (or restarts in place) does not lose its counts.
func (c *RepeatCore) Sync() error {
	c.sweep(true)
	return c.inner.Sync()
}

// identity is the part of fields that tells one problem from another.
func identity(fields []zapcore.Field) string {
	var b strings.Builder
	for _, f := range fields {
		var v string
		switch f.Type {
		case zapcore.StringType:
			v = f.String
		case zapcore.BoolType:
			v = fmt.Sprint(f.Integer == 1)
		case zapcore.ErrorType:
			if err, ok := f.Interface.(error); ok && err != nil {
				v = safeString(err.Error)
			}
		case zapcore.StringerType:
			if s, ok := f.Interface.(fmt.Stringer); ok && s != nil {
				v = safeString(s.String)
			}
		default:
			continue
		}
		b.WriteString(f.Key)
		b.WriteByte('=')
		b.WriteString(v)
		b.WriteByte('\x00')
	}
	return b.String()
}

// safeString calls a String or Error method that may panic on a nil
// receiver, as zap's own encoders guard against.
func safeString(f func() string) (s string) {
	defer func() {
		if recover() != nil {
			s = "<panic>"
		}
	}()
	return f()
}
