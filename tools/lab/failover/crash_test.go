package failover

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/tools/lab"
)

// After a power cut the node that takes a VIP over tickles the dead
// node's connections to it (replicated to every node beforehand): their
// clients get a RST at once instead of waiting for a TCP timeout, and
// reconnect to the new owner.

// TestPowerDownResetsClients cuts the power of a VIP's owner while two
// clients wait on it: a raw TCP client blocked in recv() on VIP:445
// (after an SMB2 NEGOTIATE) and smbclient blocked in `notify` on a
// directory. Both must see their connection reset within resetBound
// (ECONNRESET; NT_STATUS_CONNECTION_RESET), the new owner's timeline must
// show it tickled them, and a new smbclient through the VIP reads a file
// written before the cut.
func TestPowerDownResetsClients(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	name := "before-the-cut.txt"
	data := content(name, 2048)
	if err := e.client.PutSMB(e.ctx, vip.Addr(), name, data); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(e.c.Share, "watched"), 0o777); err != nil {
		t.Fatal(err)
	}

	raw, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	rawDone := blockedRead(raw) // smbd says nothing more: blocked until reset
	notify, err := e.client.StartSMBSession(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Stop()
	if err := notify.Command("notify watched"); err != nil {
		t.Fatal(err)
	}
	e.notifying(notify, "watched")
	smbKey := e.socketOf(vip, lab.SMBPort, "smbclient")
	keys := []string{raw.Key(), smbKey}
	for _, p := range e.c.Others(old) {
		e.waitFlows(p, old, false, keys...)
	}

	cut := e.powerDown(old)

	rawDelay := e.waitReset("raw client blocked in recv() on "+raw.Key(), rawDone, cut)
	smbDelay, err := waitOutput(e.ctx, notify.Process, "NT_STATUS_CONNECTION_RESET", cut, resetBound)
	if err != nil {
		t.Errorf("smbclient notify on %s: %v", smbKey, err)
	}
	t.Logf("power cut of %s: raw recv() reset after %v, smbclient notify reset after %v (NT_STATUS_CONNECTION_RESET seen)",
		old.Role, rawDelay.Round(time.Millisecond), smbDelay.Round(time.Millisecond))

	e.waitConverged(e.up()...)
	next := e.owner(vip, e.up()...)
	rec := e.waitTickled(next, vip, old, len(keys))
	t.Logf("%s took %s over: %s, tickled %d connections, %d resets from its stack", next.Role, vip, rec.Reason, rec.Tickled, rec.Resets)
	for _, s := range rec.Steps {
		t.Logf("  +%-8v %s", s.Took.Round(time.Microsecond), s.Step)
	}

	// the clients reconnect, through the same VIP, to the new owner
	e.eventually("a new smbclient through "+vip.String()+" reads "+name, func(ctx context.Context) error {
		got, err := e.client.GetSMB(ctx, vip.Addr(), name)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, data) {
			return fmt.Errorf("read %d bytes, want the %d written before the cut", len(got), len(data))
		}
		return nil
	})
	if who, err := e.client.WhoAnswers(e.ctx, vip.Addr()); err != nil || who != next.Role {
		t.Errorf("smbd answering on %s after the takeover: %q (%v), want %s's", vip, who, err, next.Role)
	}
	again, err := dialSMB(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatalf("raw client reconnecting: %v", err)
	}
	if err := again.ping(); err != nil {
		t.Errorf("raw client, reconnected: SMB2 echo: %v", err)
	}
	again.conn.Close()
}

type readResult struct {
	err error
	at  time.Time
}

// blockedRead reads from the connection, whose server has nothing more to
// say, in the background: the read returns when the connection breaks.
func blockedRead(rc *rawConn) <-chan readResult {
	done := make(chan readResult, 1)
	go func() {
		_ = rc.conn.SetReadDeadline(time.Now().Add(testTimeout))
		var b [1]byte
		_, err := rc.conn.Read(b[:])
		done <- readResult{err, time.Now()}
	}()
	return done
}

// waitReset waits, at most resetBound after from, for a blockedRead to
// end with ECONNRESET, and returns how long after from it did.
func (e *env) waitReset(what string, done <-chan readResult, from time.Time) time.Duration {
	e.t.Helper()
	select {
	case r := <-done:
		d := r.at.Sub(from)
		if !errors.Is(r.err, syscall.ECONNRESET) {
			e.t.Errorf("%s: %v after %v, want ECONNRESET", what, r.err, d.Round(time.Millisecond))
		}
		return d
	case <-time.After(time.Until(from.Add(resetBound))):
		e.t.Errorf("%s: no reset within %v", what, resetBound)
		return resetBound
	}
}

