// Package metrics exposes the node to Prometheus. Its Collector reads the
// cluster state, the gossip members and the data plane's counters at
// scrape time, so a metric is never staler than the scrape; only takeover
// counts and durations, which happen between scrapes, are recorded as they
// occur (ObserveTakeover, called by the controller).
package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/membership"
	"github.com/fsha/fsha/dataplane"
)

// Sources are what the collector reads at scrape time. A nil source is
// left out: its metrics are simply absent.
type Sources struct {
	// Backend is the node's controller: cluster nodes, quorum, VIPs.
	Backend admin.Backend
	// Counters reads the data plane's counters, e.g. (*dataplane.Maps).ReadCounters.
	Counters func() (dataplane.Counters, error)
	// Steering says how each interface steers, e.g.
	// (*dataplane.Dataplane).Steering.
	Steering func() []dataplane.SteerState
	// Gossip lists the gossip members, e.g. (*membership.Membership).Members.
	Gossip func() []membership.Member
	// Takeovers is fed by the controller; nil: the collector makes its own
	// (see Collector.ObserveTakeover).
	Takeovers *Takeovers
	// Version is fsha's (fsha_build_info); FlowsMax the flow table's
	// capacity (0: not exported).
	Version  string
	FlowsMax uint32
}

// ScrapeTimeout bounds the backend calls of one scrape.
const ScrapeTimeout = 2 * time.Second

// Takeover kinds, the values of the kind label.
const (
	KindTakeover = "takeover"
	KindRelease  = "release"
	kindOther    = "other"
)

// Node states and gossip states always exported, at 0 when none, so that
// alerts on them see a series.
var (
	nodeStates   = []string{admin.StateOK, admin.StateUnhealthy, admin.StateDisabled, admin.StateBanned, admin.StateDisconnected}
	gossipStates = []string{membership.Alive.String(), membership.Suspect.String(), membership.Dead.String(), membership.Left.String()}
	vipStates    = []string{"held", "unassigned", "moving", "draining"}
)

// Takeovers records finished takeovers and releases as they happen. It is
// made before the controller, which takes it as its observer, and handed to
// the collector in Sources.
type Takeovers struct {
	count    *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// NewTakeovers returns an empty record.
func NewTakeovers() *Takeovers {
	t := &Takeovers{
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fsha_takeovers_total",
			Help: "VIP takeovers and releases this node finished (kind: takeover, release).",
		}, []string{"kind"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "fsha_takeover_duration_seconds",
			Help:    "Time from the decision to the end of a takeover or release (hooks included).",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"kind"}),
	}
	for _, kind := range []string{KindTakeover, KindRelease} {
		t.count.WithLabelValues(kind)
		t.duration.WithLabelValues(kind)
	}
	return t
}

// ObserveTakeover records a finished takeover or release of one VIP and
// the time it took from the decision. It implements node.Observer.
func (t *Takeovers) ObserveTakeover(kind string, d time.Duration) {
	if kind != KindTakeover && kind != KindRelease {
		kind = kindOther // keep the label set small whatever the caller says
	}
	t.count.WithLabelValues(kind).Inc()
	t.duration.WithLabelValues(kind).Observe(d.Seconds())
}

