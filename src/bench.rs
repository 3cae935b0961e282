//! Entry points for the criterion benches (`benches/hot_path.rs`) into the parts of the
//! lock path that are crate-private and need no network. Not part of the public API:
//! hidden from the docs, and free to change in any release.

use std::time::Duration;

use crate::quorum::{self, Decision, Tally, Vote};

/// A fresh lock token, as every acquisition attempt makes one.
pub fn new_token() -> String {
    crate::redlock::new_token()
}

/// Counts `votes` as a round does, until the decision; returns it, or `None` if the
/// votes leave it open.
pub fn decide(n: usize, votes: &[Vote]) -> Option<bool> {
    let mut tally = Tally::new(n);
    for vote in votes {
        if let Some(decision) = tally.decision() {
            return Some(decision == Decision::Quorum);
        }
        tally.add(vote);
    }
    tally.decision().map(|d| d == Decision::Quorum)
}

/// The validity left after an acquisition that took `elapsed`: `ttl - elapsed -
/// drift(ttl)`, saturating at zero.
pub fn validity(ttl: Duration, elapsed: Duration, drift_factor: f64) -> Duration {
    quorum::validity(ttl, elapsed, quorum::drift(ttl, drift_factor))
}

/// The fencing tokens of a round from its yes votes' counters, and whether they must
/// be written back.
pub fn fencing_tokens(yes: &[&[u64]], quorum: usize) -> Option<(Vec<u64>, bool)> {
    quorum::fencing_tokens(yes, quorum)
}
