// Package admin is the node's administration API: an HTTP/JSON server on a
// unix socket under the run directory (mode 0600: root only), its client,
// and the types both speak. The CLI's status, ip, move, disable, enable,
// ban and timeline commands are thin wrappers over the client.
package admin

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Node states, as `ctdb status` names them.
const (
	StateOK        = "OK"
	StateUnhealthy = "UNHEALTHY"
	StateDisabled  = "DISABLED"
	// StateStopped: stopped by the operator (fsha stop) until fsha
	// continue or a restart; it holds no VIP.
	StateStopped      = "STOPPED"
	StateBanned       = "BANNED"
	StateDisconnected = "DISCONNECTED"
	// StateRestarting: its daemon restarts; it keeps its VIPs for the
	// restart grace.
	StateRestarting = "RESTARTING"
	// StateStopping: it hands its VIPs over before it stops.
	StateStopping = "STOPPING"
	// StateStarting: just started (or back from a partition): it keeps
	// what it holds and takes nothing new until its view is fresh.
	StateStarting = "STARTING"
)

// NodeStatus is one line of `fsha status`.
type NodeStatus struct {
	PNN     int    `json:"pnn"`
	Address string `json:"address"`
	State   string `json:"state"`
	This    bool   `json:"this"`
	// Quorum is whether that node says it sees a quorum.
	Quorum bool `json:"quorum"`
	// VIPs is how many VIPs the node holds.
	VIPs int `json:"vips"`
	// Protocol is the ownership protocol revision the node speaks.
	Protocol int `json:"protocol,omitempty"`
	// Skew says how the node's configuration differs from the
	// majority's (it then holds nothing), "" when it does not.
	Skew string `json:"config_skew,omitempty"`
	// Reason says why the node is in its state when it is not OK, as far
	// as this node knows (this node: which check failed and what it said;
	// another node: what its heartbeats say).
	Reason string `json:"reason,omitempty"`
}

// Status is `fsha status`: the cluster as this node sees it.
type Status struct {
	Nodes  []NodeStatus `json:"nodes"`
	Quorum bool         `json:"quorum"`
	// QuorumReason says, without quorum, what is missing for it.
	QuorumReason string `json:"quorum_reason,omitempty"`
	// ThisPNN is this node's number.
	ThisPNN int    `json:"this_pnn"`
	Policy  string `json:"failback_policy"`
	// Lock is the cluster lock file, empty when none; LockHeld whether
	// this node holds it now.
	Lock     string `json:"lock,omitempty"`
	LockHeld bool   `json:"lock_held"`
	// Counters are this node's cluster counters: rejected gossip and
	// replication messages, replicated records...
	Counters map[string]uint64 `json:"counters,omitempty"`
	// Interfaces are this node's public interfaces, then its reply
	// interfaces: link, and how its data plane runs there.
	Interfaces []InterfaceStatus `json:"interfaces,omitempty"`
}

// Roles of an interface in InterfaceStatus.
const (
	// RolePublic: a VIP's interface, in public_addresses; every program
	// runs there.
	RolePublic = "public"
	// RoleReply: an interface through which the node's answers to VIP
	// clients leave although no VIP lives there (the kernel routes the
	// clients there); the egress program alone runs there, to track them.
	RoleReply = "reply"
)

// InterfaceStatus is one public or reply interface of a node.
type InterfaceStatus struct {
	Name string `json:"name"`
	// Role is RolePublic or RoleReply.
	Role string `json:"role,omitempty"`
	// Link: the interface exists and has link; Present: it exists.
	Link    bool `json:"link"`
	Present bool `json:"present"`
	// Driver, XDPMode (native, generic), Steer (xdp, tc) and SteerReason
	// say how the programs run there; empty while it is missing.
	Driver      string `json:"driver,omitempty"`
	XDPMode     string `json:"xdp_mode,omitempty"`
	Steer       string `json:"steer,omitempty"`
	SteerReason string `json:"steer_reason,omitempty"`
}

// IP is one line of `fsha ip`.
type IP struct {
	VIP    string `json:"vip"`    // address/prefix
	Iface  string `json:"iface"`  // interfaces, comma-separated as in public_addresses
	Owner  string `json:"owner"`  // node address holding it, "" when none
	PNN    int    `json:"pnn"`    // owner's number, -1 when none
	Target string `json:"target"` // where the allocation wants it, "" when nowhere
	// State: "held", "unassigned", "moving" (owner and target differ),
	// with connection draining, "draining", and "retiring" for a VIP a
	// reload removed whose connections still drain on its node.
	State string `json:"state"`
	// DrainingFrom is the node that still serves the VIP's old
	// connections after a planned move, "" when none.
	DrainingFrom string `json:"draining_from,omitempty"`
	// Epoch is the owner's epoch of the VIP (each takeover raises it).
	Epoch uint64 `json:"epoch"`
	// LeaseLeft is, on the owner, how long its data plane answers for the
	// VIP without another renewal (negative: lapsed).
	LeaseLeft time.Duration `json:"lease_left_ns,omitempty"`
}

