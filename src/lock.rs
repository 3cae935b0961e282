//! [`Lock`]: a held lock, its validity on the monotonic clock, extend, keep-alive and
//! release.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tracing::field::Empty;

use crate::config::retry_pause;
use crate::error::Error;
use crate::lease::{Lease, LostReason, Shared};
use crate::quorum::{Decision, Votes, validity};
use crate::redlock::{Redlock, Request, lost, outcome_label};

/// A lock held on a quorum of nodes.
///
/// The lock is trustworthy only while [`remaining`](Lock::remaining) is above zero: that
/// is the validity left on this process's monotonic clock, already reduced by the time
/// the acquisition took and by the clock drift allowance. Work that may outlast it must
/// [`extend`](Lock::extend) the lock, or have it kept alive in the background with
/// [`keep_alive`](Lock::keep_alive); [`Lease::lost`] tells when it can no longer be
/// trusted.
///
/// Release it with [`release`](Lock::release) to free it for others at once and to learn
/// whether it was still held. A `Lock` dropped without `release` is released in the
/// background (a task on the current tokio runtime; nothing blocks in `drop`, and the
/// outcome is not reported); outside a runtime its keys expire with their TTL.
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
    shared: Arc<Shared>,
    /// Serialises extensions (manual and keep-alive): two rounds with different TTLs
    /// must not race on the nodes.
    extending: Arc<tokio::sync::Mutex<()>>,
    keep_alive: Option<AbortHandle>,
    /// Cleared by `release`, so that `drop` does not release a second time.
    armed: bool,
}

/// The fencing tokens of a lock: one per resource.
pub(crate) type Fences = Arc<[u64]>;

impl fmt::Debug for Lock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("resource", &self.request.resource)
            .field("keys", &self.request.keys)
            .field("token", &self.token)
            .field("remaining", &self.remaining())
            .field("kept_alive", &self.keep_alive.is_some())
            .finish()
    }
}

impl Lock {
    pub(crate) fn new(
        redlock: Redlock,
        request: &Request,
        token: Arc<str>,
        valid_until: Instant,
        fences: Fences,
    ) -> Self {
        Lock {
            redlock,
            request: request.clone(),
            token,
            shared: Shared::new(valid_until, request.ttl, fences),
            extending: Arc::default(),
            keep_alive: None,
            armed: true,
        }
    }

    /// The resource name this lock was taken for; for a lock over several resources
    /// ([`Redlock::lock_many`]), their names joined by `", "`.
    pub fn resource(&self) -> &str {
        &self.request.resource
    }

    /// The resource names this lock was taken for, in the order given.
    pub fn resources(&self) -> impl Iterator<Item = &str> {
        self.request.resources.iter().map(|r| &**r)
    }

    /// The key on the nodes: the key prefix followed by the resource name (the first
    /// resource's, for a lock over several).
    pub fn key(&self) -> &str {
        self.request.keys.first().map_or("", |k| &**k)
    }

