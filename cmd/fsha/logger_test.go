package main

import (
	"bytes"
	"encoding/json"
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
