package config

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSettings(t *testing.T) {
	known := func(s string) bool { return s == "gossip-key" || s == "failback" || s == "lock" }
	got, err := ParseSettings("fsha.conf", strings.NewReader("# comment\n\ngossip-key = /etc/fsha/key\nfailback=\"sticky\"\n"), known)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "gossip-key" || got[0].Value != "/etc/fsha/key" || got[1].Value != "sticky" || got[1].Line != 4 {
		t.Fatalf("got %+v", got)
	}
	_, err = ParseSettings("fsha.conf", strings.NewReader("lock /x\nfailbak = sticky\nlock = /a\nlock = /b\n = x\n"), known)
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
