package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"syscall"
	"time"
)

// DefaultTimeout bounds one client call when the caller's context has no
// deadline of its own.
const DefaultTimeout = 30 * time.Second

// ErrNotRunning is returned by the client when no daemon listens on the
// socket.
var ErrNotRunning = errors.New("fsha is not running here")

// Error is an error answer of the server.
type Error struct {
	Code    int    // HTTP status
	Message string // the server's message
}

func (e *Error) Error() string { return e.Message }

// Is makes a 400 answer match ErrBadRequest.
func (e *Error) Is(target error) bool {
	return target == ErrBadRequest && e.Code == http.StatusBadRequest
}

// Client talks to a node's admin API. It implements Backend.
type Client struct {
	socket  string
	http    *http.Client
	Timeout time.Duration
	// node is the NodeHeader value: the PNN the requests are for, ""
	// for this node.
	node string
}

var _ Backend = (*Client)(nil)

// NewClient returns a client of the daemon serving socketPath.
func NewClient(socketPath string) *Client {
	dialer := &net.Dialer{Timeout: 2 * time.Second}
	return &Client{
		socket:  socketPath,
		Timeout: DefaultTimeout,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return dialer.DialContext(ctx, "unix", socketPath)
			},
			MaxIdleConns:    1,
			IdleConnTimeout: 10 * time.Second,
		}},
	}
}

// On returns a client whose requests are for node pnn: the daemon behind
// the socket forwards them there over the cluster channel (fsha -n PNN).
// It shares c's connection.
func (c *Client) On(pnn int) *Client {
	cc := *c
	cc.node = strconv.Itoa(pnn)
	return &cc
}

// Status is `fsha status`.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var st Status
	err := c.call(ctx, http.MethodGet, "status", nil, &st)
	return st, err
}

// IPs is `fsha ip`.
func (c *Client) IPs(ctx context.Context) ([]IP, error) {
	var ips []IP
	err := c.call(ctx, http.MethodGet, "ip", nil, &ips)
	return ips, err
}

// Timeline is `fsha timeline`.
func (c *Client) Timeline(ctx context.Context) ([]Takeover, error) {
	var tl []Takeover
	err := c.call(ctx, http.MethodGet, "timeline", nil, &tl)
	return tl, err
}

// Checks returns the latest run of each health check and hook.
func (c *Client) Checks(ctx context.Context) (Checks, error) {
	var ch Checks
	err := c.call(ctx, http.MethodGet, "checks", nil, &ch)
	return ch, err
}

// Move asks for vip to go to node (address or PNN).
func (c *Client) Move(ctx context.Context, vip netip.Addr, node string, kill bool) error {
	return c.call(ctx, http.MethodPost, "move", MoveRequest{VIP: vip.String(), Node: node, Kill: kill}, nil)
}

// Tickle tickles the clients of vip.
func (c *Client) Tickle(ctx context.Context, vip netip.Addr) (TickleResult, error) {
	var res TickleResult
	err := c.call(ctx, http.MethodPost, "tickle", TickleRequest{VIP: vip.String()}, &res)
	return res, err
}

// Disable stops this node from holding VIPs.
func (c *Client) Disable(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "disable", struct{}{}, nil)
}

// Enable lets this node hold VIPs again.
// OperatorStop holds this node out of the VIPs until OperatorContinue or
// a restart.
func (c *Client) OperatorStop(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "stop", struct{}{}, nil)
}

// Reload has the daemon check its configuration files and restart in
// place with them; a refused configuration is the error.
func (c *Client) Reload(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "reload", struct{}{}, nil)
}

// OperatorContinue ends an OperatorStop.
func (c *Client) OperatorContinue(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "continue", struct{}{}, nil)
}

func (c *Client) Enable(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "enable", struct{}{}, nil)
}

// Ban bans this node for d, rounded up to whole seconds.
func (c *Client) Ban(ctx context.Context, d time.Duration) error {
	secs := int((d + time.Second - 1) / time.Second)
	return c.call(ctx, http.MethodPost, "ban", BanRequest{Seconds: secs}, nil)
}

// Unban ends this node's ban.
func (c *Client) Unban(ctx context.Context) error {
	return c.call(ctx, http.MethodPost, "unban", struct{}{}, nil)
}

// CloseIdleConnections releases the client's connection.
func (c *Client) CloseIdleConnections() { c.http.CloseIdleConnections() }

func (c *Client) call(ctx context.Context, method, endpoint string, in, out any) error {
	if _, ok := ctx.Deadline(); !ok && c.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.Timeout)
		defer cancel()
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode %s request: %w", endpoint, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://fsha/v1/"+endpoint, body)
	if err != nil {
		return fmt.Errorf("%s: %w", endpoint, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.node != "" {
		req.Header.Set(NodeHeader, c.node)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return c.dialError(endpoint, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: read answer: %w", endpoint, err)
	}
	if resp.StatusCode >= 300 {
		var eb errorBody
		if json.Unmarshal(raw, &eb) != nil || eb.Error == "" {
			eb.Error = fmt.Sprintf("%s: daemon answered %s", endpoint, resp.Status)
		}
		return &Error{Code: resp.StatusCode, Message: eb.Error}
	}
	if c.node != "" && resp.Header.Get(NodeHeader) != c.node {
		return fmt.Errorf("%s: the daemon on %s answered for itself, not for node %s: it does not forward requests to other nodes (a release before fsha -n?)", endpoint, c.socket, c.node)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s: decode answer: %w", endpoint, err)
	}
	return nil
}

// dialError turns "nobody there" into advice.
func (c *Client) dialError(endpoint string, err error) error {
	switch {
	case errors.Is(err, os.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
		return fmt.Errorf("%w (no socket at %s): start `fsha up` or pass --run-dir", ErrNotRunning, c.socket)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("%w (nothing answers on %s): start `fsha up` or pass --run-dir", ErrNotRunning, c.socket)
	case errors.Is(err, os.ErrPermission):
		return fmt.Errorf("%s: permission denied on %s: run as root (or, to read only, as a member of the daemon's --admin-group)", endpoint, c.socket)
	}
	return fmt.Errorf("%s: %w", endpoint, err)
}
