package lab

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Network faults beyond Partition, made with nftables in the switch
// namespace: the hosts are never touched, as a broken cable, switch port
// or firewall leaves the servers untouched, and nothing a host does (a
// daemon flushing its rules, a link flap inside the node) undoes them.
//
// Where each fault sits, per host h (its bridge-side veth is the switch
// port named h.Role):
//
//   - FromHost faults (loss, cut) in a netdev ingress chain on the port:
//     one decision per frame h sends, before the bridge floods it, as a
//     lossy cable would; a lost broadcast is lost for every receiver.
//   - ToHost faults (loss, cut, duplication) in a netdev egress chain on
//     the port: one decision per frame the switch delivers to h.
//   - FromHost duplication: a bridge forward rule marks some of h's
//     frames and the egress chain of the port they leave by sends a copy
//     (nft dup exists in the netdev family only). A broadcast is cloned
//     per port before the forward hook, so its copies are decided per
//     receiver.
//   - One-way partitions in the bridge forward chain, by input and output
//     port, so they hold whichever bridge Partition moved a port to.
//
// Delay is not offered: this kernel has neither netem nor fq (which the
// EDT way to delay, a BPF program setting skb->tstamp, needs); TBF only
// delays under load by queueing, and a userspace relay would change who
// sends the frames.
//
// The lab keeps the wanted faults and, on every change, replaces both
// nftables tables in one `nft -f` transaction: the kernel holds exactly
// the faults asked for, never a half-applied set. The file stays in the
// switch's directory (faults.nft) for post-mortems.

// Direction is a side of a host's link, seen from the host.
type Direction uint8

const (
	// ToHost is what the switch delivers to the host.
	ToHost Direction = 1 << iota
	// FromHost is what the host sends into the switch.
	FromHost
	// BothWays is ToHost and FromHost.
	BothWays = ToHost | FromHost
)

func (d Direction) String() string {
	switch d {
	case ToHost:
		return "to-host"
	case FromHost:
		return "from-host"
	case BothWays:
		return "both-ways"
	}
	return "direction(" + strconv.Itoa(int(d)) + ")"
}

const (
	faultTable = "fsha_faults"
	// markCopy tags a copy dup made, so that the egress chain it passes
	// again neither drops nor copies it again (dup re-enters the chain:
	// an unguarded `dup` to the same port copies each frame three times).
	markCopy = 0xf5a1
	// markDupFrom tags, in the bridge forward chain, a frame from a host
	// with FromHost duplication; the egress chain of its way out copies it.
	markDupFrom = 0xf5a2
	// maxFlaps bounds FlapOptions.Times.
	maxFlaps = 1000
)

// faultSet is the faults a lab wants, by switch port (host role).
type faultSet struct {
	mu      sync.Mutex
	oneWay  map[[2]string]bool // {from, to} ports
	loss    map[string]rates
	dup     map[string]rates
	cut     map[string]bool
	down    map[string]bool // ports Unplug took down
	cleanup bool            // the Close step that drops the tables is registered
}

// rates are percentages of frames per direction.
type rates struct{ to, from int }

func (r rates) set(percent int, d Direction) rates {
	if d&ToHost != 0 {
		r.to = percent
	}
	if d&FromHost != 0 {
		r.from = percent
	}
	return r
}

func setRates(m *map[string]rates, port string, percent int, d Direction) {
	if *m == nil {
		*m = map[string]rates{}
	}
	r := (*m)[port].set(percent, d)
	if r == (rates{}) {
		delete(*m, port)
		return
	}
	(*m)[port] = r
}

// port checks that h is a node or client of this lab and returns its
// switch port.
func (l *Lab) port(h *Host) (string, error) {
	if h == nil || h.lab != l || h == l.Switch {
		return "", errors.New("not a node or client of this lab")
	}
	return h.Role, nil
}

func directions(dirs []Direction) (Direction, error) {
	if len(dirs) == 0 {
		return BothWays, nil
	}
	var d Direction
	for _, x := range dirs {
		if x == 0 || x&^BothWays != 0 {
			return 0, fmt.Errorf("bad direction %d", x)
		}
		d |= x
	}
	return d, nil
}

