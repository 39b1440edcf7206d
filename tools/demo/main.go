// Command demo shows fsha on this machine (`make demo`, as root), in a lab
// of network namespaces with real smbd, nfs-ganesha, smbclient and libnfs.
//
// By default: a three-node cluster as the guides build it (GlusterFS
// replica 3, ctdbd for Samba's databases, clustered smbd, nfs-ganesha,
// fsha moving the VIPs; -light: standalone servers on one directory); it
// shows `fsha status`, `fsha ip` and `ctdb status`, starts a client doing
// I/O through a VIP, powers down the node that holds it and prints the
// failover as a timeline, from the power cut to the client's next working
// read. -dataplane runs the data-plane demo
// instead (one node: tracked flows, counters, a restart under traffic).
// -measure N times N power cuts and N network cuts and prints the spread.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/tools/lab"
)

func main() {
	fsha := flag.String("fsha", "./bin/fsha", "the fsha binary (make build)")
	keep := flag.Bool("keep", false, "keep the run directory (configs, logs) after the demo")
	verbose := flag.Bool("v", false, "log what the lab does")
	dataplane := flag.Bool("dataplane", false, "run the data-plane demo (one node) instead of the cluster failover")
	light := flag.Bool("light", false, "a lighter cluster: standalone smbd and nfs-ganesha on one local directory, no GlusterFS, no CTDB")
	measure := flag.Int("measure", 0, "instead of the demo, time this many power-cut and network-cut failovers (1 to 20)")
	timeout := flag.Duration("timeout", 5*time.Minute, "give up after this long")
	flag.Parse()

	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "demo: must run as root: it creates network namespaces, mounts a bpffs and loads eBPF programs (try: sudo make demo)")
		os.Exit(2)
	}
	if *measure < 0 || *measure > 20 {
		fmt.Fprintln(os.Stderr, "demo: -measure takes 1 to 20")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	show := func(ctx context.Context, out io.Writer, newLab func() (*lab.Lab, error)) error {
		return runCluster(ctx, out, newLab, !*light)
	}
	switch {
	case *dataplane:
		show = runDataplane
	case *measure > 0:
		show = func(ctx context.Context, out io.Writer, newLab func() (*lab.Lab, error)) error {
			return runMeasure(ctx, out, newLab, *measure)
		}
	}
	start := time.Now()
	if err := run(ctx, os.Stdout, *fsha, *keep, *verbose, show); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	fmt.Printf("\n== done in %s: every namespace, process and mount of the lab is gone\n", time.Since(start).Round(100*time.Millisecond))
}

func run(ctx context.Context, out io.Writer, fsha string, keep, verbose bool, show func(context.Context, io.Writer, func() (*lab.Lab, error)) error) (err error) {
	bin, err := findFsha(fsha)
	if err != nil {
		return err
	}
	for _, cmd := range []string{"ip", "ethtool", "smbd", "smbclient", "ganesha.nfsd", "nfs-cat", "stdbuf"} {
		if _, err := exec.LookPath(cmd); err != nil {
			return fmt.Errorf("%s not installed: run `make deps`", cmd)
		}
	}
	log := zap.NewNop()
	if verbose {
		if log, err = zap.NewDevelopment(); err != nil {
			return err
		}
	}
	if removed, err := lab.CleanupStale(log); err != nil {
		return fmt.Errorf("clean up after an earlier crashed run: %w", err)
	} else if len(removed) > 0 {
		fmt.Fprintf(out, "(removed namespaces of an earlier crashed run: %s)\n", strings.Join(removed, " "))
	}

	p := printer{out}
	var labs []*lab.Lab
	newLab := func() (*lab.Lab, error) {
		l, err := lab.New(lab.Options{Fsha: bin, Keep: keep, Log: log})
		if err == nil {
			labs = append(labs, l)
		}
		return l, err
	}
	defer func() {
		if len(labs) == 0 {
			return
		}
		p.step("tearing down: stopping every process, deleting the namespaces, unmounting the bpffs")
		for _, l := range labs {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("tear down: %w", cerr))
			}
			if keep {
				fmt.Fprintf(out, "   run directory kept: %s\n", l.Dir)
			}
		}
	}()
	defer func() {
		if err != nil && len(labs) > 0 {
			fmt.Fprintf(out, "\n!! %v\n   logs are in %s (rerun with -keep to keep them)\n", err, labs[len(labs)-1].Dir)
		}
	}()
	return show(ctx, out, newLab)
}

// findFsha resolves the fsha binary to an absolute path.
func findFsha(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("fsha binary %s: %w (run `make build`, or pass -fsha PATH)", path, err)
	}
	if st.IsDir() || st.Mode()&0o111 == 0 {
		return "", fmt.Errorf("fsha binary %s is not an executable file", path)
	}
	return abs, nil
}

// printer writes the demo's narration.
type printer struct{ out io.Writer }

func (p printer) heading(format string, args ...any) {
	fmt.Fprintf(p.out, "\n== "+format+"\n", args...)
}

func (p printer) step(format string, args ...any) {
	fmt.Fprintf(p.out, "\n-- "+format+"\n", args...)
}

func (p printer) say(format string, args ...any) {
	fmt.Fprintf(p.out, "   "+format+"\n", args...)
}

// block prints a command's output, indented.
func (p printer) block(out []byte) {
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Fprintln(p.out, "   "+line)
	}
}
