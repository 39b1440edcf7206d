package config

import (
	"errors"
	"io/fs"
	"net/netip"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// lineErrors flattens an error returned by a parse function into its
// LineErrors, failing the test on anything else.
func lineErrors(t *testing.T, err error) []*LineError {
	t.Helper()
	if err == nil {
		return nil
	}
	joined, ok := err.(interface{ Unwrap() []error })
	if !ok {
		t.Fatalf("error %q does not join LineErrors", err)
	}
	var out []*LineError
	for _, e := range joined.Unwrap() {
		var le *LineError
		if !errors.As(e, &le) {
			t.Fatalf("error %q is %T, not a *LineError", e, e)
		}
		out = append(out, le)
	}
	return out
}

// wantErr is one expected problem: where, and a piece of the message.
type wantErr struct {
	line int
	text string // substring of Error()
}

// checkErrors checks that err holds exactly the problems want, in order,
// each at file:line.
func checkErrors(t *testing.T, file string, err error, want []wantErr) {
	t.Helper()
	got := lineErrors(t, err)
	if len(got) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(got), len(want), err)
	}
	for i, w := range want {
		g := got[i]
		if g.File != file || g.Line != w.line {
			t.Errorf("error %d at %s:%d, want %s:%d: %v", i, g.File, g.Line, file, w.line, g)
		}
		prefix := file + ":"
		if w.line > 0 {
			prefix = file + ":" + strconv.Itoa(w.line) + ": "
		}
		if msg := g.Error(); !strings.HasPrefix(msg, prefix) || !strings.Contains(msg, w.text) {
			t.Errorf("error %d = %q, want prefix %q and %q in it", i, msg, prefix, w.text)
		}
	}
}

