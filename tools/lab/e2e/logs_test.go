package e2e

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
)

// flowEvents counts the "flow open" and "flow close" debug lines of an
// fsha up log by "open|close VIP:PORT".
func flowEvents(t *testing.T, logFile string) map[string]int {
	t.Helper()
	f, err := os.Open(logFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]int{}
	r := bufio.NewReader(f)
	for {
		line, err := r.ReadBytes('\n')
		var ev struct {
			Msg string `json:"msg"`
			VIP string `json:"vip"`
		}
		if json.Unmarshal(line, &ev) == nil && strings.HasPrefix(ev.Msg, "flow ") {
			out[strings.TrimPrefix(ev.Msg, "flow ")+" "+ev.VIP]++
		}
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

// logged tells whether a JSON log line has msg and a field whose string
// value ends with suffix.
func logged(t *testing.T, logFile, msg, field, suffix string) bool {
	t.Helper()
	data, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var m map[string]any
		if json.Unmarshal(line, &m) != nil || m["msg"] != msg {
			continue
		}
		if v, ok := m[field].(string); ok && strings.HasSuffix(v, suffix) {
			return true
		}
	}
	return false
}
