package main

// The scale suite's tables.

import (
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
)

const (
	// udpHeaders: UDP 8 + IPv4 20 + Ethernet 14 bytes per datagram
	// (Ethernet's preamble, FCS and inter-frame gap, 24 bytes more on the
	// link, not counted)
	udpHeaders = 8 + 20 + 14
	// replWirePerConn: bytes on the wire per connection (open + close)
	// per peer when each travels alone: the replication suite's lab run
	// at 75bf31f (BENCHMARKS.md, Replication): 2 data segments of 84
	// bytes of payload and 1 ACK, 66 bytes of headers each
	replWirePerConn = 366
	gigabit         = 125e6 // bytes per second
)

func (b *scaleBench) report(out io.Writer, r *scaleResults) error {
	fmt.Fprintf(out, "\nscale against the cluster's size (issue 12): %d VIPs per node, sizes %s\n", b.vipsPerNode, joinInts(b.nodes))
	fmt.Fprintf(out, "Each table says where its numbers come from: SIMULATED (the ownership engine driven by its deterministic\n")
	fmt.Fprintf(out, "simulator, control/ownership/sim: seeded, in simulated time, the same on any machine), MEASURED (real\n")
	fmt.Fprintf(out, "memberlist instances in this process) or DERIVED (arithmetic on bytes another suite measured).\n")
	fmt.Fprintf(out, "simulation: %.1f s, %.1f s of CPU, %d worker(s); machine during it: %s\n",
		r.simTook.Seconds(), r.simCPU.Seconds(), b.workers, r.simLoad)
	if b.gossip {
		fmt.Fprintf(out, "gossip measurement: %.1f s; machine during it: %s\n", r.gosTook.Seconds(), r.gosLoad)
	}
	if err := b.reportTakeover(out, r); err != nil {
		return err
	}
	if err := b.reportLease(out, r); err != nil {
		return err
	}
	if b.gossip {
		if err := b.reportGossip(out, r); err != nil {
			return err
		}
	}
	if err := b.reportReplication(out); err != nil {
		return err
	}
	return b.reportTotal(out, r)
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, fmt.Sprint(x))
	}
	return strings.Join(s, ", ")
}

func timingLabel(name string) string {
	t := scaleTimings[name]
	return fmt.Sprintf("%s (lease %v, renew %v)", name, t.Lease, t.Renew)
}

var failureLabels = map[string]string{"power": "power cut", "network": "network cut"}

func (b *scaleBench) reportTakeover(out io.Writer, r *scaleResults) error {
	fmt.Fprintf(out, "\nA. failure of a VIP holder -> the VIP answered by another node. SIMULATED: %d seeded trials per row, each a new\n", b.trials)
	fmt.Fprintf(out, "cluster (started, settled, then the holder of one VIP cut at a random instant of a renewal period; the trials\n")
	fmt.Fprintf(out, "rotate over the VIPs), timed in simulated real time in steps of %v. power cut = the node off; network cut =\n", simStep)
	fmt.Fprintf(out, "every link of the node cut, its daemon runs on. Links delay 50-500 us, the executor takes 0-3 ms, node clocks\n")
	fmt.Fprintf(out, "drift within 1%%; no two nodes answer for a VIP at any simulated instant (checked at every event).\n")
	fmt.Fprintf(out, "p50 = median (nearest rank), p95 = nearest rank. Seeds: base*10^9 + nodes*10^6 + timing*10^5 + failure*10^4 + trial.\n\n")
	t := &table{header: []string{"timing", "nodes", "VIPs", "failure", "n", "p50", "p95", "max", "max - lease", "seeds"}}
	var notes []string
	for _, c := range r.sims {
		for _, f := range b.failures {
			xs := tookOf(c, f)
			var seeds []int64
			for _, tr := range c.trials {
				if tr.failure != f {
					continue
				}
				seeds = append(seeds, tr.seed)
				if tr.err != nil {
					notes = append(notes, fmt.Sprintf("  %s, %d nodes, %s: FAILED %v", c.timing, c.nodes, failureLabels[f], tr.err))
				}
			}
			if len(seeds) == 0 {
				continue
			}
			row := []string{timingLabel(c.timing), fmt.Sprint(c.nodes), fmt.Sprint(c.vips), failureLabels[f], fmt.Sprint(len(xs))}
			if len(xs) == 0 {
				row = append(row, "-", "-", "-", "-")
			} else {
				mx := slices.Max(xs)
				row = append(row, msf(percentile(xs, 50)), msf(percentile(xs, 95)), msf(mx), msf(mx-c.t.Lease.Seconds()))
			}
			t.add(append(row, fmt.Sprintf("%d..%d", slices.Min(seeds), slices.Max(seeds)))...)
		}
	}
	if err := t.write(out); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	return nil
}

