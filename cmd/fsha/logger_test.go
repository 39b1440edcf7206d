package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"
)

// newLogger writes JSON by default, text on request, and refuses anything
// else, naming the flag.
func TestNewLoggerFormats(t *testing.T) {
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		var lerr error
		app := &cli.App{Name: "fsha", Flags: []cli.Flag{logLevelFlag(), logFormatFlag()},
			Action: func(c *cli.Context) error {
				log, err := newLogger(c, &out)
				if err != nil {
					lerr = err
					return nil
				}
				log.Info("lease lapsed", zap.Duration("took", 250*time.Millisecond))
				return log.Sync()
			}}
		if err := app.Run(append([]string{"fsha"}, args...)); err != nil {
			return "", err
		}
		return out.String(), lerr
	}
	out, err := run()
	var m map[string]any
	if err != nil || json.Unmarshal([]byte(out), &m) != nil || m["msg"] != "lease lapsed" {
		t.Errorf("default: %q, %v; want a JSON line", out, err)
	}
	out, err = run("--log-format", "text")
	if err != nil || !strings.Contains(out, "\tINFO\tlease lapsed\t") || !strings.Contains(out, `"took": "250ms"`) {
		t.Errorf("text: %q, %v", out, err)
	}
	if _, err := run("--log-format", "xml"); err == nil || !strings.Contains(err.Error(), `--log-format "xml": want json or text`) {
		t.Errorf("xml: %v", err)
	}
}

// The daemon's logger holds back a repeated error: the same warning
// logged in a loop is one line (its summary comes when the window ends,
// tested in control/logs with a fake clock).
func TestNewLoggerHoldsBackRepeats(t *testing.T) {
	var out bytes.Buffer
	app := &cli.App{Name: "fsha", Flags: []cli.Flag{logLevelFlag(), logFormatFlag()},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, &out)
			if err != nil {
				return err
			}
			for range 50 {
				log.Warn("lock check", zap.Error(errors.New("no such file or directory")))
			}
			log.Info("still here")
			return nil
		}}
	if err := app.Run([]string{"fsha"}); err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out.String()), "\n"); len(lines) != 2 ||
		!strings.Contains(lines[0], `"msg":"lock check"`) || !strings.Contains(lines[1], `"msg":"still here"`) {
		t.Errorf("got %d lines, want the warning once and the info line:\n%s", len(lines), out.String())
	}
}
