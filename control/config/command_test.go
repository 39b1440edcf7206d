package config

import (
	"errors"
	"os/exec"
	"reflect"
	"strings"
	"testing"
)

var splitCommandCases = []struct {
	name string
	in   string
	want []string
	// sh: /bin/sh must split it the same (no operators or expansions in
	// the input, so the shell's words are the command's words)
	sh bool
}{
	{"plain", "/usr/bin/systemctl is-active --quiet smbd", []string{"/usr/bin/systemctl", "is-active", "--quiet", "smbd"}, true},
	{"blanks", " \t a  b\t\tc \n", []string{"a", "b", "c"}, true},
	{"single quotes keep commas and blanks", `/bin/sh -c 'test -e /a, b'`, []string{"/bin/sh", "-c", "test -e /a, b"}, true},
	{"single quotes keep backslashes and $", `echo 'a\b $HOME "x"'`, []string{"echo", `a\b $HOME "x"`}, true},
	{"double quotes", `echo "a b" "c'd"`, []string{"echo", "a b", "c'd"}, true},
	{"double quote escapes", `echo "a\"b" "c\\d" "e\$f" "g\h"`, []string{"echo", `a"b`, `c\d`, "e$f", `g\h`}, true},
	{"backslash-newline in double quotes", "echo \"a\\\nb\"", []string{"echo", "ab"}, true},
	{"backslash outside quotes", `echo a\ b \'c \"d \\e`, []string{"echo", "a b", "'c", `"d`, `\e`}, true},
	{"backslash-newline joins", "echo a\\\nb", []string{"echo", "ab"}, true},
	{"quotes join a word", `a"b c"d'e f'g`, []string{`ab cde fg`}, true},
	{"empty words", `printf '%s|' '' "" x`, []string{"printf", "%s|", "", "", "x"}, true},
	{"no expansion", `echo $HOME ~ *.conf $(id) ; x`, []string{"echo", "$HOME", "~", "*.conf", "$(id)", ";", "x"}, false},
	{"utf-8", `echo 'é ü' ñ`, []string{"echo", "é ü", "ñ"}, true},
}

func TestSplitCommand(t *testing.T) {
	for _, tc := range splitCommandCases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SplitCommand(tc.in)
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("SplitCommand(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
			again, err := SplitCommand(QuoteCommand(got))
			if err != nil || !reflect.DeepEqual(again, got) {
				t.Fatalf("quoted as %q, read back as %q, %v", QuoteCommand(got), again, err)
			}
		})
	}
}

// The shell is the oracle: the POSIX sh on this machine splits the same
// lines into the same words (printed NUL-separated by the shell itself).
func TestSplitCommandAgreesWithShell(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatalf("no sh to compare with: %v", err)
	}
	for _, tc := range splitCommandCases {
		if !tc.sh {
			continue
		}
		// set -- would glob, but no case for the shell has a glob
		// character; a newline of the input may only end it
		out, err := exec.Command(sh, "-c", "set -- "+tc.in+"\n"+`for w; do printf '%s\0' "$w"; done`).Output()
		if err != nil {
			t.Fatalf("%s: sh: %v", tc.name, err)
		}
		words := strings.Split(string(out), "\x00")
		words = words[:len(words)-1]
		if !reflect.DeepEqual(words, tc.want) {
			t.Errorf("%s: sh splits %q into %q, the table says %q", tc.name, tc.in, words, tc.want)
		}
	}
}

func TestSplitCommandRefuses(t *testing.T) {
	for _, tc := range []struct {
		in     string
		reason string
		offset int
	}{
		{`sh -c 'echo a`, "unterminated single quote", 6},
		{`sh -c "echo a`, "unterminated double quote", 6},
		{`sh -c "echo \"a`, "unterminated double quote", 6},
		{`echo it\'s 'x`, "unterminated single quote", 11},
		{`echo a\`, "backslash at the end of the command", 6},
	} {
		_, err := SplitCommand(tc.in)
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Reason != tc.reason || ce.Offset != tc.offset {
			t.Errorf("SplitCommand(%q) = %v; want %s at offset %d", tc.in, err, tc.reason, tc.offset)
		}
	}
	for _, in := range []string{"", "  ", "\t\n", "\\\n"} {
		if _, err := SplitCommand(in); !errors.Is(err, ErrEmptyCommand) {
			t.Errorf("SplitCommand(%q) = %v; want ErrEmptyCommand", in, err)
		}
	}
}

func TestQuoteCommand(t *testing.T) {
	for words, want := range map[string]string{
		"/bin/true\x00a":      "/bin/true a",
		"sh\x00-c\x00a b":     "sh -c 'a b'",
		"echo\x00it's":        `echo 'it'\''s'`,
		"printf\x00\x00x=1,2": "printf '' x=1,2",
	} {
		if got := QuoteCommand(strings.Split(words, "\x00")); got != want {
			t.Errorf("QuoteCommand(%q) = %q; want %q", words, got, want)
		}
	}
}
