package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"
)

// The Monitor's frames: how probes are built, and the receiving side, one
// packet socket on the client's eth0 that sees the probes leave (to prove
// none was missed) and the answers arrive, with kernel receive timestamps.

// socketStatsEvery is how often the receive loop reads PACKET_STATISTICS
// (reading resets the kernel's counters; the monitor adds them up).
const socketStatsEvery = time.Second

func (m *Monitor) recvLoop() {
	defer close(m.recvDone)
	buf := make([]byte, 2048)
	oob := make([]byte, 256)
	lastStats := time.Now()
	for {
		if d := m.drainUntil.Load(); d != 0 && time.Now().UnixNano() > d {
			return
		}
		if time.Since(lastStats) > socketStatsEvery {
			m.readSocketStats()
			lastStats = time.Now()
		}
		n, oobn, _, from, err := unix.Recvmsg(m.recvFD, buf, oob, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			m.fail(fmt.Errorf("monitor: receive: %w", err))
			return
		}
		at := rxTime(oob[:oobn])
		ll, _ := from.(*unix.SockaddrLinklayer)
		m.mu.Lock()
		m.health.Frames++
		m.mu.Unlock()
		frame := buf[:min(n, len(buf))]
		if ll != nil && ll.Pkttype == unix.PACKET_OUTGOING {
			m.sawOutgoing(frame, at)
			continue
		}
		m.sawIncoming(frame, at)
	}
}

// readSocketStats adds the socket's PACKET_STATISTICS to the health
// counters; only the receive loop (or Stop, after it) calls it.
func (m *Monitor) readSocketStats() {
	st, err := unix.GetsockoptTpacketStats(m.recvFD, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		m.fail(fmt.Errorf("monitor: PACKET_STATISTICS: %w", err))
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.health.SocketPackets += uint64(st.Packets)
	m.health.SocketDrops += uint64(st.Drops)
}

// rxTime is the SO_TIMESTAMPNS receive time in oob, or now.
func rxTime(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Now()
	}
	for _, msg := range msgs {
		if msg.Header.Level == unix.SOL_SOCKET && msg.Header.Type == unix.SO_TIMESTAMPNS && len(msg.Data) >= 16 {
			sec := int64(binary.NativeEndian.Uint64(msg.Data[0:8]))
			nsec := int64(binary.NativeEndian.Uint64(msg.Data[8:16]))
			return time.Unix(sec, nsec)
		}
	}
	return time.Now()
}

// frameView is the part of a frame the monitor reads.
type frameView struct {
	dst, src MAC
	arp      []byte // ARP payload (28 bytes, Ethernet/IPv4)
	ip6      []byte // IPv6 header and ICMPv6 (next header 58)
	tcp      []byte // TCP header of an IPv4 segment
	ip4Src   netip.Addr
	ip4Dst   [4]byte
}

func viewFrame(b []byte) (frameView, bool) {
	var v frameView
	if len(b) < 14 {
		return v, false
	}
	copy(v.dst[:], b[0:6])
	copy(v.src[:], b[6:12])
	p := b[14:]
	switch binary.BigEndian.Uint16(b[12:14]) {
	case unix.ETH_P_ARP:
		if len(p) < 28 || p[4] != 6 || p[5] != 4 {
			return v, false
		}
		v.arp = p[:28]
	case unix.ETH_P_IPV6:
		// NDP has no extension headers: ICMPv6 follows at once
		if len(p) < 40+24 || p[0]>>4 != 6 || p[6] != unix.IPPROTO_ICMPV6 {
			return v, false
		}
		v.ip6 = p
	case unix.ETH_P_IP:
		if len(p) < 20 || p[0]>>4 != 4 || p[9] != unix.IPPROTO_TCP {
			return v, false
		}
		ihl := int(p[0]&0x0f) * 4
		if ihl < 20 || len(p) < ihl+20 {
			return v, false
		}
		v.ip4Src = netip.AddrFrom4([4]byte(p[12:16]))
		v.ip4Dst = [4]byte(p[16:20])
		v.tcp = p[ihl:]
	default:
		return v, false
	}
	return v, true
}

