//! [`Lock`]: a held lock, its validity on the monotonic clock, extend, keep-alive and
//! release.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::core::Core;
use crate::error::{Error, LostReason};
use crate::keep_alive::KeepAlive;
use crate::lease::{self, Lease};
use crate::protocol::{self, Granted};
use crate::quorum::Votes;
use crate::request::Request;
use crate::shared::Shared;

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
    core: Arc<Core>,
    request: Request,
    token: Arc<str>,
    shared: Arc<Shared>,
    /// The votes of the round that granted the lock.
    votes: Votes,
    keep_alive: Option<AbortHandle>,
    /// Cleared by `release`, so that `drop` does not release a second time.
    armed: bool,
}

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
    pub(crate) fn new(core: &Arc<Core>, granted: Granted) -> Self {
        let request = granted.held;
        Lock {
            core: Arc::clone(core),
            shared: Shared::new(granted.valid_until, request.ttl.duration()),
            request,
            token: granted.token,
            votes: granted.votes,
            keep_alive: None,
            armed: true,
        }
    }

    /// The resource name this lock was taken for; for a lock over several resources
    /// ([`Redlock::lock_many`](crate::Redlock::lock_many)), their names joined by
    /// `", "`.
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
    /// of the resource that asked for one, as long as the nodes keep their data and,
    /// across a pause in the resource's use longer than the fencing retention, the
    /// clients' clocks agree within it (docs/fencing.md). Pass it with every write to
    /// the protected resource, which rejects a token lower than the highest it has
    /// accepted (an equal one is this holder writing again). For a lock over several
    /// resources, the first one's (see [`fencing_tokens`](Lock::fencing_tokens)).
    ///
    /// A lock pays for its tokens only when asked: the first call raises the
    /// resource's fencing counter on the nodes that still hold the lock (one round
    /// trip, two when the nodes disagree), and from then on extensions renew the
    /// counters with the keys. Later calls, from the lock or its leases, return the
    /// same token at once.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
    /// let lock = redlock.lock("ledger", Duration::from_secs(10)).await?;
    /// let token: u64 = lock.fencing_token().await?;
    /// // storage.write(data, token): the storage refuses token < the highest it accepted
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`Error::Expired`] if the lock's validity ran out before the tokens were made,
    /// it was signalled lost, or the nodes answered that the keys are no longer ours
    /// (the lock is then lost); [`Error::NoQuorum`] if too many nodes were unreachable
    /// or failed (a counter that is not a number or reached 2^53 - 1 fails its node's
    /// vote); [`Error::FencingFailed`] if the counters disagreed and too many nodes
    /// failed the write-back of the largest. No token is handed out then, and the next
    /// call tries again. Once made, the tokens are returned by every later call, even
    /// after the lock ended: they stay the tokens of that holding.
    pub async fn fencing_token(&self) -> Result<u64, Error> {
        let tokens = self.fencing_tokens().await?;
        Ok(tokens.first().copied().unwrap_or(0))
    }

    /// The fencing tokens, one per resource in the order of
    /// [`resources`](Lock::resources); see [`fencing_token`](Lock::fencing_token).
    ///
    /// # Errors
    /// As [`fencing_token`](Lock::fencing_token).
    pub async fn fencing_tokens(&self) -> Result<Arc<[u64]>, Error> {
        lease::fencing_tokens(&self.core, &self.request, &self.token, &self.shared).await
    }

    /// Every node's vote in the round that granted this lock, in configuration order:
    /// at least a quorum of [`Vote::Yes`](crate::Vote::Yes). The round returns at the
    /// quorum, so a node that had not answered by then is
    /// [`Vote::Pending`](crate::Vote::Pending) (its request still ran). Extensions do
    /// not change it.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
    /// let lock = redlock.lock("invoices", Duration::from_secs(10)).await?;
    /// if lock.votes().yes() < lock.votes().len() {
    ///     eprintln!("granted without every node: {}", lock.votes());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn votes(&self) -> &Votes {
        &self.votes
    }

    /// The TTL of the last successful acquire or extend, in whole milliseconds.
    pub fn ttl(&self) -> Duration {
        self.request.ttl.duration()
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

    /// A cheap, cloneable view of this lock for other tasks: its validity, fencing
    /// tokens and the lost-lock signal.
    pub fn lease(&self) -> Lease {
        Lease {
            core: Arc::clone(&self.core),
            request: self.request.clone(),
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
            core: Arc::clone(&self.core),
            request: self.request.clone(),
            token: Arc::clone(&self.token),
            shared: Arc::clone(&self.shared),
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
        let request = self.request.retimed(ttl, &self.core.settings)?;
        let _serial = self.shared.serial.lock().await;
        protocol::extend(&self.core, &request, &self.token, &self.shared).await?;
        self.shared.set_ttl(request.ttl.duration());
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
        protocol::release(&self.core, &self.request, &self.token, was_valid).await
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
            let core = Arc::clone(&self.core);
            let request = self.request.clone();
            let token = Arc::clone(&self.token);
            runtime.spawn(async move {
                let _ = protocol::release(&core, &request, &token, true).await;
            });
        }
    }
}
