package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// What a Monitor recorded and what it means: pure functions over probes
// and replies, so that they can be tested, and rerun on saved data,
// without a lab.
//
// A channel is one VIP probed one way (ARP, NDP or TCP). A round is one
// tick of the monitor: on each channel, one ARP request or neighbour
// solicitation, or one TCP SYN to each target node at once. Every probe
// carries its sequence number (in the ARP sender hardware address, the
// NDP source link-layer address, the TCP initial sequence number) and
// every answer names the probe it answers: an answer is attributed to the
// round it was asked in, never to the round in which it happened to
// arrive, so a late answer is not taken for a new one.
//
// Overlap, exactly. On one channel, with rounds in the order they were
// sent, a MAC "answers round r" if at least one answer to a probe of round
// r came from it. There is an overlap when
//
//   - OverlapSameProbe: two different MACs answer the same round: for
//     ARP and NDP the very same request; for TCP the SYNs sent to every
//     node at the same instant. Both held the address at once. Always
//     reported, whatever the window.
//   - OverlapInterleaved: MAC A answers round r1, another MAC B answers a
//     later round r2, and A answers again in a round r3 > r2, with
//     sent(r3) - sent(r1) <= window. A switch-over (A A B B) is not an
//     overlap, nor a later switch back (A A B B ... A A) beyond the
//     window: the window is the shortest time in which the caller accepts
//     that the address moved to B and back. A flip within it (a lost
//     answer hiding one of two holders, or two nodes fighting) is one.
//
// Answers that are not to this monitor's probes (gratuitous ARP,
// unsolicited NA, answers to the client kernel's own requests) are kept
// as Unsolicited replies and never count in overlaps, rounds or gaps.

// ProbeKind is how the monitor asks who answers for a VIP.
type ProbeKind uint8

const (
	// ProbeARP is an ARP request for an IPv4 VIP.
	ProbeARP ProbeKind = iota + 1
	// ProbeNDP is a neighbour solicitation for an IPv6 VIP.
	ProbeNDP
	// ProbeTCP is a TCP SYN to VIP:port, sent to one node's MAC.
	ProbeTCP
)

