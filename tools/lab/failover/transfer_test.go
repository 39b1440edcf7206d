package failover

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/fsha/fsha/tools/lab"
)

// transfer is one real client (smbclient or nfs-cat) reading a file
// through a VIP to its stdout, a pipe the test drains at a set pace: the
// client's connection stays busy, and open, as long as the test wants.
type transfer struct {
	name string
	proc *lab.Process
	want []byte
	// process and port name the client's connection in `ss -tnp`; key is
	// that connection (client -> vip), once the test looked it up.
	process string
	port    uint16
	key     string

	done  chan struct{}
	mu    sync.Mutex
	hash  [32]byte
	n     int64
	rerr  error
	ended time.Time
}

// startTransfer runs argv in the client's namespace with its stdout into a
// pipe read at about rate bytes per second.
func startTransfer(c *lab.Client, name string, want []byte, rate int, argv ...string) (*transfer, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	p, err := c.StartWith(name, lab.StartOptions{Stdout: w}, argv...)
	w.Close() // the client has its own copy
	if err != nil {
		r.Close()
		return nil, err
	}
	tr := &transfer{name: name, proc: p, want: want, done: make(chan struct{})}
	go tr.drain(r, rate)
	return tr, nil
}

// maxTransfer bounds the read loop whatever the client does.
const maxTransfer = time.Minute

func (tr *transfer) drain(r *os.File, rate int) {
	defer close(tr.done)
	defer r.Close()
	h := sha256.New()
	const chunk = 32 << 10
	buf := make([]byte, chunk)
	start := time.Now()
	var n int64
	for {
		if time.Since(start) > maxTransfer {
			tr.finish(h, n, errors.New("transfer ran past its bound"))
			return
		}
		// pace: byte n may be read at start + n/rate
		if ahead := time.Duration(float64(n)/float64(rate)*float64(time.Second)) - time.Since(start); ahead > 0 {
			time.Sleep(ahead)
		}
		_ = r.SetReadDeadline(time.Now().Add(maxTransfer))
		k, err := r.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if errors.Is(err, io.EOF) {
			tr.finish(h, n, nil)
			return
		}
		if err != nil {
			tr.finish(h, n, err)
			return
		}
	}
}

func (tr *transfer) finish(h interface{ Sum([]byte) []byte }, n int64, err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	copy(tr.hash[:], h.Sum(nil))
	tr.n, tr.rerr, tr.ended = n, err, time.Now()
}

// Wait waits for the client to exit and its output to end, and checks it
// exited 0 and wrote exactly the file.
func (tr *transfer) Wait(ctx context.Context) error {
	if err := tr.proc.Wait(ctx); err != nil {
		return fmt.Errorf("%s: %w: %s", tr.name, err, bytes.TrimSpace([]byte(tr.proc.Tail(1500))))
	}
	select {
	case <-tr.done:
	case <-ctx.Done():
		return fmt.Errorf("%s: output does not end: %w", tr.name, ctx.Err())
	}
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.rerr != nil {
		return fmt.Errorf("%s: read its output: %w", tr.name, tr.rerr)
	}
	if tr.n != int64(len(tr.want)) || tr.hash != sha256.Sum256(tr.want) {
		return fmt.Errorf("%s: got %d bytes (sha256 %x), want the file's %d bytes (sha256 %x): %s",
			tr.name, tr.n, tr.hash[:8], len(tr.want), sha256.Sum256(tr.want), tr.proc.Tail(1500))
	}
	return nil
}

// startSMBGet reads file of //vip/share with smbclient (`get file -`).
func startSMBGet(c *lab.Client, vip netip.Addr, file string, want []byte, rate int) (*transfer, error) {
	tr, err := startTransfer(c, "smbclient-get", want, rate,
		"smbclient", "//"+vip.String()+"/"+lab.ShareName, "-N", "-c", fmt.Sprintf("get %q -", file))
	if err == nil {
		tr.process, tr.port = "smbclient", lab.SMBPort
	}
	return tr, err
}

// startNFSCat reads file of the export through vip with libnfs's nfs-cat.
func startNFSCat(c *lab.Client, vip netip.Addr, file string, want []byte, rate int) (*transfer, error) {
	tr, err := startTransfer(c, "nfs-cat", want, rate, "nfs-cat", lab.NFSURL(vip, file))
	if err == nil {
		tr.process, tr.port = "nfs-cat", lab.NFSPort
	}
	return tr, err
}
