package main

import (
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

func mapsCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "maps",
		Usage: "dump the raw pinned BPF maps (like bpftool map dump pinned PIN-PATH/NAME)",
		Flags: []cli.Flag{
			pinPathFlag(), jsonFlag(),
			&cli.StringFlag{Name: "map", Usage: "only this map: " + strings.Join(dataplane.MapNames(), ", ")},
		},
		Action: func(c *cli.Context) error {
			maps, err := dataplane.OpenPinned(c.String("pin-path"))
			if err != nil {
				return err
			}
			defer maps.Close()
			dumps, err := maps.Dump(c.String("map"))
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return writeJSON(e.stdout, dumps)
			}
			for _, d := range dumps {
				fmt.Fprintf(e.stdout, "%s: %s key %dB value %dB max_entries %d, %d entries\n",
					d.Name, d.Type, d.KeySize, d.ValueSize, d.MaxEntries, len(d.Entries))
				for _, en := range d.Entries {
					if en.PerCPU != nil {
						fmt.Fprintf(e.stdout, "  key: %s  per-cpu: %v\n", spacedHex(en.Key), en.PerCPU)
						continue
					}
					if en.PerCPUValues != nil {
						fmt.Fprintf(e.stdout, "  key: %s\n", spacedHex(en.Key))
						for cpu, v := range en.PerCPUValues {
							fmt.Fprintf(e.stdout, "    cpu %d: %s\n", cpu, spacedHex(v))
						}
						continue
					}
					fmt.Fprintf(e.stdout, "  key: %s  value: %s\n", spacedHex(en.Key), spacedHex(en.Value))
				}
			}
			return nil
		},
	}
}

// spacedHex prints bytes as bpftool does: "0a 00 00 01".
func spacedHex(b []byte) string {
	s := hex.EncodeToString(b)
	var sb strings.Builder
	for i := 0; i < len(s); i += 2 {
		if i > 0 {
			sb.WriteByte(' ')
		}
		sb.WriteString(s[i : i+2])
	}
	return sb.String()
}

func unloadCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "unload",
		Usage: "detach the programs and remove the pinned maps: every tracked flow is forgotten",
		Flags: []cli.Flag{pinPathFlag(), logLevelFlag(), logFormatFlag()},
		Action: func(c *cli.Context) error {
			log, err := newLogger(c, e.stderr)
			if err != nil {
				return err
			}
			if err := dataplane.Unload(log, c.String("pin-path")); err != nil {
				return err
			}
			log.Info("unloaded", zap.String("pin_path", c.String("pin-path")))
			return nil
		},
	}
}