// msf prints seconds as milliseconds with one decimal.
func msf(sec float64) string {
	if math.IsNaN(sec) {
		return "-"
	}
	return fmt.Sprintf("%.1f ms", sec*1000)
}

// rate prints bytes per second.
func rate(bps float64) string {
	switch {
	case bps >= 1e6:
		return fmt.Sprintf("%.2f MB/s", bps/1e6)
	case bps >= 1e3:
		return fmt.Sprintf("%.1f kB/s", bps/1e3)
	}
	return fmt.Sprintf("%.0f B/s", bps)
}

func mbit(bps float64) string { return fmt.Sprintf("%.3f", bps*8/1e6) }

func ofGigabit(bps float64) string {
	p := bps / gigabit * 100
	if p < 0.01 {
		return fmt.Sprintf("%.4f%%", p)
	}
	return fmt.Sprintf("%.2f%%", p)
}

func perSec(x float64) string {
	if x >= 100 {
		return thousands(int(math.Round(x)))
	}
	return fmt.Sprintf("%.1f", x)
}

func (b *scaleBench) reportLease(out io.Writer, r *scaleResults) error {
	over := r.envelope.perMsg + udpHeaders
	fmt.Fprintf(out, "\nB. ownership protocol (lease) messages per node, steady state. SIMULATED: every node of every trial of A over\n")
	fmt.Fprintf(out, "%d renewals before the failure, in the simulator's encoded bytes (the real wire format); means per node,\n", steadyRenewals)
	fmt.Fprintf(out, "busiest = the node of any trial that sent the most. Messages: heartbeats (one per renewal to every other\n")
	fmt.Fprintf(out, "node), replies (a voter's answer to each heartbeat's claims), releases (planned moves only). payload = the\n")
	fmt.Fprintf(out, "encoded message; wire = payload + %.0f B of memberlist envelope (MEASURED, see D: message type, CRC, AES-GCM)\n", r.envelope.perMsg)
	fmt.Fprintf(out, "+ %d B of UDP/IPv4/Ethernet headers per message (preamble, FCS and gap not counted). Mbit/s and %% of\n", udpHeaders)
	fmt.Fprintf(out, "1 GbE: the busier direction of the mean node.\n\n")
	t := &table{header: []string{"timing", "nodes", "heartbeat", "reply", "heartbeats/s", "replies/s", "releases/s",
		"msgs/s sent", "msgs/s recv", "payload sent", "payload recv", "wire sent", "wire recv", "busiest wire sent", "Mbit/s", "of 1 GbE"}}
	for _, c := range r.sims {
		s := steadyStats(c)
		if s.nodeSeconds == 0 {
			t.add(c.timing, fmt.Sprint(c.nodes), "-")
			continue
		}
		wireSent, wireRecv := s.bytesSent+s.msgsSent*over, s.bytesRecv+s.msgsRecv*over
		busiest := 0.0
		for _, tr := range c.ok("") {
			for _, tf := range tr.steady {
				sec := tr.steadyFor.Seconds()
				busiest = max(busiest, (float64(tf.Sent.Total().Bytes)+float64(tf.Sent.Total().Msgs)*over)/sec)
			}
		}
		each := max(wireSent, wireRecv)
		t.add(c.timing, fmt.Sprint(c.nodes), fmt.Sprintf("%.0f B", s.hbSize), fmt.Sprintf("%.0f B", s.replySize),
			perSec(s.hbSent), perSec(s.replySent), perSec(s.releaseSent), perSec(s.msgsSent), perSec(s.msgsRecv),
			rate(s.bytesSent), rate(s.bytesRecv), rate(wireSent), rate(wireRecv), rate(busiest), mbit(each), ofGigabit(each))
	}
	if err := t.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nC. lease messages per surviving node during a takeover. SIMULATED: the trials of A, from the failure until the\n")
	fmt.Fprintf(out, "VIP is answered (window); means per survivor, busiest = the survivor of any trial that sent the most; wire as in B.\n\n")
	t = &table{header: []string{"timing", "nodes", "failure", "window p50", "msgs/s sent", "msgs/s recv", "releases/s",
		"wire sent", "wire recv", "busiest wire sent", "wire sent / steady"}}
	for _, c := range r.sims {
		steady := steadyStats(c)
		steadyWire := steady.bytesSent + steady.msgsSent*over
		for _, f := range b.failures {
			s := takeoverStatsOf(c, f)
			if s.n == 0 {
				continue
			}
			wireSent, wireRecv := s.bytesSent+s.msgsSent*over, s.bytesRecv+s.msgsRecv*over
			busiest := 0.0
			for _, tr := range c.ok(f) {
				sec := tr.took.Seconds()
				for i, tf := range tr.takeover {
					if i != tr.failed && sec > 0 {
						busiest = max(busiest, (float64(tf.Sent.Total().Bytes)+float64(tf.Sent.Total().Msgs)*over)/sec)
					}
				}
			}
			ratio := "-"
			if steadyWire > 0 {
				ratio = fmt.Sprintf("%.2f", wireSent/steadyWire)
			}
			t.add(c.timing, fmt.Sprint(c.nodes), failureLabels[f], msf(percentile(s.window, 50)), perSec(s.msgsSent), perSec(s.msgsRecv),
				perSec(s.releases), rate(wireSent), rate(wireRecv), rate(busiest), ratio)
		}
	}
	return t.write(out)
}

