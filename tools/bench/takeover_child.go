package main

// The takeover suite's measuring process. It runs in namespace a (ip
// netns exec: every thread of the daemon's code must be there, as in the
// daemon) and does what fsha up does up to a takeover: the data plane
// loaded and attached as Load does it, fencing, ports and VIPs set,
// real-time scheduling as --realtime (or not), the event reader running,
// the node's executors over dataplane.Actions with a hook runner on an
// empty hooks directory. The peer map is filled through
// Maps.UpsertPeerFlows, replication's store, in messages of
// replication.MaxRecords records, so that the peer index is kept as
// replication keeps it. Each trial hands the executors a Take, as the
// control loop does with the engine's output, and reads the receiver.

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/config"
	"github.com/fsha/fsha/control/hooks"
	"github.com/fsha/fsha/control/logs"
	"github.com/fsha/fsha/control/node"
	"github.com/fsha/fsha/control/ownership"
	"github.com/fsha/fsha/control/realtime"
	"github.com/fsha/fsha/control/replication"
	"github.com/fsha/fsha/dataplane"
)

// takeoverChildConfig is what the suite tells its measuring process.
type takeoverChildConfig struct {
	Iface     string // veth a, in the process's namespace
	PeerNetns string // namespace of veth b
	PeerIface string
	Conns     int   // the taken VIP's connections of the failed owner
	Rests     []int // peer flows besides those, one row each, in order
	Trials    int
	Realtime  bool   // as fsha up --realtime (its default in a cluster)
	Dir       string // pins, hooks, state file, the daemon's log
	Profile   string // if set: CPU profile and execution trace of the last row, here
}

// takeoverRow is one row's trials.
type takeoverRow struct {
	Rest   int             `json:"rest"`
	Fill   time.Duration   `json:"fill"` // storing the rest of the map
	Trials []takeoverTrial `json:"trials"`
}

// takeoverTrial is one takeover, its times from the decision (the Take
// handed to the executors).
type takeoverTrial struct {
	First time.Duration `json:"first"` // the first tickle seen at b
	Last  time.Duration `json:"last"`  // the Conns-th seen at b
	Seen  uint64        `json:"seen"`  // tickles seen at b, all rounds
	Want  uint64        `json:"want"`  // Conns x rounds
	// Tickled is the connections the daemon's timeline says it tickled.
	Tickled int `json:"tickled"`
	// Steps are the daemon's timeline steps, from the decision.
	Steps []takeoverStep `json:"steps"`
	Err   string         `json:"err,omitempty"`
}

type takeoverStep struct {
	Step string        `json:"step"`
	At   time.Duration `json:"at"`
}

// The cluster the measuring process pretends to be node 0 of: 16 nodes,
// one VIP each; node 1, which held takeoverVIP, stopped renewing.
const (
	takeoverNodes  = 16
	takeoverFailed = 1
	// takeoverDrainer held takeoverVIP before the failed node and still
	// drains a few of its connections (a planned move): the takeover
	// must find the failed node's among them too, and leave these.
	takeoverDrainer      = 2
	takeoverDrainerConns = 10_000
)

// takeoverVIP is the VIP taken over, the first of takeoverVIPs.
var takeoverVIP = netip.MustParseAddr("198.18.0.10")

// takeoverVIPs are the cluster's VIPs, node j's the j-th.
func takeoverVIPs() []netip.Addr {
	out := make([]netip.Addr, takeoverNodes)
	a := takeoverVIP
	for i := range out {
		out[i] = a
		a = a.Next()
	}
	return out
}

// monoNow is the daemon's clock (control/node's monoNow, ownership.Mono),
// the one bpf_ktime_get_ns reads.
func monoNow() ownership.Mono {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return ownership.Mono(ts.Nano())
}

// takeoverClient is the i-th client (ip, port) of a VIP, in the prefixes
// routed through b, one address each before ports repeat.
func takeoverClient(pool []netip.Addr, i int) (netip.Addr, uint16) {
	return pool[i%len(pool)], uint16(20000 + i/len(pool))
}

func clientPool() []netip.Addr {
	var pool []netip.Addr
	for _, p := range tickleClientPrefixes {
		for a := p.Addr(); p.Contains(a); a = a.Next() {
			pool = append(pool, a)
		}
	}
	return pool
}

// victimFlows are the failed node's connections to the taken VIP.
func victimFlows(n int, pool []netip.Addr, now time.Time) []dataplane.PeerFlow {
	out := make([]dataplane.PeerFlow, n)
	for i := range out {
		c, p := takeoverClient(pool, i)
		out[i] = dataplane.PeerFlow{VIP: takeoverVIP, VIPPort: 445, Client: c, ClientPort: p, Owner: takeoverFailed, LastSeen: now, Gen: 1}
	}
	return out
}

