//! What a held lock shares with its [`Lease`](crate::Lease)s and its keep-alive task:
//! the validity deadline, the lost-lock signal, and the fencing tokens once asked for.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OnceCell, watch};

use crate::error::LostReason;
use crate::metrics;

/// The state a lock shares with its leases and its keep-alive task.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The lock's fencing tokens, one per resource, made at the first request.
    pub(crate) fences: OnceCell<Arc<[u64]>>,
    /// Serialises extensions, manual and keep-alive: two rounds with different TTLs
    /// must not race on the nodes.
    pub(crate) serial: tokio::sync::Mutex<()>,
    valid_until: Mutex<Instant>,
    /// The TTL of the last successful acquire or extend, which the keep-alive renews.
    ttl: Mutex<Duration>,
    /// `None` while the lock is trusted. Also bumped (unchanged) when the validity
    /// or the TTL moves, so that waiters re-read them.
    lost: watch::Sender<Option<LostReason>>,
}

impl Shared {
    pub(crate) fn new(valid_until: Instant, ttl: Duration) -> Arc<Self> {
        Arc::new(Shared {
            fences: OnceCell::new(),
            serial: tokio::sync::Mutex::new(()),
            valid_until: Mutex::new(valid_until),
            ttl: Mutex::new(ttl),
            lost: watch::Sender::new(None),
        })
    }

    /// Whether fencing tokens were handed out: extensions then renew the counters with
    /// the keys.
    pub(crate) fn fenced(&self) -> bool {
        self.fences.initialized()
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
