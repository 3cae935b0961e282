//! The retry loop of `lock()` (and the single attempt of `try_lock()`): attempts until one succeeds, the retries are spent or
//! the acquire deadline would be passed, with a random pause between them that a
//! release notification cuts short.

use std::sync::Arc;
use std::time::Instant;

use crate::core::Core;
use crate::error::Error;
use crate::lock::Lock;
use crate::metrics;
use crate::protocol::{self, Failed};
use crate::request::Request;
use crate::settings::wake_jitter;

/// Acquires `request`, retrying as the settings allow.
pub(crate) async fn lock(core: &Arc<Core>, request: Request) -> Result<Lock, Error> {
    let mut measured = metrics::Acquisition::start();
    let result = attempts(core, request, &mut measured).await;
    measured.end(&result);
    result
}

/// One attempt at `request`, without retries.
pub(crate) async fn once(core: &Arc<Core>, request: Request) -> Result<Lock, Error> {
    let mut measured = metrics::Acquisition::start();
    measured.attempt();
    let result = match protocol::acquire(core, &request, 0).await {
        Ok(granted) => Ok(Lock::new(core, granted)),
        Err(failed) => Err(failed.error),
    };
    measured.end(&result);
    result
}

async fn attempts(
    core: &Arc<Core>,
    request: Request,
    measured: &mut metrics::Acquisition,
) -> Result<Lock, Error> {
    let settings = &core.settings;
    let start = Instant::now();
    let deadline = settings.acquire_timeout.and_then(|t| start.checked_add(t));
    // The latest moment an attempt can start and still end by the deadline.
    let latest_start = deadline.map(|d| d.checked_sub(settings.node_timeout).unwrap_or(start));
    let mut attempt = 0u32;
    let mut subscription = None;
    loop {
        measured.attempt();
        let attempt_start = Instant::now();
        let retry_follows = attempt < settings.retry_count;
        let outcome = protocol::acquire_then_retry(core, &request, attempt, retry_follows).await;
        let Failed { error, cleanup } = match outcome {
            Ok(granted) => return Ok(Lock::new(core, granted)),
            Err(failed) => failed,
        };
        if attempt >= settings.retry_count || !error.is_retryable() {
            return Err(error);
        }
        let round_trip = attempt_start.elapsed().min(settings.node_timeout);
        let mut pause = settings.retry_pause(&mut rand::rng());
        // The pause is cut so that the next attempt can still end its vote round by the
        // deadline: it ends by `latest_start` at the latest.
        if let Some(latest) = latest_start {
            let left = latest.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(error);
            }
            pause = pause.min(left);
        }
        let paused_at = Instant::now();
        // Someone holds it: be woken when it is released.
        if subscription.is_none() && matches!(error, Error::Taken { .. }) {
            subscription = Some(core.wakeup().subscribe(&request.wake_keys()));
        }
        let wait = async {
            match subscription.as_mut() {
                None => tokio::time::sleep(pause).await,
                Some(subscription) => tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = subscription.released() => {
                        // Woken: the jitter, but never past the end of the pause.
                        let jitter = wake_jitter(round_trip, attempt, &mut rand::rng());
                        let left = pause.saturating_sub(paused_at.elapsed());
                        tokio::time::sleep(jitter.min(left)).await;
                    }
                },
            }
        };
        // The next attempt starts after the wait and after every node of this one has
        // removed our token (bounded by two node timeouts).
        let cleanup = async {
            if let Some(cleanup) = cleanup {
                let _ = cleanup.await;
            }
            Instant::now()
        };
        let ((), cleaned_at) = tokio::join!(wait, cleanup);
        // A cleanup that ran past the latest start leaves the attempt no time. (The
        // wait itself ends by then, give or take its timer's wake-up.)
        if latest_start.is_some_and(|latest| cleaned_at > latest) {
            return Err(error);
        }
        attempt = attempt.saturating_add(1);
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests;
