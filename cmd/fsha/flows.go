package main

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/dataplane"
)

// flowJSON is the stable JSON form of a flow for scripts.
type flowJSON struct {
	VIP        string    `json:"vip"`
	VPort      uint16    `json:"vport"`
	Client     string    `json:"client"`
	CPort      uint16    `json:"cport"`
	Proto      string    `json:"proto"`
	State      string    `json:"state"`
	BytesIn    uint64    `json:"bytes_in"`
	BytesOut   uint64    `json:"bytes_out"`
	PacketsIn  uint64    `json:"packets_in"`
	PacketsOut uint64    `json:"packets_out"`
	FirstSeen  time.Time `json:"first_seen"`
	LastSeen   time.Time `json:"last_seen"`
	SeqIn      uint32    `json:"seq_in"`
	AckIn      uint32    `json:"ack_in"`
	SeqOut     uint32    `json:"seq_out"`
	AckOut     uint32    `json:"ack_out"`
	WindowIn   uint16    `json:"window_in"`
	WindowOut  uint16    `json:"window_out"`
	// With --all: the node holding the socket, and whether this node
	// steers the connection's packets to it (a draining VIP).
	Owner string `json:"owner,omitempty"`
	Steer bool   `json:"steer,omitempty"`
}

func toFlowJSON(f dataplane.Flow) flowJSON {
	return flowJSON{
		VIP: f.VIP.String(), VPort: f.VIPPort, Client: f.Client.String(), CPort: f.ClientPort,
		Proto: dataplane.Proto(f.VIPPort), State: f.State.String(),
		BytesIn: f.BytesIn, BytesOut: f.BytesOut, PacketsIn: f.PacketsIn, PacketsOut: f.PacketsOut,
		FirstSeen: utc(f.FirstSeen), LastSeen: utc(f.LastSeen),
		SeqIn: f.SeqIn, AckIn: f.AckIn, SeqOut: f.SeqOut, AckOut: f.AckOut,
		WindowIn: f.WindowIn, WindowOut: f.WindowOut,
	}
}

func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

type flowFilter struct {
	vip, client netip.Addr
	port        uint16
}

func (ff flowFilter) match(f dataplane.Flow) bool {
	return (!ff.vip.IsValid() || ff.vip == f.VIP) &&
		(!ff.client.IsValid() || ff.client == f.Client) &&
		(ff.port == 0 || ff.port == f.VIPPort)
}

func parseFlowFilter(c *cli.Context) (flowFilter, error) {
	var ff flowFilter
	var err error
	if s := c.String("vip"); s != "" {
		if ff.vip, err = netip.ParseAddr(s); err != nil {
			return ff, fmt.Errorf("--vip: %w", err)
		}
		ff.vip = ff.vip.Unmap()
	}
	if s := c.String("client"); s != "" {
		if ff.client, err = netip.ParseAddr(s); err != nil {
			return ff, fmt.Errorf("--client: %w", err)
		}
		ff.client = ff.client.Unmap()
	}
	if s := c.String("port"); s != "" {
		p, err := strconv.ParseUint(s, 10, 16)
		if err != nil {
			return ff, fmt.Errorf("--port: invalid port %q", s)
		}
		ff.port = uint16(p)
	}
	return ff, nil
}

func flowsCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "flows",
		Usage: "list the tracked connections (reads the pinned maps: works while the daemon is down)",
		Flags: []cli.Flag{
			pinPathFlag(), jsonFlag(),
			&cli.StringFlag{Name: "vip", Usage: "only connections to this VIP"},
			&cli.StringFlag{Name: "client", Usage: "only connections from this client address"},
			&cli.StringFlag{Name: "port", Usage: "only connections to this VIP port"},
			&cli.BoolFlag{Name: "all", Usage: "also the other nodes' connections, as replicated here, with their owner"},
			runDirFlag(),
		},
		Action: func(c *cli.Context) error {
			ff, err := parseFlowFilter(c)
			if err != nil {
				return err
			}
			maps, err := dataplane.OpenPinned(c.String("pin-path"))
			if err != nil {
				return err
			}
			defer maps.Close()
			var flows []dataplane.Flow
			err = maps.ForEachFlow(func(f dataplane.Flow) bool {
				if ff.match(f) {
					flows = append(flows, f)
				}
				return true
			})
			if err != nil {
				return err
			}
			sortFlows(flows)
			out := make([]flowJSON, 0, len(flows))
			for _, f := range flows {
				out = append(out, toFlowJSON(f))
			}
			if c.Bool("all") {
				if out, err = withPeerFlows(c, maps, ff, out); err != nil {
					return err
				}
			}
			if c.Bool("json") {
				return writeJSON(e.stdout, out)
			}
			return printFlows(e, out, c.Bool("all"))
		},
	}
}

func sortFlows(flows []dataplane.Flow) {
	slices.SortFunc(flows, func(a, b dataplane.Flow) int {
		if c := a.VIP.Compare(b.VIP); c != 0 {
			return c
		}
		if a.VIPPort != b.VIPPort {
			return int(a.VIPPort) - int(b.VIPPort)
		}
		if c := a.Client.Compare(b.Client); c != 0 {
			return c
		}
		return int(a.ClientPort) - int(b.ClientPort)
	})
}

// withPeerFlows adds the replicated flows and names every flow's owner,
// by address when the daemon answers, else by node number.
func withPeerFlows(c *cli.Context, maps *dataplane.PinnedMaps, ff flowFilter, out []flowJSON) ([]flowJSON, error) {
	self, names := "local", map[int]string{}
	ctx, cancel := context.WithTimeout(c.Context, time.Second)
	defer cancel()
	if st, err := adminClient(c).Status(ctx); err == nil {
		for _, n := range st.Nodes {
			names[n.PNN] = n.Address
			if n.This {
				self = n.Address
			}
		}
	}
	for i := range out {
		out[i].Owner = self
	}
	err := maps.ForEachPeerFlow(func(pf dataplane.PeerFlow) bool {
		f := dataplane.Flow{VIP: pf.VIP, VIPPort: pf.VIPPort, Client: pf.Client, ClientPort: pf.ClientPort, LastSeen: pf.LastSeen}
		if !ff.match(f) {
			return true
		}
		j := toFlowJSON(f)
		j.State, j.FirstSeen = "replicated", time.Time{}
		j.Owner, j.Steer = names[pf.Owner], pf.Steer
		if j.Owner == "" {
			j.Owner = "pnn:" + strconv.Itoa(pf.Owner)
		}
		out = append(out, j)
		return true
	})
	return out, err
}

func printFlows(e env, flows []flowJSON, all bool) error {
	now := time.Now()
	header := []string{"VIP", "CLIENT", "PROTO", "STATE", "IN", "OUT", "PKTS IN/OUT", "AGE", "IDLE"}
	if all {
		header = append(header, "OWNER")
	}
	t := newTable(e.stdout, header...)
	for _, f := range flows {
		vip, client := netip.MustParseAddr(f.VIP), netip.MustParseAddr(f.Client)
		row := []string{netip.AddrPortFrom(vip, f.VPort).String(), netip.AddrPortFrom(client, f.CPort).String(),
			f.Proto, f.State, humanBytes(f.BytesIn), humanBytes(f.BytesOut),
			fmt.Sprintf("%d/%d", f.PacketsIn, f.PacketsOut), age(now, f.FirstSeen), age(now, f.LastSeen)}
		if all {
			owner := f.Owner
			if f.Steer {
				owner += " (steered)"
			}
			row = append(row, owner)
		}
		t.row(row...)
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(e.stdout, "%d flows\n", len(flows))
	return err
}
