package node

import (
	"strings"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// testLogger is a logger into the test's log that drops what comes once
// the test's cleanups ran: memberlist's probe goroutines outlive its
// Shutdown and may log "marking ... as failed" after the test ended, and
// testing panics at a Log after the end (zaptest's logger would).
func testLogger(t testing.TB) *zap.Logger {
	w := &afterTestWriter{t: t}
	t.Cleanup(w.end)
	enc := zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig())
	return zap.New(zapcore.NewCore(enc, zapcore.AddSync(w), zap.DebugLevel))
}

type afterTestWriter struct {
	t    testing.TB
	mu   sync.RWMutex
	over bool
}

func (w *afterTestWriter) Write(p []byte) (int, error) {
	w.mu.RLock()
	defer w.mu.RUnlock()
	if !w.over {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

func (w *afterTestWriter) end() {
	w.mu.Lock()
	w.over = true
	w.mu.Unlock()
}
