package lab

import (
	"net/netip"
	"testing"
)

func TestParseCTDBStatus(t *testing.T) {
	// ctdb 4.17, as a survivor sees a powered-down node
	machine := `|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|
|0|198.18.0.11|1|0|0|0|1|0|1|0|N|
|1|198.18.0.12|0|0|0|0|0|0|0|0|Y|
|2|198.18.0.13|0|0|0|0|0|0|0|0|N|
`
	human := `Number of nodes:3
pnn:0 198.18.0.11      DISCONNECTED|UNHEALTHY|INACTIVE
pnn:1 198.18.0.12      OK (THIS NODE)
pnn:2 198.18.0.13      OK
Generation:1712466513
Size:2
hash:0 lmaster:1
hash:1 lmaster:2
Recovery mode:RECOVERY (1)
Leader:2
`
	nodes, err := parseCTDBNodes(machine)
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3: %+v", len(nodes), nodes)
	}
	st := CTDBStatus{Nodes: nodes}
	if st.Recovery, err = parseCTDBRecovery(human); err != nil {
		t.Fatal(err)
	}
	if st.Recovery != "RECOVERY" {
		t.Errorf("recovery %q, want RECOVERY", st.Recovery)
	}
	n0, _ := st.Node(0)
	if n0.Addr != netip.MustParseAddr("198.18.0.11") || !n0.Has(CTDBDisconnected) || n0.OK() || n0.ThisNode {
		t.Errorf("node 0: %+v", n0)
	}
	// the flags in the order `ctdb status` prints them
	if got := n0.State(); got != "DISCONNECTED|UNHEALTHY|INACTIVE" {
		t.Errorf("node 0 state %q", got)
	}
	if n1, _ := st.Node(1); !n1.OK() || !n1.ThisNode || n1.State() != "OK" {
		t.Errorf("node 1: %+v", n1)
	}
	if _, ok := st.Node(3); ok {
		t.Error("node 3 found")
	}
	if got, want := st.String(), "pnn 0 DISCONNECTED|UNHEALTHY|INACTIVE; pnn 1 OK; pnn 2 OK; recovery RECOVERY"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestParseCTDBStatusRejects(t *testing.T) {
	for name, out := range map[string]string{
		"empty":       "",
		"human":       "Number of nodes:3\npnn:0 198.18.0.11 OK\n",
		"short line":  "|Node|IP|Disconnected|\n|0|198.18.0.11|\n",
		"no flag":     "|Node|IP|ThisNode|\n|0|198.18.0.11|Y|\n",
		"bad pnn":     "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|\n|x|198.18.0.11|0|0|0|0|0|0|0|0|Y|\n",
		"bad address": "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|\n|0|node1|0|0|0|0|0|0|0|0|Y|\n",
	} {
		if nodes, err := parseCTDBNodes(out); err == nil {
			t.Errorf("%s: parsed %+v, want an error", name, nodes)
		}
	}
	if _, err := parseCTDBRecovery("Number of nodes:3\n"); err == nil {
		t.Error("recovery mode found in a status without one")
	}
}
