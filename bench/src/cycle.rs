//! One acquire-hold-release cycle, as every measured client runs it: its parameters,
//! its record on the monotonic clock, its failures, and the settings all clients share.

use std::time::{Duration, Instant};

/// What every run's clients are configured with.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// fredlock's and the floor's per-node timeout.
    pub node_timeout: Duration,
    /// fredlock's acquire timeout in the contended workload.
    pub acquire_timeout: Duration,
    /// fredlock's retry delay and jitter in the contended workload (library defaults when
    /// `None`).
    pub retry_delay: Option<Duration>,
    pub retry_jitter: Option<Duration>,
    /// The lock TTL, for dist-lock, which fixes it when its provider is built.
    pub ttl: Duration,
}

/// The parameters of one cycle.
#[derive(Clone, Debug)]
pub struct CycleParams {
    pub ttl: Duration,
    pub hold: Duration,
    /// Contended: wait (retrying) until acquired or the run ends.
    pub contended: bool,
    /// No new attempt starts at or after this instant.
    pub end: Instant,
    /// Bound on one library call; a call that takes longer is a failure `op_timeout`.
    pub op_timeout: Duration,
}

/// One failed call: a short kind for the tables, and the client's message.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl Failure {
    pub fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

/// One cycle: acquire (retrying when contended), hold, release.
#[derive(Debug)]
pub struct Cycle {
    pub started: Instant,
    /// When the successful acquire call returned; `None` if none did.
    pub acquired: Option<Instant>,
    pub release_started: Option<Instant>,
    pub released: Option<Instant>,
    pub release_failure: Option<Failure>,
    /// Failed acquire calls in this cycle (contended: the ones before the success).
    pub failures: Vec<Failure>,
}

impl Cycle {
    pub fn new() -> Self {
        Cycle {
            started: Instant::now(),
            acquired: None,
            release_started: None,
            released: None,
            release_failure: None,
            failures: Vec::new(),
        }
    }

    /// A cycle begun at `started` that acquired nothing.
    pub fn failed(started: Instant, failure: Failure) -> Self {
        Cycle {
            started,
            failures: vec![failure],
            ..Cycle::new()
        }
    }
}
