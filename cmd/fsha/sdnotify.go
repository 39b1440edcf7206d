package main

import (
	"fmt"
	"net"
	"os"
	"strings"
)

// sdNotify tells systemd (Type=notify) how the daemon is doing: READY=1
// once it serves, RELOADING=1 and STOPPING=1 when a signal begins one.
// Without $NOTIFY_SOCKET (not under systemd) it does nothing. It is the
// protocol of sd_notify(3): one datagram to a unix socket, "@" for the
// abstract namespace.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	if strings.HasPrefix(addr, "@") {
		addr = "\x00" + addr[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd %q: %w", state, err)
	}
	return nil
}
