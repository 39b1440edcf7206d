// Command fsha keeps SMB and NFS clients of a file-server cluster connected
// across node failures. See README.md.
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/fsha/fsha/control/logs"
)

// env is what commands touch outside themselves, injected so tests can run
// them against buffers.
type env struct {
	stdout io.Writer
	stderr io.Writer
}

func main() {
	if err := newApp(env{stdout: os.Stdout, stderr: os.Stderr}).Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "fsha:", err)
		os.Exit(1)
	}
}

func newApp(e env) *cli.App {
	admins := adminCommands(e)
	return &cli.App{
		Name:      "fsha",
		Usage:     "SMB/NFS connection failover for file-server clusters",
		Version:   versionString(),
		Writer:    e.stdout,
		ErrWriter: e.stderr,
		// A check command may hold commas: --check is repeated instead.
		DisableSliceFlagSeparator: true,
		// -n, before the command as with ctdb: fsha -n 2 ip
		Flags:  []cli.Flag{nodeFlag()},
		Before: func(c *cli.Context) error { return checkNodeFlag(c, admins) },
		Commands: append([]*cli.Command{
			upCommand(e),
			checkConfigCommand(e),
			flowsCommand(e),
			countersCommand(e),
			mapsCommand(e),
			unloadCommand(e),
		}, admins...),
	}
}

func pinPathFlag() cli.Flag {
	return &cli.StringFlag{
		Name: "pin-path", Value: "/sys/fs/bpf/fsha", EnvVars: []string{"FSHA_PIN_PATH"},
		Usage: "bpffs directory of the pinned maps and links",
	}
}

func logLevelFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-level", Value: "info", EnvVars: []string{"FSHA_LOG_LEVEL"}, Usage: "debug, info, warn or error"}
}

func logFormatFlag() cli.Flag {
	return &cli.StringFlag{Name: "log-format", Value: "json", EnvVars: []string{"FSHA_LOG_FORMAT"},
		Usage: "json (one object per line, for journald and log shippers) or text (for a terminal)"}
}

func jsonFlag() cli.Flag {
	return &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}
}

// newLogger builds the structured logger for long-running commands.
func newLogger(c *cli.Context, w io.Writer) (*zap.Logger, error) {
	level, err := zapcore.ParseLevel(c.String("log-level"))
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	var encoder zapcore.Encoder
	switch f := c.String("log-format"); f {
	case "", "json":
		encoder = zapcore.NewJSONEncoder(enc)
	case "text":
		enc.EncodeLevel = zapcore.CapitalLevelEncoder
		enc.EncodeDuration = zapcore.StringDurationEncoder
		encoder = zapcore.NewConsoleEncoder(enc)
	default:
		return nil, fmt.Errorf("--log-format %q: want json or text", f)
	}
	core := zapcore.NewCore(encoder, zapcore.AddSync(w), level)
	// A warning or error repeated in a loop (a lock on a dead file
	// system, a failing hook, a metrics address not bindable yet) is
	// written once, then summarised with a count every 10 s.
	return zap.New(logs.NewRepeatCore(core, logs.RepeatOptions{})), nil
}
