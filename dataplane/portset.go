package dataplane

import (
	"fmt"
	"strconv"
	"strings"
)

// PortRange is the TCP ports from First to Last, both included.
type PortRange struct{ First, Last uint16 }

// PortSet is a list of port ranges, as "4379,24007,49152-60999" reads.
type PortSet []PortRange

// Contains tells whether port is in one of the ranges.
func (s PortSet) Contains(port uint16) bool {
	for _, r := range s {
		if port >= r.First && port <= r.Last {
			return true
		}
	}
	return false
}

// String writes the set as ParsePortSet reads it.
func (s PortSet) String() string {
	parts := make([]string, len(s))
	for i, r := range s {
		parts[i] = strconv.Itoa(int(r.First))
		if r.Last != r.First {
			parts[i] += "-" + strconv.Itoa(int(r.Last))
		}
	}
	return strings.Join(parts, ",")
}

// ParsePortSet reads ports and ranges separated by commas ("4379,
// 49152-60999"); an empty string is the empty set. Port 0, a range that
// runs backwards and anything not a number are errors.
func ParsePortSet(v string) (PortSet, error) {
	var s PortSet
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		first, last, isRange := strings.Cut(f, "-")
		a, err := parsePort(first)
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f, err)
		}
		b := a
		if isRange {
			if b, err = parsePort(last); err != nil {
				return nil, fmt.Errorf("%q: %w", f, err)
			}
			if b < a {
				return nil, fmt.Errorf("%q: the range runs backwards", f)
			}
		}
		s = append(s, PortRange{a, b})
	}
	return s, nil
}

func parsePort(f string) (uint16, error) {
	p, err := strconv.ParseUint(strings.TrimSpace(f), 10, 16)
	if err != nil || p == 0 {
		return 0, fmt.Errorf("%q is not a port (1 to 65535)", f)
	}
	return uint16(p), nil
}
