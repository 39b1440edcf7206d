package metrics

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
)

const dashboardPath = "../../packaging/examples/grafana-dashboard.json"

// exported scrapes /metrics as Prometheus would, from collectors whose
// sources report everything a node can (a cluster view, VIPs, checks, the
// data plane, takeovers), and returns the families by name.
func exported(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	tk := NewTakeovers()
	tk.ObserveTakeover(KindTakeover, 40*time.Millisecond)
	fams := map[string]*dto.MetricFamily{}
	for _, c := range []*Collector{
		NewCollector(zap.NewNop(), Sources{Backend: fakeBackend{}, Counters: counters, Gossip: gossip, Takeovers: tk,
			Steering: func() []dataplane.SteerState {
				return []dataplane.SteerState{{Interface: "eth0", Driver: "veth", XDPMode: "native", Steer: "tc"}}
			}}),
		NewCollector(zap.NewNop(), Sources{Backend: holdingBackend{}, Counters: counters, Version: "v1", FlowsMax: 1 << 20}),
	} {
		srv := httptest.NewServer(c.Handler())
		resp, err := http.Get(srv.URL)
		if err != nil {
			t.Fatal(err)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		got, err := parser.TextToMetricFamilies(resp.Body)
		resp.Body.Close()
		srv.Close()
		if err != nil {
			t.Fatalf("parse /metrics: %v", err)
		}
		for name, f := range got {
			fams[name] = f
		}
	}
	return fams
}

// holdingBackend is checkingBackend on a node that holds a VIP under a
// lease and has counted cluster events.
type holdingBackend struct{ checkingBackend }

func (b holdingBackend) Status(ctx context.Context) (admin.Status, error) {
	st, err := b.checkingBackend.Status(ctx)
	st.Counters = map[string]uint64{"replication_sent": 3}
	return st, err
}

func (b holdingBackend) IPs(ctx context.Context) ([]admin.IP, error) {
	ips, err := b.checkingBackend.IPs(ctx)
	ips[0].LeaseLeft = 300 * time.Millisecond
	return ips, err
}

// labelsOf lists the label names a family's samples carry.
func labelsOf(f *dto.MetricFamily) []string {
	var out []string
	for _, m := range f.Metric {
		for _, l := range m.Label {
			if !slices.Contains(out, l.GetName()) {
				out = append(out, l.GetName())
			}
		}
	}
	return out
}

// queries returns every PromQL expression of the dashboard: the panels'
// targets and the template variables' queries.
func queries(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var out []string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if s, ok := x.(string); ok && (k == "expr" || k == "definition") {
					out = append(out, s)
				}
				walk(x)
			}
		case []any:
			for _, x := range v {
				walk(x)
			}
		}
	}
	walk(doc)
	return out
}

var (
	// the namespaces the daemon exports: its own, the Go runtime's, the
	// process's
	metricRE  = regexp.MustCompile(`\b((?:fsha|go|process)_[a-z0-9_]+)\b(\{[^}]*\})?`)
	matcherRE = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
	byRE      = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
)

// Every metric the dashboard queries is one the daemon exports (a
// histogram's _bucket, _sum and _count included), and every label it
// selects or groups by is one those metrics carry (or Prometheus's own
// instance and job).
func TestDashboardQueries(t *testing.T) {
	fams := exported(t)
	qs := queries(t)
	if len(qs) < 20 {
		t.Fatalf("only %d queries found in %s", len(qs), dashboardPath)
	}
	used := map[string]bool{}
	for _, q := range qs {
		var exprLabels []string
		names := metricRE.FindAllStringSubmatch(q, -1)
		if len(names) == 0 {
			t.Errorf("query %q reads no fsha metric", q)
		}
		for _, m := range names {
			name, labels := m[1], []string{"instance", "job"}
			f, ok := fams[name]
			if !ok {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_sum"), "_count")
				if bf, found := fams[base]; found && base != name && bf.GetType() == dto.MetricType_HISTOGRAM {
					f, ok = bf, true
					if strings.HasSuffix(name, "_bucket") {
						labels = append(labels, "le")
					}
				}
			}
			if !ok {
				t.Errorf("query %q: the daemon exports no %s", q, name)
				continue
			}
			used[f.GetName()] = true
			labels = append(labels, labelsOf(f)...)
			exprLabels = append(exprLabels, labels...)
			for _, lm := range matcherRE.FindAllStringSubmatch(m[2], -1) {
				if !slices.Contains(labels, lm[1]) {
					t.Errorf("query %q: %s has no label %q (it has %q)", q, name, lm[1], labels)
				}
			}
		}
		for _, by := range byRE.FindAllStringSubmatch(q, -1) {
			for _, l := range strings.Split(by[1], ",") {
				if l = strings.TrimSpace(l); l != "" && !slices.Contains(exprLabels, l) {
					t.Errorf("query %q groups by %q, which none of its metrics has", q, l)
				}
			}
		}
	}
	// the dashboard shows every fsha metric there is
	for name := range fams {
		if strings.HasPrefix(name, "fsha_") && !used[name] {
			t.Errorf("the dashboard does not show %s", name)
		}
	}
}
