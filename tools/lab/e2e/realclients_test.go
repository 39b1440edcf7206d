package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/fsha/fsha/tools/lab"
	"github.com/fsha/fsha/tools/testenv"
)

// TestRealClients runs smbd and nfs-ganesha behind a VIP tracked by fsha
// and checks that smbclient and libnfs sessions show up as smb and nfs
// flows, and go away when the clients do.
func TestRealClients(t *testing.T) {
	testenv.RequireBPF(t)
	for _, cmd := range []string{"ip", "ethtool", "smbd", "smbclient", "ganesha.nfsd", "nfs-cat", "stdbuf"} {
		testenv.RequireCommand(t, cmd)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	l := lab.NewT(t, lab.Options{Fsha: fshaBin, Log: zaptest.NewLogger(t)})
	n, c, vip := l.NodeAndClientT(t, true)
	share, err := l.NewShare("data")
	if err != nil {
		t.Fatal(err)
	}
	small := []byte("served through the VIP\n")
	if err := os.WriteFile(filepath.Join(share, "small.txt"), small, 0o644); err != nil {
		t.Fatal(err)
	}
	// a sparse file far larger than any pipe: nfs-cat blocks on its stdout
	// with the NFS connection open
	if err := os.Truncate(createEmpty(t, filepath.Join(share, "big")), 1<<30); err != nil {
		t.Fatal(err)
	}
	if _, err := n.StartSmbd(ctx, share); err != nil {
		t.Fatal(err)
	}
	if _, err := n.StartGanesha(ctx, share, lab.GaneshaOptions{}); err != nil {
		t.Fatal(err)
	}
	up, err := n.FshaUp(ctx, []netip.Prefix{vip})
	if err != nil {
		t.Fatal(err)
	}

	clientFlows := func(port uint16) []lab.Flow {
		t.Helper()
		flows, err := n.Flows(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []lab.Flow
		for _, f := range flows {
			if f.VIP == vip.Addr() && f.VPort == port && f.Client == c.IP() {
				out = append(out, f)
			}
		}
		return out
	}
	// oneFlow waits until exactly one flow from the client to port is
	// listed with the proto and with traffic both ways.
	oneFlow := func(port uint16, proto string, minOut uint64) lab.Flow {
		t.Helper()
		var got lab.Flow
		eventually(t, fmt.Sprintf("%s flow to %d", proto, port), func() error {
			fl := clientFlows(port)
			if len(fl) != 1 {
				return fmt.Errorf("%d flows to port %d: %+v", len(fl), port, fl)
			}
			got = fl[0]
			if got.Proto != proto || got.State != "established" || got.BytesIn == 0 || got.BytesOut < minOut {
				return fmt.Errorf("flow %+v", got)
			}
			return nil
		})
		return got
	}
	noFlow := func(port uint16) {
		t.Helper()
		eventually(t, fmt.Sprintf("no flow to %d", port), func() error {
			if fl := clientFlows(port); len(fl) != 0 {
				return fmt.Errorf("still listed: %+v", fl)
			}
			return nil
		})
	}

	// SMB: one interactive smbclient session
	s, err := c.StartSMBSession(vip.Addr())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Command("get small.txt -"); err != nil {
		t.Fatal(err)
	}
	if err := s.WaitLog(ctx, string(small)); err != nil {
		t.Fatal(err)
	}
	smb := oneFlow(lab.SMBPort, "smb", 1)
	t.Logf("smbclient: %s in %d B out %d B", smb.Key(), smb.BytesIn, smb.BytesOut)
	if err := s.Close(ctx); err != nil {
		t.Fatalf("smbclient: %v\n%s", err, s.Tail(2000))
	}
	noFlow(lab.SMBPort)

	// NFS: a whole read, then a read held open
	got, err := c.NFSCat(ctx, vip.Addr(), "small.txt")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, small) {
		t.Fatalf("nfs-cat read %q, want %q", got, small)
	}
	noFlow(lab.NFSPort)
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	cat, err := c.StartWith("nfs-cat-big", lab.StartOptions{Stdout: pw}, "nfs-cat", lab.NFSURL(vip.Addr(), "big"))
	pw.Close()
	if err != nil {
		t.Fatal(err)
	}
	const pipeBuf = 64 << 10
	nfs := oneFlow(lab.NFSPort, "nfs", pipeBuf)
	t.Logf("nfs-cat: %s in %d B out %d B", nfs.Key(), nfs.BytesIn, nfs.BytesOut)
	if err := cat.Stop(); err != nil {
		t.Fatal(err)
	}
	noFlow(lab.NFSPort)

	// the daemon saw every one of these connections open and close
	eventually(t, "flow events in the fsha up log", func() error {
		events := flowEvents(t, up.StderrPath)
		for port, want := range map[uint16]int{lab.SMBPort: 1, lab.NFSPort: 2} {
			vp := netip.AddrPortFrom(vip.Addr(), port).String()
			if events["open "+vp] != want || events["close "+vp] != want {
				return fmt.Errorf("%d opens and %d closes of flows to %s, want %d each (all: %v)",
					events["open "+vp], events["close "+vp], vp, want, events)
			}
		}
		return nil
	})
}

func createEmpty(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	return path
}