func gossipLabel(name string) string {
	t := gossipTimings[name]
	return fmt.Sprintf("%s (probe %v, gossip %v, push/pull %v)", name, t.ProbeInterval, t.GossipInterval, t.PushPullInterval)
}

// gossipMeans are one gossip cell's per-instance means, per second.
type gossipMeans struct {
	pktSent, pktRecv, udpSent, udpRecv, streams, tcpSent, tcpRecv float64
}

func meansOf(g *gossipCell) gossipMeans {
	var m gossipMeans
	secs := g.window.Seconds() * float64(len(g.traffic))
	if secs == 0 {
		return m
	}
	for _, tf := range g.traffic {
		m.pktSent += float64(tf.PacketsSent)
		m.pktRecv += float64(tf.PacketsReceived)
		m.udpSent += float64(tf.PacketBytesSent)
		m.udpRecv += float64(tf.PacketBytesReceived)
		m.streams += float64(tf.StreamsOpened + tf.StreamsAccepted)
		m.tcpSent += float64(tf.StreamBytesSent)
		m.tcpRecv += float64(tf.StreamBytesReceived)
	}
	for _, p := range []*float64{&m.pktSent, &m.pktRecv, &m.udpSent, &m.udpRecv, &m.streams, &m.tcpSent, &m.tcpRecv} {
		*p /= secs
	}
	return m
}

// wireEach is the busier direction on the wire: UDP with headers, TCP
// payload.
func (m gossipMeans) wireEach() float64 {
	return max(m.udpSent+m.pktSent*udpHeaders+m.tcpSent, m.udpRecv+m.pktRecv*udpHeaders+m.tcpRecv)
}

