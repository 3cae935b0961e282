//! Keeping a lock alive: a task per kept-alive lock that extends it before its
//! validity ends, retries a failed renewal while validity allows, and signals the loss
//! when it cannot.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::core::Core;
use crate::error::LostReason;
use crate::metrics;
use crate::protocol;
use crate::request::Request;
use crate::shared::Shared;

/// The background task of [`Lock::keep_alive`](crate::Lock::keep_alive).
pub(crate) struct KeepAlive {
    pub(crate) core: Arc<Core>,
    pub(crate) request: Request,
    pub(crate) token: Arc<str>,
    pub(crate) shared: Arc<Shared>,
}

impl KeepAlive {
    pub(crate) async fn run(mut self) {
        let settings = &self.core.settings;
        let share = settings.keep_alive_at;
        // Two node timeouts: one for a renewal that fails, one for a retry.
        let floor = settings.node_timeout.saturating_mul(2);
        let mut changes = self.shared.changes();
        loop {
            if self.shared.lost_reason().is_some() {
                return;
            }
            let ttl = self.shared.ttl();
            if ttl != self.request.ttl.duration() {
                match self.request.retimed(ttl, settings) {
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
            let _serial = self.shared.serial.lock().await;
            // A manual extension may have run while this task waited for its turn.
            if self.shared.ttl() != self.request.ttl.duration() || self.due(margin).is_some() {
                continue;
            }
            let renewal = metrics::Renewal::start(self.shared.remaining());
            let result =
                protocol::extend(&self.core, &self.request, &self.token, &self.shared).await;
            renewal.end(&result);
            let error = match result {
                Ok(()) => continue,
                Err(error) => error,
            };
            // At least 1 ms: nodes that fail at once (not connected) must not make this
            // loop spin.
            let pause = settings
                .retry_pause(&mut rand::rng())
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

    /// When the next renewal is due, if that is still to come: `margin` before the
    /// validity ends, moved earlier onto the renewal tick.
    fn due(&self, margin: Duration) -> Option<Instant> {
        let due = on_tick(self.shared.valid_until().checked_sub(margin)?);
        (due > Instant::now()).then_some(due)
    }

    fn margin(&self, share: f64, floor: Duration) -> Duration {
        let full = self.request.ttl.validity(Duration::ZERO);
        keep_alive_margin(full, share, floor)
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

/// Renewals are due on multiples of this since the process's first renewal, never
/// later than their exact time: the locks of one `Redlock` that are due within the
/// same tick wake together, and their extensions reach each node as one batch.
pub(crate) const RENEWAL_TICK: Duration = Duration::from_millis(10);

/// `at`, moved back onto the renewal tick.
fn on_tick(at: Instant) -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let Some(since) = at.checked_duration_since(epoch) else {
        return at;
    };
    let tick = RENEWAL_TICK.as_nanos();
    let off = Duration::from_nanos(u64::try_from(since.as_nanos() % tick).unwrap_or(0));
    at.checked_sub(off).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::{RENEWAL_TICK, keep_alive_margin, on_tick};
    use std::time::{Duration, Instant};

    #[test]
    fn renewals_due_within_a_tick_wake_together_and_never_late() {
        let now = Instant::now();
        let a = on_tick(now + Duration::from_millis(501));
        let b = on_tick(now + Duration::from_millis(501) + Duration::from_micros(10));
        assert!(a <= now + Duration::from_millis(501));
        assert!(a + RENEWAL_TICK > now + Duration::from_millis(501));
        // Two due times within one tick land on one instant, or on adjacent ticks.
        assert!(a == b || b.duration_since(a) == RENEWAL_TICK);
        assert_eq!(on_tick(on_tick(a)), on_tick(a));
    }

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

    /// Twenty kept-alive locks on in-memory nodes outlive three TTLs, and their
    /// renewals, moved onto shared ticks, reach each node in batches.
    #[tokio::test]
    async fn kept_alive_locks_renew_together() {
        use crate::core::Core;
        use crate::lock::Lock;
        use crate::node::memory;
        use crate::protocol::acquire;
        use crate::request::Request;
        use crate::settings::{Quarantine, Settings};
        use std::sync::Arc;

        let ttl = Duration::from_millis(300);
        let (nodes, memories) = memory::nodes(3, Duration::from_millis(50));
        let settings = Settings {
            quarantine: Quarantine::Off,
            node_timeout: Duration::from_millis(50),
            ..Settings::default()
        };
        let core = Arc::new(Core::new(nodes, settings, false));
        let mut locks = Vec::new();
        for i in 0..20 {
            let request = Request::one(&format!("r{i}"), ttl, &core.settings).expect("valid");
            let granted = match acquire(&core, &request, 0).await {
                Ok(granted) => granted,
                Err(failed) => panic!("{}", failed.error),
            };
            let mut lock = Lock::new(&core, granted);
            lock.keep_alive();
            locks.push(lock);
            // Spread over 20 ms: without the tick, their renewals would be due at 20
            // different times. (A blocking pause: tokio's timer rounds to its ticks.)
            std::thread::sleep(Duration::from_millis(1));
        }
        // A round trip of 2 ms, as on a network: a renewal is in flight while the
        // others due on the same tick are made.
        for m in &memories {
            m.set_mode(memory::Mode::Slow(Duration::from_millis(2)));
        }
        tokio::time::sleep(3 * ttl).await;
        assert!(locks.iter().all(Lock::is_valid));
        let batches = memories[0].batches();
        let renewals: usize = batches.iter().skip(20).sum();
        assert!(renewals >= 40, "{batches:?}");
        // Their renewals share two or three ticks: on each, the first ones go out
        // alone (one per free slot) and the rest together; at least two renewals per
        // call on average.
        assert!(batches.len() - 20 <= renewals / 2, "{batches:?}");
        for lock in locks {
            lock.release().await.expect("released");
        }
    }
}
