package lab

import (
	"net/netip"
	"testing"
)

// /proc/net/tcp and tcp6 lines as this kernel writes them (x86, so each
// 32-bit word of an address little-endian).
func TestParseTCPTable(t *testing.T) {
	v4 := []byte(`  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0B0012C6:0DAC 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0B0012C6:C31A 0D0012C6:5DC1 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 20 4 30 10 -1
`)
	v6 := []byte(`  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 02000120000000000000000001000000:01BD 02000120000000000000000002000000:A000 01 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 20 4 30 10 -1
`)
	got, err := parseTCPTable(v4)
	if err != nil {
		t.Fatal(err)
	}
	want := []TCPSocket{
		{State: TCPListen, Local: netip.MustParseAddrPort("198.18.0.11:3500"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), Inode: "31337"},
		{State: TCPEstablished, Local: netip.MustParseAddrPort("198.18.0.11:49946"), Remote: netip.MustParseAddrPort("198.18.0.13:24001"), Inode: "4242"},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("IPv4: %+v, want %+v", got, want)
	}
	got, err = parseTCPTable(v6)
	if err != nil || len(got) != 1 || got[0].Local != netip.MustParseAddrPort("[2001:2::1]:445") ||
		got[0].Remote != netip.MustParseAddrPort("[2001:2::2]:40960") || got[0].State != TCPEstablished {
		t.Errorf("IPv6: %+v, %v", got, err)
	}
	if _, err := parseTCPTable([]byte("header\n 0: 0B0012C6:0DAC\n")); err == nil {
		t.Error("a short line parsed")
	}
}
