package lab

import (
	"errors"
	"testing"
	"time"
)

func TestIOReport(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 8, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ops := []IOOp{
		{Kind: "write", Start: at(0), End: at(5)},
		{Kind: "read", Start: at(5), End: at(8)},
		// the failover: a write hangs, fails; a read fails; then good again
		{Kind: "write", Start: at(20), End: at(900), Err: errors.New("EIO")},
		{Kind: "read", Start: at(900), End: at(901), Err: errors.New("EIO")},
		{Kind: "write", Start: at(920), End: at(1200)},
		{Kind: "read", Start: at(1200), End: at(1210), Mismatch: true},
		{Kind: "read", Start: at(1220), End: at(1230)},
	}
	r := Report(ops)
	if r.Ops != 7 || r.Errors != 2 || r.Mismatches != 1 {
		t.Errorf("counts: %+v", r)
	}
	// from the last good end (8 ms) to the next good end (1200 ms)
	if r.Freeze != 1192*time.Millisecond || !r.FreezeFrom.Equal(at(8)) {
		t.Errorf("freeze %v from %v, want 1.192s from +8ms", r.Freeze, r.FreezeFrom.Sub(t0))
	}
	if r.FirstError == nil || !r.FirstError.Start.Equal(at(20)) || !r.LastOK.Equal(at(1230)) {
		t.Errorf("first error %+v, last ok %v", r.FirstError, r.LastOK)
	}
	if r := Report(nil); r.Ops != 0 || r.Freeze != 0 {
		t.Errorf("empty: %+v", r)
	}
	// at +1000 ms the write that ends at 1200 still hangs: the freeze runs
	// from the last good end (8 ms) to then
	if r := ReportUntil(ops, at(1000)); r.Ops != 4 || r.Freeze != 992*time.Millisecond || !r.FreezeFrom.Equal(at(8)) {
		t.Errorf("until +1000ms: %d operations, freeze %v from %v, want 4, 992ms from +8ms", r.Ops, r.Freeze, r.FreezeFrom.Sub(t0))
	}
	// at the end the tail gap is short, and the freeze is Report's
	if r := ReportUntil(ops, at(1300)); r.Freeze != 1192*time.Millisecond {
		t.Errorf("until +1300ms: freeze %v, want 1.192s", r.Freeze)
	}
	// nothing good at all: from the first start
	if r := ReportUntil(ops[2:4], at(2000)); r.Freeze != 1980*time.Millisecond {
		t.Errorf("only errors: freeze %v, want 1.98s", r.Freeze)
	}
}

func TestReadBack(t *testing.T) {
	w, x := ioPayload(1), ioPayload(2)
	for _, c := range []struct {
		name      string
		got, torn []byte
		want      bool
	}{
		{"last good write", w, nil, true},
		{"other data", x, nil, false},
		{"empty without a failed write", nil, nil, false},
		{"truncated by a failed write", []byte{}, x, true},
		{"part of a failed write", x[:100], x, true},
		{"all of a failed write", x, x, true},
		{"a stale write's tail", w[100:], x, false},
	} {
		if got := readBack(c.got, w, c.torn); got != c.want {
			t.Errorf("%s: readBack %v, want %v", c.name, got, c.want)
		}
	}
}

func TestIOPayload(t *testing.T) {
	a, b := ioPayload(1), ioPayload(2)
	if len(a) != 4096 || string(a) == string(b) || string(a) != string(ioPayload(1)) {
		t.Error("payloads must be 4 KiB, distinct per sequence and reproducible")
	}
}
