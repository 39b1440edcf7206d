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
			out := make([]dataplane.FlowRecord, 0, len(flows))
			for _, f := range flows {
				out = append(out, f.Record())
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
func withPeerFlows(c *cli.Context, maps *dataplane.PinnedMaps, ff flowFilter, out []dataplane.FlowRecord) ([]dataplane.FlowRecord, error) {
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
		j := f.Record()
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

func printFlows(e env, flows []dataplane.FlowRecord, all bool) error {
	now := time.Now()
	header := []string{"VIP", "CLIENT", "PROTO", "STATE", "IN", "OUT", "PKTS IN/OUT", "AGE", "IDLE"}
	if all {
		header = append(header, "OWNER")
	}
	t := newTable(e.stdout, header...)
	for _, f := range flows {
		row := []string{netip.AddrPortFrom(f.VIP, f.VPort).String(), netip.AddrPortFrom(f.Client, f.CPort).String(),
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