// PartitionOneWay makes every frame a host of from sends to a host of to
// vanish, while to's frames still reach from. ARP and IPv6 neighbour
// solicitations and advertisements still pass: the fault sits above
// address resolution, like an ACL or a one-way route, so the direction
// that works keeps working once neighbour entries expire (a fault that
// ate ARP too would, within seconds, stop both ways). It adds to earlier
// one-way partitions and to Partition; HealFaults ends it.
func (l *Lab) PartitionOneWay(from, to []*Host) error {
	var pairs [][2]string
	for _, a := range from {
		pa, err := l.port(a)
		if err != nil {
			return fmt.Errorf("one-way partition: %w", err)
		}
		for _, b := range to {
			pb, err := l.port(b)
			if err != nil {
				return fmt.Errorf("one-way partition: %w", err)
			}
			if pa != pb {
				pairs = append(pairs, [2]string{pa, pb})
			}
		}
	}
	return l.changeFaults("one-way partition", func(f *faultSet) {
		if f.oneWay == nil {
			f.oneWay = map[[2]string]bool{}
		}
		for _, p := range pairs {
			f.oneWay[p] = true
		}
	}, zap.Any("pairs", pairs))
}

// Loss drops percent of the frames on h's link in the given directions
// (both when none), each frame on its own (nft numgen random): a lossy
// cable. It replaces the rate set before for those directions; 0 ends
// the loss.
func (l *Lab) Loss(h *Host, percent int, dirs ...Direction) error {
	return l.setRate("loss", h, percent, dirs, func(f *faultSet) *map[string]rates { return &f.loss })
}

// Duplicate delivers twice percent of the frames on h's link in the given
// directions (both when none). It replaces the rate set before for those
// directions; 0 ends it.
func (l *Lab) Duplicate(h *Host, percent int, dirs ...Direction) error {
	return l.setRate("duplicate", h, percent, dirs, func(f *faultSet) *map[string]rates { return &f.dup })
}

func (l *Lab) setRate(what string, h *Host, percent int, dirs []Direction, m func(*faultSet) *map[string]rates) error {
	port, err := l.port(h)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if percent < 0 || percent > 100 {
		return fmt.Errorf("%s on %s: %d%%, want 0 to 100", what, port, percent)
	}
	d, err := directions(dirs)
	if err != nil {
		return fmt.Errorf("%s on %s: %w", what, port, err)
	}
	return l.changeFaults(what, func(f *faultSet) { setRates(m(f), port, percent, d) },
		zap.String("port", port), zap.Int("percent", percent), zap.Stringer("dir", d))
}

// Cut drops every frame on h's link, both ways, at the switch port. The
// link stays up on both ends: h cannot tell, as with a dead switch port
// or an upstream fault. Uncut restores it.
func (l *Lab) Cut(h *Host) error { return l.setCut(h, true) }

// Uncut ends a Cut.
func (l *Lab) Uncut(h *Host) error { return l.setCut(h, false) }

func (l *Lab) setCut(h *Host, cut bool) error {
	port, err := l.port(h)
	if err != nil {
		return fmt.Errorf("cut: %w", err)
	}
	return l.changeFaults("cut", func(f *faultSet) {
		if f.cut == nil {
			f.cut = map[string]bool{}
		}
		if cut {
			f.cut[port] = true
		} else {
			delete(f.cut, port)
		}
	}, zap.String("port", port), zap.Bool("cut", cut))
}

// Unplug takes h's switch port down: h's eth0 loses its carrier, as when
// a cable is pulled, and h sees it (unlike Cut). Plug brings it back.
func (l *Lab) Unplug(h *Host) error { return l.setPlugged(h, false) }

// Plug ends an Unplug.
func (l *Lab) Plug(h *Host) error { return l.setPlugged(h, true) }

func (l *Lab) setPlugged(h *Host, up bool) error {
	port, err := l.port(h)
	if err != nil {
		return fmt.Errorf("unplug: %w", err)
	}
	l.faults.mu.Lock()
	defer l.faults.mu.Unlock()
	if !up {
		l.beginFault("unplug/"+port, "unplug "+port+" (switch port down)", port)
	}
	if err := l.setPort(port, up); err != nil {
		return err
	}
	if up {
		l.endFault("unplug/" + port)
	}
	if l.faults.down == nil {
		l.faults.down = map[string]bool{}
	}
	if up {
		delete(l.faults.down, port)
	} else {
		l.faults.down[port] = true
	}
	return nil
}

func (l *Lab) setPort(port string, up bool) error {
	nl := l.Switch.nl
	lk, err := nl.LinkByName(port)
	if err != nil {
		return fmt.Errorf("find port %s: %w", port, err)
	}
	if up {
		err = nl.LinkSetUp(lk)
	} else {
		err = nl.LinkSetDown(lk)
	}
	if err != nil {
		return fmt.Errorf("set port %s up=%v: %w", port, up, err)
	}
	l.log.Info("switch port", zap.String("port", port), zap.Bool("up", up))
	return nil
}

