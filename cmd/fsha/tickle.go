package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
)

// tickleCommand is `fsha tickle VIP`: what CTDB's tickle list does on a
// takeover, on demand.
func tickleCommand(e env) *cli.Command {
	return &cli.Command{
		Name:      "tickle",
		Usage:     "make every known client of a VIP this node holds reconnect now (tickle ACKs)",
		ArgsUsage: "VIP",
		Description: "Sends a tickle ACK to every connection to VIP that other nodes replicated here:\n" +
			"each client answers with a challenge ACK, this node's stack resets it, and the\n" +
			"client reconnects at once. Run it on the VIP's owner (fsha ip).",
		Flags: []cli.Flag{runDirFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			args, err := wantArgs(c, "VIP")
			if err != nil {
				return err
			}
			vip, err := parseVIPArg("tickle", args[0])
			if err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				res, err := cl.Tickle(c.Context, vip)
				if err != nil {
					return err
				}
				if c.Bool("json") {
					return writeJSON(w, res)
				}
				_, err = fmt.Fprintf(w, "tickled %d connections of %s (%d segments, first round in %v, %d resets from this node's stack)\n",
					res.Conns, res.VIP, res.Sent, res.FirstRound.Round(1000), res.Resets)
				return err
			})
		},
	}
}