// restFlows are n other connections: takeoverDrainerConns of the drainer
// to the taken VIP, the others spread over the other 15 VIPs, VIP j held
// by node j (j = 1..15; node 1 also held the taken one), by owner in
// messages of replication.MaxRecords as the owners' streams deliver them.
func restFlows(n int, pool []netip.Addr, now time.Time) [][]dataplane.PeerFlow {
	vips := takeoverVIPs()
	drain := min(n, takeoverDrainerConns)
	perOwner := make([][]dataplane.PeerFlow, takeoverNodes)
	for i := range drain {
		c, p := takeoverClient(pool, len(pool)*40+i) // ports apart from the failed node's
		perOwner[takeoverDrainer] = append(perOwner[takeoverDrainer], dataplane.PeerFlow{VIP: takeoverVIP, VIPPort: 445,
			Client: c, ClientPort: p, Owner: takeoverDrainer, LastSeen: now, Gen: 1})
	}
	for i := range n - drain {
		j := 1 + i%(takeoverNodes-1)
		c, p := takeoverClient(pool, i/(takeoverNodes-1))
		perOwner[j] = append(perOwner[j], dataplane.PeerFlow{VIP: vips[j], VIPPort: 445, Client: c, ClientPort: p,
			Owner: j, LastSeen: now, Gen: 1})
	}
	// interleaved: one message of each owner in turn
	var msgs [][]dataplane.PeerFlow
	for more := true; more; {
		more = false
		for j := range perOwner {
			if len(perOwner[j]) == 0 {
				continue
			}
			k := min(len(perOwner[j]), replication.MaxRecords)
			msgs = append(msgs, perOwner[j][:k])
			perOwner[j] = perOwner[j][k:]
			more = true
		}
	}
	return msgs
}

// storeMessages stores flows as replication's receiver does, one message
// at a time.
func storeMessages(m *dataplane.Maps, flows []dataplane.PeerFlow) error {
	for len(flows) > 0 {
		k := min(len(flows), replication.MaxRecords)
		if err := m.UpsertPeerFlows(flows[:k]); err != nil {
			return err
		}
		flows = flows[k:]
	}
	return nil
}

// benchHealth is a node that is fit, its links up.
type benchHealth struct{}

func (benchHealth) Healthy() bool            { return true }
func (benchHealth) State() (bool, []string)  { return true, nil }
func (benchHealth) Judged() bool             { return true }
func (benchHealth) LinkUp(string) bool       { return true }
func (benchHealth) Changed() <-chan struct{} { return nil }

// benchHooks runs a hook runner as fsha up's hookRunner (cmd/fsha/hooks.go)
// shapes it for the node.
type benchHooks struct{ r *hooks.Runner }

func (h benchHooks) Run(ctx context.Context, event string, env map[string]string) error {
	vip, _ := netip.ParsePrefix(env[hooks.EnvPrefix])
	var epoch uint64
	_, _ = fmt.Sscan(env[hooks.EnvEpoch], &epoch)
	res := h.r.Run(ctx, hooks.Event(event), hooks.Vars{VIP: vip, Iface: env[hooks.EnvIface], OldIface: env[hooks.EnvOldIface], Epoch: epoch})
	if res.Err != nil {
		return res.Err
	}
	if failed := res.Failed(); len(failed) > 0 {
		return fmt.Errorf("%s hooks failed: %d", event, len(failed))
	}
	return nil
}

// daemonLogger is fsha up's logger (cmd/fsha newLogger: JSON, info, the
// repeat filter), writing to path.
func daemonLogger(path string) (*zap.Logger, func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, nil, err
	}
	enc := zap.NewProductionEncoderConfig()
	enc.EncodeTime = zapcore.ISO8601TimeEncoder
	core := zapcore.NewCore(zapcore.NewJSONEncoder(enc), zapcore.AddSync(f), zapcore.InfoLevel)
	return zap.New(logs.NewRepeatCore(core, logs.RepeatOptions{})), func() { f.Close() }, nil
}

