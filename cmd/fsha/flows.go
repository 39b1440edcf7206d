package main

import (
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
}

func toFlowJSON(f dataplane.Flow) flowJSON {
	return flowJSON{
		VIP: f.VIP.String(), VPort: f.VIPPort, Client: f.Client.String(), CPort: f.ClientPort,
		Proto: dataplane.Proto(f.VIPPort), State: f.State.String(),
		BytesIn: f.BytesIn, BytesOut: f.BytesOut, PacketsIn: f.PacketsIn, PacketsOut: f.PacketsOut,
		FirstSeen: f.FirstSeen.UTC(), LastSeen: f.LastSeen.UTC(),
		SeqIn: f.SeqIn, AckIn: f.AckIn, SeqOut: f.SeqOut, AckOut: f.AckOut,
		WindowIn: f.WindowIn, WindowOut: f.WindowOut,
	}
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
			if c.Bool("json") {
				out := make([]flowJSON, 0, len(flows))
				for _, f := range flows {
					out = append(out, toFlowJSON(f))
				}
				return writeJSON(e.stdout, out)
			}
			return printFlows(e, flows)
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

func printFlows(e env, flows []dataplane.Flow) error {
	now := time.Now()
	t := newTable(e.stdout, "VIP", "CLIENT", "PROTO", "STATE", "IN", "OUT", "PKTS IN/OUT", "AGE", "IDLE")
	for _, f := range flows {
		t.row(netip.AddrPortFrom(f.VIP, f.VIPPort).String(), netip.AddrPortFrom(f.Client, f.ClientPort).String(),
			dataplane.Proto(f.VIPPort), f.State.String(), humanBytes(f.BytesIn), humanBytes(f.BytesOut),
			fmt.Sprintf("%d/%d", f.PacketsIn, f.PacketsOut), age(now, f.FirstSeen), age(now, f.LastSeen))
	}
	if err := t.flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(e.stdout, "%d flows\n", len(flows))
	return err
}