// sawOutgoing marks one of this monitor's probes as seen on the wire.
func (m *Monitor) sawOutgoing(b []byte, at time.Time) {
	v, ok := viewFrame(b)
	if !ok {
		return
	}
	var seq uint32
	switch {
	case v.arp != nil && binary.BigEndian.Uint16(v.arp[6:8]) == 1:
		seq, ok = m.seqOfTag(v.arp[8:14])
	case v.ip6 != nil && v.ip6[40] == 135 && len(v.ip6) >= 40+32 && v.ip6[64] == 1:
		seq, ok = m.seqOfTag(v.ip6[66:72])
	case v.tcp != nil && v.tcp[13] == FlagSYN && m.portSet[binary.BigEndian.Uint16(v.tcp[0:2])]:
		seq, ok = m.seqOfISN(binary.BigEndian.Uint32(v.tcp[4:8]))
	default:
		return
	}
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if int(seq) < len(m.probes) && m.probes[seq].OnWire.IsZero() {
		m.probes[seq].OnWire = at
		m.health.OnWire++
	}
}

// sawIncoming records a frame that speaks for a watched VIP.
func (m *Monitor) sawIncoming(b []byte, at time.Time) {
	v, ok := viewFrame(b)
	if !ok {
		return
	}
	r := Reply{At: at}
	var seq uint32
	solicited := false
	switch {
	case v.arp != nil:
		// any ARP with a VIP as sender address speaks for it
		spa, _ := netip.AddrFromSlice(v.arp[14:18])
		if !m.vips[spa] {
			return
		}
		r.VIP, r.Kind = spa, ProbeARP
		copy(r.MAC[:], v.arp[8:14])
		if binary.BigEndian.Uint16(v.arp[6:8]) == 2 {
			seq, solicited = m.seqOfTag(v.arp[18:24])
		}
	case v.ip6 != nil:
		icmp := v.ip6[40:]
		if icmp[0] != 136 { // neighbour advertisement
			return
		}
		target, _ := netip.AddrFromSlice(icmp[8:24])
		if !m.vips[target] {
			return
		}
		r.VIP, r.Kind, r.MAC = target, ProbeNDP, v.src
		for o := icmp[24:]; len(o) >= 8 && o[1] > 0 && len(o) >= int(o[1])*8; o = o[int(o[1])*8:] {
			if o[0] == 2 { // target link-layer address
				copy(r.MAC[:], o[2:8])
			}
		}
		// answered to the tag MAC of the solicitation
		seq, solicited = m.seqOfTag(v.dst[:])
	case v.tcp != nil:
		t := v.tcp
		if !m.opts.TCP || !m.vips[v.ip4Src] || v.ip4Dst != m.srcIP ||
			binary.BigEndian.Uint16(t[0:2]) != m.opts.TCPPort || !m.portSet[binary.BigEndian.Uint16(t[2:4])] ||
			t[13]&FlagACK == 0 {
			return
		}
		if seq, solicited = m.seqOfISN(binary.BigEndian.Uint32(t[8:12]) - 1); !solicited {
			return // some other connection on a reserved port: not ours
		}
		r.VIP, r.Kind, r.MAC, r.Flags = v.ip4Src, ProbeTCP, v.src, t[13]
		if t[13]&(FlagSYN|FlagACK) == FlagSYN|FlagACK {
			// close the half-open connection where it is, not where the
			// client's neighbour table would send the kernel's RST
			rst := m.tcpFrame(v.src, v.ip4Src, binary.BigEndian.Uint16(t[2:4]), binary.BigEndian.Uint32(t[8:12]), 0, FlagRST)
			_ = m.sendFrame(rst, v.src)
		}
	default:
		return
	}
	r.Node = m.opts.Names[r.MAC]
	m.mu.Lock()
	defer m.mu.Unlock()
	if solicited && int(seq) < len(m.probes) && m.probes[seq].VIP == r.VIP && m.probes[seq].Kind == r.Kind {
		r.Seq, r.Round = seq, m.probes[seq].Round
	} else {
		r.Unsolicited = true
	}
	m.replies = append(m.replies, r)
}

// tagMAC carries a probe's number: fe (locally administered, unicast),
// the monitor's tag, 24 bits of sequence.
func (m *Monitor) tagMAC(seq uint32) MAC {
	return MAC{0xfe, m.tag[0], m.tag[1], byte(seq >> 16), byte(seq >> 8), byte(seq)}
}

// seqOfTag returns the sequence number in a tag MAC of this monitor.
func (m *Monitor) seqOfTag(b []byte) (uint32, bool) {
	if len(b) < 6 || b[0] != 0xfe || b[1] != m.tag[0] || b[2] != m.tag[1] {
		return 0, false
	}
	return uint32(b[3])<<16 | uint32(b[4])<<8 | uint32(b[5]), true
}

func (m *Monitor) isn(seq uint32) uint32 { return uint32(m.tag[0])<<24 | seq }

func (m *Monitor) seqOfISN(isn uint32) (uint32, bool) {
	return isn & maxSeq, byte(isn>>24) == m.tag[0]
}

