package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

func TestSdNotify(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Fatalf("without NOTIFY_SOCKET: %v", err)
	}
	for _, abstract := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "notify")
		name, env := path, path
		if abstract {
			name, env = "\x00fsha-test-"+filepath.Base(filepath.Dir(path)), "@fsha-test-"+filepath.Base(filepath.Dir(path))
		}
		ln, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		t.Setenv("NOTIFY_SOCKET", env)
		if err := sdNotify("READY=1"); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		if err := ln.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := ln.Read(buf)
		if err != nil || string(buf[:n]) != "READY=1" {
			t.Fatalf("abstract %v: got %q, %v; want READY=1", abstract, buf[:n], err)
		}
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "nobody"))
	if err := sdNotify("READY=1"); err == nil {
		t.Error("no error for a socket nobody listens on")
	}
}
