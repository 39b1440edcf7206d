package main

// Part 1 of the replication suite, in a lab cluster: connections opened
// and closed through a VIP, timed until the other nodes' pinned peer_flows
// maps have them, and the owner's replication streams read by sock_diag.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/tools/lab"
)

// ---- part 1: the lab ----

type replLabResult struct {
	open, close [][]float64 // per peer, seconds
	peers       []string
	streams     []streamDelta // owner -> each peer
	conns       int
}

// streamDelta is what one replication stream carried during the
// measurement: TCP payload and segments each way.
type streamDelta struct {
	payload  uint64 // bytes the sender's TCP had acknowledged
	segsOut  uint64 // the sender's segments (data)
	segsBack uint64 // the receiver's segments (ACKs)
}

func (b *replicationBench) runLab(ctx context.Context, log *zap.Logger) (_ *replLabResult, err error) {
	l, err := benchLab(ctx, log)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tear down lab: %w", cerr))
		}
	}()
	c, err := lab.NewCluster(ctx, l, lab.ClusterOptions{})
	if err != nil {
		return nil, err
	}
	vip := netip.AddrPortFrom(c.VIPs[0].Addr(), lab.SMBPort)
	owner, err := c.Owner(c.VIPs[0])
	if err != nil {
		return nil, err
	}
	peers := c.Others(owner)
	res := &replLabResult{conns: b.labConns}
	var maps []*ebpf.Map
	defer func() {
		for _, m := range maps {
			m.Close()
		}
	}()
	for _, p := range peers {
		outer, err := ebpf.LoadPinnedMap(filepath.Join(p.PinPath, "peer_flows"), &ebpf.LoadPinOptions{ReadOnly: true})
		if err != nil {
			return nil, fmt.Errorf("open peer_flows of %s: %w", p.Role, err)
		}
		// the map in its slot: a few hundred flows never make it grow
		var m *ebpf.Map
		err = outer.Lookup(uint32(0), &m)
		outer.Close()
		if err != nil {
			return nil, fmt.Errorf("read peer_flows' slot of %s: %w", p.Role, err)
		}
		maps = append(maps, m)
		res.peers = append(res.peers, p.Role)
	}
	res.open = make([][]float64, len(peers))
	res.close = make([][]float64, len(peers))
	before, err := labStreams(owner, peers)
	if err != nil {
		return nil, err
	}
	val := make([]byte, maps[0].ValueSize())
	// present polls each map until the key is there (want) or gone.
	poll := func(key []byte, want bool, t0 time.Time, into [][]float64) error {
		done := make([]bool, len(maps))
		left := len(maps)
		deadline := t0.Add(3 * time.Second)
		for left > 0 {
			for i, m := range maps {
				if done[i] {
					continue
				}
				err := m.Lookup(key, val)
				if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
					return err
				}
				if (err == nil) == want {
					into[i] = append(into[i], time.Since(t0).Seconds())
					done[i] = true
					left--
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("not replicated within 3 s (want present %v)", want)
			}
			time.Sleep(200 * time.Microsecond)
		}
		return nil
	}
	for i := range b.labConns {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s, err := dialSMB(ctx, c.Clients[0], vip)
		if err != nil {
			return nil, err
		}
		t0 := s.Sent
		key := flowKeyBytes(vip, s.Local)
		if err := poll(key, true, t0, res.open); err != nil {
			s.closeAbort()
			return nil, fmt.Errorf("connection %d open: %w", i, err)
		}
		s.closeAbort()
		t1 := time.Now()
		if err := poll(key, false, t1, res.close); err != nil {
			return nil, fmt.Errorf("connection %d close: %w", i, err)
		}
		// out of step with the 10 ms flush ticker
		time.Sleep(time.Duration(mrand.Int64N(int64(20 * time.Millisecond))))
	}
	after, err := labStreams(owner, peers)
	if err != nil {
		return nil, err
	}
	for i := range peers {
		if before[i].cookie != after[i].cookie {
			return nil, fmt.Errorf("the stream to %s was reconnected during the measurement", peers[i].Role)
		}
		res.streams = append(res.streams, streamDelta{
			payload: after[i].payload - before[i].payload, segsOut: after[i].segsOut - before[i].segsOut,
			segsBack: after[i].segsBack - before[i].segsBack,
		})
	}
	log.Info("lab replication measured", zap.Int("connections", b.labConns))
	return res, nil
}

// flowKeyBytes is bpf/fsha.h's struct flow_key for an IPv4 connection:
// vip[16], client[16] (network order, IPv4 in the first 4 bytes), vport,
// cport (host order), family, pad[3].
func flowKeyBytes(vip, client netip.AddrPort) []byte {
	k := make([]byte, 40)
	v, c := vip.Addr().As4(), client.Addr().As4()
	copy(k[0:4], v[:])
	copy(k[16:20], c[:])
	binary.NativeEndian.PutUint16(k[32:34], vip.Port())
	binary.NativeEndian.PutUint16(k[34:36], client.Port())
	k[36] = unix.AF_INET
	return k
}

// diagIn dumps the TCP sockets of h's namespace. The netlink library
// opens its sock_diag socket on the calling thread: it must be in h.
func diagIn(h *lab.ClusterNode) ([]*netlink.InetDiagTCPInfoResp, error) {
	var res []*netlink.InetDiagTCPInfoResp
	err := h.Do(func() error {
		var err error
		res, err = netlink.SocketDiagTCPInfo(unix.AF_INET)
		if errors.Is(err, netlink.ErrDumpInterrupted) {
			err = nil
		}
		return err
	})
	return res, err
}

type streamCounters struct {
	cookie                     [2]uint32
	payload, segsOut, segsBack uint64
}

// labStreams reads the owner's replication streams to each peer: the
// owner's socket (to the peer's replication port) and the peer's end.
func labStreams(owner *lab.ClusterNode, peers []*lab.ClusterNode) ([]streamCounters, error) {
	mine, err := diagIn(owner)
	if err != nil {
		return nil, fmt.Errorf("sock_diag in %s: %w", owner.Role, err)
	}
	out := make([]streamCounters, len(peers))
	for i, p := range peers {
		found := false
		for _, s := range mine {
			id := s.InetDiagMsg.ID
			if s.TCPInfo != nil && s.InetDiagMsg.State == unix.BPF_TCP_ESTABLISHED && id.DestinationPort == replication.DefaultPort &&
				id.Source.Equal(owner.IP().AsSlice()) && id.Destination.Equal(p.IP().AsSlice()) {
				out[i].cookie = id.Cookie
				out[i].payload, out[i].segsOut = s.TCPInfo.Bytes_acked, uint64(s.TCPInfo.Segs_out)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("no replication stream from %s to %s", owner.Role, p.Role)
		}
		theirs, err := diagIn(p)
		if err != nil {
			return nil, fmt.Errorf("sock_diag in %s: %w", p.Role, err)
		}
		for _, s := range theirs {
			id := s.InetDiagMsg.ID
			if s.TCPInfo != nil && s.InetDiagMsg.State == unix.BPF_TCP_ESTABLISHED && id.SourcePort == replication.DefaultPort &&
				id.Source.Equal(p.IP().AsSlice()) && id.Destination.Equal(owner.IP().AsSlice()) {
				out[i].segsBack = uint64(s.TCPInfo.Segs_out)
			}
		}
	}
	return out, nil
}
