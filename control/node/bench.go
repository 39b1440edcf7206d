package node

// Helpers for benchmarks (tools/bench's takeover suite): they run the
// node's executors without its control loop, so that a harness can hand
// them an engine's output and time what the daemon does with it. The
// daemon never uses them.

import (
	"context"

	"github.com/fsha/fsha/control/ownership"
)

// StartExecutors starts the per-VIP workers, as Run does, until ctx ends.
// The results they report, which Run's loop would give the engine, are
// read and dropped.
func (n *Node) StartExecutors(ctx context.Context) {
	for _, w := range n.workers {
		go w.run(ctx)
	}
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-n.results:
			}
		}
	}()
}

// Execute carries out an engine's output as Run's loop does after each
// step (the persisted promises, deadlines, takes, drops and messages, in
// that order).
func (n *Node) Execute(out ownership.Output) { n.execute(out) }
