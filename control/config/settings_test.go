package config

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSettings(t *testing.T) {
	known := func(s string) bool { return s == "gossip-key" || s == "failback" || s == "lock" }
	names := Names{Known: known, Multi: func(s string) bool { return s == "check" }}
	got, err := ParseSettings("fsha.conf", strings.NewReader("# comment\n\ngossip-key = /etc/fsha/key\nfailback=\"sticky\"\n"), names)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "gossip-key" || got[0].Value != "/etc/fsha/key" || got[1].Value != "sticky" || got[1].Line != 4 {
		t.Fatalf("got %+v", got)
	}
	_, err = ParseSettings("fsha.conf", strings.NewReader("lock /x\nfailbak = sticky\nlock = /a\nlock = /b\n = x\n"), names)
	var le *LineError
	if !errors.As(err, &le) {
		t.Fatalf("want LineError, got %v", err)
	}
	for _, want := range []string{"fsha.conf:1: want name = value", "fsha.conf:2: unknown setting \"failbak\"", "fsha.conf:4: setting \"lock\" given twice (first on line 3)", "fsha.conf:5: missing name"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

// A value is taken whole, commas included, and a multi-valued setting may
// be given on several lines, one value each.
func TestParseSettingsWholeValues(t *testing.T) {
	names := Names{
		Known: func(s string) bool { return s == "ports" || s == "check" },
		Multi: func(s string) bool { return s == "check" },
	}
	in := "ports = 445,2049\ncheck = cmd:/bin/sh -c 'test -e /a, b'\ncheck = tcp:445\n"
	got, err := ParseSettings("fsha.conf", strings.NewReader(in), names)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"445,2049", "cmd:/bin/sh -c 'test -e /a, b'", "tcp:445"}
	if len(got) != len(want) {
		t.Fatalf("got %+v, want values %q", got, want)
	}
	for i, w := range want {
		if got[i].Value != w || got[i].Line != i+1 {
			t.Errorf("setting %d: %+v, want %q on line %d", i, got[i], w, i+1)
		}
	}
	if _, err := ParseSettings("fsha.conf", strings.NewReader("ports = 445\nports = 2049\n"), names); err == nil {
		t.Error("a single-valued setting given twice was accepted")
	}
}