// FlapOptions tunes Flap.
type FlapOptions struct {
	// Down is how long each cut lasts; 0 is 500 ms.
	Down time.Duration
	// Up is how long the link works between cuts; 0 is Down.
	Up time.Duration
	// Times is the number of cuts (1 to 1000); 0 is 1.
	Times int
	// Carrier unplugs the port (h sees its carrier go) instead of
	// cutting it with the link up.
	Carrier bool
}

// Flap cuts h's link for Down, restores it for Up, Times times, and
// returns once the link is back after the last cut. It always restores
// the link before returning, also when ctx ends early (then it returns
// ctx's error). Down and Up are lower bounds: each cut and restore runs
// `nft` (a few ms; hundreds on a loaded machine), so measure outages
// with a Monitor, not with these durations.
func (l *Lab) Flap(ctx context.Context, h *Host, o FlapOptions) (err error) {
	if o.Down <= 0 {
		o.Down = 500 * time.Millisecond
	}
	if o.Up <= 0 {
		o.Up = o.Down
	}
	if o.Times == 0 {
		o.Times = 1
	}
	if o.Times < 0 || o.Times > maxFlaps {
		return fmt.Errorf("flap %d times: want 1 to %d", o.Times, maxFlaps)
	}
	cut, restore := l.Cut, l.Uncut
	if o.Carrier {
		cut, restore = l.Unplug, l.Plug
	}
	wait := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return fmt.Errorf("flap %s: %w", h.Role, ctx.Err())
		case <-t.C:
			return nil
		}
	}
	for i := range o.Times {
		if i > 0 {
			if err := wait(o.Up); err != nil {
				return err
			}
		}
		if err := cut(h); err != nil {
			return err
		}
		err = wait(o.Down)
		if rerr := restore(h); rerr != nil {
			return errors.Join(err, rerr)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// HealFaults ends every fault of this file: one-way partitions, loss,
// duplication, cuts and unplugged ports. A Partition stays (Heal ends it).
func (l *Lab) HealFaults() error {
	var errs []error
	l.faults.mu.Lock()
	for port := range l.faults.down {
		if err := l.setPort(port, true); err != nil {
			errs = append(errs, err)
			continue
		}
		l.endFault("unplug/" + port)
		delete(l.faults.down, port)
	}
	l.faults.mu.Unlock()
	err := l.changeFaults("heal faults", func(f *faultSet) {
		f.oneWay, f.loss, f.dup, f.cut = nil, nil, nil, nil
	})
	return errors.Join(append(errs, err)...)
}

// FaultRules returns the nftables rules the switch holds now, as
// `nft list` prints them (empty without faults), for logs.
func (l *Lab) FaultRules(ctx context.Context) (string, error) {
	var b strings.Builder
	for _, fam := range []string{"bridge", "netdev"} {
		out, err := l.Switch.Output(ctx, "nft", "list", "table", fam, faultTable)
		if err != nil {
			if strings.Contains(err.Error(), "No such file or directory") {
				continue // no such table: no faults
			}
			return "", fmt.Errorf("list fault rules: %w", err)
		}
		b.Write(out)
	}
	return b.String(), nil
}

// changeFaults edits the wanted faults and applies them all; on failure
// the old set stays wanted (and, nft being atomic, applied).
func (l *Lab) changeFaults(what string, edit func(*faultSet), fields ...zap.Field) error {
	f := &l.faults
	f.mu.Lock()
	defer f.mu.Unlock()
	// edit a copy: the current set stays as it is if applying fails
	next := &faultSet{oneWay: maps.Clone(f.oneWay), loss: maps.Clone(f.loss), dup: maps.Clone(f.dup), cut: maps.Clone(f.cut)}
	edit(next)
	if !f.cleanup {
		// Deleting the switch namespace drops the tables too; this step
		// only matters if the namespace outlives the lab.
		l.push("remove fault rules", func() error {
			return l.applyFaults(&faultSet{})
		})
		f.cleanup = true
	}
	start := time.Now()
	if err := l.applyFaults(next); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	l.syncNetFaults(f, next, start)
	f.oneWay, f.loss, f.dup, f.cut = next.oneWay, next.loss, next.dup, next.cut
	l.log.Info(what, fields...)
	return nil
}

// applyFaults replaces the switch's fault tables with f in one
// transaction.
func (l *Lab) applyFaults(f *faultSet) error {
	path := filepath.Join(l.Switch.Dir, "faults.nft")
	if err := os.WriteFile(path, []byte(l.renderFaults(f)), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), nsCmdTimeout)
	defer cancel()
	if out, err := l.Switch.Run(ctx, "nft", "-f", path); err != nil {
		return fmt.Errorf("nft -f %s: %w: %s", path, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// renderFaults writes f as an nft script that first deletes both tables
// (declaring them first, so that deleting never fails) and then, if any
// fault is wanted, declares them anew.
func (l *Lab) renderFaults(f *faultSet) string {
	var b strings.Builder
	for _, fam := range []string{"bridge", "netdev"} {
		fmt.Fprintf(&b, "table %s %s\ndelete table %s %s\n", fam, faultTable, fam, faultTable)
	}
	if len(f.oneWay) == 0 && len(f.loss) == 0 && len(f.dup) == 0 && len(f.cut) == 0 {
		return b.String()
	}

	var fwd []string
	for _, p := range sortedKeys(f.oneWay, func(a, b [2]string) int { return strings.Compare(a[0]+" "+a[1], b[0]+" "+b[1]) }) {
		m := fmt.Sprintf("iifname %q oifname %q", p[0], p[1])
		fwd = append(fwd,
			m+" ether type arp accept",
			m+" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
			m+" drop")
	}
	dupFrom := false
	for _, port := range sortedKeys(f.dup, strings.Compare) {
		if r := f.dup[port]; r.from > 0 {
			dupFrom = true
			fwd = append(fwd, fmt.Sprintf("iifname %q %smeta mark set %#x", port, chance(r.from), markDupFrom))
		}
	}
	if len(fwd) > 0 {
		fmt.Fprintf(&b, "table bridge %s {\n\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n", faultTable)
		for _, r := range fwd {
			fmt.Fprintf(&b, "\t\t%s\n", r)
		}
		b.WriteString("\t}\n}\n")
	}

	// Every port of the lab: with FromHost duplication anywhere, every
	// way out needs an egress chain to make the copies.
	ports := map[string]bool{}
	for _, m := range []map[string]rates{f.loss, f.dup} {
		for p := range m {
			ports[p] = true
		}
	}
	for p := range f.cut {
		ports[p] = true
	}
	if dupFrom {
		for _, h := range l.Nodes() {
			ports[h.Role] = true
		}
		for _, h := range l.Clients() {
			ports[h.Role] = true
		}
	}
	fmt.Fprintf(&b, "table netdev %s {\n", faultTable)
	for _, port := range sortedKeys(ports, strings.Compare) {
		loss, dup, cut := f.loss[port], f.dup[port], f.cut[port]
		var in []string
		if cut {
			in = append(in, "drop")
		}
		if loss.from > 0 {
			in = append(in, chance(loss.from)+"drop")
		}
		var out, copies []string
		if cut {
			out = append(out, "drop")
		}
		if loss.to > 0 {
			copies = append(copies, chance(loss.to)+"drop")
		}
		if dup.to > 0 {
			copies = append(copies, fmt.Sprintf("%smeta mark set %#x dup to %q", chance(dup.to), markCopy, port))
		}
		if dupFrom {
			copies = append(copies, fmt.Sprintf("meta mark %#x meta mark set %#x dup to %q", markDupFrom, markCopy, port))
		}
		if len(copies) > 0 {
			// a copy passes this chain again: neither lose nor copy it twice
			out = append(out, fmt.Sprintf("meta mark %#x accept", markCopy))
			out = append(out, copies...)
		}
		writeChain(&b, "from_"+port, "ingress", port, in)
		writeChain(&b, "to_"+port, "egress", port, out)
	}
	b.WriteString("}\n")
	return b.String()
}

// chance matches percent of the packets, each on its own; nft's numgen
// range stops at 99, so 100% is written as no condition at all.
func chance(percent int) string {
	if percent >= 100 {
		return ""
	}
	return fmt.Sprintf("numgen random mod 100 < %d ", percent)
}

func writeChain(b *strings.Builder, name, hook, dev string, rules []string) {
	if len(rules) == 0 {
		return
	}
	fmt.Fprintf(b, "\tchain %s {\n\t\ttype filter hook %s device %q priority 0; policy accept;\n", name, hook, dev)
	for _, r := range rules {
		fmt.Fprintf(b, "\t\t%s\n", r)
	}
	b.WriteString("\t}\n")
}

func sortedKeys[K comparable, V any](m map[K]V, cmp func(a, b K) int) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, cmp)
	return keys
}
