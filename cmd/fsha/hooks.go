package main

import (
	"time"

	"go.uber.org/zap"

	"github.com/fsha/fsha/control/node"
)

// newHooks returns the event-script runner for the hooks directory.
func newHooks(log *zap.Logger, dir string, timeout time.Duration) node.Hooks {
	_, _, _ = log, dir, timeout
	return nil
}
