package metrics

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/control/node"
	"github.com/fsha/fsha/dataplane"
)

// fakeBackend is node 1 of three, holding two of four VIPs.
type fakeBackend struct {
	admin.Backend // the change methods are not used by the collector
	err           error
}

func (f fakeBackend) Status(context.Context) (admin.Status, error) {
	return admin.Status{ThisPNN: 1, Quorum: true, Nodes: []admin.NodeStatus{
		{PNN: 0, Address: "198.18.0.1", State: admin.StateOK},
		{PNN: 1, Address: "198.18.0.2", State: admin.StateOK, This: true},
		{PNN: 2, Address: "198.18.0.3", State: admin.StateDisconnected},
	}}, f.err
}

func (f fakeBackend) IPs(context.Context) ([]admin.IP, error) {
	return []admin.IP{
		{VIP: "198.18.1.10/24", PNN: 1, State: "held"},
		{VIP: "198.18.1.11/24", PNN: 1, State: "moving"},
		{VIP: "198.18.1.12/24", PNN: 0, State: "held"},
		{VIP: "198.18.1.13/24", PNN: -1, State: "unassigned"},
	}, nil
}

func counters() (dataplane.Counters, error) {
	return dataplane.Counters{
		Ingress: dataplane.DirectionCounters{Tracked: 100, Untracked: 3, Other: 50, Fragments: 1, ParseErrors: 2, Fenced: 4,
			Closed: 7, EventsLost: 1, MapErrors: 0, SteerHandoffs: 9, TCSteered: 8},
		Egress: dataplane.DirectionCounters{Tracked: 90, Other: 10, Created: 12, Closed: 5, Evicted: 2, MapErrors: 1},
		Flows:  6,
	}, nil
}

func gossip() []membership.Member {
	return []membership.Member{
		{Addr: netip.MustParseAddr("198.18.0.1"), State: membership.Alive},
		{Addr: netip.MustParseAddr("198.18.0.2"), State: membership.Alive},
		{Addr: netip.MustParseAddr("198.18.0.3"), State: membership.Suspect},
	}
}

