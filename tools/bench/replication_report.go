package main

// The replication suite's report: latencies of both parts, bytes per
// connection on the streams and the wire, snapshots, the peer map's memory
// and where a snapshot's time goes.

import (
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/fsha/fsha/dataplane"
)

// ---- report ----

func quantiles(xs []float64) (p50, p99, mx float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN(), math.NaN()
	}
	return percentile(xs, 50), percentile(xs, 99), slices.Max(xs)
}

func ms(sec float64) string {
	if math.IsNaN(sec) {
		return "-"
	}
	if sec < 0.01 {
		return fmt.Sprintf("%.2f ms", sec*1000)
	}
	return fmt.Sprintf("%.1f ms", sec*1000)
}

// wireBytes is what a stream's segments take on an Ethernet link:
// payload + 66 bytes per segment (Ethernet 14, IPv4 20, TCP 20 + 12 of
// timestamps), both directions.
func wireBytes(d streamDelta) uint64 { return d.payload + 66*(d.segsOut+d.segsBack) }

func (b *replicationBench) report(out io.Writer, lr *replLabResult, ip *replInProcResult) error {
	if lr != nil {
		fmt.Fprintf(out, "\nreplication in a 3-node lab cluster (fsha defaults: deltas sent at once after a quiet 10 ms, else batched up to 10 ms, AES-GCM streams):\n")
		fmt.Fprintf(out, "%d SMB connections to a VIP opened one at a time; open = the client's first request written (the\n", lr.conns)
		fmt.Fprintf(out, "server's quick ACK of it creates the flow) -> the connection is in the other node's peer_flows map\n")
		fmt.Fprintf(out, "(polled every 0.2 ms); close = the client's RST sent -> gone from it. Bytes: the owner's\n")
		fmt.Fprintf(out, "replication socket to that node (tcp_info)\n\n")
		t := &table{header: []string{"to node", "event", "n", "p50", "p99", "max"}}
		for i, p := range lr.peers {
			for _, ev := range []struct {
				name string
				xs   []float64
			}{{"open", lr.open[i]}, {"close", lr.close[i]}} {
				p50, p99, mx := quantiles(ev.xs)
				t.add(p, ev.name, fmt.Sprint(len(ev.xs)), ms(p50), ms(p99), ms(mx))
			}
		}
		if err := t.write(out); err != nil {
			return err
		}
		fmt.Fprintln(out)
		bt := &table{header: []string{"to node", "TCP payload / conn", "segments / conn (data + ACKs)", "on the wire / conn"}}
		for i, p := range lr.peers {
			s := lr.streams[i]
			n := float64(lr.conns)
			bt.add(p, fmt.Sprintf("%.0f B", float64(s.payload)/n), fmt.Sprintf("%.2f + %.2f", float64(s.segsOut)/n, float64(s.segsBack)/n),
				fmt.Sprintf("%.0f B", float64(wireBytes(s))/n))
		}
		if err := bt.write(out); err != nil {
			return err
		}
	}

	fmt.Fprintf(out, "\nreplication in process: 3 replicators on 127.0.0.1-3 (one process, this machine's 2 CPUs), each\n")
	fmt.Fprintf(out, "storing into a real peer_flows map (data plane loaded unpinned); node 0 streams to nodes 1 and 2,\n")
	fmt.Fprintf(out, "encrypted. Latency = Publish -> UpsertPeerFlows/DeletePeerFlows returned on the peer; both peers.\n\n")
	t := &table{header: []string{"case", "n (2 peers)", "p50", "p99", "max", "payload / conn / peer", "on the wire / conn / peer"}}
	perConn := func(payload uint64, d streamDelta, n int) (string, string) {
		return fmt.Sprintf("%.1f B (%.1f B framed)", float64(payload)/float64(n), float64(d.payload)/float64(n)),
			fmt.Sprintf("%.1f B", float64(wireBytes(d))/float64(n))
	}
	p50, p99, mx := quantiles(ip.openLat)
	pl, wire := perConn(ip.deltaBytes, ip.deltaWire, ip.conns)
	t.add(fmt.Sprintf("opens, one every %v (exp.)", b.gap), fmt.Sprint(len(ip.openLat)), ms(p50), ms(p99), ms(mx), pl+", open + close", wire)
	p50, p99, mx = quantiles(ip.closeLat)
	t.add(fmt.Sprintf("closes, one every %v (exp.)", b.gap), fmt.Sprint(len(ip.closeLat)), ms(p50), ms(p99), ms(mx), "", "")
	p50, p99, mx = quantiles(ip.stormLat)
	pl, wire = perConn(ip.stormBytes, ip.stormWire, ip.storm)
	t.add(fmt.Sprintf("storm: %s opens at once (all in %v)", thousands(ip.storm), ip.stormTook.Round(time.Millisecond)), fmt.Sprint(len(ip.stormLat)),
		ms(p50), ms(p99), ms(mx), pl+", open only", wire)
	if err := t.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\nsnapshots (a new stream starts with a full copy of the node's flows, read from its flows map):\n")
	fmt.Fprintf(out, "took = SetPeers -> both peers applied it, their stale-entry sweep included\n\n")
	st := &table{header: []string{"flows", "took", "records/s", "peer's sweep", "payload / flow / peer", "on the wire / peer", "resyncs", "store errors"}}
	for _, s := range ip.snaps {
		st.add(thousands(s.flows), s.took.Round(time.Millisecond).String(), thousands(int(float64(s.flows)/s.took.Seconds())),
			s.sweep.Round(time.Millisecond).String(), fmt.Sprintf("%.1f B", float64(s.bytes)/float64(s.flows)),
			fmt.Sprintf("%.1f MB", float64(wireBytes(s.wire))/1e6), fmt.Sprint(s.resyncs), fmt.Sprint(s.storeErrors))
	}
	if err := st.write(out); err != nil {
		return err
	}

	fmt.Fprintf(out, "\npeer_flows map memory (an array of one hash, BPF_F_NO_PREALLOC, that grows from %s entries to twice\n", thousands(dataplane.PeerFlowsFirst))
	fmt.Fprintf(out, "as it passes 3/4 full, up to --peer-flows-max, %s by default, and never shrinks):\n", thousands(dataplane.DefaultPeerFlowsMax))
	fmt.Fprintf(out, "memlock = the kernel's own account of the array and the hash (/proc/self/fdinfo, bpftool's bytes_memlock);\n")
	fmt.Fprintf(out, "slab = /proc/meminfo Slab + Percpu of the whole machine since the maps were emptied (noisy: other work,\n")
	fmt.Fprintf(out, "and the slab pages the storm's deleted entries left behind are reused first)\n\n")
	mt := &table{header: []string{"entries", "capacity", "memlock (one peer)", "per entry", "slab delta (both peers' maps)", "per entry"}}
	base := ip.mem[0]
	for _, m := range ip.mem {
		if m.entries == 0 {
			base = m // the last empty one: after the storm
		}
	}
	for _, m := range ip.mem {
		per, sdelta, sper := "-", "-", "-"
		if m.entries > 0 {
			per = fmt.Sprintf("%.1f B", float64(m.memlock)/float64(m.entries))
			sdelta = fmt.Sprintf("%.1f MB", float64(m.slab-base.slab)/1e3)
			sper = fmt.Sprintf("%.1f B", float64(m.slab-base.slab)*1024/float64(m.entries*m.maps))
		}
		label := thousands(m.entries)
		if m.note != "" {
			label += " (" + m.note + ")"
		}
		mt.add(label, thousands(int(m.capacity)), fmt.Sprintf("%.1f MB", float64(m.memlock)/1e6), per, sdelta, sper)
	}
	if err := mt.write(out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\none walk of the peer map (ForEachPeerFlow, as a takeover's tickle and a snapshot's sweep read it):\n")
	fmt.Fprintf(out, "empty %v, %s entries %v\n", ip.walkEmpty.Round(time.Microsecond), thousands(ip.walkFullN), ip.walkFull.Round(time.Millisecond))
	if p := ip.parts; p != nil {
		fmt.Fprintf(out, "\nwhere a snapshot's time goes: its steps one after the other on one thread, %s flows\n\n", thousands(p.n))
		pt := &table{header: []string{"step", "time", "ns / flow"}}
		for _, st := range []struct {
			name string
			d    time.Duration
		}{
			{"sender: read the flows map (ForEachFlow)", p.read},
			{"sender: encode (AppendMessage)", p.encode},
			{"sender: seal (AES-256-GCM)", p.seal},
			{"peer: open (AES-256-GCM)", p.open},
			{"peer: decode (DecodeMessage)", p.decode},
			{"peer: store as new entries (UpsertPeerFlows)", p.apply},
			{"peer: sweep, one walk of the map", ip.walkFull},
		} {
			pt.add(st.name, st.d.Round(time.Millisecond).String(), fmt.Sprintf("%.0f", float64(st.d.Nanoseconds())/float64(p.n)))
		}
		return pt.write(out)
	}
	return nil
}
