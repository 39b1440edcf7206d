package metrics

import (
	"context"
	"runtime"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
)

// The series an operator alerts and graphs on one by one, as MetalLB's
// and keepalived's exporters have them: each VIP (owner, epoch, state,
// the time its holder's data plane answers without another renewal),
// each health check, the flow table's fill, and the build.
type details struct {
	buildInfo      *prometheus.Desc
	vipOwner       *prometheus.Desc
	vipEpoch       *prometheus.Desc
	vipState       *prometheus.Desc
	vipLease       *prometheus.Desc
	checkPassing   *prometheus.Desc
	checkFailures  *prometheus.Desc
	checkSeconds   *prometheus.Desc
	flowsCapacity  *prometheus.Desc
	nodeThisHealth *prometheus.Desc
	steerPath      *prometheus.Desc
	tcSteered      *prometheus.Desc
}

func newDetails() details {
	return details{
		buildInfo: prometheus.NewDesc("fsha_build_info",
			"Always 1; the labels say which fsha runs.", []string{"version", "goversion"}, nil),
		vipOwner: prometheus.NewDesc("fsha_vip_owner_pnn",
			"The node number holding the VIP as this node sees it, -1 when none.", []string{"vip"}, nil),
		vipEpoch: prometheus.NewDesc("fsha_vip_epoch",
			"The VIP's epoch as its holder has it (each takeover raises it).", []string{"vip"}, nil),
		vipState: prometheus.NewDesc("fsha_vip_state",
			"1 for the VIP's state (held, unassigned, moving, draining, lapsed), 0 for the others.", []string{"vip", "state"}, nil),
		vipLease: prometheus.NewDesc("fsha_vip_lease_remaining_seconds",
			"On the VIP's holder: how long its data plane answers for the VIP without another renewal (negative: lapsed).", []string{"vip"}, nil),
		checkPassing: prometheus.NewDesc("fsha_check_passing",
			"1 when the health check passes, else 0.", []string{"check"}, nil),
		checkFailures: prometheus.NewDesc("fsha_check_failed_runs",
			"Failed runs in a row of the health check (0: its last run passed).", []string{"check"}, nil),
		checkSeconds: prometheus.NewDesc("fsha_check_duration_seconds",
			"How long the health check's last run took.", []string{"check"}, nil),
		flowsCapacity: prometheus.NewDesc("fsha_dataplane_flows_capacity",
			"Capacity of the flow table (--flows-max): past it the least recently used flows are evicted.", nil, nil),
		nodeThisHealth: prometheus.NewDesc("fsha_node_state",
			"1 for this node's own state (OK, UNHEALTHY, DISABLED, STOPPED, BANNED, STARTING, STOPPING, RESTARTING), 0 for the others.", []string{"state"}, nil),
		steerPath: prometheus.NewDesc("fsha_dataplane_steer_path",
			"1 for each interface's steering path of a planned move's old connections (xdp: XDP_TX, tc: TC ingress redirect), with how XDP is attached (native, generic).",
			[]string{"interface", "path", "xdp_mode", "driver"}, nil),
		tcSteered: prometheus.NewDesc("fsha_dataplane_tc_steered_packets_total",
			"Packets TC ingress sent on to the node holding their socket (interfaces in tc steering mode); XDP counts them as outcome steer_handoff.", nil, nil),
	}
}

func (d details) describe(ch chan<- *prometheus.Desc) {
	for _, x := range []*prometheus.Desc{d.buildInfo, d.vipOwner, d.vipEpoch, d.vipState, d.vipLease,
		d.checkPassing, d.checkFailures, d.checkSeconds, d.flowsCapacity, d.nodeThisHealth, d.steerPath, d.tcSteered} {
		ch <- x
	}
}

var detailVIPStates = []string{"held", "unassigned", "moving", "draining", "lapsed"}

var selfStates = []string{admin.StateOK, admin.StateUnhealthy, admin.StateDisabled, admin.StateStopped, admin.StateBanned,
	admin.StateStarting, admin.StateStopping, admin.StateRestarting}

// collectVIPs exports each VIP and this node's own state.
func (d details) collectVIPs(ch chan<- prometheus.Metric, st admin.Status, ips []admin.IP) {
	for _, n := range st.Nodes {
		if !n.This {
			continue
		}
		for _, s := range selfStates {
			ch <- gauge(d.nodeThisHealth, b2f(n.State == s), s)
		}
	}
	for _, ip := range ips {
		ch <- gauge(d.vipOwner, float64(ip.PNN), ip.VIP)
		if ip.PNN >= 0 {
			ch <- gauge(d.vipEpoch, float64(ip.Epoch), ip.VIP)
		}
		for _, s := range detailVIPStates {
			ch <- gauge(d.vipState, b2f(ip.State == s), ip.VIP, s)
		}
		if ip.PNN == st.ThisPNN && ip.LeaseLeft != 0 {
			ch <- gauge(d.vipLease, ip.LeaseLeft.Seconds(), ip.VIP)
		}
	}
}

// collectChecks exports each health check, when the backend reports them.
func (d details) collectChecks(ctx context.Context, ch chan<- prometheus.Metric, b admin.Backend) error {
	cr, ok := b.(admin.CheckReporter)
	if !ok {
		return nil
	}
	checks, err := cr.Checks(ctx)
	if err != nil {
		return err
	}
	for _, c := range checks.Checks {
		ch <- gauge(d.checkPassing, b2f(c.Passing), c.Name)
		ch <- gauge(d.checkFailures, float64(c.FailedRuns), c.Name)
		if !c.LastRun.IsZero() {
			ch <- gauge(d.checkSeconds, c.Took.Seconds(), c.Name)
		}
	}
	return nil
}

func (d details) collectBuild(ch chan<- prometheus.Metric, version string, flowsMax uint32) {
	ch <- gauge(d.buildInfo, 1, version, runtime.Version())
	if flowsMax > 0 {
		ch <- gauge(d.flowsCapacity, float64(flowsMax))
	}
}

// collectSteering exports each interface's steering path.
func (d details) collectSteering(ch chan<- prometheus.Metric, steer []dataplane.SteerState) {
	for _, s := range steer {
		ch <- gauge(d.steerPath, 1, s.Interface, s.Steer, s.XDPMode, s.Driver)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
