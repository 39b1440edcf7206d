package main

import (
	"fmt"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/dataplane"
)

func countersCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "counters",
		Usage: "show the data plane's packet and flow counters",
		Flags: []cli.Flag{pinPathFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			maps, err := dataplane.OpenPinned(c.String("pin-path"))
			if err != nil {
				return err
			}
			defer maps.Close()
			ctrs, err := maps.ReadCounters()
			if err != nil {
				return err
			}
			steer, err := maps.SteerStates()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(e.stdout, struct {
					dataplane.Counters
					Steering []dataplane.SteerState `json:"steering"`
				}{ctrs, steer})
			}
			t := newTable(e.stdout, "COUNTER", "INGRESS (XDP)", "EGRESS (TC)")
			in, out := ctrs.Ingress, ctrs.Egress
			for _, r := range []struct {
				name    string
				in, out uint64
			}{
				{"packets", in.Packets, out.Packets},
				{"  tracked", in.Tracked, out.Tracked},
				{"  vip, no flow", in.Untracked, out.Untracked},
				{"  other traffic", in.Other, out.Other},
				{"  fragments", in.Fragments, out.Fragments},
				{"  fenced (dropped)", in.Fenced, out.Fenced},
				{"  arp sent as probe", in.ARPProbed, out.ARPProbed},
				{"  steered to owner", in.Steered, out.Steered},
				{"  steer errors", in.SteerErrors, out.SteerErrors},
				{"  passed to tc to steer", in.SteerHandoffs, out.SteerHandoffs},
				{"  parse errors", in.ParseErrors, out.ParseErrors},
				{"flows created", in.Created, out.Created},
				{"flows closed", in.Closed, out.Closed},
				{"evicted (table full)", in.Evicted, out.Evicted},
				{"events lost", in.EventsLost, out.EventsLost},
				{"map errors", in.MapErrors, out.MapErrors},
				{"tc ingress: steered", in.TCSteered, out.TCSteered},
			} {
				t.row(r.name, strconv.FormatUint(r.in, 10), strconv.FormatUint(r.out, 10))
			}
			t.row("live flows", strconv.FormatUint(ctrs.Flows, 10), "")
			if err := t.flush(); err != nil || len(steer) == 0 {
				return err
			}
			// how each interface steers a planned move's old connections
			fmt.Fprintln(e.stdout)
			st := newTable(e.stdout, "INTERFACE", "DRIVER", "XDP", "STEERING")
			for _, s := range steer {
				st.row(s.Interface, s.Driver, s.XDPMode, s.Steer)
			}
			return st.flush()
		},
	}
}
