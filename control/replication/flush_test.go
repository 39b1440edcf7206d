package replication

import (
	"testing"
	"time"

	"github.com/fsha/fsha/dataplane"
)

func TestFlushWhen(t *testing.T) {
	const interval = 10 * time.Millisecond
	for _, c := range []struct {
		sinceLast time.Duration
		now       bool
		wait      time.Duration
	}{
		{sinceLast: time.Hour, now: true},                              // quiet: at once
		{sinceLast: interval, now: true},                               // an interval ago: at once
		{sinceLast: 0, wait: interval},                                 // just flushed: an interval
		{sinceLast: 3 * time.Millisecond, wait: 7 * time.Millisecond},  // the rest of it
		{sinceLast: interval - time.Nanosecond, wait: time.Nanosecond}, // almost
		{sinceLast: time.Duration(1<<63 - 1), now: true},               // never flushed (zero time)
	} {
		now, wait := flushWhen(c.sinceLast, interval)
		if now != c.now || wait != c.wait {
			t.Errorf("flushWhen(%v, %v) = %v, %v; want %v, %v", c.sinceLast, interval, now, wait, c.now, c.wait)
		}
	}
}

// TestFlushAfterQuietAndWhenFull runs the flush loop with an interval of
// an hour: a record after a quiet spell must reach the peer at once (a
// ticker would hold it for the hour), the next one must wait (at most
// one flush per interval), and a full delta must go at once.
func TestFlushAfterQuietAndWhenFull(t *testing.T) {
	nodes := startNodesWith(t, freePort(), Config{FlushInterval: time.Hour}, testKey, testKey)
	nodes[0].local.flows = []dataplane.Flow{flow("198.18.1.10", 1)}
	connectAll(nodes)
	waitFor(t, "node 1 has node 0's snapshot", func() bool { return nodes[1].store.has(0, 1) })

	nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventOpen, Flow: flow("198.18.1.10", 2)})
	waitFor(t, "the first record after a quiet spell at node 1", func() bool { return nodes[1].store.has(0, 2) })

	nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventOpen, Flow: flow("198.18.1.10", 3)})
	time.Sleep(200 * time.Millisecond)
	if nodes[1].store.has(0, 3) {
		t.Fatal("a second record within the interval was sent at once: more than one flush per interval")
	}

	for p := range MaxRecords - 1 {
		nodes[0].r.Publish(dataplane.Event{Type: dataplane.EventOpen, Flow: flow("198.18.1.10", uint16(4+p))})
	}
	waitFor(t, "a full delta at node 1", func() bool { return nodes[1].store.count(0) == 3+MaxRecords-1 })
}