// Collector is a prometheus.Collector for one node.
type Collector struct {
	log *zap.Logger
	src Sources

	takeovers        *Takeovers
	collectionErrors *prometheus.CounterVec

	clusterNodes  *prometheus.Desc
	clusterQuorum *prometheus.Desc
	nodeCounters  *prometheus.Desc
	vipsHeld      *prometheus.Desc
	vips          *prometheus.Desc
	gossipMembers *prometheus.Desc
	packets       *prometheus.Desc
	flowsCreated  *prometheus.Desc
	flowsClosed   *prometheus.Desc
	flowsEvicted  *prometheus.Desc
	eventsLost    *prometheus.Desc
	mapErrors     *prometheus.Desc
	flows         *prometheus.Desc
	details
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a collector reading src.
func NewCollector(log *zap.Logger, src Sources) *Collector {
	if src.Takeovers == nil {
		src.Takeovers = NewTakeovers()
	}
	c := &Collector{
		log:       log.Named("metrics"),
		src:       src,
		takeovers: src.Takeovers,
		collectionErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "fsha_metrics_collection_errors_total",
			Help: "Scrapes that could not read a source (backend, gossip, dataplane); that source's metrics were left out.",
		}, []string{"source"}),
		clusterNodes: prometheus.NewDesc("fsha_cluster_nodes",
			"Nodes of the cluster by state, as this node sees them.", []string{"state"}, nil),
		nodeCounters: prometheus.NewDesc("fsha_cluster_events_total",
			"Cluster events this node counted, by name: replication records sent and received, rejected gossip and replication messages, resyncs.",
			[]string{"name"}, nil),
		clusterQuorum: prometheus.NewDesc("fsha_cluster_quorum",
			"1 when this node sees a quorum, else 0.", nil, nil),
		vipsHeld: prometheus.NewDesc("fsha_vips_held",
			"VIPs this node holds.", nil, nil),
		vips: prometheus.NewDesc("fsha_vips",
			"VIPs of the cluster by state (held, unassigned, moving, draining).", []string{"state"}, nil),
		gossipMembers: prometheus.NewDesc("fsha_gossip_members",
			"Gossip members by liveness (alive, suspect, dead, left), this node included.", []string{"state"}, nil),
		packets: prometheus.NewDesc("fsha_dataplane_packets_total",
			"Packets the data plane saw, by direction (ingress: XDP, egress: TC) and outcome.", []string{"direction", "outcome"}, nil),
		flowsCreated: prometheus.NewDesc("fsha_dataplane_flows_created_total",
			"Flows the data plane started tracking.", []string{"direction"}, nil),
		flowsClosed: prometheus.NewDesc("fsha_dataplane_flows_closed_total",
			"Flows the data plane saw close (RST, or FIN both ways).", []string{"direction"}, nil),
		flowsEvicted: prometheus.NewDesc("fsha_dataplane_flows_evicted_total",
			"Flows dropped from the full flow table (least recently used first).", []string{"direction"}, nil),
		eventsLost: prometheus.NewDesc("fsha_dataplane_events_lost_total",
			"Flow events lost because the ring buffer was full.", []string{"direction"}, nil),
		mapErrors: prometheus.NewDesc("fsha_dataplane_map_errors_total",
			"Failed map updates in the data plane.", []string{"direction"}, nil),
		flows: prometheus.NewDesc("fsha_dataplane_flows",
			"Live flows in the flow table.", nil, nil),
		details: newDetails(),
	}
	for _, src := range []string{"backend", "gossip", "dataplane"} {
		c.collectionErrors.WithLabelValues(src)
	}
	return c
}

// ObserveTakeover is Takeovers.ObserveTakeover on the collector's record,
// for callers that make the collector before the controller.
func (c *Collector) ObserveTakeover(kind string, d time.Duration) {
	c.takeovers.ObserveTakeover(kind, d)
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.takeovers.count.Describe(ch)
	c.takeovers.duration.Describe(ch)
	c.collectionErrors.Describe(ch)
	for _, d := range []*prometheus.Desc{
		c.clusterNodes, c.clusterQuorum, c.nodeCounters, c.vipsHeld, c.vips, c.gossipMembers,
		c.packets, c.flowsCreated, c.flowsClosed, c.flowsEvicted, c.eventsLost, c.mapErrors, c.flows,
	} {
		ch <- d
	}
	c.describe(ch)
}

// Collect implements prometheus.Collector: it reads every source now.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	// Last, so that this scrape's errors are in it.
	defer c.collectionErrors.Collect(ch)
	c.takeovers.count.Collect(ch)
	c.takeovers.duration.Collect(ch)
	c.collectBuild(ch, c.src.Version, c.src.FlowsMax)

	if c.src.Backend != nil {
		if err := c.collectBackend(ch); err != nil {
			c.failed("backend", err)
		}
	}
	if c.src.Gossip != nil {
		c.collectGossip(ch)
	}
	if c.src.Counters != nil {
		ctrs, err := c.src.Counters()
		if err != nil {
			c.failed("dataplane", err)
		} else {
			c.collectCounters(ch, ctrs)
		}
	}
	if c.src.Steering != nil {
		c.collectSteering(ch, c.src.Steering())
	}
}

func (c *Collector) failed(source string, err error) {
	c.collectionErrors.WithLabelValues(source).Inc()
	c.log.Warn("metrics source failed", zap.String("source", source), zap.Error(err))
}

