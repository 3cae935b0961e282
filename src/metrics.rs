//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (crate feature
//! `metrics`): how long acquisitions take and how they end, how each node votes, how
//! the keep-alive fares and which locks were lost.
//!
//! With the feature on, fredlock records into whatever recorder the application
//! installed (for example `metrics-exporter-prometheus`); with none installed, the
//! facade drops every value. Without the feature nothing is recorded, and the hooks
//! compile to nothing. A `Redlock`'s `build()` describes every metric (its unit and
//! help text) to the recorder installed at that time; `describe()` (with the feature)
//! does it again for a recorder installed later.
//!
//! Durations are in seconds. Labels take few values, so every metric has a bounded
//! number of series: `node` is a configured node's `host:port` (never credentials);
//! no label carries a resource name or a token.
//!
//! | Name | Type | Unit | Labels | One per |
//! | --- | --- | --- | --- | --- |
//! | `fredlock_acquire_duration_seconds` | histogram | seconds | `outcome` | acquisition |
//! | `fredlock_acquire_attempts` | histogram | count | `outcome` | acquisition |
//! | `fredlock_outcomes_total` | counter | count | `outcome` | acquisition, lost lock |
//! | `fredlock_node_votes_total` | counter | count | `node`, `op`, `vote` | node in a round |
//! | `fredlock_keep_alive_renewals_total` | counter | count | `outcome` | renewal |
//! | `fredlock_keep_alive_validity_left_seconds` | histogram | seconds | `outcome` | renewal |
//! | `fredlock_locks_lost_total` | counter | count | `reason` | lost lock |
//!
//! * An **acquisition** is one whole call of `lock`, `try_lock`, `lock_many`,
//!   `try_lock_many`, `read_lock`, `try_read_lock`, `Semaphore::acquire`,
//!   `Semaphore::try_acquire` (and the `lock` of `with_lock`), with all its attempts, the pauses
//!   between them and the cleanup it waits for. Its `outcome` is `acquired`, the kind
//!   of the error returned (`taken`, `no_quorum`, `too_late`, `permits_mismatch`; `other` for any other, which none returns today), or `cancelled` when the call's future
//!   was dropped before it ended (the attempts counted are those begun). A call refused
//!   for an invalid argument sends nothing and is not counted.
//! * `fredlock_outcomes_total` counts each acquisition once with its `outcome`, and
//!   each lost lock once with `outcome="lost"`.
//! * `fredlock_node_votes_total` counts every node's vote in every decided round:
//!   `op` is `acquire` (the attempt's round, each retry its own; the votes of a failed
//!   one include the answers counted while our token was being removed), `extend`
//!   (manual and keep-alive), `fence` (the round that makes a lock's fencing tokens at
//!   its first request) or `release` (also the background release of a dropped
//!   lock); `vote` is `yes`, `taken`, `error`, `timeout`, or `pending` for a node that
//!   had not answered when the round was decided (its answer is not counted later).
//!   The fencing write-back round and an extend refused before any request are not
//!   counted; nor is a round whose future was dropped before its decision.
//! * A **renewal** is one extension round of the keep-alive task (a retry is another
//!   renewal); `outcome` is `ok` or `failed`. The histogram records the lock's
//!   validity left when the renewal began.
//! * A **lost lock** is a held lock that can no longer be trusted before its holder
//!   let it go, counted once, when it happens: `reason` is `extend_failed` (the
//!   keep-alive gave up, an extension found our token gone or reached its quorum
//!   too late, or a fencing round found our token gone) or `expired` (the validity ran out while `Lease::lost` waited, as in
//!   `with_lock`, or the lock was released or dropped after its validity ran out). A
//!   lock released or dropped while valid is not lost.

/// Name of the histogram of acquisition latency, in seconds, labelled `outcome`.
pub const ACQUIRE_DURATION: &str = "fredlock_acquire_duration_seconds";
/// Name of the histogram of attempts per acquisition, labelled `outcome`.
pub const ACQUIRE_ATTEMPTS: &str = "fredlock_acquire_attempts";
/// Name of the counter of acquisitions and lost locks, labelled `outcome`.
pub const OUTCOMES: &str = "fredlock_outcomes_total";
/// Name of the counter of votes, labelled `node`, `op` and `vote`.
pub const NODE_VOTES: &str = "fredlock_node_votes_total";
/// Name of the counter of keep-alive renewals, labelled `outcome` (`ok`, `failed`).
pub const RENEWALS: &str = "fredlock_keep_alive_renewals_total";
/// Name of the histogram of the validity left at each keep-alive renewal, in seconds,
/// labelled `outcome` (`ok`, `failed`).
pub const RENEWAL_VALIDITY_LEFT: &str = "fredlock_keep_alive_validity_left_seconds";
/// Name of the counter of lost locks, labelled `reason` (`expired`, `extend_failed`).
pub const LOCKS_LOST: &str = "fredlock_locks_lost_total";

/// Which operation a round ran, the `op` label of the votes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RoundKind {
    Acquire,
    Extend,
    Fence,
    Release,
}

#[cfg(feature = "metrics")]
mod enabled;
#[cfg(all(test, feature = "metrics"))]
mod tests;
#[cfg(feature = "metrics")]
pub use enabled::describe;
#[cfg(feature = "metrics")]
pub(crate) use enabled::{Acquisition, Loss, Renewal, vote, votes};

#[cfg(not(feature = "metrics"))]
pub(crate) use disabled::{Acquisition, Loss, Renewal, describe, vote, votes};

/// The hooks without the feature: the same signatures, doing nothing, so that the
/// call sites need no `cfg` and cost nothing.
#[cfg(not(feature = "metrics"))]
mod disabled {
    use super::RoundKind;
    use crate::error::{Error, LostReason};
    use std::sync::Arc;
    use std::time::Duration;

    use crate::quorum::{Vote, Votes};

    pub(crate) struct Acquisition;

    impl Acquisition {
        #[inline(always)]
        pub(crate) fn start() -> Self {
            Acquisition
        }

        #[inline(always)]
        pub(crate) fn attempt(&mut self) {}

        #[inline(always)]
        pub(crate) fn end<T>(self, _result: &Result<T, Error>) {}
    }

    pub(crate) struct Renewal;

    impl Renewal {
        #[inline(always)]
        pub(crate) fn start(_left: Duration) -> Self {
            Renewal
        }

        #[inline(always)]
        pub(crate) fn end(self, _result: &Result<(), Error>) {}
    }

    pub(crate) struct Loss;

    impl Loss {
        #[inline(always)]
        pub(crate) fn of(_reason: &LostReason, _ran_out: impl FnOnce() -> bool) -> Self {
            Loss
        }

        #[inline(always)]
        pub(crate) fn record(self) {}
    }

    #[inline(always)]
    pub(crate) fn describe() {}

    #[inline(always)]
    pub(crate) fn vote(_kind: RoundKind, _node: &Arc<str>, _vote: Option<&Vote>) {}

    #[inline(always)]
    pub(crate) fn votes(_kind: RoundKind, _votes: &Votes) {}
}
