package main

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/dataplane"
)

// IPInfo is `fsha ipinfo VIP`: one VIP as this node sees it, with its
// connections (this node's own and those replicated from other nodes, read
// from the pinned maps) and its latest takeover or release here.
type IPInfo struct {
	admin.IP
	// Conns counts the connections to the VIP that this node tracks;
	// Replicated those of the other nodes replicated here, by owner
	// address. ConnsError says why they could not be counted.
	Conns      int            `json:"connections"`
	Replicated map[string]int `json:"replicated_connections"`
	ConnsError string         `json:"connections_error,omitempty"`
	// Last is this node's latest takeover or release of the VIP.
	Last *admin.Takeover `json:"last_change,omitempty"`
	// Steering is how each of the VIP's interfaces here steers a drain's
	// old connections (from the pins and the kernel).
	Steering []dataplane.SteerState `json:"steering,omitempty"`
}

func ipinfoCommand(e env) *cli.Command {
	return &cli.Command{
		Name:      "ipinfo",
		Usage:     "show one VIP: owner, epoch, lease, drain, connections and its latest change here (ctdb ipinfo)",
		ArgsUsage: "VIP",
		Flags:     []cli.Flag{runDirFlag(), pinPathFlag(), jsonFlag()},
		Action: func(c *cli.Context) error {
			args, err := wantArgs(c, "VIP")
			if err != nil {
				return err
			}
			vip, err := parseVIPArg("ipinfo", args[0])
			if err != nil {
				return err
			}
			return onNodes(c, e, func(cl *admin.Client, here bool, w io.Writer) error {
				ips, err := cl.IPs(c.Context)
				if err != nil {
					return err
				}
				var info IPInfo
				found := false
				for _, ip := range ips {
					if vipAddr(ip.VIP) == vip {
						info.IP, found = ip, true
					}
				}
				if !found {
					return fmt.Errorf("ipinfo: %s is not a public address of this cluster (fsha ip lists them)", vip)
				}
				if tl, err := cl.Timeline(c.Context); err == nil {
					for i := len(tl) - 1; i >= 0; i-- {
						if vipAddr(tl[i].VIP) == vip {
							info.Last = &tl[i]
							break
						}
					}
				}
				names := map[int]string{}
				if st, err := cl.Status(c.Context); err == nil {
					for _, n := range st.Nodes {
						names[n.PNN] = n.Address
					}
				}
				info.Replicated = map[string]int{}
				// The connections are in each node's own maps: another
				// node's are counted there (fsha ipinfo on that node).
				if !here {
					info.ConnsError = "counted in each node's own maps: run fsha ipinfo on that node"
				} else if err := countConns(c.String("pin-path"), &info, names); err != nil {
					info.ConnsError = err.Error()
				}
				if c.Bool("json") {
					return writeJSON(w, info)
				}
				return printIPInfo(w, info, time.Now())
			})
		},
	}
}

// countConns counts the VIP's connections in the pinned maps.
func countConns(pinPath string, info *IPInfo, names map[int]string) error {
	vip := vipAddr(info.VIP)
	maps, err := dataplane.OpenPinned(pinPath)
	if err != nil {
		return err
	}
	defer maps.Close()
	if steer, err := maps.SteerStates(); err == nil {
		ifaces := strings.Split(info.Iface, ",")
		for _, s := range steer {
			if slices.Contains(ifaces, s.Interface) {
				info.Steering = append(info.Steering, s)
			}
		}
	}
	if err := maps.ForEachFlow(func(f dataplane.Flow) bool {
		if f.VIP == vip {
			info.Conns++
		}
		return true
	}); err != nil {
		return err
	}
	return maps.ForEachPeerFlow(func(pf dataplane.PeerFlow) bool {
		if pf.VIP == vip {
			owner := names[pf.Owner]
			if owner == "" {
				owner = fmt.Sprintf("pnn:%d", pf.Owner)
			}
			info.Replicated[owner]++
		}
		return true
	})
}

// printIPInfo prints one field per line, as ctdb ipinfo does.
func printIPInfo(w io.Writer, info IPInfo, now time.Time) error {
	var b strings.Builder
	line := func(k, v string) { fmt.Fprintf(&b, "%-14s %s\n", k+":", v) }
	line("VIP", info.VIP)
	line("Interfaces", info.Iface)
	owner := "none"
	if info.Owner != "" {
		owner = fmt.Sprintf("%s (pnn %d), epoch %d", info.Owner, info.PNN, info.Epoch)
		if info.LeaseLeft != 0 {
			owner += fmt.Sprintf(", lease left %v", info.LeaseLeft.Round(time.Millisecond))
		}
	}
	line("Owner", owner)
	line("State", info.State)
	if len(info.Steering) > 0 {
		var st []string
		for _, s := range info.Steering {
			st = append(st, fmt.Sprintf("%s by %s (xdp %s, driver %s)", s.Interface, s.Steer, s.XDPMode, s.Driver))
		}
		line("Steering", strings.Join(st, "; "))
	}
	if info.Target != "" && info.Target != info.Owner {
		line("Moving to", info.Target)
	}
	if info.DrainingFrom != "" {
		line("Draining on", info.DrainingFrom+" (serves the old connections, steered to it)")
	}
	switch {
	case info.ConnsError != "":
		line("Connections", "unknown: "+info.ConnsError)
	default:
		var rep []string
		for owner, n := range info.Replicated {
			rep = append(rep, fmt.Sprintf("%d of %s", n, owner))
		}
		s := fmt.Sprintf("%d tracked here", info.Conns)
		if len(rep) > 0 {
			slices.Sort(rep)
			s += "; replicated: " + strings.Join(rep, ", ")
		}
		line("Connections", s)
	}
	if l := info.Last; l != nil && len(l.Steps) > 0 {
		at := l.Steps[0].At
		s := fmt.Sprintf("%s %v ago", l.Kind, now.Sub(at).Round(time.Second))
		if l.From != "" {
			s += " from " + l.From
		}
		if l.Reason != "" {
			s += " (" + l.Reason + ")"
		}
		last := l.Steps[len(l.Steps)-1]
		s += fmt.Sprintf(", %s after %v", last.Step, last.Took.Round(time.Millisecond))
		if l.Error != "" {
			s += ", error: " + l.Error
		}
		line("Last change", s)
	} else {
		line("Last change", "none on this node since its start")
	}
	_, err := io.WriteString(w, b.String())
	return err
}
