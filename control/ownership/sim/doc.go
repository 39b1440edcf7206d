// Package sim is the deterministic simulator of the ownership engine
// (control/ownership): a fake clock, per-node clocks drifting within the
// bound, a fake network (delay, loss, duplication, partitions) carrying
// the real wire messages, and per node an Engine with a model of its
// executor and data plane. One seed reproduces a whole run, and the
// safety invariants are checked at every simulated instant.
//
// Its tests are the ownership protocol's simulated schedules and
// scenarios.
package sim
