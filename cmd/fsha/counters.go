package main

import (
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
			if c.Bool("json") {
				return writeJSON(e.stdout, ctrs)
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
				{"  steered to owner", in.Steered, out.Steered},
				{"  steer errors", in.SteerErrors, out.SteerErrors},
				{"  parse errors", in.ParseErrors, out.ParseErrors},
				{"flows created", in.Created, out.Created},
				{"flows closed", in.Closed, out.Closed},
				{"evicted (table full)", in.Evicted, out.Evicted},
				{"events lost", in.EventsLost, out.EventsLost},
				{"map errors", in.MapErrors, out.MapErrors},
			} {
				t.row(r.name, strconv.FormatUint(r.in, 10), strconv.FormatUint(r.out, 10))
			}
			t.row("live flows", strconv.FormatUint(ctrs.Flows, 10), "")
			return t.flush()
		},
	}
}