// strs renders public addresses as their lines, for compact comparison.
func strs[T interface{ String() string }](xs []T) []string {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

// TestSeedExamples loads the set-ups of the CTDB guides our users follow
// (see testdata/README.md) and checks they load unchanged, and agree.
func TestSeedExamples(t *testing.T) {
	tests := []struct {
		dir       string
		nodesFrom string // dir whose nodes file goes with it
		nodes     []string
		addrs     []string
	}{{
		dir:   "ovd-guide",
		nodes: []string{"198.18.33.11", "198.18.33.12"},
		addrs: []string{"198.19.4.26/24 ens32"},
	}, {
		dir:       "ovd-guide-active-active",
		nodesFrom: "ovd-guide",
		nodes:     []string{"198.18.33.11", "198.18.33.12"},
		addrs:     []string{"198.19.4.26/24 eth0", "198.19.4.27/24 eth0"},
	}, {
		dir:   "gluster",
		nodes: []string{"198.18.2.1", "198.18.2.2", "198.18.2.3", "198.18.2.4"},
		addrs: []string{
			"198.19.2.1/24 eth2", "198.19.2.2/24 eth2", "198.19.2.3/24 eth2", "198.19.2.4/24 eth2",
			"198.19.2.11/24 eth2", "198.19.2.12/24 eth2", "198.19.2.13/24 eth2", "198.19.2.14/24 eth2",
		},
	}, {
		dir:   "sambaxp",
		nodes: []string{"198.18.18.80", "198.18.18.81", "198.18.18.82"},
		addrs: []string{"198.19.17.101/22 eth1", "198.19.17.102/22 eth1", "198.19.17.103/22 eth1"},
	}, {
		dir:   "fsha-node-lists",
		nodes: []string{"198.18.0.1", "198.18.0.2", "# deleted", "198.18.0.4", "2001:2::4"},
		addrs: []string{
			"198.18.1.10/24 eth0",
			"198.18.1.11/24 eth0,bond0 0,1",
			"198.18.1.12/24 bond0.100 198.18.0.4,0",
			"2001:2:0:1::10/64 eth0 3,4",
			"2001:2:0:1::11/64 eth0 2001:2::4",
			"198.18.1.13/24 eth0 1",
		},
	}}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			nd := tt.nodesFrom
			if nd == "" {
				nd = tt.dir
			}
			nodes, err := LoadNodes(filepath.Join("testdata", nd, "nodes"))
			if err != nil {
				t.Fatal(err)
			}
			if got := strs(nodes); !reflect.DeepEqual(got, tt.nodes) {
				t.Errorf("nodes = %q, want %q", got, tt.nodes)
			}
			for i, n := range nodes {
				if n.PNN != i {
					t.Errorf("nodes[%d].PNN = %d", i, n.PNN)
				}
			}
			path := filepath.Join("testdata", tt.dir, "public_addresses")
			addrs, err := LoadPublicAddresses(path)
			if err != nil {
				t.Fatal(err)
			}
			if got := strs(addrs); !reflect.DeepEqual(got, tt.addrs) {
				t.Errorf("public addresses = %q, want %q", got, tt.addrs)
			}
			for _, a := range addrs {
				if a.File != path {
					t.Errorf("%v: File = %q, want %q", a, a.File, path)
				}
			}
			if err := ResolveNodeRefs(addrs, nodes); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestParsePublicAddresses(t *testing.T) {
	n := func(pnn int) NodeRef { return NodeRef{PNN: pnn} }
	a := func(s string) NodeRef { return NodeRef{PNN: -1, Addr: netip.MustParseAddr(s)} }
	tests := []struct {
		name  string
		in    string
		want  []PublicAddress // File is filled in by the test
		lines []string        // String() of each, when want is nil
	}{
		{name: "empty", in: ""},
		{name: "comments and blanks only", in: "# nothing\n\n   \n\t# indented comment\n"},
		{
			name: "host address kept, not masked",
			in:   "198.18.1.10/24 eth0\n",
			want: []PublicAddress{{Prefix: netip.MustParsePrefix("198.18.1.10/24"), Interfaces: []string{"eth0"}, Line: 1}},
		},
		{
			name: "line numbers count comments and blanks",
			in:   "# header\n\n198.18.1.10/24 eth0\n  # more\n198.18.1.11/32 eth1\n",
			want: []PublicAddress{
				{Prefix: netip.MustParsePrefix("198.18.1.10/24"), Interfaces: []string{"eth0"}, Line: 3},
				{Prefix: netip.MustParsePrefix("198.18.1.11/32"), Interfaces: []string{"eth1"}, Line: 5},
			},
		},
		{
			name:  "whitespace, tabs, CRLF, trailing comment, BOM",
			in:    "\uFEFF \t198.18.1.10/24\t eth0,eth1 \t# smb\r\n  198.18.1.11/24 eth0 #0,1\r\n",
			lines: []string{"198.18.1.10/24 eth0,eth1", "198.18.1.11/24 eth0"},
		},
		{
			name: "node lists",
			in:   "198.18.1.10/24 eth0 0\n198.18.1.11/24 eth0,eth1 2,0,198.18.0.2\n198.18.1.12/24 eth0 2001:2::1,[2001:2::2]\n",
			want: []PublicAddress{
				{Prefix: netip.MustParsePrefix("198.18.1.10/24"), Interfaces: []string{"eth0"}, Nodes: []NodeRef{n(0)}, Line: 1},
				{Prefix: netip.MustParsePrefix("198.18.1.11/24"), Interfaces: []string{"eth0", "eth1"}, Nodes: []NodeRef{n(2), n(0), a("198.18.0.2")}, Line: 2},
				{Prefix: netip.MustParsePrefix("198.18.1.12/24"), Interfaces: []string{"eth0"}, Nodes: []NodeRef{a("2001:2::1"), a("2001:2::2")}, Line: 3},
			},
		},
		{
			name: "IPv6",
			in:   "2001:2:0:1::10/64 eth0\n[2001:2:0:1::11]/64 eth0\n2001:2:0:1::12/128 eth0 1\n",
			lines: []string{
				"2001:2:0:1::10/64 eth0",
				"2001:2:0:1::11/64 eth0",
				"2001:2:0:1::12/128 eth0 1",
			},
		},
		{
			name:  "IPv4-mapped IPv6 is unmapped, in VIPs and node lists",
			in:    "::ffff:198.18.1.10/120 eth0 ::ffff:198.18.0.1\n",
			lines: []string{"198.18.1.10/24 eth0 198.18.0.1"},
		},
		{
			name:  "the kernel's interface name rules",
			in:    "198.18.1.10/24 abcdefghijklmno,eth0.100,br-lan,veth@x,eth#1\n",
			lines: []string{"198.18.1.10/24 abcdefghijklmno,eth0.100,br-lan,veth@x,eth#1"},
		},
		{
			name:  "/31 and /32 have no broadcast address",
			in:    "198.18.1.11/31 eth0\n198.18.1.255/32 eth0\n",
			lines: []string{"198.18.1.11/31 eth0", "198.18.1.255/32 eth0"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePublicAddresses("public_addresses", strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if tt.lines != nil {
				if s := strs(got); !reflect.DeepEqual(s, tt.lines) {
					t.Errorf("got %q, want %q", s, tt.lines)
				}
				return
			}
			for i := range tt.want {
				tt.want[i].File = "public_addresses"
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestParsePublicAddressesErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []wantErr
	}{
		{"bad IPv4", "198.18.1.300/24 eth0", []wantErr{{1, `invalid address "198.18.1.300/24": ParseAddr("198.18.1.300")`}}},
		{"not an address", "fileserver/24 eth0", []wantErr{{1, `invalid address "fileserver/24"`}}},
		{"missing prefix", "198.18.1.10 eth0", []wantErr{{1, `invalid address "198.18.1.10": missing prefix length`}}},
		{"empty prefix", "198.18.1.10/ eth0", []wantErr{{1, `invalid prefix length ""`}}},
		{"signed prefix", "198.18.1.10/+24 eth0", []wantErr{{1, `invalid prefix length "+24"`}}},
		{"netmask instead of prefix", "198.18.1.10/255.255.255.0 eth0", []wantErr{{1, `invalid prefix length "255.255.255.0"`}}},
		{"IPv4 prefix too long", "198.18.1.10/33 eth0", []wantErr{{1, "prefix length /33 out of range for IPv4 (1-32)"}}},
		{"IPv6 prefix too long", "2001:2::10/129 eth0", []wantErr{{1, "prefix length /129 out of range for IPv6 (1-128)"}}},
		{"huge prefix", "198.18.1.10/0000033 eth0", []wantErr{{1, `invalid prefix length "0000033"`}}},
		{"prefix 0", "198.18.1.10/0 eth0", []wantErr{{1, "prefix length /0 would route every destination"}}},
		{"mapped prefix too short", "::ffff:198.18.1.10/64 eth0", []wantErr{{1, "out of range for an IPv4-mapped address (96-128)"}}},
		{"zone", "fe80::1%eth0/64 eth0", []wantErr{{1, `zone "eth0" not allowed`}}},
		{"multicast", "239.1.1.1/24 eth0", []wantErr{{1, "multicast address; a public address must be unicast"}}},
		{"link-local multicast v4", "224.0.0.251/24 eth0", []wantErr{{1, "multicast address"}}},
		{"link-local multicast v6", "ff02::1/64 eth0", []wantErr{{1, "multicast address"}}},
		{"unspecified v4", "0.0.0.0/24 eth0", []wantErr{{1, "unspecified address"}}},
		{"unspecified v6", "::/64 eth0", []wantErr{{1, "unspecified address"}}},
		{"limited broadcast", "255.255.255.255/32 eth0", []wantErr{{1, "broadcast address;"}}},
		{"subnet broadcast", "198.18.1.255/24 eth0", []wantErr{{1, "broadcast address of 198.18.1.0/24"}}},
		{"loopback v4", "127.0.0.2/8 lo", []wantErr{{1, "loopback address"}}},
		{"loopback v6", "::1/128 lo", []wantErr{{1, "loopback address"}}},
		{"link-local v4", "169.254.1.1/16 eth0", []wantErr{{1, "link-local address"}}},
		{"link-local v6", "fe80::1/64 eth0", []wantErr{{1, "link-local address"}}},
		{"missing interface", "198.18.1.10/24", []wantErr{{1, "missing interface: want ADDR/PREFIX IFACE"}}},
		{"missing interface before comment", "198.18.1.10/24 # eth0", []wantErr{{1, "missing interface"}}},
		{"empty interface", "198.18.1.10/24 eth0,", []wantErr{{1, `invalid interface "": empty name`}}},
		{"interface too long", "198.18.1.10/24 abcdefghijklmnop", []wantErr{{1, `invalid interface "abcdefghijklmnop": longer than 15 bytes`}}},
		{"interface with slash", "198.18.1.10/24 eth0/1", []wantErr{{1, `invalid interface "eth0/1": contains '/'`}}},
		{"interface alias", "198.18.1.10/24 eth0:1", []wantErr{{1, `invalid interface "eth0:1": contains ':'`}}},
		{"interface dot", "198.18.1.10/24 ..", []wantErr{{1, `invalid interface ".."`}}},
		{"interface template", "198.18.1.10/24 eth%d", []wantErr{{1, "name template"}}},
		{"interface with vertical tab", "198.18.1.10/24 eth\v0", []wantErr{{1, "white space"}}},
		{"interface twice", "198.18.1.10/24 eth0,eth0", []wantErr{{1, `interface "eth0" listed twice`}}},
		{"too many fields", "198.18.1.10/24 eth0 0 1", []wantErr{{1, "too many fields (4)"}}},
		{"bad node item", "198.18.1.10/24 eth0 node1", []wantErr{{1, `invalid node "node1" in node list: want a node number (PNN) or a node address`}}},
		{"empty node item", "198.18.1.10/24 eth0 0,,1", []wantErr{{1, `invalid node "" in node list: empty item`}}},
		{"negative node", "198.18.1.10/24 eth0 -1", []wantErr{{1, `invalid node "-1"`}}},
		{"huge node", "198.18.1.10/24 eth0 99999999999999999999", []wantErr{{1, "node number out of range"}}},
		{"multicast node", "198.18.1.10/24 eth0 224.0.0.1", []wantErr{{1, `invalid node "224.0.0.1" in node list: multicast address`}}},
		{"'#' inside a field is no comment", "198.18.1.10/24 eth0 0#1", []wantErr{{1, `invalid node "0#1"`}}},
		{"node twice", "198.18.1.10/24 eth0 1,1", []wantErr{{1, "node 1 listed twice"}}},
		{"node address twice", "198.18.1.10/24 eth0 198.18.0.1,::ffff:198.18.0.1", []wantErr{{1, "node 198.18.0.1 listed twice"}}},
		{
			name: "duplicate VIP names the first line",
			in:   "198.18.1.10/24 eth0\n# comment\n198.18.1.10/24 eth1\n",
			want: []wantErr{{3, "duplicate public address 198.18.1.10, first on line 1"}},
		},
		{
			name: "duplicate VIP with another prefix length, or mapped",
			in:   "198.18.1.10/24 eth0\n198.18.1.10/25 eth1\n::ffff:198.18.1.10/120 eth0\n",
			want: []wantErr{
				{2, "duplicate public address 198.18.1.10, first on line 1"},
				{3, "duplicate public address 198.18.1.10, first on line 1"},
			},
		},
		{
			name: "all problems of a line",
			in:   "198.18.1.300/24 eth0:1,eth/0 x,y",
			want: []wantErr{
				{1, `invalid address "198.18.1.300/24"`},
				{1, `invalid interface "eth0:1"`},
				{1, `invalid interface "eth/0"`},
				{1, `invalid node "x"`},
				{1, `invalid node "y"`},
			},
		},
		{
			name: "line too long",
			in:   "198.18.1.10/24 eth0\n" + strings.Repeat("x", 70000) + "\n",
			want: []wantErr{{2, "read: bufio.Scanner: token too long"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParsePublicAddresses("public_addresses", strings.NewReader(tt.in))
			if got != nil {
				t.Errorf("got %v with errors, want nil: a bad file is refused whole", got)
			}
			checkErrors(t, "public_addresses", err, tt.want)
		})
	}
}

// TestAllErrorsAtOnce checks that a file with many problems reports every
// one of them, so an operator fixes them in one go.
func TestAllErrorsAtOnce(t *testing.T) {
	path := filepath.Join("testdata", "bad", "public_addresses")
	_, err := LoadPublicAddresses(path)
	checkErrors(t, path, err, []wantErr{
		{2, `invalid address "198.18.1.300/24"`},
		{3, `invalid address "198.18.1.10": missing prefix length`},
		{4, `invalid address "198.18.1.11/33": prefix length /33 out of range`},
		{5, "missing interface"},
		{6, `invalid interface "eth0/1"`},
		{7, `invalid interface "thisnameistoolong": longer than 15 bytes`},
		{8, "too many fields (4)"},
		{9, `invalid node "node1"`},
		{10, `invalid address "224.0.0.251/24": multicast address`},
		{12, "duplicate public address 198.18.1.17, first on line 11"},
	})

	path = filepath.Join("testdata", "bad", "nodes")
	_, err = LoadNodes(path)
	checkErrors(t, path, err, []wantErr{
		{2, `invalid node address "198.18.0.300"`},
		{3, "duplicate node address 198.18.0.1, first on line 1"},
	})
}

func TestParseNodes(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string // String() per PNN
		line []int    // source line per PNN
	}{
		{"one per line", "198.18.0.1\n198.18.0.2\n", []string{"198.18.0.1", "198.18.0.2"}, []int{1, 2}},
		{"blank lines take no PNN", "\n198.18.0.1\n  \n\t\n198.18.0.2\n\n", []string{"198.18.0.1", "198.18.0.2"}, []int{2, 5}},
		{"deleted node keeps later PNNs", "198.18.0.1\n#198.18.0.2\n198.18.0.3\n", []string{"198.18.0.1", "# deleted", "198.18.0.3"}, []int{1, 2, 3}},
		// As in CTDB: any comment line is a deleted node, so a header
		// comment moves every node up by one.
		{"comment line is a deleted node", "# our cluster\n198.18.0.1\n", []string{"# deleted", "198.18.0.1"}, []int{1, 2}},
		{"indented comment too", "198.18.0.1\n  \t# gone\n198.18.0.3\n", []string{"198.18.0.1", "# deleted", "198.18.0.3"}, []int{1, 2, 3}},
		{"whitespace, CRLF, trailing comment", " 198.18.0.1 \r\n\t198.18.0.2\t# b\r\n", []string{"198.18.0.1", "198.18.0.2"}, []int{1, 2}},
		{"IPv6, bracketed, mapped", "2001:2::1\n[2001:2::2]\n::ffff:198.18.0.3\n", []string{"2001:2::1", "2001:2::2", "198.18.0.3"}, []int{1, 2, 3}},
		{"loopback for one-host test clusters", "127.0.0.1\n127.0.0.2\n", []string{"127.0.0.1", "127.0.0.2"}, []int{1, 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, err := ParseNodes("nodes", strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			if got := strs(nodes); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
			for i, n := range nodes {
				if n.PNN != i || n.Line != tt.line[i] || n.File != "nodes" {
					t.Errorf("node %d: PNN %d, at %s:%d, want PNN %d at nodes:%d", i, n.PNN, n.File, n.Line, i, tt.line[i])
				}
				if n.Deleted == n.Addr.IsValid() {
					t.Errorf("node %d: Deleted %v with address %v", i, n.Deleted, n.Addr)
				}
			}
		})
	}
}

func TestParseNodesErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []wantErr
	}{
		{"empty file", "", []wantErr{{0, "nodes: no nodes listed"}}},
		{"blank file", "\n \n", []wantErr{{0, "no nodes listed"}}},
		{"all deleted", "#198.18.0.1\n#198.18.0.2\n", []wantErr{{0, "no live nodes: all 2 are commented out"}}},
		{"bad address", "198.18.0.1\n198.18.0.256\n", []wantErr{{2, `invalid node address "198.18.0.256": ParseAddr`}}},
		{"prefix", "198.18.0.1/24\n", []wantErr{{1, `invalid node address "198.18.0.1/24"`}}},
		{"host name", "fs1.example\n", []wantErr{{1, `invalid node address "fs1.example"`}}},
		{"address with port", "198.18.0.1:4379\n", []wantErr{{1, `invalid node address "198.18.0.1:4379"`}}},
		{"two per line", "198.18.0.1 198.18.0.2\n", []wantErr{{1, "too many fields (2): want one node address per line"}}},
		{"duplicate", "198.18.0.1\n198.18.0.2\n198.18.0.1\n", []wantErr{{3, "duplicate node address 198.18.0.1, first on line 1"}}},
		{"duplicate mapped", "198.18.0.1\n::ffff:198.18.0.1\n", []wantErr{{2, "duplicate node address 198.18.0.1, first on line 1"}}},
		{"unspecified", "0.0.0.0\n", []wantErr{{1, "unspecified address"}}},
		{"multicast", "ff02::1\n", []wantErr{{1, "multicast address"}}},
		{"broadcast", "255.255.255.255\n", []wantErr{{1, "broadcast address"}}},
		{"IPv6 link-local", "fe80::1\n", []wantErr{{1, "link-local address needs a zone"}}},
		{"zone", "fe80::1%eth0\n", []wantErr{{1, `zone "eth0" not allowed`}}},
		{
			name: "all problems, not the first only",
			in:   "198.18.0.1\nx\n#198.18.0.3\n198.18.0.1\n198.18.0.4 y\n",
			want: []wantErr{
				{2, `invalid node address "x"`},
				{4, "duplicate node address 198.18.0.1, first on line 1"},
				{5, "too many fields (2)"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes, err := ParseNodes("nodes", strings.NewReader(tt.in))
			if nodes != nil {
				t.Errorf("got %v with errors, want nil", nodes)
			}
			checkErrors(t, "nodes", err, tt.want)
		})
	}
}

func TestResolveNodeRefs(t *testing.T) {
	const nodesFile = "198.18.0.1\n#198.18.0.2\n198.18.0.3\n2001:2::4\n"
	tests := []struct {
		name string
		in   string // public_addresses
		want []wantErr
	}{
		{"no node lists", "198.18.1.10/24 eth0\n", nil},
		{"by PNN and address", "198.18.1.10/24 eth0 0,2\n198.18.1.11/24 eth0 198.18.0.3,2001:2::4\n", nil},
		{"PNN out of range", "198.18.1.10/24 eth0 0\n198.18.1.11/24 eth0 4\n", []wantErr{
			{2, "node 4 in node list: no such node: the nodes file lists 4 (PNN 0-3)"},
		}},
		{"deleted node", "198.18.1.10/24 eth0 1\n", []wantErr{
			{1, "node 1 in node list: node is deleted (commented out at nodes:2)"},
		}},
		{"unknown address", "198.18.1.10/24 eth0 198.18.0.2\n", []wantErr{
			{1, "node 198.18.0.2 in node list: no live node has this address"},
		}},
		{"same node twice", "198.18.1.10/24 eth0 2,198.18.0.3\n", []wantErr{
			{1, "node list names node 2 twice, as 2 and as 198.18.0.3"},
		}},
		{"VIP is a node address", "\n198.18.0.3/24 eth0\n", []wantErr{
			{2, "public address 198.18.0.3 is the address of node 2 (nodes:3)"},
		}},
		{"all problems", "198.18.1.10/24 eth0 9,1\n198.18.1.11/24 eth0 198.18.0.9\n", []wantErr{
			{1, "node 9 in node list: no such node"},
			{1, "node 1 in node list: node is deleted"},
			{2, "node 198.18.0.9 in node list"},
		}},
	}
	nodes, err := ParseNodes("nodes", strings.NewReader(nodesFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addrs, err := ParsePublicAddresses("public_addresses", strings.NewReader(tt.in))
			if err != nil {
				t.Fatal(err)
			}
			checkErrors(t, "public_addresses", ResolveNodeRefs(addrs, nodes), tt.want)
		})
	}
}

func TestNodeRefMatches(t *testing.T) {
	nodes, err := ParseNodes("nodes", strings.NewReader("198.18.0.1\n#198.18.0.2\n198.18.0.3\n"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		ref  NodeRef
		want []bool // per node
	}{
		{NodeRef{PNN: 0}, []bool{true, false, false}},
		{NodeRef{PNN: 1}, []bool{false, false, false}}, // deleted
		{NodeRef{PNN: -1, Addr: netip.MustParseAddr("198.18.0.3")}, []bool{false, false, true}},
		{NodeRef{PNN: -1, Addr: netip.MustParseAddr("198.18.0.2")}, []bool{false, false, false}},
	}
	for _, tt := range tests {
		for i, n := range nodes {
			if got := tt.ref.Matches(n); got != tt.want[i] {
				t.Errorf("%v.Matches(node %d) = %v, want %v", tt.ref, i, got, tt.want[i])
			}
		}
	}
}

func TestLineError(t *testing.T) {
	cause := errors.New("cause")
	tests := []struct {
		err  *LineError
		want string
	}{
		{&LineError{File: "public_addresses", Line: 3, Reason: `invalid address "x"`, Err: cause}, `public_addresses:3: invalid address "x": cause`},
		{&LineError{File: "nodes", Line: 2, Reason: "duplicate"}, "nodes:2: duplicate"},
		{&LineError{File: "nodes", Reason: "no nodes listed"}, "nodes: no nodes listed"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
	if !errors.Is(tests[0].err, cause) {
		t.Error("LineError does not unwrap to its cause")
	}
}

func TestLoadMissingFile(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadNodes(filepath.Join(dir, "nodes")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadNodes: %v, want fs.ErrNotExist", err)
	}
	if _, err := LoadPublicAddresses(filepath.Join(dir, "public_addresses")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadPublicAddresses: %v, want fs.ErrNotExist", err)
	}
}

func TestFormatRejectsUnwritable(t *testing.T) {
	var b strings.Builder
	if err := FormatNodes(&b, []Node{{PNN: 1, Addr: netip.MustParseAddr("198.18.0.1")}}); err == nil {
		t.Error("FormatNodes took a node out of PNN order")
	}
	if err := FormatNodes(&b, []Node{{PNN: 0}}); err == nil {
		t.Error("FormatNodes took a live node without address")
	}
	if err := FormatPublicAddresses(&b, []PublicAddress{{Prefix: netip.MustParsePrefix("198.18.1.10/24")}}); err == nil {
		t.Error("FormatPublicAddresses took an entry without interface")
	}
}
