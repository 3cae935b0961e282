//! The Rust Redlock peers, adapted to the benchmark's cycle.
//!
//! * `rslock` 0.10: `LockManager::new(urls)` with its defaults (3 tries, 0-200 ms pause),
//!   `lock` + `unlock`.
//! * `redlock` 2.0: `RedLock::new(urls)` with its defaults, `lock` + `unlock`, blocking,
//!   run on tokio's blocking threads.
//! * `dist-lock`: distributed-lock-redis 0.2 (fred 9). `RedisLockProvider::builder()
//!   .urls(urls)` with the run's TTL as expiry and 90 % of it as minimum validity (its
//!   own default ratio, 27 s of 30 s: its default of 27 s would leave a 10 s TTL no time
//!   to acquire), its other defaults; a fresh `create_lock` per cycle (the lock id is
//!   drawn when the lock is created), `try_acquire` + `release`. It has no retry of its
//!   own (`acquire(timeout)` is one attempt too), so contended the benchmark tries again
//!   after fredlock's retry delay plus a random share of its jitter.

use std::sync::Arc;
use std::time::{Duration, Instant};

use distributed_lock_core::error::LockError;
use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider};
use distributed_lock_redis::{RedisLockHandle, RedisLockProvider};

use crate::cycle::{ClientSettings, Cycle, CycleParams, Failure};

pub fn rslock_failure(e: rslock::LockError) -> Failure {
    let kind = match &e {
        rslock::LockError::Unavailable => "unavailable",
        rslock::LockError::TtlExceeded => "ttl_exceeded",
        rslock::LockError::Redis(_) => "redis_error",
        rslock::LockError::Io(_) => "io_error",
        _ => "other",
    };
    Failure::new(kind, e.to_string())
}

fn dist_lock_failure(e: LockError) -> Failure {
    let kind = match &e {
        LockError::Timeout(_) => "timeout",
        LockError::Connection(_) => "connection",
        LockError::Backend(_) => "redis_error",
        LockError::LockLost(_) => "lost",
        _ => "other",
    };
    Failure::new(kind, e.to_string())
}

/// rslock and redlock panic (`Client::open(url).unwrap()`) on a URL redis-rs rejects;
/// both redis-rs versions take `redis://[user:password@]host[:port][/db]`, so a light
/// check of that shape keeps the benchmark from panicking inside a peer.
pub fn check_redis_rs_urls(urls: &[String]) -> Result<(), String> {
    for url in urls {
        match url.split_once("://") {
            Some(("redis", rest)) if !rest.is_empty() => {}
            Some(("rediss", _)) => {
                return Err(format!(
                    "{url}: the benchmark connects the peers without TLS; use redis:// endpoints"
                ));
            }
            _ => return Err(format!("{url}: expected redis://host:port")),
        }
    }
    Ok(())
}

/// A whole redlock cycle on a blocking thread, bounded by the operation timeout (plus
/// the run's end when contended). A thread stuck on a frozen node (redis-rs 0.23 has no
/// read timeout by default) is left behind and the cycle reported as `hung`.
pub async fn redlock_cycle(
    rl: Arc<redlock::RedLock>,
    resource: String,
    params: CycleParams,
) -> Cycle {
    let bound = if params.contended {
        params
            .end
            .saturating_duration_since(Instant::now())
            .saturating_add(params.op_timeout)
    } else {
        params.op_timeout
    };
    let started = Instant::now();
    let thread =
        tokio::task::spawn_blocking(move || redlock_cycle_blocking(&rl, &resource, &params));
    match tokio::time::timeout(bound, thread).await {
        Ok(Ok(cycle)) => cycle,
        Ok(Err(join)) => Cycle::failed(started, Failure::new("panic", join.to_string())),
        Err(_) => Cycle::failed(
            started,
            Failure::new(
                "hung",
                format!("no answer within {bound:?}; the blocking thread is left behind"),
            ),
        ),
    }
}

fn redlock_cycle_blocking(rl: &redlock::RedLock, resource: &str, params: &CycleParams) -> Cycle {
    let mut cycle = Cycle::new();
    let ttl_ms = usize::try_from(params.ttl.as_millis()).unwrap_or(usize::MAX);
    let lock = loop {
        match rl.lock(resource.as_bytes(), ttl_ms) {
            Ok(Some(lock)) => break Some(lock),
            Ok(None) => cycle.failures.push(Failure::new(
                "not_acquired",
                "lock() returned None after its retries",
            )),
            Err(e) => cycle
                .failures
                .push(Failure::new("redis_error", e.to_string())),
        }
        if !params.contended || Instant::now() >= params.end {
            break None;
        }
    };
    let Some(lock) = lock else {
        return cycle;
    };
    cycle.acquired = Some(Instant::now());
    if !params.hold.is_zero() {
        std::thread::sleep(params.hold);
    }
    cycle.release_started = Some(Instant::now());
    rl.unlock(&lock);
    cycle.released = Some(Instant::now());
    cycle
}

/// distributed-lock-redis's provider, and the pause the benchmark makes between its
/// attempts in the contended workload.
pub struct DistLock {
    provider: RedisLockProvider,
    retry_delay: Duration,
    retry_jitter: Duration,
}

impl DistLock {
    pub async fn connect(urls: &[String], settings: &ClientSettings) -> Result<DistLock, String> {
        // Its acquire gives up after `expiry - min_validity` in all (its only time
        // bound: no per-node timeout); 90 % is the ratio of its own defaults.
        let min_validity = settings.ttl.mul_f64(0.9);
        let build = RedisLockProvider::builder()
            .urls(urls)
            .expiry(settings.ttl)
            .min_validity(min_validity)
            .build();
        // It connects the nodes one after the other, each bounded only by fred 9's 10 s
        // connection timeout; the floor's 5 s per node keeps a dead endpoint from
        // stalling the run longer than the other clients do.
        let bound =
            Duration::from_secs(5).saturating_mul(u32::try_from(urls.len()).unwrap_or(u32::MAX));
        let provider = tokio::time::timeout(bound, build)
            .await
            .map_err(|_| format!("no connection to every node within {bound:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(DistLock {
            provider,
            // fredlock's, so one pair of options sets both clients' pause.
            retry_delay: settings
                .retry_delay
                .unwrap_or(fredlock::DEFAULT_RETRY_DELAY),
            retry_jitter: settings
                .retry_jitter
                .unwrap_or(fredlock::DEFAULT_RETRY_JITTER),
        })
    }

    /// The pause before the next attempt in the contended workload.
    pub fn retry_pause(&self) -> Duration {
        self.retry_delay + self.retry_jitter.mul_f64(rand::random::<f64>())
    }

    pub async fn acquire(&self, resource: &str) -> Result<RedisLockHandle, Failure> {
        // A lock object draws its id when created: one per cycle, as one per acquisition.
        let lock = self.provider.create_lock(resource);
        match lock.try_acquire().await {
            Ok(Some(handle)) => Ok(handle),
            // Taken, node errors and its time budget all come back as `None`.
            Ok(None) => Err(Failure::new(
                "not_acquired",
                "try_acquire returned None (taken, failed nodes or out of time)",
            )),
            Err(e) => Err(dist_lock_failure(e)),
        }
    }

    pub async fn release(handle: RedisLockHandle) -> Result<(), Failure> {
        handle.release().await.map_err(dist_lock_failure)
    }
}