func (k ProbeKind) String() string {
	switch k {
	case ProbeARP:
		return "arp"
	case ProbeNDP:
		return "ndp"
	case ProbeTCP:
		return "tcp"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// SentProbe is one probe frame the monitor sent.
type SentProbe struct {
	// Seq numbers the monitor's probes from 0; it is the probe's index
	// in Monitor.Probes.
	Seq uint32
	// Round is the tick the probe belongs to.
	Round uint32
	VIP   netip.Addr
	Kind  ProbeKind
	// To is the Ethernet destination: broadcast (ARP), the VIP's
	// solicited-node group (NDP) or the node a SYN is for (TCP).
	To MAC
	// At is taken just before the send.
	At time.Time
	// OnWire is when the monitor's receiving socket saw the probe leave
	// the client's eth0; zero when it did not.
	OnWire time.Time
	// Failed: the kernel refused the send; the probe never left.
	Failed bool
}

// Reply is an answer the client received for a watched VIP.
type Reply struct {
	// At is the kernel's receive time.
	At   time.Time
	VIP  netip.Addr
	Kind ProbeKind
	// MAC is who answered: the ARP sender hardware address, the NA's
	// target link-layer address (else its Ethernet source), the TCP
	// segment's Ethernet source.
	MAC MAC
	// Node is MonitorOptions.Names[MAC], "" when unknown.
	Node string
	// Seq and Round are those of the probe answered.
	Seq, Round uint32
	// Unsolicited: not an answer to this monitor's probes.
	Unsolicited bool
	// Flags are the TCP flags (SYN-ACK 0x12, RST-ACK 0x14).
	Flags uint8
}

// Who is the node name, or the MAC when the node is unknown.
func (r Reply) Who() string { return who(r.Node, r.MAC) }

func who(node string, m MAC) string {
	if node != "" {
		return node
	}
	return m.String()
}

// OverlapType tells how two MACs were seen answering at once; see the
// package comment above for the exact definition.
type OverlapType uint8

const (
	// OverlapSameProbe: two MACs answered one round.
	OverlapSameProbe OverlapType = iota + 1
	// OverlapInterleaved: A, then B, then A again, within the window.
	OverlapInterleaved
)

func (t OverlapType) String() string {
	switch t {
	case OverlapSameProbe:
		return "same-probe"
	case OverlapInterleaved:
		return "interleaved"
	}
	return fmt.Sprintf("overlap(%d)", uint8(t))
}

// Overlap is evidence that two MACs answered for one VIP at once.
type Overlap struct {
	Type OverlapType
	VIP  netip.Addr
	Kind ProbeKind
	// MACs answered: for Interleaved, A (twice) then B. Nodes are their
	// names ("" when unknown).
	MACs  []MAC
	Nodes []string
	// FirstRound and LastRound bound the evidence (the same round for
	// SameProbe); From and To are their send times.
	FirstRound, LastRound uint32
	From, To              time.Time
	// Replies are the answers that make the case.
	Replies []Reply
}

func (o Overlap) String() string {
	names := make([]string, len(o.MACs))
	for i := range o.MACs {
		names[i] = who(o.Nodes[i], o.MACs[i])
	}
	at := o.From.Format("15:04:05.000")
	if o.Type == OverlapSameProbe {
		return fmt.Sprintf("%s %s round %d (%s): %s answered the same probe", o.VIP, o.Kind, o.FirstRound, at, strings.Join(names, " and "))
	}
	return fmt.Sprintf("%s %s rounds %d-%d (%s, %v): %s answered, then %s, then %s again",
		o.VIP, o.Kind, o.FirstRound, o.LastRound, at, o.To.Sub(o.From).Round(time.Millisecond), names[0], names[1], names[0])
}

// Gap is a run of consecutive rounds of one channel that nobody answered:
// what a client asking every interval would have lived through.
type Gap struct {
	VIP  netip.Addr
	Kind ProbeKind
	// FirstRound is the first unanswered round; Rounds counts them.
	FirstRound uint32
	Rounds     int
	// Start is the send time of the first unanswered round; End that of
	// the first answered round after it, or, for an open gap, that of
	// its last unanswered round.
	Start, End time.Time
	// Open: not between two answered rounds (before the first answer,
	// or after the last).
	Open bool
}

// Duration is End - Start: for a closed gap, the outage a client saw.
func (g Gap) Duration() time.Duration { return g.End.Sub(g.Start) }

func (g Gap) String() string {
	open := ""
	if g.Open {
		open = " (open)"
	}
	return fmt.Sprintf("%s %s: %d rounds from %d unanswered, %v from %s%s",
		g.VIP, g.Kind, g.Rounds, g.FirstRound, g.Duration().Round(time.Millisecond), g.Start.Format("15:04:05.000"), open)
}

// VIPStats sums up one channel.
type VIPStats struct {
	VIP  netip.Addr
	Kind ProbeKind
	// Rounds probed (sent and settled), and how many got an answer.
	Rounds, Answered int
	// Replies counts answer frames, duplicates and answers from several
	// MACs to one round included.
	Replies int
	// ByNode counts answered rounds per node (the MAC when unnamed).
	ByNode map[string]int
	// Gaps lists every unanswered run, open ones included; LongestGap
	// is the longest closed one (zero Rounds when none).
	Gaps       []Gap
	LongestGap Gap
}

// Unanswered is Rounds - Answered.
func (s VIPStats) Unanswered() int { return s.Rounds - s.Answered }

type channelKey struct {
	vip  netip.Addr
	kind ProbeKind
}

type roundRec struct {
	round   uint32
	at      time.Time
	macs    []MAC // distinct, in order of arrival
	replies []Reply
}

type channel struct {
	key    channelKey
	rounds []*roundRec
}

// channels groups sent probes into rounds per channel, in send order, and
// attributes the solicited replies to them. Failed probes do not make a
// round; replies to probes not given are ignored.
func channels(probes []SentProbe, replies []Reply) []*channel {
	byKey := map[channelKey]*channel{}
	type rk struct {
		key   channelKey
		round uint32
	}
	rounds := map[rk]*roundRec{}
	var out []*channel
	for _, p := range probes {
		if p.Failed {
			continue
		}
		k := channelKey{p.VIP, p.Kind}
		c := byKey[k]
		if c == nil {
			c = &channel{key: k}
			byKey[k] = c
			out = append(out, c)
		}
		if r := rounds[rk{k, p.Round}]; r != nil {
			if p.At.Before(r.at) {
				r.at = p.At
			}
			continue
		}
		r := &roundRec{round: p.Round, at: p.At}
		rounds[rk{k, p.Round}] = r
		c.rounds = append(c.rounds, r)
	}
	for _, rep := range replies {
		if rep.Unsolicited {
			continue
		}
		r := rounds[rk{channelKey{rep.VIP, rep.Kind}, rep.Round}]
		if r == nil {
			continue
		}
		r.replies = append(r.replies, rep)
		if !slices.Contains(r.macs, rep.MAC) {
			r.macs = append(r.macs, rep.MAC)
		}
	}
	for _, c := range out {
		slices.SortStableFunc(c.rounds, func(a, b *roundRec) int { return int64Cmp(int64(a.round), int64(b.round)) })
	}
	slices.SortFunc(out, func(a, b *channel) int {
		if c := a.key.vip.Compare(b.key.vip); c != 0 {
			return c
		}
		return int64Cmp(int64(a.key.kind), int64(b.key.kind))
	})
	return out
}

func int64Cmp(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func (r *roundRec) replyFrom(m MAC) Reply {
	for _, rep := range r.replies {
		if rep.MAC == m {
			return rep
		}
	}
	return Reply{}
}

// FindOverlaps returns every overlap (as defined above) in probes and
// replies, per channel in round order.
func FindOverlaps(probes []SentProbe, replies []Reply, window time.Duration) []Overlap {
	var out []Overlap
	for _, c := range channels(probes, replies) {
		last := map[MAC]int{} // MAC -> index of the last round it answered
		for i, r := range c.rounds {
			if len(r.macs) >= 2 {
				o := Overlap{Type: OverlapSameProbe, VIP: c.key.vip, Kind: c.key.kind,
					FirstRound: r.round, LastRound: r.round, From: r.at, To: r.at}
				for _, m := range r.macs {
					rep := r.replyFrom(m)
					o.MACs, o.Nodes, o.Replies = append(o.MACs, m), append(o.Nodes, rep.Node), append(o.Replies, rep)
				}
				out = append(out, o)
			}
			for _, a := range r.macs {
				prev, ok := last[a]
				if !ok || r.at.Sub(c.rounds[prev].at) > window {
					continue
				}
				// the MAC that answered last after a's previous answer
				bi := -1
				var b MAC
				for m, j := range last {
					if m != a && j > prev && (j > bi || j == bi && bytes.Compare(m[:], b[:]) < 0) {
						b, bi = m, j
					}
				}
				if bi < 0 {
					continue
				}
				ra, rb := c.rounds[prev].replyFrom(a), c.rounds[bi].replyFrom(b)
				out = append(out, Overlap{Type: OverlapInterleaved, VIP: c.key.vip, Kind: c.key.kind,
					MACs: []MAC{a, b}, Nodes: []string{ra.Node, rb.Node},
					FirstRound: c.rounds[prev].round, LastRound: r.round, From: c.rounds[prev].at, To: r.at,
					Replies: []Reply{ra, rb, r.replyFrom(a)}})
			}
			for _, m := range r.macs {
				last[m] = i
			}
		}
	}
	return out
}

// ComputeStats sums up every channel of probes and replies, ordered by
// VIP and kind.
func ComputeStats(probes []SentProbe, replies []Reply) []VIPStats {
	var out []VIPStats
	for _, c := range channels(probes, replies) {
		s := VIPStats{VIP: c.key.vip, Kind: c.key.kind, Rounds: len(c.rounds), ByNode: map[string]int{}}
		var gap *Gap
		answeredBefore := false
		for _, r := range c.rounds {
			if len(r.macs) == 0 {
				if gap == nil {
					gap = &Gap{VIP: s.VIP, Kind: s.Kind, FirstRound: r.round, Start: r.at, Open: !answeredBefore}
				}
				gap.Rounds++
				gap.End = r.at
				continue
			}
			if gap != nil {
				gap.End = r.at
				s.Gaps = append(s.Gaps, *gap)
				if !gap.Open && (s.LongestGap.Rounds == 0 || gap.Duration() > s.LongestGap.Duration()) {
					s.LongestGap = *gap
				}
				gap = nil
			}
			answeredBefore = true
			s.Answered++
			s.Replies += len(r.replies)
			for _, m := range r.macs {
				s.ByNode[r.replyFrom(m).Who()]++
			}
		}
		if gap != nil {
			gap.Open = true
			s.Gaps = append(s.Gaps, *gap)
		}
		out = append(out, s)
	}
	return out
}