func TestCollect(t *testing.T) {
	// The controller is made first with the record as its observer, then
	// the collector with the controller as its backend.
	tk := NewTakeovers()
	c := NewCollector(zap.NewNop(), Sources{Backend: fakeBackend{}, Counters: counters, Gossip: gossip, Takeovers: tk,
		Steering: func() []dataplane.SteerState {
			return []dataplane.SteerState{
				{Interface: "eth0", Driver: "veth", XDPMode: "native", Steer: "tc"},
				{Interface: "eth1", Driver: "i40e", XDPMode: "native", Steer: "xdp"},
			}
		}})
	tk.ObserveTakeover(KindTakeover, 40*time.Millisecond)
	tk.ObserveTakeover(KindTakeover, 3*time.Millisecond)
	tk.ObserveTakeover(KindRelease, 2*time.Second)

	want := `
# HELP fsha_cluster_nodes Nodes of the cluster by state, as this node sees them.
# TYPE fsha_cluster_nodes gauge
fsha_cluster_nodes{state="BANNED"} 0
fsha_cluster_nodes{state="DISABLED"} 0
fsha_cluster_nodes{state="DISCONNECTED"} 1
fsha_cluster_nodes{state="OK"} 2
fsha_cluster_nodes{state="UNHEALTHY"} 0
# HELP fsha_cluster_quorum 1 when this node sees a quorum, else 0.
# TYPE fsha_cluster_quorum gauge
fsha_cluster_quorum 1
# HELP fsha_vips_held VIPs this node holds.
# TYPE fsha_vips_held gauge
fsha_vips_held 2
# HELP fsha_vips VIPs of the cluster by state (held, unassigned, moving, draining).
# TYPE fsha_vips gauge
fsha_vips{state="draining"} 0
fsha_vips{state="held"} 2
fsha_vips{state="moving"} 1
fsha_vips{state="unassigned"} 1
# HELP fsha_gossip_members Gossip members by liveness (alive, suspect, dead, left), this node included.
# TYPE fsha_gossip_members gauge
fsha_gossip_members{state="alive"} 2
fsha_gossip_members{state="dead"} 0
fsha_gossip_members{state="left"} 0
fsha_gossip_members{state="suspect"} 1
# HELP fsha_takeovers_total VIP takeovers and releases this node finished (kind: takeover, release).
# TYPE fsha_takeovers_total counter
fsha_takeovers_total{kind="release"} 1
fsha_takeovers_total{kind="takeover"} 2
# HELP fsha_dataplane_packets_total Packets the data plane saw, by direction (ingress: XDP, egress: TC) and outcome.
# TYPE fsha_dataplane_packets_total counter
fsha_dataplane_packets_total{direction="egress",outcome="arp_probed"} 0
fsha_dataplane_packets_total{direction="egress",outcome="fenced"} 0
fsha_dataplane_packets_total{direction="egress",outcome="fragment"} 0
fsha_dataplane_packets_total{direction="egress",outcome="other"} 10
fsha_dataplane_packets_total{direction="egress",outcome="parse_error"} 0
fsha_dataplane_packets_total{direction="egress",outcome="steer_error"} 0
fsha_dataplane_packets_total{direction="egress",outcome="steer_handoff"} 0
fsha_dataplane_packets_total{direction="egress",outcome="steered"} 0
fsha_dataplane_packets_total{direction="egress",outcome="tracked"} 90
fsha_dataplane_packets_total{direction="egress",outcome="untracked"} 0
fsha_dataplane_packets_total{direction="ingress",outcome="arp_probed"} 0
fsha_dataplane_packets_total{direction="ingress",outcome="fenced"} 4
fsha_dataplane_packets_total{direction="ingress",outcome="fragment"} 1
fsha_dataplane_packets_total{direction="ingress",outcome="other"} 50
fsha_dataplane_packets_total{direction="ingress",outcome="parse_error"} 2
fsha_dataplane_packets_total{direction="ingress",outcome="steer_error"} 0
fsha_dataplane_packets_total{direction="ingress",outcome="steer_handoff"} 9
fsha_dataplane_packets_total{direction="ingress",outcome="steered"} 0
fsha_dataplane_packets_total{direction="ingress",outcome="tracked"} 100
fsha_dataplane_packets_total{direction="ingress",outcome="untracked"} 3
# HELP fsha_dataplane_flows_created_total Flows the data plane started tracking.
# TYPE fsha_dataplane_flows_created_total counter
fsha_dataplane_flows_created_total{direction="egress"} 12
fsha_dataplane_flows_created_total{direction="ingress"} 0
# HELP fsha_dataplane_flows_closed_total Flows the data plane saw close (RST, or FIN both ways).
# TYPE fsha_dataplane_flows_closed_total counter
fsha_dataplane_flows_closed_total{direction="egress"} 5
fsha_dataplane_flows_closed_total{direction="ingress"} 7
# HELP fsha_dataplane_flows_evicted_total Flows dropped from the full flow table (least recently used first).
# TYPE fsha_dataplane_flows_evicted_total counter
fsha_dataplane_flows_evicted_total{direction="egress"} 2
fsha_dataplane_flows_evicted_total{direction="ingress"} 0
# HELP fsha_dataplane_events_lost_total Flow events lost because the ring buffer was full.
# TYPE fsha_dataplane_events_lost_total counter
fsha_dataplane_events_lost_total{direction="egress"} 0
fsha_dataplane_events_lost_total{direction="ingress"} 1
# HELP fsha_dataplane_map_errors_total Failed map updates in the data plane.
# TYPE fsha_dataplane_map_errors_total counter
fsha_dataplane_map_errors_total{direction="egress"} 1
fsha_dataplane_map_errors_total{direction="ingress"} 0
# HELP fsha_dataplane_flows Live flows in the flow table.
# TYPE fsha_dataplane_flows gauge
fsha_dataplane_flows 6
# HELP fsha_dataplane_tc_steered_packets_total Packets TC ingress sent on to the node holding their socket (interfaces in tc steering mode); XDP counts them as outcome steer_handoff.
# TYPE fsha_dataplane_tc_steered_packets_total counter
fsha_dataplane_tc_steered_packets_total 8
# HELP fsha_dataplane_steer_path 1 for each interface's steering path of a planned move's old connections (xdp: XDP_TX, tc: TC ingress redirect), with how XDP is attached (native, generic).
# TYPE fsha_dataplane_steer_path gauge
fsha_dataplane_steer_path{driver="i40e",interface="eth1",path="xdp",xdp_mode="native"} 1
fsha_dataplane_steer_path{driver="veth",interface="eth0",path="tc",xdp_mode="native"} 1
# HELP fsha_metrics_collection_errors_total Scrapes that could not read a source (backend, gossip, dataplane); that source's metrics were left out.
# TYPE fsha_metrics_collection_errors_total counter
fsha_metrics_collection_errors_total{source="backend"} 0
fsha_metrics_collection_errors_total{source="dataplane"} 0
fsha_metrics_collection_errors_total{source="gossip"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want),
		"fsha_cluster_nodes", "fsha_cluster_quorum", "fsha_vips_held", "fsha_vips", "fsha_gossip_members",
		"fsha_takeovers_total", "fsha_dataplane_packets_total", "fsha_dataplane_flows_created_total",
		"fsha_dataplane_flows_closed_total", "fsha_dataplane_flows_evicted_total", "fsha_dataplane_events_lost_total",
		"fsha_dataplane_map_errors_total", "fsha_dataplane_flows", "fsha_metrics_collection_errors_total",
		"fsha_dataplane_tc_steered_packets_total", "fsha_dataplane_steer_path",
	); err != nil {
		t.Error(err)
	}

	// The histogram: two takeovers, 43ms in all, one of them under 5ms.
	const hist = `
# HELP fsha_takeover_duration_seconds Time from the decision to the end of a takeover or release (hooks included).
# TYPE fsha_takeover_duration_seconds histogram
`
	got, err := testutil.CollectAndFormat(c, expfmt.TypeTextPlain, "fsha_takeover_duration_seconds")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{
		strings.TrimSpace(hist),
		`fsha_takeover_duration_seconds_bucket{kind="takeover",le="0.0025"} 0`,
		`fsha_takeover_duration_seconds_bucket{kind="takeover",le="0.005"} 1`,
		`fsha_takeover_duration_seconds_bucket{kind="takeover",le="0.05"} 2`,
		`fsha_takeover_duration_seconds_sum{kind="takeover"} 0.043`,
		`fsha_takeover_duration_seconds_count{kind="takeover"} 2`,
		`fsha_takeover_duration_seconds_bucket{kind="release",le="1"} 0`,
		`fsha_takeover_duration_seconds_bucket{kind="release",le="2.5"} 1`,
	} {
		if !strings.Contains(string(got), line) {
			t.Errorf("histogram lacks %q:\n%s", line, got)
		}
	}

	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestReadsAtScrapeTime(t *testing.T) {
	flows := uint64(1)
	c := NewCollector(zap.NewNop(), Sources{Counters: func() (dataplane.Counters, error) {
		return dataplane.Counters{Flows: flows}, nil
	}})
	for _, n := range []uint64{1, 42, 7} {
		flows = n
		if got := testutil.ToFloat64(collectorOf(c, "fsha_dataplane_flows")); got != float64(n) {
			t.Errorf("fsha_dataplane_flows = %v, want %d", got, n)
		}
	}
}

// collectorOf is the part of c that emits the metric name.
func collectorOf(c prometheus.Collector, name string) prometheus.Collector {
	return only{c, name}
}

type only struct {
	c    prometheus.Collector
	name string
}

func (o only) Describe(ch chan<- *prometheus.Desc) { prometheus.DescribeByCollect(o, ch) }

func (o only) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { o.c.Collect(all); close(all) }()
	for m := range all {
		if strings.Contains(m.Desc().String(), `fqName: "`+o.name+`"`) {
			ch <- m
		}
	}
}

func TestUnknownKindAndState(t *testing.T) {
	c := NewCollector(zap.NewNop(), Sources{Gossip: func() []membership.Member { return []membership.Member{{State: membership.Dead}} }})
	c.ObserveTakeover("reboot", time.Millisecond)
	if got := testutil.ToFloat64(c.takeovers.count.WithLabelValues("other")); got != 1 {
		t.Errorf("unknown kind counted as other %v times, want 1", got)
	}
	if n := testutil.CollectAndCount(c, "fsha_cluster_nodes", "fsha_dataplane_flows"); n != 0 {
		t.Errorf("%d series from absent sources, want 0", n)
	}
	if n := testutil.CollectAndCount(c, "fsha_gossip_members"); n != 4 {
		t.Errorf("%d gossip series, want 4", n)
	}
}

func TestSourceErrors(t *testing.T) {
	c := NewCollector(zap.NewNop(), Sources{
		Backend:  fakeBackend{err: errors.New("controller stopped")},
		Counters: func() (dataplane.Counters, error) { return dataplane.Counters{}, errors.New("map gone") },
		Gossip:   gossip,
	})
	for range 2 {
		if n := testutil.CollectAndCount(c, "fsha_cluster_nodes", "fsha_cluster_quorum", "fsha_vips_held", "fsha_dataplane_flows", "fsha_dataplane_packets_total"); n != 0 {
			t.Errorf("%d series from failing sources, want 0", n)
		}
	}
	// Two scrapes above of each failing metric set, plus the ones that
	// CollectAndCompare below makes.
	want := `
# HELP fsha_metrics_collection_errors_total Scrapes that could not read a source (backend, gossip, dataplane); that source's metrics were left out.
# TYPE fsha_metrics_collection_errors_total counter
fsha_metrics_collection_errors_total{source="backend"} 3
fsha_metrics_collection_errors_total{source="dataplane"} 3
fsha_metrics_collection_errors_total{source="gossip"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "fsha_metrics_collection_errors_total"); err != nil {
		t.Error(err)
	}
	// The working source is still there.
	if n := testutil.CollectAndCount(c, "fsha_gossip_members"); n != 4 {
		t.Errorf("%d gossip series next to failing sources, want 4", n)
	}
}