func gauge(d *prometheus.Desc, v float64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

func counter(d *prometheus.Desc, v uint64, labels ...string) prometheus.Metric {
	return prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

// countBy counts values by key, starting with the given keys at 0.
func countBy[T any](known []string, items []T, key func(T) string) ([]string, map[string]int) {
	counts := make(map[string]int, len(known))
	keys := append([]string(nil), known...)
	for _, k := range known {
		counts[k] = 0
	}
	for _, it := range items {
		k := key(it)
		if _, ok := counts[k]; !ok {
			keys = append(keys, k)
		}
		counts[k]++
	}
	return keys, counts
}

func (c *Collector) collectBackend(ch chan<- prometheus.Metric) error {
	ctx, cancel := context.WithTimeout(context.Background(), ScrapeTimeout)
	defer cancel()
	st, err := c.src.Backend.Status(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	ips, err := c.src.Backend.IPs(ctx)
	if err != nil {
		return fmt.Errorf("ips: %w", err)
	}

	keys, counts := countBy(nodeStates, st.Nodes, func(n admin.NodeStatus) string { return n.State })
	for _, k := range keys {
		ch <- gauge(c.clusterNodes, float64(counts[k]), k)
	}
	quorum := 0.0
	if st.Quorum {
		quorum = 1
	}
	ch <- gauge(c.clusterQuorum, quorum)

	held := 0
	for _, ip := range ips {
		if ip.PNN == st.ThisPNN {
			held++
		}
	}
	ch <- gauge(c.vipsHeld, float64(held))
	for name, v := range st.Counters {
		ch <- counter(c.nodeCounters, v, name)
	}
	keys, counts = countBy(vipStates, ips, func(ip admin.IP) string { return ip.State })
	for _, k := range keys {
		ch <- gauge(c.vips, float64(counts[k]), k)
	}
	c.collectVIPs(ch, st, ips)
	if err := c.collectChecks(ctx, ch, c.src.Backend); err != nil {
		return fmt.Errorf("checks: %w", err)
	}
	return nil
}

func (c *Collector) collectGossip(ch chan<- prometheus.Metric) {
	keys, counts := countBy(gossipStates, c.src.Gossip(), func(m membership.Member) string { return m.State.String() })
	for _, k := range keys {
		ch <- gauge(c.gossipMembers, float64(counts[k]), k)
	}
}

func (c *Collector) collectCounters(ch chan<- prometheus.Metric, ctrs dataplane.Counters) {
	for _, d := range []struct {
		dir string
		c   dataplane.DirectionCounters
	}{{"ingress", ctrs.Ingress}, {"egress", ctrs.Egress}} {
		for _, o := range []struct {
			outcome string
			n       uint64
		}{
			{"tracked", d.c.Tracked},
			{"untracked", d.c.Untracked},
			{"other", d.c.Other},
			{"fragment", d.c.Fragments},
			{"parse_error", d.c.ParseErrors},
			{"fenced", d.c.Fenced},
			{"steered", d.c.Steered},
			{"steer_error", d.c.SteerErrors},
			{"steer_handoff", d.c.SteerHandoffs},
			{"arp_probed", d.c.ARPProbed},
		} {
			ch <- counter(c.packets, o.n, d.dir, o.outcome)
		}
		ch <- counter(c.flowsCreated, d.c.Created, d.dir)
		ch <- counter(c.flowsClosed, d.c.Closed, d.dir)
		ch <- counter(c.flowsEvicted, d.c.Evicted, d.dir)
		ch <- counter(c.eventsLost, d.c.EventsLost, d.dir)
		ch <- counter(c.mapErrors, d.c.MapErrors, d.dir)
	}
	ch <- gauge(c.flows, float64(ctrs.Flows))
	ch <- counter(c.tcSteered, ctrs.Ingress.TCSteered)
}

// Handler serves the collector, with the Go runtime's and the process's
// metrics, in the Prometheus exposition format.
func (c *Collector) Handler() http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(c,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:          zap.NewStdLog(c.log),
		ErrorHandling:     promhttp.ContinueOnError,
		Registry:          reg,
		Timeout:           2 * ScrapeTimeout,
		EnableOpenMetrics: true,
	})
}

// Serve serves /metrics on listenAddr (host:port) until ctx is done. An
// empty listenAddr means no metrics: it returns nil at once.
func (c *Collector) Serve(ctx context.Context, listenAddr string) error {
	if listenAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return fmt.Errorf("metrics: listen on %s: %w", listenAddr, err)
	}
	return c.ServeListener(ctx, ln)
}

// metricsRetry is how long KeepServing waits before it tries the address
// again.
var metricsRetry = 10 * time.Second

// KeepServing is Serve for a daemon whose failover must not depend on its
// metrics: an address it cannot listen on (in use, not local yet) or a
// server that fails is logged as an error and tried again every
// metricsRetry, until ctx is done; it never returns an error.
func (c *Collector) KeepServing(ctx context.Context, listenAddr string) {
	for {
		err := c.Serve(ctx, listenAddr)
		if ctx.Err() != nil {
			return
		}
		c.log.Error("metrics unavailable (failover goes on); trying again", zap.Error(err), zap.Duration("in", metricsRetry))
		select {
		case <-ctx.Done():
			return
		case <-time.After(metricsRetry):
		}
	}
}

// ServeListener is Serve on a listener of the caller's; it closes it.
func (c *Collector) ServeListener(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", c.Handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintln(w, "fsha: metrics at /metrics")
	})
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          zap.NewStdLog(c.log),
	}
	c.log.Info("serving metrics", zap.Stringer("addr", ln.Addr()))
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: serve on %s: %w", ln.Addr(), err)
	}
	return nil
}