// runTakeoverChild is the measuring process: it writes its rows as JSON
// to out.
func runTakeoverChild(ctx context.Context, log *zap.Logger, cfg takeoverChildConfig, out *os.File) (err error) {
	// the daemon's own GOMAXPROCS, not the bench's (main)
	runtime.SetDefaultGOMAXPROCS()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	dlog, closeLog, err := daemonLogger(filepath.Join(cfg.Dir, "fsha.log"))
	if err != nil {
		return err
	}
	defer closeLog()

	vips := takeoverVIPs()
	dp, err := dataplane.Load(dlog, dataplane.Options{PinPath: filepath.Join(cfg.Dir, "pins"), Interfaces: []string{cfg.Iface}})
	if err != nil {
		return err
	}
	defer dp.Close()
	if err := dp.SetFencingMode(false, true); err != nil {
		return err
	}
	if err := dp.SetPorts([]uint16{445, 139, 2049, 111}); err != nil {
		return err
	}
	if err := dp.SetVIPs(vips); err != nil {
		return err
	}
	if cfg.Realtime {
		realtime.Keep(ctx, dlog)
	}
	events, err := dp.NewEventReader()
	if err != nil {
		return err
	}
	defer events.Close()
	go func() {
		for {
			if _, err := events.Read(); err != nil {
				return
			}
		}
	}()

	rx, err := newTickleRxMap()
	if err != nil {
		return err
	}
	defer rx.Close()
	prog, err := tickleRxProgram(rx, takeoverVIP)
	if err != nil {
		return err
	}
	defer prog.Close()
	peerNS, err := netns.GetFromName(cfg.PeerNetns)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", cfg.PeerNetns, err)
	}
	defer peerNS.Close()
	var rxLink link.Link
	err = inNetns(peerNS, func() error {
		ifi, err := net.InterfaceByName(cfg.PeerIface)
		if err != nil {
			return err
		}
		rxLink, err = link.AttachTCX(link.TCXOptions{Program: prog, Interface: ifi.Index, Attach: ebpf.AttachTCXIngress})
		return err
	})
	if err != nil {
		return fmt.Errorf("attach the receiver to %s: %w", cfg.PeerIface, err)
	}
	defer rxLink.Close()

	hooksDir := filepath.Join(cfg.Dir, "events.d")
	if err := os.MkdirAll(hooksDir, 0o700); err != nil {
		return err
	}
	nodes := make([]config.Node, takeoverNodes)
	for i := range nodes {
		nodes[i] = config.Node{PNN: i, Addr: netip.AddrFrom4([4]byte{198, 18, 1, byte(1 + i)})}
	}
	pubs := make([]config.PublicAddress, len(vips))
	for i, v := range vips {
		pubs[i] = config.PublicAddress{Prefix: netip.PrefixFrom(v, 24), Interfaces: []string{cfg.Iface}}
	}
	runner := hooks.NewRunner(dlog, hooks.Config{Dir: hooksDir, Node: nodes[0].Addr.String()})
	actions := dataplane.NewActions(dlog, &dp.Maps)
	defer actions.Close()
	nd, err := node.New(dlog, node.Config{Nodes: nodes, Self: 0, VIPs: pubs, StateFile: filepath.Join(cfg.Dir, "state.json")},
		nil, actions, benchHealth{}, benchHooks{runner}, nil)
	if err != nil {
		return err
	}
	nd.StartExecutors(ctx)

	pool := clientPool()
	var rows []takeoverRow
	stored := 0
	epoch := uint64(1)
	for ri, rest := range cfg.Rests {
		row := takeoverRow{Rest: rest}
		if stored != 0 && rest != stored {
			// restFlows(n) of another n is another set of flows
			return fmt.Errorf("rows %v: only an empty rest may come before another", cfg.Rests)
		}
		t0 := time.Now()
		for _, msg := range restFlows(rest-stored, pool, time.Now()) {
			if err := dp.UpsertPeerFlows(msg); err != nil {
				return fmt.Errorf("store the rest of the peer map: %w", err)
			}
		}
		stored = rest
		row.Fill = time.Since(t0)
		log.Info("peer map filled", zap.Int("rest", rest), zap.Duration("took", row.Fill), zap.Any("index", dp.IndexStats()))
		last := ri == len(cfg.Rests)-1
		var stopProfile func()
		if last && cfg.Profile != "" {
			if stopProfile, err = startProfiles(cfg.Profile); err != nil {
				return err
			}
		}
		for trial := range cfg.Trials {
			if err := ctx.Err(); err != nil {
				return err
			}
			tr, err := takeoverTrialRun(ctx, nd, &dp.Maps, rx, cfg, pool, epoch)
			epoch += 2
			if err != nil {
				return err
			}
			log.Info("takeover", zap.Int("rest", rest), zap.Int("trial", trial), zap.Duration("first", tr.First),
				zap.Duration("last", tr.Last), zap.Uint64("seen", tr.Seen), zap.Uint64("want", tr.Want), zap.String("err", tr.Err))
			row.Trials = append(row.Trials, tr)
		}
		if stopProfile != nil {
			stopProfile()
		}
		rows = append(rows, row)
	}
	return json.NewEncoder(out).Encode(rows)
}

