package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/cilium/ebpf/btf"

	"github.com/urfave/cli/v2"
	"go.uber.org/zap"

	"github.com/fsha/fsha/dataplane"
)

func mapsCommand(e env) *cli.Command {
	return &cli.Command{
		Name:  "maps",
		Usage: "dump the pinned BPF maps, keys and values decoded with their BTF types (like bpftool map dump pinned PIN-PATH/NAME)",
		Flags: []cli.Flag{
			pinPathFlag(), jsonFlag(),
			&cli.StringFlag{Name: "map", Usage: "only this map: " + strings.Join(dataplane.MapNames(), ", ")},
			&cli.BoolFlag{Name: "raw", Usage: "keys and values as raw bytes (hex), not decoded"},
			&cli.IntFlag{Name: "limit", Value: 100, Usage: "at most this many entries per map (0: all)"},
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
			var types map[string][2]btf.Type
			if !c.Bool("raw") {
				if types, err = dataplane.MapTypes(); err != nil {
					return err
				}
			}
			limit := c.Int("limit")
			if c.Bool("json") {
				out := make([]mapDumpJSON, 0, len(dumps))
				for _, d := range dumps {
					out = append(out, decodeDump(d, types, limit))
				}
				return writeJSON(e.stdout, out)
			}
			for _, d := range dumps {
				printDump(e.stdout, decodeDump(d, types, limit))
			}
			return nil
		},
	}
}

// mapDumpJSON is one map of fsha maps: its entries decoded (or hex with
// --raw), at most the limit of them.
type mapDumpJSON struct {
	Name       string      `json:"name"`
	Type       string      `json:"type"`
	KeySize    uint32      `json:"key_size"`
	ValueSize  uint32      `json:"value_size"`
	MaxEntries uint32      `json:"max_entries"`
	Count      int         `json:"entries_dumped"`
	Left       int         `json:"entries_left_out,omitempty"`
	Entries    []entryJSON `json:"entries"`
}

type entryJSON struct {
	Key    any   `json:"key"`
	Value  any   `json:"value,omitempty"`
	PerCPU []any `json:"per_cpu,omitempty"`
}

// decodeDump decodes what types describes (nil: raw hex) and keeps at
// most limit entries (0: all). A key or value its type cannot read stays
// hex, with the reason.
func decodeDump(d dataplane.MapDump, types map[string][2]btf.Type, limit int) mapDumpJSON {
	out := mapDumpJSON{Name: d.Name, Type: d.Type, KeySize: d.KeySize, ValueSize: d.ValueSize, MaxEntries: d.MaxEntries,
		Count: len(d.Entries), Entries: []entryJSON{}}
	entries := d.Entries
	if limit > 0 && len(entries) > limit {
		out.Left = len(entries) - limit
		entries = entries[:limit]
		out.Count = limit
	}
	kv, typed := types[d.Name]
	read := func(i int, b []byte) any {
		if !typed {
			return spacedHex(b)
		}
		v, err := dataplane.DecodeBTF(kv[i], b)
		if err != nil {
			return spacedHex(b) + " (" + err.Error() + ")"
		}
		return v
	}
	for _, en := range entries {
		j := entryJSON{Key: read(0, en.Key)}
		switch {
		case en.PerCPU != nil:
			for _, v := range en.PerCPU {
				j.PerCPU = append(j.PerCPU, v)
			}
		case en.PerCPUValues != nil:
			for _, v := range en.PerCPUValues {
				j.PerCPU = append(j.PerCPU, read(1, v))
			}
		default:
			j.Value = read(1, en.Value)
		}
		out.Entries = append(out.Entries, j)
	}
	return out
}

func printDump(w io.Writer, d mapDumpJSON) {
	fmt.Fprintf(w, "%s: %s key %dB value %dB max_entries %d, %d entries\n",
		d.Name, d.Type, d.KeySize, d.ValueSize, d.MaxEntries, d.Count+d.Left)
	for _, en := range d.Entries {
		switch {
		case en.PerCPU != nil:
			fmt.Fprintf(w, "  key: %v\n", en.Key)
			for cpu, v := range en.PerCPU {
				fmt.Fprintf(w, "    cpu %d: %v\n", cpu, v)
			}
		default:
			fmt.Fprintf(w, "  key: %v  value: %v\n", en.Key, en.Value)
		}
	}
	if d.Left > 0 {
		fmt.Fprintf(w, "  ... %d more (--limit 0 for all)\n", d.Left)
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
