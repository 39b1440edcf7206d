package main

import (
	"bytes"
	"testing"
)

// `fsha --version` names the build.
func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := newApp(env{stdout: &out, stderr: &out}).Run([]string{"fsha", "--version"}); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out.Bytes(), []byte("fsha version ")) || !bytes.Contains(out.Bytes(), []byte("go1.")) {
		t.Errorf("fsha --version printed %q", out.String())
	}
}