func ethHeader(dst, src MAC, ethType uint16, size int) []byte {
	b := make([]byte, 14, max(size, 60))
	copy(b[0:6], dst[:])
	copy(b[6:12], src[:])
	binary.BigEndian.PutUint16(b[12:14], ethType)
	return b
}

// arpRequest: who has vip, from 0.0.0.0 and the tag MAC.
func (m *Monitor) arpRequest(seq uint32, vip netip.Addr) []byte {
	b := ethHeader(MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, m.src, unix.ETH_P_ARP, 60)
	tag, tpa := m.tagMAC(seq), vip.As4()
	b = binary.BigEndian.AppendUint16(b, 1)             // Ethernet
	b = binary.BigEndian.AppendUint16(b, unix.ETH_P_IP) // IPv4
	b = append(b, 6, 4)
	b = binary.BigEndian.AppendUint16(b, 1) // request
	b = append(b, tag[:]...)
	b = append(b, 0, 0, 0, 0)
	b = append(b, make([]byte, 6)...)
	b = append(b, tpa[:]...)
	return b[:cap(b)] // padded to 60 bytes
}

// ndpSource is the address solicitations for vip come from: in vip's /64,
// held by nobody, one per VIP and monitor.
func (m *Monitor) ndpSource(vip netip.Addr) [16]byte {
	a := vip.As16()
	copy(a[8:12], []byte{0x02, 0xfe, m.tag[0], m.tag[1]})
	return a
}

func (m *Monitor) neighSolicit(seq uint32, vip netip.Addr) []byte {
	t := vip.As16()
	dst := [16]byte{0: 0xff, 1: 0x02, 11: 0x01, 12: 0xff, 13: t[13], 14: t[14], 15: t[15]}
	src := m.ndpSource(vip)
	b := ethHeader(MAC{0x33, 0x33, 0xff, t[13], t[14], t[15]}, m.src, unix.ETH_P_IPV6, 14+40+32)
	const plen = 32 // NS 24 + source link-layer address option 8
	b = append(b, 0x60, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, plen)
	b = append(b, unix.IPPROTO_ICMPV6, 255)
	b = append(b, src[:]...)
	b = append(b, dst[:]...)
	icmp := len(b)
	b = append(b, 135, 0, 0, 0, 0, 0, 0, 0) // type, code, checksum, reserved
	b = append(b, t[:]...)
	tag := m.tagMAC(seq)
	b = append(b, 1, 1) // source link-layer address, 8 bytes
	b = append(b, tag[:]...)
	sum := csum(0, src[:])
	sum = csum(sum, dst[:])
	sum += plen + unix.IPPROTO_ICMPV6
	binary.BigEndian.PutUint16(b[icmp+2:], fold(csum(sum, b[icmp:])))
	return b
}

// tcpFrame builds an IPv4 TCP segment from the client to vip:TCPPort,
// sent to the MAC to.
func (m *Monitor) tcpFrame(to MAC, vip netip.Addr, sport uint16, seq, ack uint32, flags uint8) []byte {
	b := ethHeader(to, m.src, unix.ETH_P_IP, 14+20+20)
	dst := vip.As4()
	ip := len(b)
	b = append(b, 0x45, 0)
	b = binary.BigEndian.AppendUint16(b, 40)
	b = append(b, 0, 0, 0x40, 0, 64, unix.IPPROTO_TCP, 0, 0) // id 0, DF, TTL 64
	b = append(b, m.srcIP[:]...)
	b = append(b, dst[:]...)
	binary.BigEndian.PutUint16(b[ip+10:], fold(csum(0, b[ip:ip+20])))
	tcp := len(b)
	b = binary.BigEndian.AppendUint16(b, sport)
	b = binary.BigEndian.AppendUint16(b, m.opts.TCPPort)
	b = binary.BigEndian.AppendUint32(b, seq)
	b = binary.BigEndian.AppendUint32(b, ack)
	b = append(b, 5<<4, flags)
	b = binary.BigEndian.AppendUint16(b, 64240)
	b = append(b, 0, 0, 0, 0) // checksum, urgent
	sum := csum(0, m.srcIP[:])
	sum = csum(sum, dst[:])
	sum += unix.IPPROTO_TCP + 20
	binary.BigEndian.PutUint16(b[tcp+16:], fold(csum(sum, b[tcp:])))
	return b[:cap(b)]
}

// csum adds b to a ones' complement sum; fold finishes it.
func csum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	return sum
}

func fold(sum uint32) uint16 {
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
