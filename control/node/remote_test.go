package node

import (
	"context"
	"encoding/json"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/fsha/fsha/control/admin"
	"github.com/fsha/fsha/control/allocation"
	"github.com/fsha/fsha/control/remote"
)

// Forwarded admin requests over the real gossip channel, between nodes in
// this process: node 0 reads node 2's status and disables node 2, as
// `fsha -n 2 status` and `fsha -n 2 disable` on node 0 do; a change not
// marked as a full-access caller's is refused by node 2.
func TestRemoteAdmin(t *testing.T) {
	c := startCluster(t, 3, 3, allocation.Automatic)
	addrs := map[int]netip.Addr{}
	for _, n := range c.cfg {
		addrs[n.PNN] = n.Addr
	}
	var rems []*remote.Remote
	for i, nd := range c.nodes {
		srv := admin.NewServer(testLogger(t), nd)
		r := remote.New(testLogger(t), i, addrs, srv.ServeForwarded)
		r.SetSender(c.gossip[i])
		nd.SetRemote(r.Receive)
		rems = append(rems, r)
	}
	forward := func(req admin.ForwardRequest) admin.ForwardResponse {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), admin.ForwardTimeout)
		defer cancel()
		resp, err := rems[0].Forward(ctx, 2, req)
		if err != nil {
			t.Fatal(err)
		}
		return resp
	}

	resp := forward(admin.ForwardRequest{Method: http.MethodGet, Path: "/v1/status"})
	var st admin.Status
	if err := json.Unmarshal(resp.Body, &st); err != nil || resp.Code != http.StatusOK || st.ThisPNN != 2 {
		t.Fatalf("node 2's status: %d %s (%v)", resp.Code, resp.Body, err)
	}

	resp = forward(admin.ForwardRequest{Method: http.MethodPost, Path: "/v1/disable", Body: []byte("{}")})
	if resp.Code != http.StatusForbidden {
		t.Errorf("unmarked change: %d %s, want 403", resp.Code, resp.Body)
	}
	resp = forward(admin.ForwardRequest{Method: http.MethodPost, Path: "/v1/disable", Body: []byte("{}"), Full: true})
	if resp.Code != http.StatusNoContent {
		t.Fatalf("disable node 2: %d %s", resp.Code, resp.Body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := c.nodes[2].Status(context.Background())
		if st.Nodes[2].State == admin.StateDisabled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node 2 is %s, not disabled", st.Nodes[2].State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st, _ := c.nodes[0].Status(context.Background()); st.Nodes[0].State == admin.StateDisabled {
		t.Error("node 0 disabled itself instead of node 2")
	}
}

// The remote's messages go to the remote, never to the pins' decoder (which
// would count them bad), and are dropped and counted until it is set.
func TestRemoteMessagesRouted(t *testing.T) {
	c := startCluster(t, 1, 2, allocation.Automatic)
	nd := c.nodes[0]
	msg := []byte{remote.TypeRequest, remote.WireVersion}
	nd.NotifyMsg(msg)
	var got [][]byte
	nd.SetRemote(func(m []byte) { got = append(got, m) })
	nd.NotifyMsg(msg)
	nd.NotifyMsg([]byte{remote.TypeResponse})
	if len(got) != 2 || nd.BadMessages() != 0 {
		t.Errorf("remote got %d messages, bad messages %d; want 2 and 0", len(got), nd.BadMessages())
	}
	st, _ := nd.Status(context.Background())
	if st.Counters["remote_messages_dropped"] != 1 {
		t.Errorf("counters %v: want one remote message dropped before SetRemote", st.Counters)
	}
}
