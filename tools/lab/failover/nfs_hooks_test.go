package failover

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// The test's own record of the hooks fsha runs, to check the shipped NFS
// hooks' order, arguments and timing against: not fsha's view of them.

// hookRecord is a recording hook of the test, installed as recordHooks:
// before, between and after the shipped ones (fsha runs hooks in name
// order: 00.record, 60.ganesha-grace, 60.record, 61.nfs-sm-notify,
// 99.record). Each
// run appends one line: time, its name, its arguments, fsha's variables,
// whether the VIP is on eth0 and on lo at that moment, and (takeip) what
// Ganesha answers to get_grace. It skips monitor.
const hookRecord = `#!/bin/sh
[ "$1" = monitor ] && exit 0
on() { ip -o addr show dev "$1" | grep -qF " $FSHA_VIP/" && echo yes || echo no; }
grace=-
if [ "$1" = takeip ]; then
	grace=$(dbus-send --system --print-reply --dest=org.ganesha.nfsd --type=method_call \
		/org/ganesha/nfsd/admin org.ganesha.nfsd.admin.get_grace 2>&1 | grep -o -m1 'boolean [a-z]*' || echo error)
fi
printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "${0##*/}" "$*" \
	"$FSHA_VIP" "$FSHA_PREFIX" "$FSHA_IFACE" "$FSHA_NODE" "$(on eth0)" "$(on lo)" "$grace" >>"$(dirname "$0")/../hook-record.tsv"
`

// recordHooks are the names of the recording hooks, in the order they run.
var recordHooks = []string{"00.record", "60.record", "99.record"}

// hookRun is one line of hook-record.tsv.
type hookRun struct {
	At                         time.Time
	Hook, Args                 string
	VIP, Prefix, Iface, Node   string
	OnEth0, OnLo, GaneshaGrace string
}

func installRecordHooks(t *testing.T, c *lab.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		for _, name := range recordHooks {
			if err := os.WriteFile(filepath.Join(n.HooksDir, name), []byte(hookRecord), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// hookRuns reads the node's record of hook runs since a time.
func hookRuns(n *lab.ClusterNode, since time.Time) ([]hookRun, error) {
	f, err := os.Open(filepath.Join(n.Dir, "hook-record.tsv"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var runs []hookRun
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if len(fs) != 10 {
			return nil, fmt.Errorf("hook record of %s: bad line %q", n.Role, sc.Text())
		}
		sec, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			return nil, fmt.Errorf("hook record of %s: %w", n.Role, err)
		}
		at := time.Unix(0, int64(sec*1e9))
		if at.Before(since) {
			continue
		}
		runs = append(runs, hookRun{At: at, Hook: fs[1], Args: fs[2], VIP: fs[3], Prefix: fs[4], Iface: fs[5],
			Node: fs[6], OnEth0: fs[7], OnLo: fs[8], GaneshaGrace: fs[9]})
	}
	return runs, sc.Err()
}

// waitHookRuns waits until the node has recorded both hooks of event for
// the VIP since a time, and returns them in file order.
func (e *env) waitHookRuns(n *lab.ClusterNode, event, vip string, since time.Time) []hookRun {
	e.t.Helper()
	var got []hookRun
	e.eventually(n.Role+" ran the "+event+" hooks of "+vip, func(context.Context) error {
		runs, err := hookRuns(n, since)
		if err != nil {
			return err
		}
		got = got[:0]
		for _, r := range runs {
			if strings.HasPrefix(r.Args, event+" ") && r.VIP == vip {
				got = append(got, r)
			}
		}
		if len(got) < len(recordHooks) {
			return fmt.Errorf("%d of %d recorded", len(got), len(recordHooks))
		}
		return nil
	})
	return got
}

// checkHookRuns checks both recording hooks of one event: the order (00
// before 99), CTDB's arguments and fsha's variables, and the address.
func (e *env) checkHookRuns(runs []hookRun, event string, n *lab.ClusterNode, vip string, prefix string, onEth0 string) {
	e.t.Helper()
	var names []string
	for _, r := range runs {
		names = append(names, r.Hook)
	}
	if !slices.Equal(names, recordHooks) {
		e.t.Fatalf("%s hooks on %s: want one run of each of %v in that order, got %+v", event, n.Role, recordHooks, runs)
	}
	bits := prefix[strings.IndexByte(prefix, '/')+1:]
	wantArgs := strings.Join([]string{event, lab.HostIface, vip, bits}, " ")
	for _, r := range runs {
		if r.Args != wantArgs || r.Prefix != prefix || r.Iface != lab.HostIface || r.Node != n.IP().String() {
			e.t.Errorf("%s on %s: args %q FSHA_PREFIX %q FSHA_IFACE %q FSHA_NODE %q; want %q %q %q %q",
				r.Hook, n.Role, r.Args, r.Prefix, r.Iface, r.Node, wantArgs, prefix, lab.HostIface, n.IP())
		}
		if r.OnEth0 != onEth0 {
			e.t.Errorf("%s %s on %s: VIP on eth0 %s, want %s", r.Hook, event, n.Role, r.OnEth0, onEth0)
		}
	}
}

// checkGraceFlip checks what a takeip's recording hooks saw of Ganesha:
// not in grace before 60.ganesha-grace ran, in grace after it, so before
// 61.nfs-sm-notify tells NFSv3 clients to reclaim, and after.
func (e *env) checkGraceFlip(runs []hookRun, n *lab.ClusterNode) {
	e.t.Helper()
	var got []string
	for _, r := range runs {
		got = append(got, r.GaneshaGrace)
	}
	if want := []string{"boolean false", "boolean true", "boolean true"}; !slices.Equal(got, want) {
		e.t.Errorf("ganesha on %s: get_grace at %v: %q, want %q", n.Role, recordHooks, got, want)
	}
}

// checkOnLo checks where a releaseip's recording hooks saw the VIP on lo.
func (e *env) checkOnLo(runs []hookRun, n *lab.ClusterNode, want, why string) {
	e.t.Helper()
	for _, r := range runs {
		if r.OnLo != want {
			e.t.Errorf("%s releaseip on %s %s: VIP on lo %s, want %s", r.Hook, n.Role, why, r.OnLo, want)
		}
	}
}
