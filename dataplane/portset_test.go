package dataplane

import (
	"strings"
	"testing"
)

func TestParsePortSet(t *testing.T) {
	for _, c := range []struct {
		in, want, err string
		in1, out      []uint16
	}{
		{in: "", want: ""},
		{in: " , ", want: ""},
		{in: "4379", want: "4379", in1: []uint16{4379}, out: []uint16{4378, 4380, 0}},
		{in: "4379, 24007,49152-60999", want: "4379,24007,49152-60999",
			in1: []uint16{4379, 24007, 49152, 50000, 60999}, out: []uint16{24006, 49151, 61000, 65535}},
		{in: "1-65535", want: "1-65535", in1: []uint16{1, 65535}, out: []uint16{0}},
		{in: "7-7", want: "7", in1: []uint16{7}, out: []uint16{6, 8}},
		{in: "0", err: "not a port"},
		{in: "65536", err: "not a port"},
		{in: "445,abc", err: `"abc"`},
		{in: "60999-49152", err: "backwards"},
		{in: "1-", err: "not a port"},
		{in: "-5", err: "not a port"},
		{in: "1-2-3", err: "not a port"},
	} {
		s, err := ParsePortSet(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParsePortSet(%q): %v, %v; want an error with %q", c.in, s, err, c.err)
			}
			continue
		}
		if err != nil || s.String() != c.want {
			t.Errorf("ParsePortSet(%q) = %q, %v; want %q", c.in, s, err, c.want)
			continue
		}
		for _, p := range c.in1 {
			if !s.Contains(p) {
				t.Errorf("%q does not contain %d", c.in, p)
			}
		}
		for _, p := range c.out {
			if s.Contains(p) {
				t.Errorf("%q contains %d", c.in, p)
			}
		}
	}
}
