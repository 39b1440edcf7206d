package main

// The server end of the failover suite's many connections (-failover-conns):
// the bench itself, run as `bench hold-conns PORT` inside the node's
// namespace (lab.Host.Start). It accepts every connection on PORT and
// reads from it until it ends, nothing more. smbd cannot stand in: it
// forks a process per connection, and 10,000 of them do not fit in this
// lab; nfs-ganesha holds its own limits. A power cut SIGKILLs it with the
// node's other processes.

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"golang.org/x/sys/unix"
)

// holdConnsCmd is the first argument that makes the bench a holder.
const holdConnsCmd = "hold-conns"

// holdConnsReady is what the holder prints on stdout once it listens.
const holdConnsReady = "listening"

// holdConnsMain runs the holder: args is the port. It returns only on
// error (the bench kills it).
func holdConnsMain(args []string) error {
	if len(args) != 1 {
		return fmt.Errorf("usage: bench %s PORT", holdConnsCmd)
	}
	port, err := strconv.ParseUint(args[0], 10, 16)
	if err != nil || port == 0 {
		return fmt.Errorf("port %q", args[0])
	}
	// one descriptor per connection: the soft limit up to the hard one
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("get RLIMIT_NOFILE: %w", err)
	}
	lim.Cur = lim.Max
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("raise RLIMIT_NOFILE to %d: %w", lim.Cur, err)
	}
	// Go listens with the namespace's net.core.somaxconn as backlog
	ln, err := net.Listen("tcp4", ":"+strconv.FormatUint(port, 10))
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stdout, "%s on :%d, RLIMIT_NOFILE %d\n", holdConnsReady, port, lim.Cur)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if errors.Is(err, unix.EMFILE) {
				return fmt.Errorf("accept: %w (RLIMIT_NOFILE %d)", err, lim.Cur)
			}
			return fmt.Errorf("accept: %w", err)
		}
		// closed (by the kill) with a RST, not a FIN: no orphan
		// retransmits its FIN to the client once the node is back up
		_ = conn.(*net.TCPConn).SetLinger(0)
		go func() {
			defer conn.Close()
			buf := make([]byte, 64)
			for {
				if _, err := conn.Read(buf); err != nil {
					return
				}
			}
		}()
	}
}