func TestServe(t *testing.T) {
	c := NewCollector(zap.NewNop(), Sources{Backend: fakeBackend{}, Counters: counters})
	if err := c.Serve(context.Background(), ""); err != nil {
		t.Errorf("Serve without an address: %v", err)
	}
	if err := c.Serve(context.Background(), "198.18.0.1:bad"); err == nil {
		t.Error("Serve on a bad address: no error")
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.ServeListener(ctx, ln) }()

	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + ln.Addr().String() + "/metrics")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /metrics: %s", resp.Status)
	}
	for _, s := range []string{"fsha_vips_held 2", `fsha_dataplane_flows_created_total{direction="egress"} 12`, "go_goroutines", "process_open_fds"} {
		if !strings.Contains(string(body), s) {
			t.Errorf("/metrics lacks %q", s)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("metrics server did not stop")
	}
	if _, err := client.Get("http://" + ln.Addr().String() + "/metrics"); err == nil {
		t.Error("metrics still served after shutdown")
	}
}

// The controller reports takeovers to the collector.
var (
	_ node.Observer = (*Takeovers)(nil)
	_ node.Observer = (*Collector)(nil)
)

// KeepServing never gives up and never fails the daemon: an address in
// use is logged and tried again, and served once it is free.
func TestKeepServing(t *testing.T) {
	defer func(d time.Duration) { metricsRetry = d }(metricsRetry)
	metricsRetry = 20 * time.Millisecond
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := busy.Addr().String()
	core, logs := observer.New(zap.ErrorLevel)
	c := NewCollector(zap.New(core), Sources{Backend: fakeBackend{}, Counters: counters})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.KeepServing(ctx, addr); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterMessage("metrics unavailable (failover goes on); trying again").Len() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no error logged for an address in use")
		}
		time.Sleep(5 * time.Millisecond)
	}
	busy.Close()
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get("http://" + addr + "/metrics")
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not served once the address was free: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("KeepServing did not return when its context ended")
	}
}

