// Package quorum decides whether this node may hold VIPs: only while it
// sees a strict majority of the cluster's nodes, or, where a majority cannot
// tell two halves apart (two-node clusters, an even split), while it holds
// the cluster lock on shared storage, as CTDB's recovery lock does.
package quorum

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Majority reports whether alive nodes out of total are a strict majority.
func Majority(alive, total int) bool {
	return total > 0 && 2*alive > total
}

// ErrTwoNodesWithoutLock refuses a two-node cluster with no lock: with two
// nodes a majority is both, so one failure would stop the cluster, and
// without a majority rule two halves would both hold every VIP.
var ErrTwoNodesWithoutLock = errors.New("a two-node cluster needs --lock FILE on shared storage (or --allow-two-nodes-without-lock to accept split brain)")

// CheckConfig validates the quorum set-up at start.
func CheckConfig(nodes int, lockPath string, allowTwoNodesWithoutLock bool) error {
	if nodes == 2 && lockPath == "" && !allowTwoNodesWithoutLock {
		return ErrTwoNodesWithoutLock
	}
	return nil
}

// Lock is an exclusive lock on a file of the cluster file system. It uses
// open-file-description locks: like CTDB's fcntl lock they are released by
// the kernel when the holder dies and work on cluster file systems, and
// unlike classic POSIX locks they also exclude other holders in the same
// process, which the in-process tests rely on.
//
// Its operations run in the lock manager's goroutine while fsha status
// asks Held from another: the open description is an atomic pointer.
type Lock struct {
	path string
	f    atomic.Pointer[os.File]
}

// NewLock returns a lock on path; nothing is taken yet.
func NewLock(path string) *Lock { return &Lock{path: path} }

// Path returns the lock file.
func (l *Lock) Path() string { return l.path }

// Held reports whether this Lock holds the file.
func (l *Lock) Held() bool { return l.f.Load() != nil }

// TryAcquire takes the lock without waiting; false means another holds it.
func (l *Lock) TryAcquire() (bool, error) {
	if l.f.Load() != nil {
		return true, nil
	}
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("open cluster lock: %w", err)
	}
	flock := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 0}
	if err := unix.FcntlFlock(f.Fd(), unix.F_OFD_SETLK, &flock); err != nil {
		f.Close()
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			return false, nil
		}
		return false, fmt.Errorf("lock %s: %w", l.path, err)
	}
	l.f.Store(f)
	return true, nil
}

// Release gives the lock up.
func (l *Lock) Release() error {
	f := l.f.Swap(nil)
	if f == nil {
		return nil
	}
	return f.Close() // closing the description drops its lock
}

// State is the inputs of the quorum decision.
type State struct {
	Alive       int  // live members, this node included
	Total       int  // nodes in the nodes file, deleted ones excluded
	LockHeld    bool // this node holds the cluster lock
	LockEnabled bool
}

// Has reports whether this node has quorum.
func (s State) Has() bool {
	if s.LockEnabled {
		// A strict majority is safe on its own; short of it (a two-node
		// partition, an even split) only the lock holder goes on.
		return Majority(s.Alive, s.Total) || s.LockHeld
	}
	return Majority(s.Alive, s.Total)
}

// NeedsLock reports whether this node should try to take the lock: only
// when it lacks a majority. A node with a majority lets the lock go, so
// that a node that later freezes while holding it cannot block the others.
func (s State) NeedsLock() bool {
	return s.LockEnabled && !Majority(s.Alive, s.Total)
}

// Check confirms the lock is still held and its file system answers.
func (l *Lock) Check() error {
	f := l.f.Load()
	if f == nil {
		return errors.New("cluster lock not held")
	}
	if _, err := f.Stat(); err != nil {
		return fmt.Errorf("check cluster lock %s: %w", l.path, err)
	}
	return nil
}
