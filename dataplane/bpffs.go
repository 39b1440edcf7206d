package dataplane

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

const sysBPFFS = "/sys/fs/bpf"

// EnsureBPFFS makes sure pinPath is a directory on a bpffs, mounting one when
// there is none: on /sys/fs/bpf for paths below it (where bpftool and every
// other tool look), else on pinPath itself.
func EnsureBPFFS(pinPath string) error {
	pinPath = filepath.Clean(pinPath)
	if !onBPFFS(existingAncestor(pinPath)) {
		mountPoint := pinPath
		if strings.HasPrefix(pinPath, sysBPFFS+"/") {
			mountPoint = sysBPFFS
		}
		if err := os.MkdirAll(mountPoint, 0o700); err != nil {
			return fmt.Errorf("create bpffs mount point %s: %w", mountPoint, err)
		}
		if err := unix.Mount("bpf", mountPoint, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount bpffs on %s: %w", mountPoint, err)
		}
	}
	if err := os.MkdirAll(pinPath, 0o700); err != nil {
		return fmt.Errorf("create pin path %s: %w", pinPath, err)
	}
	if !onBPFFS(pinPath) {
		return fmt.Errorf("pin path %s is not on a bpf filesystem", pinPath)
	}
	return nil
}

// existingAncestor returns path or its nearest ancestor that exists.
func existingAncestor(path string) string {
	for {
		if _, err := os.Stat(path); err == nil || path == "/" || path == "." {
			return path
		}
		path = filepath.Dir(path)
	}
}

// onBPFFS tells whether path exists on a bpffs.
func onBPFFS(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.BPF_FS_MAGIC
}
