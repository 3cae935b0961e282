//! The hooks with the feature on. Each records into the recorder current where it
//! runs: the thread's local recorder if one is set, else the global one. A hook only
//! adds to a counter or a histogram: no lock is held and nothing waits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{Unit, counter, describe_counter, describe_histogram, histogram};

use super::{
    ACQUIRE_ATTEMPTS, ACQUIRE_DURATION, LOCKS_LOST, NODE_VOTES, OUTCOMES, RENEWAL_VALIDITY_LEFT,
    RENEWALS, RoundKind,
};
use crate::error::{Error, LostReason};
use crate::quorum::{Vote, Votes};

/// Describes every fredlock metric (unit and help text) to the current recorder.
///
/// `Redlock`'s `build()` calls it; call it again after installing a recorder once a
/// client was built, for the recorders that keep descriptions (a Prometheus
/// exporter's `# HELP` lines). Available with the `metrics` feature.
///
/// ```
/// // After installing the application's recorder:
/// fredlock::metrics::describe();
/// ```
pub fn describe() {
    describe_histogram!(
        ACQUIRE_DURATION,
        Unit::Seconds,
        "Duration of a whole lock()/try_lock() call, retries included, by outcome"
    );
    describe_histogram!(
        ACQUIRE_ATTEMPTS,
        Unit::Count,
        "Attempts (vote rounds) one lock()/try_lock() call made, by outcome"
    );
    describe_counter!(
        OUTCOMES,
        Unit::Count,
        "Acquisitions by outcome, and held locks lost (outcome=\"lost\")"
    );
    describe_counter!(
        NODE_VOTES,
        Unit::Count,
        "Votes of each node in decided acquire, extend and release rounds"
    );
    describe_counter!(
        RENEWALS,
        Unit::Count,
        "Keep-alive renewals (extension rounds) by outcome"
    );
    describe_histogram!(
        RENEWAL_VALIDITY_LEFT,
        Unit::Seconds,
        "Validity a kept-alive lock had left when a renewal began, by outcome"
    );
    describe_counter!(
        LOCKS_LOST,
        Unit::Count,
        "Held locks that could no longer be trusted before their holder let them go, by reason"
    );
}

/// One acquisition call, from its start to its end. Dropped before [`end`]
/// (the call's future was dropped), it records the outcome `cancelled`.
///
/// [`end`]: Acquisition::end
pub(crate) struct Acquisition {
    start: Instant,
    attempts: u32,
    ended: bool,
}

impl Acquisition {
    pub(crate) fn start() -> Self {
        Acquisition {
            start: Instant::now(),
            attempts: 0,
            ended: false,
        }
    }

    /// Counts an attempt about to begin.
    pub(crate) fn attempt(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    pub(crate) fn end<T>(mut self, result: &Result<T, Error>) {
        self.ended = true;
        self.record(match result {
            Ok(_) => "acquired",
            Err(error) => outcome(error),
        });
    }

    fn record(&self, outcome: &'static str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        histogram!(ACQUIRE_DURATION, "outcome" => outcome).record(elapsed);
        histogram!(ACQUIRE_ATTEMPTS, "outcome" => outcome).record(self.attempts);
        counter!(OUTCOMES, "outcome" => outcome).increment(1);
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.ended {
            self.record("cancelled");
        }
    }
}

/// The `outcome` label of an acquisition that failed with `error`.
pub(super) fn outcome(error: &Error) -> &'static str {
    match error {
        Error::Taken { .. } => "taken",
        Error::NoQuorum { .. } => "no_quorum",
        Error::TooLate { .. } => "too_late",
        Error::FencingFailed { .. } => "fencing_failed",
        Error::PermitsMismatch { .. } => "permits_mismatch",
        _ => "other",
    }
}

/// One keep-alive renewal, with the validity its lock had left when it began.
pub(crate) struct Renewal {
    left: Duration,
}

impl Renewal {
    /// `left`: the validity the lock has left as the renewal begins.
    pub(crate) fn start(left: Duration) -> Self {
        Renewal { left }
    }

    pub(crate) fn end(self, result: &Result<(), Error>) {
        let outcome = if result.is_ok() { "ok" } else { "failed" };
        counter!(RENEWALS, "outcome" => outcome).increment(1);
        histogram!(RENEWAL_VALIDITY_LEFT, "outcome" => outcome).record(self.left.as_secs_f64());
    }
}

/// A reason about to be recorded as a lock's lost state, and the `reason` label it
/// is counted under if it is the first (`None`: not a loss).
pub(crate) struct Loss {
    reason: Option<&'static str>,
}

impl Loss {
    /// `ran_out`: whether the lock's validity has run out, asked only of a release.
    pub(crate) fn of(reason: &LostReason, ran_out: impl FnOnce() -> bool) -> Self {
        Loss {
            reason: lost_label(reason, ran_out),
        }
    }

    /// Counts the loss; called only when the reason was the lock's first.
    pub(crate) fn record(self) {
        if let Some(reason) = self.reason {
            counter!(LOCKS_LOST, "reason" => reason).increment(1);
            counter!(OUTCOMES, "outcome" => "lost").increment(1);
        }
    }
}

/// The `reason` label of a lost lock: a release or a drop is no loss, unless the
/// validity had already run out (the holder worked past it, unaware).
pub(super) fn lost_label(
    reason: &LostReason,
    ran_out: impl FnOnce() -> bool,
) -> Option<&'static str> {
    match reason {
        LostReason::Expired => Some("expired"),
        LostReason::ExtendFailed(_) => Some("extend_failed"),
        LostReason::Released => ran_out().then_some("expired"),
    }
}

/// Counts one node's vote in a decided round; `None`: the node had not answered by
/// then (`pending`).
pub(crate) fn vote(kind: RoundKind, node: &Arc<str>, vote: Option<&Vote>) {
    count_vote(kind, node, vote.map_or("pending", vote_label));
}

/// Counts every node's vote in `votes`.
pub(crate) fn votes(kind: RoundKind, votes: &Votes) {
    for node_vote in votes {
        count_vote(kind, &node_vote.node, vote_label(&node_vote.vote));
    }
}

fn count_vote(kind: RoundKind, node: &Arc<str>, vote: &'static str) {
    let op = match kind {
        RoundKind::Acquire => "acquire",
        RoundKind::Extend => "extend",
        RoundKind::Fence => "fence",
        RoundKind::Release => "release",
    };
    counter!(NODE_VOTES, "node" => Arc::clone(node), "op" => op, "vote" => vote).increment(1);
}

pub(super) fn vote_label(vote: &Vote) -> &'static str {
    match vote {
        Vote::Yes => "yes",
        Vote::Taken => "taken",
        Vote::Error(_) => "error",
        Vote::Timeout => "timeout",
        Vote::Pending => "pending",
    }
}