// checkingBackend is fakeBackend with health checks (fsha checks).
type checkingBackend struct{ fakeBackend }

func (checkingBackend) Checks(context.Context) (admin.Checks, error) {
	return admin.Checks{Checks: []admin.CheckStatus{
		{Name: "tcp:198.18.0.2:445", Passing: true, LastRun: time.Unix(1, 0), Took: 2 * time.Millisecond},
		{Name: "cmd:/etc/fsha/nfs-alive", FailedRuns: 3, LastRun: time.Unix(1, 0), Took: 500 * time.Millisecond},
	}}, nil
}

func TestCollectDetails(t *testing.T) {
	c := NewCollector(zap.NewNop(), Sources{Backend: checkingBackend{}, Version: "v1.2.3", FlowsMax: 1 << 20})
	want := `
# HELP fsha_vip_owner_pnn The node number holding the VIP as this node sees it, -1 when none.
# TYPE fsha_vip_owner_pnn gauge
fsha_vip_owner_pnn{vip="198.18.1.10/24"} 1
fsha_vip_owner_pnn{vip="198.18.1.11/24"} 1
fsha_vip_owner_pnn{vip="198.18.1.12/24"} 0
fsha_vip_owner_pnn{vip="198.18.1.13/24"} -1
# HELP fsha_check_passing 1 when the health check passes, else 0.
# TYPE fsha_check_passing gauge
fsha_check_passing{check="cmd:/etc/fsha/nfs-alive"} 0
fsha_check_passing{check="tcp:198.18.0.2:445"} 1
# HELP fsha_check_failed_runs Failed runs in a row of the health check (0: its last run passed).
# TYPE fsha_check_failed_runs gauge
fsha_check_failed_runs{check="cmd:/etc/fsha/nfs-alive"} 3
fsha_check_failed_runs{check="tcp:198.18.0.2:445"} 0
# HELP fsha_dataplane_flows_capacity Capacity of the flow table (--flows-max): past it the least recently used flows are evicted.
# TYPE fsha_dataplane_flows_capacity gauge
fsha_dataplane_flows_capacity 1.048576e+06
# HELP fsha_node_state 1 for this node's own state (OK, UNHEALTHY, DISABLED, STOPPED, BANNED, STARTING, STOPPING, RESTARTING), 0 for the others.
# TYPE fsha_node_state gauge
fsha_node_state{state="BANNED"} 0
fsha_node_state{state="DISABLED"} 0
fsha_node_state{state="OK"} 1
fsha_node_state{state="RESTARTING"} 0
fsha_node_state{state="STARTING"} 0
fsha_node_state{state="STOPPED"} 0
fsha_node_state{state="STOPPING"} 0
fsha_node_state{state="UNHEALTHY"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "fsha_vip_owner_pnn", "fsha_check_passing",
		"fsha_check_failed_runs", "fsha_dataplane_flows_capacity", "fsha_node_state"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c, "fsha_vip_state"); n != 4*len(detailVIPStates) {
		t.Errorf("fsha_vip_state: %d series, want %d", n, 4*len(detailVIPStates))
	}
	if n := testutil.CollectAndCount(c, "fsha_build_info"); n != 1 {
		t.Errorf("fsha_build_info: %d series", n)
	}
}