// notifying makes sure smbclient waits in `notify dir`: it creates files
// in dir (directly in the share, as another client of the cluster file
// system would) until smbclient prints one of them, after which it has
// asked smbd again and waits for the next change.
func (e *env) notifying(s *lab.SMBSession, dir string) {
	e.t.Helper()
	i := 0
	e.eventually("smbclient notify reports changes in "+dir, func(context.Context) error {
		if s.Exited() || strings.Contains(s.Output(), "NT_STATUS") {
			return fmt.Errorf("smbclient: %s", s.Tail(1000))
		}
		for j := 0; j < i; j++ {
			if strings.Contains(s.Output(), fmt.Sprintf("change-%d", j)) {
				return nil
			}
		}
		name := fmt.Sprintf("change-%d", i)
		i++
		if err := os.WriteFile(filepath.Join(e.c.Share, dir, name), nil, 0o644); err != nil {
			return err
		}
		return fmt.Errorf("smbclient did not report %s", name)
	})
	// it re-arms its request at once: a moment for it to leave
	time.Sleep(100 * time.Millisecond)
}

// waitOutput waits until the process's output contains substr, at most
// bound after from, and returns when it saw it, measured from from (to
// the 10 ms of its polling).
func waitOutput(ctx context.Context, p *lab.Process, substr string, from time.Time, bound time.Duration) (time.Duration, error) {
	for {
		if strings.Contains(p.Output(), substr) {
			return time.Since(from), nil
		}
		if time.Since(from) > bound {
			return 0, fmt.Errorf("no %s within %v: %s", substr, bound, p.Tail(1500))
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitTickled waits until next's timeline has the takeover of vip from
// old with at least want connections tickled (the tickles run after the
// takeover record is written).
func (e *env) waitTickled(next *lab.ClusterNode, vip netip.Prefix, old *lab.ClusterNode, want int) admin.Takeover {
	e.t.Helper()
	var rec admin.Takeover
	err := lab.Eventually(e.ctx, failoverTimeout, next.Role+"'s timeline shows the tickles of "+vip.String(), func(ctx context.Context) error {
		tl, err := next.Timeline(ctx)
		if err != nil {
			return err
		}
		for i := len(tl) - 1; i >= 0; i-- {
			r := tl[i]
			if r.VIP != vip.String() || r.Kind != "takeover" || r.From != old.IP().String() {
				continue
			}
			if !slices.ContainsFunc(r.Steps, func(s admin.TimelineStep) bool { return strings.HasPrefix(s.Step, "tickle repeats done") }) {
				return fmt.Errorf("tickles of %s not done yet", vip)
			}
			if r.Tickled < want {
				return fmt.Errorf("tickled %d connections, want at least %d", r.Tickled, want)
			}
			rec = r
			return nil
		}
		return fmt.Errorf("no takeover of %s from %s", vip, old.IP())
	})
	if err != nil {
		e.t.Fatalf("%v\nfsha timeline --json of %s:\n%s", err, next.Role, timelineJSON(e.ctx, next))
	}
	return rec
}

// TestPowerDownNFS reads a file through a VIP with libnfs's nfs-cat over
// and over (a new connection each time, content checked) while the VIP's
// owner loses its power, with a raw NFS client (one RPC NULL call, then
// blocked in recv()) and a long nfs-cat read open through the same VIP:
// the raw client is reset within resetBound, the long read ends, and
// reads through the VIP work again, from the new owner, within
// failoverTimeout.
func TestPowerDownNFS(t *testing.T) {
	e := newEnv(t, lab.ClusterOptions{Nodes: 3})
	vip := e.c.VIPs[0]
	old := e.owner(vip)
	small := content("nfs-small.txt", 4096)
	e.writeShare("nfs-small.txt", small)
	big := content("nfs-big.bin", transferSize)
	e.writeShare("nfs-big.bin", big)

	raw, err := dialNFS(e.ctx, e.client, vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	rawDone := blockedRead(raw) // after its NULL call: idle, blocked in recv()
	long, err := startNFSCat(e.client, vip.Addr(), "nfs-big.bin", big, transferRate)
	if err != nil {
		t.Fatal(err)
	}
	long.key = e.socketOf(vip, long.port, long.process)
	reads := startReader(e.ctx, e.client, vip.Addr(), "nfs-small.txt", small)
	defer reads.Stop()
	for _, p := range e.c.Others(old) {
		e.waitFlows(p, old, false, raw.Key(), long.key)
	}
	if err := e.eventuallyRead(reads, time.Now().Add(-time.Hour)); err != nil {
		t.Fatalf("before the power cut: %v", err)
	}

	if long.proc.Exited() {
		t.Fatalf("the long nfs-cat ended before the power cut (%v): lengthen it", long.proc.ExitErr())
	}
	cut := e.powerDown(old)
	rawDelay := e.waitReset("raw NFS client blocked in recv() on "+raw.Key(), rawDone, cut)
	if err := e.eventuallyRead(reads, cut); err != nil {
		t.Fatalf("after the power cut of %s: %v", old.Role, err)
	}
	e.waitConverged(e.up()...)
	next := e.owner(vip, e.up()...)
	// a second of reads, all from the new owner
	time.Sleep(time.Second)
	reads.Stop()
	res := reads.Results()
	var lastBefore, firstAfter time.Time
	failedAfter := 0
	for _, r := range res {
		switch {
		case r.err == nil && r.end.Before(cut):
			lastBefore = r.end
		case r.err == nil && firstAfter.IsZero() && r.start.After(cut):
			firstAfter = r.end
		case r.err != nil && !firstAfter.IsZero() && r.start.After(firstAfter):
			failedAfter++
			t.Errorf("read through %s failed after the reads had recovered: %v", vip, r.err)
		}
	}
	t.Logf("power cut of %s: raw NFS connection reset after %v; %d nfs-cat reads, last before the cut %v before it, first after it done %v after it; %s took %s over",
		old.Role, rawDelay.Round(time.Millisecond), len(res), cut.Sub(lastBefore).Round(time.Millisecond),
		firstAfter.Sub(cut).Round(time.Millisecond), next.Role, vip)
	e.waitTickled(next, vip, old, 2)

	// The long read in flight must end, not hang on a dead connection.
	// Whether it completes is up to libnfs and the servers: the new
	// owner's nfs-ganesha does not know the open of the old one (no
	// shared NFSv4 state in the lab), so libnfs fails the read.
	select {
	case <-long.proc.Done():
		t.Logf("long nfs-cat through the power cut (on %s): %v", long.key, long.Wait(e.ctx))
	case <-time.After(30 * time.Second):
		t.Errorf("long nfs-cat through the power cut (on %s) hangs 30 s after the cut", long.key)
	}
}

// reader runs nfs-cat of one file through a VIP every readEvery, each a
// new connection, and records every result; a read returning wrong data
// counts as an error.
type reader struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	res  []readRes
	once sync.Once
}

type readRes struct {
	start, end time.Time
	err        error
}

const (
	readEvery   = 100 * time.Millisecond
	readTimeout = 3 * time.Second
)

func startReader(ctx context.Context, c *lab.Client, vip netip.Addr, file string, want []byte) *reader {
	r := &reader{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		end := time.After(maxSession)
		for {
			start := time.Now()
			rctx, cancel := context.WithTimeout(ctx, readTimeout)
			got, err := c.NFSCat(rctx, vip, file)
			cancel()
			if err == nil && !bytes.Equal(got, want) {
				err = fmt.Errorf("nfs-cat read %d bytes, want the file's %d", len(got), len(want))
			}
			r.mu.Lock()
			r.res = append(r.res, readRes{start, time.Now(), err})
			r.mu.Unlock()
			select {
			case <-r.stop:
				return
			case <-end:
				return
			case <-ctx.Done():
				return
			case <-time.After(readEvery):
			}
		}
	}()
	return r
}

func (r *reader) Stop() {
	r.once.Do(func() { close(r.stop) })
	<-r.done
}

func (r *reader) Results() []readRes {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]readRes(nil), r.res...)
}

// eventuallyRead waits, at most failoverTimeout, for a read that started
// after since to succeed.
func (e *env) eventuallyRead(r *reader, since time.Time) error {
	return lab.Eventually(e.ctx, failoverTimeout, "an nfs-cat read succeeds", func(context.Context) error {
		var last error
		for _, x := range r.Results() {
			if x.start.After(since) {
				if x.err == nil {
					return nil
				}
				last = x.err
			}
		}
		if last == nil {
			last = errors.New("no read yet")
		}
		return last
	})
}
