package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// NFS4HoldTimeout bounds the wait for one answer of nfs4hold: its own
// calls time out after 15 s (nfs4hold.c).
const NFS4HoldTimeout = 30 * time.Second

// BuildNFS4Hold compiles tools/lab/nfs4hold/nfs4hold.c, a libnfs client
// that holds an open file and a lock across commands, into dir with $CC
// (clang-19 by default, which the repository installs) and returns the
// binary's path. It needs libnfs-dev.
func BuildNFS4Hold(ctx context.Context, dir string) (string, error) {
	repo, err := RepoDir()
	if err != nil {
		return "", err
	}
	cc := os.Getenv("CC")
	if cc == "" {
		cc = "clang-19"
	}
	src := filepath.Join(repo, "tools", "lab", "nfs4hold", "nfs4hold.c")
	bin := filepath.Join(dir, "nfs4hold")
	out, err := exec.CommandContext(ctx, cc, "-O2", "-Wall", "-Werror", "-o", bin, src, "-lnfs").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build nfs4hold with %s (needs libnfs-dev): %w: %s", cc, err, out)
	}
	return bin, nil
}

// NFS4Hold is a running nfs4hold: one libnfs context (one NFSv4 client
// id, one TCP connection, reconnected by libnfs) with the file of its URL.
type NFS4Hold struct {
	*Process
	URL   string
	stdin io.WriteCloser
	lines chan string
}

// StartNFS4Hold runs bin (BuildNFS4Hold) in the client's namespace on
// file of the export through vip and waits until it has mounted.
func (c *Client) StartNFS4Hold(ctx context.Context, bin string, vip netip.Addr, file string) (_ *NFS4Hold, err error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, err
	}
	url := NFSURL(vip, file)
	p, err := c.StartWith("nfs4hold", StartOptions{Stdin: inR, Stdout: outW}, bin, url)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	h := &NFS4Hold{Process: p, URL: url, stdin: inW, lines: make(chan string, 16)}
	c.lab.push("close nfs4hold stdin", func() error { return ignoreClosed(inW.Close()) })
	go func() {
		defer outR.Close()
		defer close(h.lines)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
	}()
	line, err := h.next(ctx)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("nfs4hold %s: %w", url, err), p.Stop())
	}
	if line != "mounted" {
		return nil, errors.Join(fmt.Errorf("nfs4hold %s: %q before mounting", url, line), p.Stop())
	}
	return h, nil
}

// next returns the next line nfs4hold printed.
func (h *NFS4Hold) next(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, NFS4HoldTimeout)
	defer cancel()
	select {
	case line, ok := <-h.lines:
		if !ok {
			// stdout closed: it exited; its stderr says why
			_ = h.Wait(ctx)
			return "", fmt.Errorf("exited (%v): %s", h.ExitErr(), h.Tail(1000))
		}
		return line, nil
	case <-ctx.Done():
		return "", fmt.Errorf("no answer: %w", ctx.Err())
	}
}

// Do sends one command (open, lock, unlock, write TEXT, read) and returns
// nfs4hold's answer: "ok [data]", or "err ERRNO TEXT" with libnfs's own
// error text. An error means no answer at all.
func (h *NFS4Hold) Do(ctx context.Context, cmd string) (string, error) {
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		return "", fmt.Errorf("nfs4hold %q: %w", cmd, err)
	}
	line, err := h.next(ctx)
	if err != nil {
		return "", fmt.Errorf("nfs4hold %q on %s: %w", cmd, h.URL, err)
	}
	return line, nil
}

// MustOK is Do, with any answer but "ok" an error.
func (h *NFS4Hold) MustOK(ctx context.Context, cmd string) (string, error) {
	ans, err := h.Do(ctx, cmd)
	if err != nil {
		return "", err
	}
	if ans != "ok" && !strings.HasPrefix(ans, "ok ") {
		return ans, fmt.Errorf("nfs4hold %q on %s: %s", cmd, h.URL, ans)
	}
	return strings.TrimPrefix(strings.TrimPrefix(ans, "ok"), " "), nil
}
