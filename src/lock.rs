//! [`Lock`]: a held lock, its validity on the monotonic clock, extend and release.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::field::Empty;

use crate::error::Error;
use crate::quorum::{Decision, Votes, validity};
use crate::redlock::{Redlock, Request, lost, outcome_label};

/// A lock held on a quorum of nodes.
///
/// The lock is trustworthy only while [`remaining`](Lock::remaining) is above zero: that
/// is the validity left on this process's monotonic clock, already reduced by the time
/// the acquisition took and by the clock drift allowance. Work that may outlast it must
/// [`extend`](Lock::extend) the lock first.
///
/// Release it with [`release`](Lock::release) to free it for others at once and to learn
/// whether it was still held. A `Lock` that is dropped without `release` stays on the
/// nodes until its TTL runs out.
///
/// ```no_run
/// use std::time::Duration;
/// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
/// let mut lock = redlock.lock("invoices", Duration::from_secs(10)).await?;
/// assert!(lock.is_valid());
/// println!("{} held with token {}", lock.resource(), lock.token());
/// if lock.remaining() < Duration::from_secs(5) {
///     lock.extend(Duration::from_secs(10)).await?;
/// }
/// lock.release().await?;
/// # Ok(()) }
/// ```
pub struct Lock {
    redlock: Redlock,
    request: Request,
    token: Arc<str>,
    valid_until: Instant,
}

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.request.resource)
            .field("key", &self.request.key)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .finish()
    }
}

impl Lock {
    pub(crate) fn new(
        redlock: Redlock,
        request: &Request,
        token: Arc<str>,
        valid_until: Instant,
    ) -> Self {
        Lock {
            redlock,
            request: request.clone(),
            token,
            valid_until,
        }
    }

    /// The resource name this lock was taken for.
    pub fn resource(&self) -> &str {
        &self.request.resource
    }

    /// The key on the nodes: the key prefix followed by the resource name.
    pub fn key(&self) -> &str {
        &self.request.key
    }

    /// The random token (40 hex characters from a CSPRNG) stored under the key. A
    /// resource can compare it to tell this holder's writes from another's.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The TTL of the last successful acquire or extend, in whole milliseconds.
    pub fn ttl(&self) -> Duration {
        self.request.ttl
    }

    /// The validity left, measured on the monotonic clock; zero once it has run out.
    pub fn remaining(&self) -> Duration {
        self.valid_until.saturating_duration_since(Instant::now())
    }

    /// Whether any validity is left.
    pub fn is_valid(&self) -> bool {
        self.remaining() > Duration::ZERO
    }

    /// Extends the lock to `ttl` from now on every node that still holds our token.
    ///
    /// Succeeds only if a quorum of all N nodes renewed the key and the round ended
    /// within the validity still left; the validity is then recomputed from this round
    /// trip: `ttl - elapsed - drift`. On failure the lock is not released and keeps its
    /// former validity, shortened if some nodes applied a `ttl` shorter than what was
    /// left.
    ///
    /// # Errors
    /// [`Error::Expired`] if the validity had already run out or nodes answered that the
    /// key is no longer ours; [`Error::NoQuorum`] if too many nodes were unreachable;
    /// [`Error::TooLate`] if the round left no more than the minimum validity;
    /// [`Error::InvalidArgument`] for an unusable TTL.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        let request = self.redlock.request(&self.request.resource, ttl)?;
        let span = tracing::debug_span!(
            "fredlock.extend",
            resource = %request.resource,
            outcome = Empty,
            votes = Empty,
            elapsed_us = Empty,
            validity_ms = Empty,
        );
        let result = self.extend_in(request, &span).await;
        span.record(
            "outcome",
            result.as_ref().map_or_else(outcome_label, |_| "extended"),
        );
        result
    }

    async fn extend_in(&mut self, request: Request, span: &tracing::Span) -> Result<(), Error> {
        if !self.is_valid() {
            return Err(self.expired(Votes::default()));
        }
        let (decision, tally, votes, start, elapsed) =
            self.redlock.extend_round(&request, &self.token, span).await;
        let validity = validity(request.ttl, elapsed, request.drift);
        span.record("validity_ms", validity.as_millis());
        let min_validity = self.redlock.settings().min_validity;
        let failure = if decision == Decision::NoQuorum {
            Some(lost(&request, tally, votes))
        } else if start + elapsed >= self.valid_until {
            // The quorum must be reached while the lock was still valid.
            Some(self.expired(votes))
        } else if validity <= min_validity {
            Some(Error::TooLate {
                resource: request.resource.to_string(),
                validity,
                min_validity,
                votes,
            })
        } else {
            None
        };
        // The nodes that renewed the key now expire it `ttl` after the round began at
        // the earliest; the others at their former time. Either way the lock lasts no
        // longer than the sooner of the two.
        let renewed_until = start
            .checked_add(request.ttl.saturating_sub(request.drift))
            .unwrap_or(start);
        if let Some(error) = failure {
            // A failed extend with a shorter TTL may have shortened the keys.
            self.valid_until = self.valid_until.min(renewed_until);
            return Err(error);
        }
        self.valid_until = (start + elapsed).checked_add(validity).unwrap_or(start);
        self.request = request;
        Ok(())
    }

    /// Releases the lock: a compare-and-delete on every node, returning as soon as a
    /// quorum decides. The requests to slow nodes still run to completion or timeout
    /// in the background.
    ///
    /// `Ok` means the lock was still valid on this client's clock when the release
    /// began and a quorum of nodes deleted our key: the lock was held without a gap
    /// until now.
    ///
    /// # Errors
    /// [`Error::Expired`] if the validity had already run out (the keys are still
    /// removed where they remain), or the key had expired or been taken over on enough
    /// nodes that the lock was no longer held; [`Error::NoQuorum`] if too many nodes
    /// were unreachable to tell (the keys left there expire with their TTL).
    pub async fn release(self) -> Result<(), Error> {
        let was_valid = self.is_valid();
        self.redlock
            .release_round(&self.request, &self.token, was_valid)
            .await
    }

    fn expired(&self, votes: Votes) -> Error {
        Error::Expired {
            resource: self.request.resource.to_string(),
            votes,
        }
    }
}