    /// The keys on the nodes, one per resource.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.request.keys.iter().map(|k| &**k)
    }

    /// The random token (40 hex characters from a CSPRNG) stored under the key. A
    /// resource can compare it to tell this holder's writes from another's.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The fencing token: a number strictly greater than that of every earlier holder
    /// of the resource, as long as the nodes keep their data and, across a pause in the
    /// resource's use longer than the fencing retention, the clients' clocks agree
    /// within it (docs/fencing.md). Pass it with every write to the protected resource,
    /// which rejects a token lower than the highest it has accepted (an equal one is
    /// this holder writing again). For a lock over several resources, the first one's
    /// (see [`fencing_tokens`](Lock::fencing_tokens)).
    pub fn fencing_token(&self) -> u64 {
        self.shared.fences.first().copied().unwrap_or(0)
    }

    /// The fencing tokens, one per resource in the order of
    /// [`resources`](Lock::resources).
    pub fn fencing_tokens(&self) -> &[u64] {
        &self.shared.fences
    }

    /// The TTL of the last successful acquire or extend, in whole milliseconds.
    pub fn ttl(&self) -> Duration {
        self.request.ttl
    }

    /// The validity left, measured on the monotonic clock; zero once it has run out.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// Whether the lock is still trusted: validity left, and no loss signalled (see
    /// [`Lease::lost`]).
    pub fn is_valid(&self) -> bool {
        self.remaining() > Duration::ZERO && self.shared.lost_reason().is_none()
    }

    /// A cheap, cloneable view of this lock for other tasks: its validity and the
    /// lost-lock signal.
    pub fn lease(&self) -> Lease {
        Lease {
            resource: Arc::clone(&self.request.resource),
            token: Arc::clone(&self.token),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Keeps the lock alive in the background until it is released or dropped.
    ///
    /// A task extends the lock by its current TTL (that of the last successful acquire
    /// or [`extend`](Lock::extend)) whenever the share of the validity set by
    /// [`Builder::keep_alive_at`](crate::Builder::keep_alive_at) (default: half) is
    /// left, but no later than two node timeouts before the validity ends (as long as
    /// that leaves half the validity between renewals), so that a renewal that fails
    /// is known in time. A manual `extend` moves its schedule at once. A failed extension is retried after a short random pause as long as the
    /// validity left allows another attempt; when it does not, or the nodes answer
    /// that the lock is no longer ours, the loss is signalled at once through
    /// [`Lease::lost`], before the validity ends. Calling it again does nothing.
    pub fn keep_alive(&mut self) {
        if self.keep_alive.is_some() {
            return;
        }
        let task = KeepAlive {
            redlock: self.redlock.clone(),
            request: self.request.clone(),
            token: Arc::clone(&self.token),
            shared: Arc::clone(&self.shared),
            extending: Arc::clone(&self.extending),
        };
        self.keep_alive = Some(tokio::spawn(task.run()).abort_handle());
    }

    /// Extends the lock to `ttl` from now on every node that still holds our token.
    ///
    /// Succeeds only if a quorum of all N nodes renewed the key and the round ended
    /// within the validity still left; the validity is then recomputed from this round
    /// trip: `ttl - elapsed - drift`, and a kept-alive lock is renewed with `ttl` from
    /// then on. On failure the lock is not released and keeps its former validity,
    /// shortened if some nodes applied a `ttl` shorter than what was left; when the
    /// nodes answer that the key is no longer ours (`Expired`), the lock is lost:
    /// [`is_valid`](Lock::is_valid) is false and [`Lease::lost`] fires.
    ///
    /// # Errors
    /// [`Error::Expired`] if the validity had already run out, the lock was signalled
    /// lost, or nodes answered that the key is no longer ours; [`Error::NoQuorum`] if
    /// too many nodes were unreachable; [`Error::TooLate`] if the round left no more
    /// than the minimum validity; [`Error::InvalidArgument`] for an unusable TTL.
    pub async fn extend(&mut self, ttl: Duration) -> Result<(), Error> {
        let request = self.redlock.retimed(&self.request, ttl)?;
        let _serial = self.extending.lock().await;
        extend(&self.redlock, &request, &self.token, &self.shared).await?;
        self.shared.set_ttl(request.ttl);
        self.request = request;
        Ok(())
    }

    /// Releases the lock: a compare-and-delete on every node, returning as soon as a
    /// quorum decides. The requests to slow nodes still run to completion or timeout
    /// in the background. Stops the keep-alive task.
    ///
    /// `Ok` means the lock was still valid on this client's clock when the release
    /// began and a quorum of nodes deleted our key: the lock was held without a gap
    /// until now. Its leases stop being valid (and [`Lease::lost`] fires with
    /// `Released`) before the first delete is sent.
    ///
    /// # Errors
    /// [`Error::Expired`] if the validity had already run out (the keys are still
    /// removed where they remain), or the key had expired or been taken over on enough
    /// nodes that the lock was no longer held; [`Error::NoQuorum`] if too many nodes
    /// were unreachable to tell (the keys left there expire with their TTL).
    pub async fn release(mut self) -> Result<(), Error> {
        self.armed = false;
        self.stop_keep_alive();
        let was_valid = self.is_valid();
        // Before the round: a waiter woken by a node's delete must not find this lock's
        // leases still valid.
        self.shared.mark_lost(LostReason::Released);
        self.redlock
            .release_round(&self.request, &self.token, was_valid)
            .await
    }

    fn stop_keep_alive(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop_keep_alive();
        if !self.armed {
            return;
        }
        self.shared.mark_lost(LostReason::Released);
        // Release in the background; never block here.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let redlock = self.redlock.clone();
            let request = self.request.clone();
            let token = Arc::clone(&self.token);
            runtime.spawn(async move {
                let _ = redlock.release_round(&request, &token, true).await;
            });
        }
    }
}

