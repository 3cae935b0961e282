//! What a held lock shares with its [`Lease`]s and its keep-alive task: the validity
//! deadline, and the lost-lock signal.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::LostReason;
use crate::metrics;

/// The state a lock shares with its leases and its keep-alive task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The lock's fencing tokens, one per resource.
    pub(crate) fences: Arc<[u64]>,
    valid_until: Mutex<Instant>,
    /// The TTL of the last successful acquire or extend, which the keep-alive renews.
    ttl: Mutex<Duration>,
    /// `None` while the lock is trusted. Also bumped (unchanged) when the validity
    /// or the TTL moves, so that waiters re-read them.
    lost: watch::Sender<Option<LostReason>>,
}

impl Shared {
    pub(crate) fn new(valid_until: Instant, ttl: Duration, fences: Arc<[u64]>) -> Arc<Self> {
        Arc::new(Shared {
            fences,
            valid_until: Mutex::new(valid_until),
            ttl: Mutex::new(ttl),
            lost: watch::Sender::new(None),
        })
    }

    pub(crate) fn ttl(&self) -> Duration {
        read(&self.ttl)
    }

    /// Records the TTL of a successful extension, and wakes whoever follows the lock.
    pub(crate) fn set_ttl(&self, ttl: Duration) {
        write(&self.ttl, ttl);
        self.lost.send_modify(|_| {});
    }

    /// A receiver that sees every change of the validity, the TTL or the lost state.
    pub(crate) fn changes(&self) -> watch::Receiver<Option<LostReason>> {
        self.lost.subscribe()
    }

    pub(crate) fn valid_until(&self) -> Instant {
        read(&self.valid_until)
    }

    pub(crate) fn set_valid_until(&self, until: Instant) {
        write(&self.valid_until, until);
        // Wake the waiters of `lost()` so they sleep until the new deadline.
        self.lost.send_modify(|_| {});
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.valid_until().saturating_duration_since(Instant::now())
    }

    /// Records the first reason the lock was lost; later reasons are ignored.
    pub(crate) fn mark_lost(&self, reason: LostReason) {
        let loss = metrics::Loss::of(&reason, || self.remaining().is_zero());
        let first = self.lost.send_if_modified(|current| {
            if current.is_none() {
                *current = Some(reason);
                true
            } else {
                false
            }
        });
        // Counted outside the watch's lock: the recorder is the application's code.
        if first {
            loss.record();
        }
    }

    pub(crate) fn lost_reason(&self) -> Option<LostReason> {
        self.lost.borrow().clone()
    }

    /// Resolves when the lock is lost: a recorded reason, or the validity running out.
    pub(crate) async fn lost(&self) -> LostReason {
        let mut rx = self.lost.subscribe();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            let until = self.valid_until();
            if Instant::now() >= until {
                self.mark_lost(LostReason::Expired);
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep_until(until.into()) => {}
                // The sender lives as long as `self`, so this only reports a change.
                _ = rx.changed() => {}
            }
        }
    }
}

/// A copy of the value; a panic while holding the lock cannot leave it half-written.
fn read<T: Copy>(slot: &Mutex<T>) -> T {
    match slot.lock() {
        Ok(guard) => *guard,
        Err(poisoned) => *poisoned.into_inner(),
    }
}

fn write<T>(slot: &Mutex<T>, value: T) {
    match slot.lock() {
        Ok(mut guard) => *guard = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

/// A read-only view of a held lock, cheap to clone and to move into tasks: its
/// resource, token and validity, and the signal that it was lost.
///
/// ```no_run
/// use std::time::Duration;
/// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
/// let mut lock = redlock.lock("reindex", Duration::from_secs(10)).await?;
/// lock.keep_alive();
/// let lease = lock.lease();
/// tokio::select! {
///     reason = lease.lost() => eprintln!("stopped: the lock was lost: {reason}"),
///     () = async { /* the protected work */ } => {}
/// }
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Lease {
    pub(crate) resource: Arc<str>,
    pub(crate) token: Arc<str>,
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("resource", &self.resource)
            .field("remaining", &self.remaining())
            .field("lost", &self.shared.lost_reason())
            .finish()
    }
}

impl Lease {
    /// The locked resource.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The lock's random token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The lock's fencing token (the first resource's, for several); see
    /// [`Lock::fencing_token`](crate::Lock::fencing_token).
    pub fn fencing_token(&self) -> u64 {
        self.shared.fences.first().copied().unwrap_or(0)
    }

    /// The validity left on the monotonic clock; zero once it ran out.
    pub fn remaining(&self) -> Duration {
        self.shared.remaining()
    }

    /// Whether the lock is still trusted: validity left and no loss signalled.
    pub fn is_valid(&self) -> bool {
        self.remaining() > Duration::ZERO && self.shared.lost_reason().is_none()
    }

    /// Resolves as soon as the lock can no longer be trusted, with the reason: its
    /// validity ran out, keeping it alive failed, or it was released. Resolves at once
    /// if that already happened. Cancel-safe.
    pub async fn lost(&self) -> LostReason {
        self.shared.lost().await
    }
}