// takeoverTrialRun is one takeover of takeoverVIP from the failed node:
// its connections stored again (the previous trial's takeover forgot
// them), the Take handed to the executors and timed until the tickles'
// repeats are done, then the VIP released again.
func takeoverTrialRun(ctx context.Context, nd *node.Node, m *dataplane.Maps, rx *ebpf.Map, cfg takeoverChildConfig,
	pool []netip.Addr, epoch uint64) (takeoverTrial, error) {
	const rounds = 1 + dataplane.DefaultTickleRepeats
	tr := takeoverTrial{Want: uint64(cfg.Conns) * rounds}
	if err := storeMessages(m, victimFlows(cfg.Conns, pool, time.Now())); err != nil {
		return tr, fmt.Errorf("store the failed node's connections: %w", err)
	}
	// let the stores' garbage and the previous release settle
	time.Sleep(300 * time.Millisecond)
	if err := rx.Put(uint32(0), tickleRx{Target: uint64(cfg.Conns)}); err != nil {
		return tr, fmt.Errorf("reset the receiver: %w", err)
	}
	prefix := netip.PrefixFrom(takeoverVIP, 24).String()
	wall := time.Now()
	decision := monoNow()
	nd.Execute(ownership.Output{Takes: []ownership.Take{{VIP: 0, Epoch: epoch, Until: decision.Add(time.Hour),
		Orphans: []int{takeoverFailed}, From: takeoverFailed, Reason: "bench: node 1 stopped renewing"}}})

	// the daemon's timeline says when the repeats are done (and the
	// tickled connections forgotten)
	rec, err := waitRecord(ctx, nd, prefix, "takeover", wall, func(r *admin.Takeover) bool {
		return slices.ContainsFunc(r.Steps, func(s admin.TimelineStep) bool { return strings.HasPrefix(s.Step, "tickle repeats done") })
	})
	if err != nil {
		return tr, err
	}
	var got tickleRx
	if err := rx.Lookup(uint32(0), &got); err != nil {
		return tr, fmt.Errorf("read the receiver: %w", err)
	}
	tr.Seen, tr.Tickled = got.Count, rec.Tickled
	if got.FirstNs != 0 {
		tr.First = time.Duration(int64(got.FirstNs) - int64(decision))
	}
	if got.NthNs != 0 {
		tr.Last = time.Duration(int64(got.NthNs) - int64(decision))
	}
	// the worker's decision (its t0) is the timeline's origin
	off := rec.Steps[0].At.Sub(wall)
	for _, s := range rec.Steps {
		tr.Steps = append(tr.Steps, takeoverStep{Step: s.Step, At: s.Took + off})
	}
	switch {
	case rec.Error != "":
		tr.Err = rec.Error
	case tr.Seen != tr.Want:
		tr.Err = fmt.Sprintf("%d of %d tickles seen at b (%d lost)", tr.Seen, tr.Want, int64(tr.Want)-int64(tr.Seen))
	case tr.Tickled != cfg.Conns:
		tr.Err = fmt.Sprintf("tickled %d connections, want %d", tr.Tickled, cfg.Conns)
	}

	nd.Execute(ownership.Output{Drops: []ownership.Drop{{VIP: 0, Epoch: epoch, Lost: true, Reason: "bench: next trial"}}})
	_, err = waitRecord(ctx, nd, prefix, "release", wall, func(r *admin.Takeover) bool {
		return slices.ContainsFunc(r.Steps, func(s admin.TimelineStep) bool { return s.Step == "hooks done" })
	})
	return tr, err
}

// waitRecord waits (bounded) for nd's timeline record of vip of kind
// begun after since to satisfy done.
func waitRecord(ctx context.Context, nd *node.Node, vip, kind string, since time.Time, done func(*admin.Takeover) bool) (admin.Takeover, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		tl, err := nd.Timeline(ctx)
		if err != nil {
			return admin.Takeover{}, err
		}
		for i := len(tl) - 1; i >= 0; i-- {
			r := &tl[i]
			if r.VIP == vip && r.Kind == kind && len(r.Steps) > 0 && !r.Steps[0].At.Before(since) && done(r) {
				return *r, nil
			}
		}
		if time.Now().After(deadline) {
			return admin.Takeover{}, fmt.Errorf("no finished %s of %s in the timeline after 15 s", kind, vip)
		}
		select {
		case <-ctx.Done():
			return admin.Takeover{}, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// startProfiles writes a CPU profile and an execution trace into dir
// until the returned function is called.
func startProfiles(dir string) (func(), error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	cpu, err := os.Create(filepath.Join(dir, "cpu.pprof"))
	if err != nil {
		return nil, err
	}
	tf, err := os.Create(filepath.Join(dir, "trace.out"))
	if err != nil {
		cpu.Close()
		return nil, err
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		cpu.Close()
		tf.Close()
		return nil, err
	}
	if err := trace.Start(tf); err != nil {
		pprof.StopCPUProfile()
		cpu.Close()
		tf.Close()
		return nil, err
	}
	return func() {
		trace.Stop()
		pprof.StopCPUProfile()
		cpu.Close()
		tf.Close()
	}, nil
}