func (b *scaleBench) reportGossip(out io.Writer, r *scaleResults) error {
	fmt.Fprintf(out, "\nD. gossip (memberlist) per node. MEASURED: a cluster of each size of control/membership instances in this\n")
	fmt.Fprintf(out, "process (fsha's gossip configuration: the timing profiles of fsha up --gossip-timing, tolerant its default; an\n")
	fmt.Fprintf(out, "AES-GCM key; the node's metadata and push/pull state), on 127.0.80.1..N, every size of a profile at once on its\n")
	fmt.Fprintf(out, "own port, counted by the gossip transport over the same window: from two push/pull intervals after the start\n")
	fmt.Fprintf(out, "(memberlist's first comes between one and two intervals after it starts), for whole intervals (each instance\n")
	fmt.Fprintf(out, "starts window/interval state exchanges in it); means per instance. UDP = probes, acks and gossip (payload,\n")
	fmt.Fprintf(out, "and wire = + %d B per datagram); TCP = push/pull state exchanges (payload only; each stream also costs about\n", udpHeaders)
	fmt.Fprintf(out, "10 segments of 66 B of headers). streams = opened + accepted. suspicions: memberlist's \"Suspect\" lines in the\n")
	fmt.Fprintf(out, "window, all instances; alive at end: the fewest alive members an instance saw. No ownership messages here:\n")
	fmt.Fprintf(out, "they are B's, on the same port. The memberlist envelope around an ownership message (SendTo between two\n")
	fmt.Fprintf(out, "members), MEASURED: %.0f B (%d datagrams of a %d B message).\n", r.envelope.perMsg, r.envelope.msgs, r.envelope.size)
	for _, run := range r.gossip {
		n := 0
		for _, g := range run.cells {
			n += g.nodes
		}
		fmt.Fprintf(out, "%s: window %.1f s from %.1f s after the start; CPU of this process over it, all %d instances: %.1f%% of one CPU\n",
			run.timing, run.window.Seconds(), run.warm.Seconds(), n, run.cpu.Seconds()/run.window.Seconds()*100)
	}
	fmt.Fprintln(out)
	t := &table{header: []string{"timing", "nodes", "datagrams/s sent", "recv", "UDP sent", "UDP recv", "UDP wire sent", "streams/s",
		"TCP sent", "TCP recv", "Mbit/s", "of 1 GbE", "alive at end", "suspicions"}}
	var notes []string
	for _, run := range r.gossip {
		for _, g := range run.cells {
			if g.err != nil {
				t.add(gossipLabel(g.timing), fmt.Sprint(g.nodes), "FAILED")
				notes = append(notes, fmt.Sprintf("  %s, %d nodes: %v", g.timing, g.nodes, g.err))
				continue
			}
			m := meansOf(g)
			t.add(gossipLabel(g.timing), fmt.Sprint(g.nodes), perSec(m.pktSent), perSec(m.pktRecv), rate(m.udpSent), rate(m.udpRecv),
				rate(m.udpSent+m.pktSent*udpHeaders), fmt.Sprintf("%.3f", m.streams), rate(m.tcpSent), rate(m.tcpRecv),
				mbit(m.wireEach()), ofGigabit(m.wireEach()), fmt.Sprintf("%d of %d", g.aliveEnd, g.nodes), fmt.Sprint(g.suspects))
		}
	}
	if err := t.write(out); err != nil {
		return err
	}
	for _, n := range notes {
		fmt.Fprintln(out, n)
	}
	return nil
}

func replPerNode(nodes int, connRate float64) float64 {
	return connRate * float64(nodes-1) * replWirePerConn
}

func (b *scaleBench) reportReplication(out io.Writer) error {
	fmt.Fprintf(out, "\nE. replication per node. DERIVED, not measured at these sizes: every node opens and closes %g client\n", b.connRate)
	fmt.Fprintf(out, "connections a second of its own and sends each open and each close to every peer; %d B on the wire per\n", replWirePerConn)
	fmt.Fprintf(out, "connection per peer when they travel alone (the replication suite's lab run at 75bf31f: 2 data segments of\n")
	fmt.Fprintf(out, "84 B and 1 ACK, 66 B of headers each; records that share a flush cost less, down to 48 B each in a storm).\n")
	fmt.Fprintf(out, "It receives its peers' as much: the figure holds each way.\n\n")
	t := &table{header: []string{"nodes", "peers", "conns/s per node", "each way", "Mbit/s", "of 1 GbE"}}
	for _, n := range b.nodes {
		bps := replPerNode(n, b.connRate)
		t.add(fmt.Sprint(n), fmt.Sprint(n-1), fmt.Sprintf("%g", b.connRate), rate(bps), mbit(bps), ofGigabit(bps))
	}
	return t.write(out)
}

func (b *scaleBench) reportTotal(out io.Writer, r *scaleResults) error {
	timing, gossip := "default", "tolerant"
	if !slices.Contains(b.timings, timing) || !b.gossip || !slices.Contains(b.gossipSet, gossip) {
		return nil
	}
	over := r.envelope.perMsg + udpHeaders
	fmt.Fprintf(out, "\nF. per node, each way, on the wire, with fsha up's defaults: lease (B, %s) + gossip (D, %s) +\n", timing, gossip)
	fmt.Fprintf(out, "replication (E, %g connections/s per node).\n\n", b.connRate)
	t := &table{header: []string{"nodes", "lease", "gossip", "replication", "total", "Mbit/s", "of 1 GbE"}}
	for _, n := range b.nodes {
		var lease, gos float64
		for _, c := range r.sims {
			if c.timing == timing && c.nodes == n {
				s := steadyStats(c)
				lease = max(s.bytesSent+s.msgsSent*over, s.bytesRecv+s.msgsRecv*over)
			}
		}
		for _, run := range r.gossip {
			for _, g := range run.cells {
				if g.timing == gossip && g.nodes == n && g.err == nil {
					gos = meansOf(g).wireEach()
				}
			}
		}
		repl := replPerNode(n, b.connRate)
		total := lease + gos + repl
		t.add(fmt.Sprint(n), rate(lease), rate(gos), rate(repl), rate(total), mbit(total), ofGigabit(total))
	}
	return t.write(out)
}
