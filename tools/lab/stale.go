package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ownersDir records which process owns which lab, so that CleanupStale can
// tell a crashed run's namespaces from a live one's. It is on tmpfs, like
// the namespaces: a reboot clears both.
const ownersDir = "/run/fsha-lab"

type owner struct {
	PID       int    `json:"pid"`
	StartTime string `json:"start_time"` // field 22 of /proc/PID/stat
	Dir       string `json:"dir"`
	BPFFS     string `json:"bpffs"`
}

func (l *Lab) ownerFile() string { return filepath.Join(ownersDir, l.ID+".json") }

func (l *Lab) writeOwner() error {
	start, err := procStartTime(os.Getpid())
	if err != nil {
		return err
	}
	data, err := json.Marshal(owner{PID: os.Getpid(), StartTime: start, Dir: l.Dir, BPFFS: filepath.Join(l.Dir, "bpffs")})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(ownersDir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", ownersDir, err)
	}
	if err := os.WriteFile(l.ownerFile(), data, 0o600); err != nil {
		return fmt.Errorf("record lab owner: %w", err)
	}
	l.push("remove owner record", func() error {
		if err := os.Remove(l.ownerFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		return nil
	})
	return nil
}

// procStartTime identifies a process incarnation: a PID may be reused, a
// (PID, start time) pair is not.
func procStartTime(pid int) (string, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	i := strings.LastIndexByte(string(stat), ')')
	if i < 0 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	// after "(comm)": state is field 3 of the line, starttime field 22
	if len(f) < 20 {
		return "", fmt.Errorf("parse /proc/%d/stat", pid)
	}
	return f[19], nil
}

var (
	labNSRE = regexp.MustCompile(`^fsha-([0-9a-f]{6})-[a-z][a-z0-9]{0,9}$`)
	runIDRE = regexp.MustCompile(`^[0-9a-f]{6}$`)
)

// CleanupStale deletes the namespaces of labs whose owning process died
// without closing them (a killed `go test`), and unmounts their bpffs. It
// only touches namespaces named fsha-<6 hex digits>-<role> whose owner
// record exists and names a process that is gone: never another tool's
// namespace, never a live lab's. Processes a crashed lab left running are
// not killed (they are not ours); their namespace disappears with them.
// GlusterFS's are the exception (cleanStaleGluster): its glusterd
// daemonized them out of the lab's sessions, and the FUSE clients keep
// their mounts in the host's mount namespace. It returns the deleted
// namespaces.
func CleanupStale(log *zap.Logger) ([]string, error) {
	if log == nil {
		log = zap.NewNop()
	}
	byRun := map[string][]string{}
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	for _, e := range entries {
		if m := labNSRE.FindStringSubmatch(e.Name()); m != nil {
			byRun[m[1]] = append(byRun[m[1]], e.Name())
		}
	}
	records, err := os.ReadDir(ownersDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list lab owners: %w", err)
	}
	var (
		removed []string
		errs    []error
	)
	for _, r := range records {
		id, ok := strings.CutSuffix(r.Name(), ".json")
		if !ok || !runIDRE.MatchString(id) {
			continue
		}
		file := filepath.Join(ownersDir, r.Name())
		data, err := os.ReadFile(file)
		if err != nil {
			continue
		}
		var o owner
		if err := json.Unmarshal(data, &o); err != nil || o.PID <= 0 {
			continue
		}
		if start, err := procStartTime(o.PID); err == nil && start == o.StartTime {
			continue // the owner lives
		}
		errs = append(errs, cleanStaleGluster(log, o.Dir, byRun[id]))
		for _, ns := range byRun[id] {
			ctx, cancel := context.WithTimeout(context.Background(), nsCmdTimeout)
			out, err := runCmd(ctx, "ip", "netns", "delete", ns)
			cancel()
			if err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w: %s", ns, err, out))
				continue
			}
			removed = append(removed, ns)
			log.Info("deleted stale lab namespace", zap.String("ns", ns))
		}
		if o.BPFFS != "" && onBPFFS(o.BPFFS) {
			if err := unix.Unmount(o.BPFFS, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("unmount %s: %w", o.BPFFS, err))
			}
		}
		if err := os.Remove(file); err != nil {
			errs = append(errs, err)
		}
	}
	return removed, errors.Join(errs...)
}

func onBPFFS(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == unix.BPF_FS_MAGIC
}