/// One extension round for `request.ttl`, updating the shared validity.
async fn extend(
    redlock: &Redlock,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
) -> Result<(), Error> {
    let span = tracing::debug_span!(
        "fredlock.extend",
        resource = %request.resource,
        outcome = Empty,
        votes = Empty,
        elapsed_us = Empty,
        validity_ms = Empty,
    );
    let result = extend_in(redlock, request, token, shared, &span).await;
    span.record(
        "outcome",
        result.as_ref().map_or_else(outcome_label, |_| "extended"),
    );
    result
}

async fn extend_in(
    redlock: &Redlock,
    request: &Request,
    token: &Arc<str>,
    shared: &Shared,
    span: &tracing::Span,
) -> Result<(), Error> {
    let expired = |votes| Error::Expired {
        resource: request.resource.to_string(),
        votes,
    };
    if shared.remaining().is_zero() || shared.lost_reason().is_some() {
        // Nothing is sent: the lock is already known lost (`lost()` says why).
        return Err(expired(Votes::default()));
    }
    let (decision, tally, votes, start, elapsed) = redlock.extend_round(request, token, span).await;
    let validity = validity(request.ttl, elapsed, request.drift);
    span.record("validity_ms", validity.as_millis());
    let min_validity = redlock.settings().min_validity;
    let failure = if decision == Decision::NoQuorum {
        Some(lost(request, tally, votes))
    } else if start + elapsed >= shared.valid_until() {
        // The quorum must be reached while the lock was still valid.
        Some(expired(votes))
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
    if let Some(error) = failure {
        // The nodes that renewed the key expire it `ttl` after the round began at the
        // earliest; the others at their former time. The lock lasts no longer than the
        // sooner of the two: a failed extend with a shorter TTL shortens it.
        let renewed_until = start
            .checked_add(request.ttl.saturating_sub(request.drift))
            .unwrap_or(start);
        if renewed_until < shared.valid_until() {
            shared.set_valid_until(renewed_until);
        }
        if matches!(error, Error::Expired { .. }) {
            // The nodes say the key is no longer ours, or the quorum came too late:
            // the lock cannot be trusted any more, whatever its deadline says.
            shared.mark_lost(LostReason::ExtendFailed(Arc::new(error.clone())));
        }
        return Err(error);
    }
    shared.set_valid_until((start + elapsed).checked_add(validity).unwrap_or(start));
    Ok(())
}

/// The background task of [`Lock::keep_alive`].
struct KeepAlive {
    redlock: Redlock,
    request: Request,
    token: Arc<str>,
    shared: Arc<Shared>,
    extending: Arc<tokio::sync::Mutex<()>>,
}

impl KeepAlive {
    async fn run(mut self) {
        let settings = self.redlock.settings();
        let share = settings.keep_alive_at;
        // Two node timeouts: one for a renewal that fails, one for a retry.
        let floor = settings.node_timeout.saturating_mul(2);
        let mut changes = self.shared.changes();
        loop {
            if self.shared.lost_reason().is_some() {
                return;
            }
            let ttl = self.shared.ttl();
            if ttl != self.request.ttl {
                match self.redlock.retimed(&self.request, ttl) {
                    Ok(request) => self.request = request,
                    // Cannot happen: an extension validated this TTL.
                    Err(_) => return,
                }
            }
            let margin = self.margin(share, floor);
            if let Some(due) = self.due(margin) {
                tokio::select! {
                    () = tokio::time::sleep_until(due.into()) => {}
                    // An extension, a shortened validity or a loss: look again.
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let _serial = self.extending.lock().await;
            // A manual extension may have run while this task waited for its turn.
            if self.shared.ttl() != self.request.ttl || self.due(margin).is_some() {
                continue;
            }
            let error = match extend(&self.redlock, &self.request, &self.token, &self.shared).await
            {
                Ok(()) => continue,
                Err(error) => error,
            };
            // At least 1 ms: nodes that fail at once (not connected) must not make this
            // loop spin.
            let pause = retry_pause(
                settings.retry_delay,
                settings.retry_jitter,
                &mut rand::rng(),
            )
            .min(margin / 4)
            .max(Duration::from_millis(1));
            // Another attempt only if it can end within the validity left.
            let another = pause.saturating_add(floor);
            if !error.is_retryable() || self.shared.remaining() <= another {
                tracing::debug!(resource = %self.request.resource, %error, "keep-alive gave up");
                self.shared
                    .mark_lost(LostReason::ExtendFailed(Arc::new(error)));
                return;
            }
            drop(_serial);
            tokio::time::sleep(pause).await;
        }
    }

    /// When the next renewal is due, if that is still to come.
    fn due(&self, margin: Duration) -> Option<Instant> {
        let due = self.shared.valid_until().checked_sub(margin)?;
        (due > Instant::now()).then_some(due)
    }

    fn margin(&self, share: f64, floor: Duration) -> Duration {
        keep_alive_margin(
            self.request.ttl.saturating_sub(self.request.drift),
            share,
            floor,
        )
    }
}

/// How much validity is left when the keep-alive renews, for a lock whose extension
/// gives `full`: the configured `share` of it, raised to `floor` (two node timeouts)
/// so that a failed renewal is known in time, but not past half of it: a TTL too short
/// for that floor is renewed at the configured share, not back to back.
fn keep_alive_margin(full: Duration, share: f64, floor: Duration) -> Duration {
    let configured = full.mul_f64(share);
    configured.max(floor).min(configured.max(full / 2))
}

#[cfg(test)]
mod tests {
    use super::keep_alive_margin;
    use std::time::Duration;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_keep_alive_margin_keeps_two_node_timeouts_when_it_can() {
        // The configured share when it is above the floor.
        assert_eq!(keep_alive_margin(1000 * MS, 0.5, 100 * MS), 500 * MS);
        // Raised to the floor (keep_alive_at 0.05, node timeout 300 ms).
        assert_eq!(keep_alive_margin(1978 * MS, 0.05, 600 * MS), 600 * MS);
        // Never past half: a 100 ms TTL with a 50 ms node timeout renews at half.
        assert_eq!(
            keep_alive_margin(97 * MS, 0.05, 100 * MS),
            48_500 * MS / 1000
        );
        assert_eq!(
            keep_alive_margin(97 * MS, 0.9, 100 * MS),
            87_300 * MS / 1000
        );
        // Renewals never come back to back while the validity is positive.
        for full in [MS, 10 * MS, 99 * MS, 1000 * MS] {
            for share in [0.01, 0.5, 0.99] {
                let margin = keep_alive_margin(full, share, 100 * MS);
                assert!(margin < full, "{full:?} {share} {margin:?}");
            }
        }
        assert_eq!(
            keep_alive_margin(Duration::ZERO, 0.5, 100 * MS),
            Duration::ZERO
        );
    }
}
