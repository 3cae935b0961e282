//! Container tests: fredlock against real Redis nodes that the tests kill, pause,
//! restart and misconfigure. Each test starts its own cluster (tests/cluster).
//!
//! Run with a Redis image present: `FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh)`.
//! Timing bounds below only separate "bounded by one node timeout" from "waits for the
//! slowest node" or "hangs"; each uses a node timeout chosen to make that gap large.

mod acquire;
mod bad_input;
mod batching;
mod building;
mod contention;
mod extend_release;
mod faults;
mod foreign;
mod keep_alive;
mod library;
mod lifecycle;
mod lock_votes;
#[cfg(feature = "metrics")]
mod metrics;
mod multi;
mod outcomes;
mod read_write;
mod semaphore;
mod support;
mod tasks;
mod tracing_spans;
mod waiting;
