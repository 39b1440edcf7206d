package lab

import (
	"fmt"
	"net/netip"
)

// StartMonitor starts client's wire monitor of every VIP of the cluster,
// naming each answering MAC by its node (tcp adds TCP probes to the ARP
// and NDP ones): the tests' independent judge of who answers for a VIP.
func (c *Cluster) StartMonitor(client *Client, tcp bool) (*Monitor, error) {
	opts, err := c.MonitorOptions()
	if err != nil {
		return nil, err
	}
	opts.TCP = tcp
	return client.StartMonitor(opts)
}

// MonitorOptions are the options of a monitor of every VIP of the
// cluster with every node's MAC named, for a test to change (the
// interval, say) before Client.StartMonitor.
func (c *Cluster) MonitorOptions() (MonitorOptions, error) {
	var hosts []*Host
	for _, n := range c.Nodes {
		hosts = append(hosts, n.Host)
	}
	names, err := MACNames(hosts...)
	if err != nil {
		return MonitorOptions{}, err
	}
	var vips []netip.Addr
	for _, v := range c.VIPs {
		vips = append(vips, v.Addr())
	}
	return MonitorOptions{VIPs: vips, Names: names}, nil
}

// Finish stops the monitor and says whether its verdicts hold: it fails
// when the monitor lost probes or answers. It returns one line per VIP
// and kind of probe for the test's log.
func (m *Monitor) Finish() ([]string, error) {
	if err := m.Stop(); err != nil {
		return nil, fmt.Errorf("monitor: %w", err)
	}
	if err := m.Health().Check(); err != nil {
		return nil, fmt.Errorf("the monitor lost probes or answers, its verdict would not hold: %w", err)
	}
	var lines []string
	for _, st := range m.Stats() {
		lines = append(lines, fmt.Sprintf("%v %v: %d rounds, %d answered, longest gap %v, by node %v",
			st.VIP, st.Kind, st.Rounds, st.Answered, st.LongestGap.Duration(), st.ByNode))
	}
	return lines, nil
}
