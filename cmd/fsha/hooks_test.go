package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func TestMonitorCheck(t *testing.T) {
	dir := t.TempDir()
	if c := newMonitorCheck(newHookRunner(zaptest.NewLogger(t), dir, "198.18.0.1", time.Second)); c != nil {
		t.Fatal("a monitor check without hooks")
	}
	script := filepath.Join(dir, "10.check")
	write := func(body string) {
		if err := os.WriteFile(script, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write(`[ "$1" = monitor ] || [ "$FSHA_EVENT" = monitor ] || exit 3; exit 0`)
	c := newMonitorCheck(newHookRunner(zaptest.NewLogger(t), dir, "198.18.0.1", time.Second))
	if c == nil || c.Name() != "hooks:monitor" {
		t.Fatalf("check %v", c)
	}
	if err := c.Run(context.Background()); err != nil {
		t.Fatalf("passing monitor hook: %v", err)
	}
	write("exit 1")
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("a failing monitor hook passed")
	}
}
