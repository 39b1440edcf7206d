package main

// What the failover suite counts around its many connections
// (-failover-conns): the client's capture, the kernels' TCP counters and
// sysctls, and the frames the links and the softnet backlog dropped.

import (
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// connsCapture is what the client's packet capture (lab.Watch on its
// eth0, kernel receive times) saw of the connections after the failure:
// their tickles and the RSTs that ended them.
type connsCapture struct {
	tickled, rst int // connections with a tickle, with a RST from the VIP
	// firstTickle and lastTickle are the first tickle of any and the
	// latest first tickle of one connection; rstP50, rstP95 and rstMax
	// the RSTs' arrival times (seconds since the failure, NaN when none).
	firstTickle, lastTickle float64
	rstP50, rstP95, rstMax  float64
	rstAt                   []float64 // every connection's RST
	// turnP50, turnMax: from a connection's first tickle to its RST at
	// the client (its dupack to the new owner, that node's RST back)
	turnP50, turnMax float64
	drops            uint64 // frames the capture lost
}

// captureConns reads frames (from VIP:port) for the connections' tickles
// and RSTs.
func captureConns(frames []lab.Frame, port uint16, ports []uint16, t0 time.Time, drops uint64) connsCapture {
	ours := make(map[uint16]bool, len(ports))
	for _, p := range ports {
		ours[p] = true
	}
	tickle := map[uint16]float64{}
	rst := map[uint16]float64{}
	for _, f := range frames {
		if f.ARP || f.SrcPort != port || !ours[f.DstPort] || !f.At.After(t0) {
			continue
		}
		at := f.At.Sub(t0).Seconds()
		m := tickle
		if f.Flags&lab.FlagRST != 0 {
			m = rst
		}
		if _, ok := m[f.DstPort]; !ok {
			m[f.DstPort] = at
		}
	}
	cc := connsCapture{tickled: len(tickle), rst: len(rst), drops: drops,
		firstTickle: math.NaN(), lastTickle: math.NaN(), rstP50: math.NaN(), rstP95: math.NaN(), rstMax: math.NaN(),
		turnP50: math.NaN(), turnMax: math.NaN()}
	if len(tickle) > 0 {
		ts := slices.Collect(maps.Values(tickle))
		cc.firstTickle, cc.lastTickle = slices.Min(ts), slices.Max(ts)
	}
	if len(rst) > 0 {
		rs := slices.Collect(maps.Values(rst))
		cc.rstAt = rs
		cc.rstP50, cc.rstP95, cc.rstMax = percentile(rs, 50), percentile(rs, 95), slices.Max(rs)
	}
	var turns []float64
	for p, r := range rst {
		if tk, ok := tickle[p]; ok && r >= tk {
			turns = append(turns, r-tk)
		}
	}
	if len(turns) > 0 {
		cc.turnP50, cc.turnMax = percentile(turns, 50), slices.Max(turns)
	}
	return cc
}

// netCounters are a namespace's TCP counters (/proc/net/snmp and
// /proc/net/netstat, named as nstat names them: TcpOutRsts,
// TcpExtTCPChallengeACK).
type netCounters map[string]int64

// readNetCounters reads h's counters from a thread in its namespace.
func readNetCounters(h *lab.Host) (netCounters, error) {
	out := netCounters{}
	err := h.Do(func() error {
		for _, f := range []string{"snmp", "netstat"} {
			b, err := os.ReadFile("/proc/thread-self/net/" + f)
			if err != nil {
				return err
			}
			parseNetCounters(string(b), out)
		}
		return nil
	})
	return out, err
}

// parseNetCounters adds the name/value line pairs of a /proc/net/snmp or
// netstat file to into.
func parseNetCounters(s string, into netCounters) {
	lines := strings.Split(s, "\n")
	for i := 0; i+1 < len(lines); i++ {
		names, values := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) < 2 || len(names) != len(values) || names[0] != values[0] {
			continue
		}
		prefix := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			if v, err := strconv.ParseInt(values[j], 10, 64); err == nil {
				into[prefix+names[j]] = v
			}
		}
		i++
	}
}

// sub is c - before, for every counter of c.
func (c netCounters) sub(before netCounters) netCounters {
	d := netCounters{}
	for k, v := range c {
		d[k] = v - before[k]
	}
	return d
}

// readSysctls reads sysctls (dotted names) from a thread in h's namespace.
func readSysctls(h *lab.Host, names ...string) (map[string]string, error) {
	out := map[string]string{}
	err := h.Do(func() error {
		for _, n := range names {
			b, err := os.ReadFile("/proc/sys/" + strings.ReplaceAll(n, ".", "/"))
			if err != nil {
				return err
			}
			out[n] = strings.Join(strings.Fields(string(b)), " ")
		}
		return nil
	})
	return out, err
}

// softnetDrops sums the machine's per-CPU backlog drops and time squeezes
// (/proc/net/softnet_stat: not per namespace, so every namespace's and
// every other job's packets count).
func softnetDrops() (drops, squeezed uint64) {
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		d, _ := strconv.ParseUint(f[1], 16, 64)
		s, _ := strconv.ParseUint(f[2], 16, 64)
		drops += d
		squeezed += s
	}
	return drops, squeezed
}

// linkDrops reads the receive and transmit drops of every link of the
// lab's hosts and switch ("n2/eth0 rx", "sw/n2 tx"): a frame the lab's
// network lost on the way (a veth whose peer's XDP ring was full, say).
func linkDrops(c *lab.Cluster) map[string]uint64 {
	hosts := []*lab.Host{c.Lab.Switch}
	for _, n := range c.Nodes {
		hosts = append(hosts, n.Host)
	}
	for _, cl := range c.Clients {
		hosts = append(hosts, cl.Host)
	}
	out := map[string]uint64{}
	for _, h := range hosts {
		links, err := h.Netlink().LinkList()
		if err != nil {
			continue
		}
		for _, l := range links {
			st := l.Attrs().Statistics
			if st == nil {
				continue
			}
			out[h.Role+"/"+l.Attrs().Name+" rx"] = st.RxDropped
			out[h.Role+"/"+l.Attrs().Name+" tx"] = st.TxDropped
		}
	}
	return out
}

// rxDropped is the receive drops of h's eth0.
func rxDropped(h *lab.Host) uint64 {
	l, err := h.Netlink().LinkByName(lab.HostIface)
	if err != nil || l.Attrs().Statistics == nil {
		return 0
	}
	return l.Attrs().Statistics.RxDropped
}
