// Command bench measures fsha and prints the results as tables.
//
//	go run ./tools/bench [-suite dataplane] [suite flags]
//
// Each suite lives in its own suite_<name>.go file: it registers its flags
// and a run function in the suites list below. `make bench` runs them all.
// Benchmarks need root (BPF, network namespaces); they print on stdout and
// log progress on stderr.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"syscall"

	"github.com/cilium/ebpf/rlimit"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// suite is one group of benchmarks.
type suite struct {
	name string
	// flags registers the suite's own flags.
	flags func(fs *flag.FlagSet)
	// run measures and writes its tables to out.
	run func(ctx context.Context, log *zap.Logger, out io.Writer) error
}

// suites, in the order `make bench` runs them.
var suites = []*suite{
	dataplaneSuite(),
	tickleSuite(),
	failoverSuite(),
	replicationSuite(),
	iofreezeSuite(),
	drainSuite(),
	takeoverSuite(),
	scaleSuite(),
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == holdConnsCmd {
		// a child the failover suite starts in a node's namespace
		if err := holdConnsMain(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "bench "+holdConnsCmd+":", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var names []string
	for _, s := range suites {
		names = append(names, s.name)
		s.flags(fs)
	}
	which := fs.String("suite", "all", "comma-separated suites to run: all or "+strings.Join(names, ", "))
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	var selected []*suite
	for _, s := range suites {
		if *which == "all" || slices.Contains(strings.Split(*which, ","), s.name) {
			selected = append(selected, s)
		}
	}
	if len(selected) == 0 {
		return fmt.Errorf("no suite named %q (have: %s)", *which, strings.Join(names, ", "))
	}

	cfg := zap.NewDevelopmentConfig()
	cfg.DisableStacktrace = true
	cfg.EncoderConfig.EncodeLevel = zapcore.CapitalColorLevelEncoder
	if !*verbose {
		cfg.Level = zap.NewAtomicLevelAt(zap.InfoLevel)
	}
	log, err := cfg.Build()
	if err != nil {
		return fmt.Errorf("build logger: %w", err)
	}
	defer func() { _ = log.Sync() }()

	if os.Geteuid() != 0 {
		return errors.New("benchmarks need root (BPF, network namespaces)")
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return fmt.Errorf("remove memlock rlimit: %w", err)
	}

	// Benchmark threads spend long stretches in BPF_PROG_RUN. Leaving
	// spare Ps means a thread coming back from the kernel never waits for
	// one (and so for the busy scheduler of another CPU).
	runtime.GOMAXPROCS(4 * runtime.NumCPU())

	// SIGINT/SIGTERM cancel the context: suites stop and clean up.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, s := range selected {
		log.Info("running suite", zap.String("suite", s.name))
		if err := s.run(ctx, log.Named(s.name), os.Stdout); err != nil {
			return fmt.Errorf("suite %s: %w", s.name, err)
		}
	}
	return nil
}
