package lab

// The host side of the lab's GlusterFS (gluster.go): its FUSE mounts and
// its processes, which glusterd daemonizes out of the lab's sessions, so
// that the lab finds them by network namespace to stop them, at Close, at
// a power cut and after a crashed run (CleanupStale).

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// isGlusterMount tells whether a glusterfs FUSE mount sits on dir in this
// process's mount namespace.
func isGlusterMount(dir string) (bool, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	for _, line := range strings.Split(string(data), "\n") {
		// id parent major:minor root mountpoint options... - fstype source ...
		f := strings.Fields(line)
		if len(f) < 5 || f[4] != dir {
			continue
		}
		_, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "fuse.glusterfs ") {
			return true, nil
		}
	}
	return false, nil
}

// statWithin stats path in a goroutine and gives up after d: a hung FUSE
// mount blocks the caller in the kernel. A stat left behind returns once
// the client dies.
func statWithin(ctx context.Context, path string, d time.Duration) error {
	res := make(chan error, 1)
	go func() { _, err := os.Stat(path); res <- err }()
	select {
	case err := <-res:
		return err
	case <-time.After(d):
		return fmt.Errorf("stat %s: no answer within %v", path, d)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lazyUnmount detaches dir if something is mounted there (MNT_DETACH never
// waits for the file system).
func lazyUnmount(dir string) error {
	err := unix.Unmount(dir, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount %s: %w", dir, err)
	}
	return nil
}

// glusterNames are the processes of GlusterFS: glusterd, the bricks
// (glusterfsd), and the FUSE client and self-heal daemon (glusterfs).
var glusterNames = []string{"glusterd", "glusterfsd", "glusterfs"}

// sweepGluster SIGKILLs, by PID, every gluster process in the host's
// network namespace, and waits (bounded) until they are gone. The
// namespace is the lab's own, so they are processes its glusterd started.
// Then it removes the unix sockets they were given (-S, under
// /var/run/gluster), which a killed process leaves behind.
func sweepGluster(h *Host) error {
	var st unix.Stat_t
	if err := unix.Fstat(int(h.ns), &st); err != nil {
		return fmt.Errorf("stat namespace %s: %w", h.NS, err)
	}
	sockets := map[string]bool{}
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := netnsProcs(st.Ino, glusterNames)
		if err != nil {
			return err
		}
		for _, pid := range pids {
			if s := socketArg(pid); s != "" {
				sockets[s] = true
			}
		}
		if len(pids) == 0 {
			var errs []error
			for s := range sockets {
				if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
					errs = append(errs, err)
				}
			}
			return errors.Join(errs...)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gluster processes %v of %s survive SIGKILL", pids, h.NS)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// socketArg is the -S argument (its unix socket) of a gluster process,
// when it is a file under /var/run/gluster.
func socketArg(pid int) string {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return ""
	}
	args := strings.Split(string(data), "\x00")
	for i, a := range args[:max(len(args)-1, 0)] {
		if a == "-S" && strings.HasPrefix(args[i+1], "/var/run/gluster/") && strings.HasSuffix(args[i+1], ".socket") {
			return args[i+1]
		}
	}
	return ""
}

// netnsProcs lists the processes (not zombies) in the network namespace
// with inode ino whose name is one of names.
func netnsProcs(ino uint64, names []string) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", e.Name(), "ns", "net"), &st) != nil || st.Ino != ino {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ...
		open, closing := strings.IndexByte(string(stat), '('), strings.LastIndexByte(string(stat), ')')
		if open < 0 || closing < open {
			continue
		}
		comm, rest := string(stat[open+1:closing]), strings.Fields(string(stat[closing+1:]))
		if len(rest) > 0 && rest[0] == "Z" {
			continue
		}
		for _, n := range names {
			if comm == n {
				pids = append(pids, pid)
			}
		}
	}
	return pids, nil
}

// cleanStaleGluster undoes the gluster of a lab whose owner died without
// closing it: the glusterfs FUSE mounts under its run directory are
// detached and the gluster processes of its namespaces killed.
func cleanStaleGluster(log *zap.Logger, dir string, namespaces []string) error {
	var errs []error
	if dir != "" {
		data, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			_, post, ok := strings.Cut(line, " - ")
			if len(f) < 5 || !ok || !strings.HasPrefix(post, "fuse.glusterfs ") || !strings.HasPrefix(f[4], dir+"/") {
				continue
			}
			if err := lazyUnmount(f[4]); err != nil {
				errs = append(errs, err)
			} else {
				log.Info("unmounted a stale lab's gluster mount", zap.String("mount", f[4]))
			}
		}
	}
	for _, ns := range namespaces {
		var st unix.Stat_t
		if err := unix.Stat(filepath.Join("/run/netns", ns), &st); err != nil {
			continue
		}
		pids, err := netnsProcs(st.Ino, glusterNames)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		if len(pids) > 0 {
			log.Info("killed a stale lab's gluster processes", zap.String("ns", ns), zap.Ints("pids", pids))
		}
	}
	return errors.Join(errs...)
}
