package main

// What replication costs, measured for the in-process part: a snapshot's
// steps one by one, the streams' bytes and segments (sock_diag), the peer
// map's memory and the time of one walk of it.

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
)

// timeSnapshotParts reads the n flows of src's flows map, encodes them
// as snapshot chunks, seals and opens them with AES-256-GCM (the streams'
// cipher), decodes them and stores them as new peer flows into dst, timing
// each step.
func timeSnapshotParts(src *dataplane.Unpinned, dst *dataplane.Maps, n int) (*snapParts, error) {
	p := &snapParts{n: n}
	recs := make([]replication.Record, 0, n)
	start := time.Now()
	now := start.UnixNano()
	if err := src.ForEachFlow(func(f dataplane.Flow) bool {
		recs = append(recs, replication.Record{Op: replication.OpOpen, VIP: f.VIP, VIPPort: f.VIPPort,
			Client: f.Client, ClientPort: f.ClientPort, LastSeen: now})
		return true
	}); err != nil {
		return nil, err
	}
	p.read, p.readN = time.Since(start), len(recs)

	start = time.Now()
	var msgs [][]byte
	for rest := recs; len(rest) > 0; {
		k := min(len(rest), replication.MaxRecords)
		m, err := replication.AppendMessage(nil, &replication.Message{Kind: replication.KindSnapChunk, Gen: 1, Records: rest[:k]})
		if err != nil {
			return nil, err
		}
		msgs = append(msgs, m)
		p.encodedBytes += len(m)
		rest = rest[k:]
	}
	p.encode = time.Since(start)

	var key [32]byte
	if _, err := rand.Read(key[:]); err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	sealed := make([][]byte, len(msgs))
	start = time.Now()
	for i, m := range msgs {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		sealed[i] = aead.Seal(nil, nonce, m, nil)
	}
	p.seal = time.Since(start)
	start = time.Now()
	for i, c := range sealed {
		binary.BigEndian.PutUint64(nonce[4:], uint64(i))
		if msgs[i], err = aead.Open(c[:0], nonce, c, nil); err != nil {
			return nil, err
		}
	}
	p.open = time.Since(start)

	start = time.Now()
	var decoded []*replication.Message
	for _, m := range msgs {
		d, err := replication.DecodeMessage(m)
		if err != nil {
			return nil, err
		}
		decoded = append(decoded, d)
	}
	p.decode = time.Since(start)

	// as apply does per message: PeerFlows, then one upsert; under new
	// keys (another VIP port), so every one is an insert
	start = time.Now()
	for _, m := range decoded {
		flows := make([]dataplane.PeerFlow, 0, len(m.Records))
		for _, r := range m.Records {
			flows = append(flows, dataplane.PeerFlow{VIP: r.VIP, VIPPort: r.VIPPort + 1, Client: r.Client, ClientPort: r.ClientPort,
				Owner: 0, Gen: m.Gen, LastSeen: time.Unix(0, r.LastSeen)})
		}
		if err := dst.UpsertPeerFlows(flows); err != nil {
			return nil, err
		}
		p.appliedFlows += len(flows)
	}
	p.apply = time.Since(start)
	return p, nil
}

// loopStreams reads the in-process streams (node 0 -> the peer's port)
// by the peer's node number.
func loopStreams(port int) (map[int]streamCounters, error) {
	res, err := netlink.SocketDiagTCPInfo(unix.AF_INET)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	out := map[int]streamCounters{}
	src := replAddrs[0].AsSlice()
	for _, s := range res {
		id := s.InetDiagMsg.ID
		if s.TCPInfo == nil || s.InetDiagMsg.State != unix.BPF_TCP_ESTABLISHED {
			continue
		}
		for pnn, a := range replAddrs[1:] {
			sc := out[pnn+1]
			switch {
			case id.DestinationPort == uint16(port) && id.Source.Equal(src) && id.Destination.Equal(a.AsSlice()):
				sc.cookie = id.Cookie
				sc.payload, sc.segsOut = s.TCPInfo.Bytes_acked, uint64(s.TCPInfo.Segs_out)
			case id.SourcePort == uint16(port) && id.Source.Equal(a.AsSlice()) && id.Destination.Equal(src):
				sc.segsBack = uint64(s.TCPInfo.Segs_out)
			default:
				continue
			}
			out[pnn+1] = sc
		}
	}
	if len(out) != len(replAddrs)-1 {
		return nil, fmt.Errorf("found %d replication streams, want %d", len(out), len(replAddrs)-1)
	}
	return out, nil
}

// wireDelta sums after - before over the peers' streams, per peer.
func wireDelta(before, after map[int]streamCounters) (streamDelta, error) {
	var d streamDelta
	for pnn, a := range after {
		b := before[pnn]
		if before != nil && b.cookie != a.cookie {
			return d, fmt.Errorf("the stream to node %d was reconnected during the measurement", pnn)
		}
		d.payload += a.payload - b.payload
		d.segsOut += a.segsOut - b.segsOut
		d.segsBack += a.segsBack - b.segsBack
	}
	n := uint64(len(after))
	return streamDelta{d.payload / n, d.segsOut / n, d.segsBack / n}, nil
}

// peerMapMemory reads the peer flows maps' memory as the kernel accounts
// it (memlock in /proc/self/fdinfo, what bpftool shows as bytes_memlock:
// the array and the map in its slot, once no growth runs), and the
// kernel's slab + per-cpu memory (noisy: the whole machine).
func peerMapMemory(ctx context.Context, dp *dataplane.Unpinned, entries int, note string) (memPoint, error) {
	p := memPoint{entries: entries, note: note}
	for dp.IndexStats().PeerGrowing {
		select {
		case <-ctx.Done():
			return p, ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	in, err := dp.PeerFlowsInner()
	if err != nil {
		return p, err
	}
	if in == nil {
		return p, errors.New("no map in peer_flows' slot")
	}
	defer in.Close()
	p.capacity = in.MaxEntries()
	for _, m := range []*ebpf.Map{dp.PeerFlows, in} {
		v, err := memlockOf(m)
		if err != nil {
			return p, err
		}
		p.memlock += v
	}
	mi, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return p, err
	}
	for _, line := range strings.Split(string(mi), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 && (fields[0] == "Slab:" || fields[0] == "Percpu:") {
			v, _ := strconv.ParseInt(fields[1], 10, 64)
			p.slab += v
		}
	}
	return p, nil
}

// timeWalk times one ForEachPeerFlow over the whole map, as a takeover's
// tickle and every snapshot's sweep do.
func timeWalk(m *dataplane.Maps) (time.Duration, int, error) {
	n := 0
	start := time.Now()
	err := m.ForEachPeerFlow(func(dataplane.PeerFlow) bool { n++; return true })
	return time.Since(start), n, err
}

// memlockOf is a map's memlock in /proc/self/fdinfo.
func memlockOf(m *ebpf.Map) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/self/fdinfo/%d", m.FD()))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "memlock:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse memlock: %w", err)
			}
			return n, nil
		}
	}
	return 0, errors.New("no memlock in the map's fdinfo")
}
