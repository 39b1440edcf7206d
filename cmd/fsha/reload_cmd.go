package main

import (
	"fmt"
	"io"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
)

// reloadCommand is fsha reload (ctdb reloadips, reloadnodes): the daemon
// checks its configuration files and restarts in place with them, as
// SIGHUP and systemctl reload do; -n all reloads every node at once, which
// keeps the time the nodes run different files short (a node whose files
// differ from the majority's holds no VIP meanwhile): the others first,
// through this node's daemon, then this node.
func reloadCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "reload",
		Usage: "check the configuration files and restart fsha in place with them (VIPs and connections stay); a refused configuration leaves the running one",
		Flags: []cli.Flag{runDirFlag()},
		Action: func(c *cli.Context) error {
			if _, err := wantArgs(c); err != nil {
				return err
			}
			return onNodesThisLast(c, e, func(cl *admin.Client, _ bool, w io.Writer) error {
				if err := cl.Reload(c.Context); err != nil {
					return err
				}
				_, err := fmt.Fprintln(w, "configuration checked: restarting in place with it")
				return err
			})
		},
	}
}