// TimelineStep is one dated step of a takeover or release.
type TimelineStep struct {
	Step string        `json:"step"`
	At   time.Time     `json:"at"`
	Took time.Duration `json:"since_decision_ns"`
}

// Takeover records one VIP taken over or released by this node.
type Takeover struct {
	VIP    string         `json:"vip"`
	Iface  string         `json:"iface"`
	Kind   string         `json:"kind"`   // "takeover", "release", "drain", "lapse" or "interface" (moved to another of its interfaces here)
	Reason string         `json:"reason"` // e.g. "node 198.18.0.2 died", "rebalance", "move", "disabled"
	From   string         `json:"from"`   // previous holder, "" when none or unknown
	Steps  []TimelineStep `json:"steps"`
	Error  string         `json:"error,omitempty"`
	// Tickled is how many replicated connections of the previous holder
	// were tickled; Resets how many RSTs this node's stack sent meanwhile.
	Tickled int   `json:"tickled"`
	Resets  int64 `json:"resets"`
}

// MoveRequest asks for a VIP to go to a node.
type MoveRequest struct {
	VIP  string `json:"vip"`
	Node string `json:"node"` // node address or PNN
	// Kill ends the VIP's connections at once instead of draining them.
	Kill bool `json:"kill"`
}

// BanRequest bans this node for a while.
type BanRequest struct {
	Seconds int `json:"seconds"`
}

// TickleRequest asks this node to tickle the clients of a VIP it holds.
type TickleRequest struct {
	VIP string `json:"vip"`
}

// TickleResult is what `fsha tickle` did.
type TickleResult struct {
	VIP        string        `json:"vip"`
	Conns      int           `json:"connections"`
	Sent       int           `json:"sent"`
	FirstRound time.Duration `json:"first_round_ns"`
	Resets     int64         `json:"resets"`
}

// ErrBadRequest wraps errors the caller can fix (unknown VIP, bad node).
var ErrBadRequest = errors.New("bad request")

// CheckStatus is one health check in `fsha checks`: its latest run.
type CheckStatus struct {
	Name    string `json:"name"`
	Passing bool   `json:"passing"`
	// FailedRuns counts the failed runs in a row (0: the last passed).
	FailedRuns int           `json:"failed_runs"`
	Error      string        `json:"error,omitempty"` // what the last run said when it failed
	LastRun    time.Time     `json:"last_run"`        // zero: not run yet
	Took       time.Duration `json:"took_ns"`
}

// HookStatus is one hook's latest run for one event in `fsha checks`,
// like `ctdb scriptstatus`.
type HookStatus struct {
	Event    string        `json:"event"`
	Script   string        `json:"script"`
	OK       bool          `json:"ok"`
	ExitCode int           `json:"exit_code"`
	Error    string        `json:"error,omitempty"` // did not start, timed out, killed
	Output   string        `json:"output,omitempty"`
	Ended    time.Time     `json:"ended"`
	Took     time.Duration `json:"took_ns"`
}

// Checks is `fsha checks`.
type Checks struct {
	Checks []CheckStatus `json:"checks"`
	Hooks  []HookStatus  `json:"hooks"`
}

// CheckReporter is implemented by a Backend that can say how its health
// checks and hooks last ran.
type CheckReporter interface {
	Checks(ctx context.Context) (Checks, error)
}

// Reloader is implemented by a Backend that can reload the node's
// configuration (ctdb reloadips and reloadnodes): it checks the files and
// restarts the daemon in place with them, as SIGHUP does; a configuration
// it refuses is the error, and the running one goes on.
type Reloader interface {
	Reload(ctx context.Context) error
}

// Backend is what the server serves: the node's controller implements it.
type Backend interface {
	Status(ctx context.Context) (Status, error)
	IPs(ctx context.Context) ([]IP, error)
	Move(ctx context.Context, vip netip.Addr, node string, kill bool) error
	Disable(ctx context.Context) error
	Enable(ctx context.Context) error
	// Stop and Continue are Disable and Enable that a restart forgets
	// (ctdb stop and continue).
	OperatorStop(ctx context.Context) error
	OperatorContinue(ctx context.Context) error
	Ban(ctx context.Context, d time.Duration) error
	// Unban ends a ban now; it says so when there was none.
	Unban(ctx context.Context) error
	Timeline(ctx context.Context) ([]Takeover, error)
	// Tickle makes every client of vip known to this node (the other
	// nodes' replicated connections) reconnect now, like ctdb's tickles.
	Tickle(ctx context.Context, vip netip.Addr) (TickleResult, error)
}
