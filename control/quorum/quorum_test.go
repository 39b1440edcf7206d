package quorum

import (
	"errors"
	"path/filepath"
	"testing"
)

func TestMajority(t *testing.T) {
	for _, tc := range []struct {
		alive, total int
		want         bool
	}{
		{0, 0, false}, {1, 1, true}, {1, 2, false}, {2, 2, true}, {1, 3, false}, {2, 3, true},
		{2, 4, false}, {3, 4, true}, {2, 5, false}, {3, 5, true}, {8, 16, false}, {9, 16, true},
	} {
		if got := Majority(tc.alive, tc.total); got != tc.want {
			t.Errorf("Majority(%d, %d) = %v, want %v", tc.alive, tc.total, got, tc.want)
		}
	}
}

func TestState(t *testing.T) {
	for _, tc := range []struct {
		name      string
		s         State
		has, need bool
	}{
		{"3 nodes, 2 alive", State{Alive: 2, Total: 3}, true, false},
		{"3 nodes, alone", State{Alive: 1, Total: 3}, false, false},
		{"2 nodes both alive, lock enabled", State{Alive: 2, Total: 2, LockEnabled: true}, true, false},
		{"2 nodes split, lock held", State{Alive: 1, Total: 2, LockEnabled: true, LockHeld: true}, true, true},
		{"2 nodes split, lock not held", State{Alive: 1, Total: 2, LockEnabled: true}, false, true},
		{"4 nodes even split, lock held", State{Alive: 2, Total: 4, LockEnabled: true, LockHeld: true}, true, true},
		{"2 nodes split, no lock", State{Alive: 1, Total: 2}, false, false},
	} {
		if got := tc.s.Has(); got != tc.has {
			t.Errorf("%s: Has = %v, want %v", tc.name, got, tc.has)
		}
		if got := tc.s.NeedsLock(); got != tc.need {
			t.Errorf("%s: NeedsLock = %v, want %v", tc.name, got, tc.need)
		}
	}
}

func TestCheckConfig(t *testing.T) {
	if err := CheckConfig(2, "", false); !errors.Is(err, ErrTwoNodesWithoutLock) {
		t.Errorf("two nodes without lock: %v", err)
	}
	for _, ok := range []error{CheckConfig(2, "/shared/lock", false), CheckConfig(2, "", true), CheckConfig(3, "", false)} {
		if ok != nil {
			t.Errorf("unexpected refusal: %v", ok)
		}
	}
}

func TestLockExcludesOtherHolders(t *testing.T) {
	path := filepath.Join(t.TempDir(), "recovery.lock")
	a, b := NewLock(path), NewLock(path)
	if ok, err := a.TryAcquire(); !ok || err != nil {
		t.Fatalf("a: %v %v", ok, err)
	}
	if ok, err := b.TryAcquire(); ok || err != nil {
		t.Fatalf("b got the lock a holds: %v %v", ok, err)
	}
	if err := a.Release(); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryAcquire(); !ok || err != nil {
		t.Fatalf("b after release: %v %v", ok, err)
	}
	if ok, _ := a.TryAcquire(); ok {
		t.Fatal("a got the lock b holds")
	}
	if !b.Held() || a.Held() {
		t.Fatal("Held is wrong")
	}
	b.Release()
}

func TestLockOnMissingDirectory(t *testing.T) {
	l := NewLock(filepath.Join(t.TempDir(), "missing", "lock"))
	if ok, err := l.TryAcquire(); ok || err == nil {
		t.Fatalf("want an error, got %v %v", ok, err)
	}
}
