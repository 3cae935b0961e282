//! The clients measured side by side, behind one interface: a cycle is acquire, hold,
//! release, timed on the monotonic clock.
//!
//! * `floor`: a bare fred fan-out, the physical limit (see `floor`).
//! * `fredlock`: `try_lock` + `release` (uncontended, `retry_count(0)`), or `lock` with an
//!   acquire timeout and the library's default retry delay and jitter (contended).
//! * `rslock`, `redlock`, `dist-lock`: the Rust Redlock peers (see `peers`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use distributed_lock_redis::RedisLockHandle;
use serde::Serialize;

use crate::cycle::{ClientSettings, Cycle, CycleParams, Failure};
use crate::floor::Floor;
use crate::peers::{self, DistLock};

/// Which client a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientKind {
    /// Bare fred fan-out: SET NX PX to all nodes, then DEL; no lock logic.
    Floor,
    /// This crate.
    Fredlock,
    /// rslock 0.10 (redis-rs 1.x, async, tokio).
    Rslock,
    /// redlock 2.0 (redis-rs 0.23, blocking, on tokio's blocking threads).
    Redlock,
    /// distributed-lock-redis 0.2 (fred 9, async, tokio).
    #[serde(rename = "dist-lock")]
    #[value(name = "dist-lock")]
    DistLock,
}

impl ClientKind {
    pub fn name(self) -> &'static str {
        match self {
            ClientKind::Floor => "floor",
            ClientKind::Fredlock => "fredlock",
            ClientKind::Rslock => "rslock",
            ClientKind::Redlock => "redlock",
            ClientKind::DistLock => "dist-lock",
        }
    }
}

/// A connected client.
pub enum BenchClient {
    Floor(Floor),
    Fredlock(fredlock::Redlock),
    Rslock(rslock::LockManager),
    Redlock(Arc<redlock::RedLock>),
    DistLock(DistLock),
}

/// What an async client holds between acquire and release.
enum Held {
    /// The nodes to delete the key from.
    Floor(Vec<usize>),
    Fredlock(fredlock::Lock),
    Rslock(rslock::Lock),
    DistLock(RedisLockHandle),
}

impl BenchClient {
    /// Creates and connects the client for `urls`.
    pub async fn connect(
        kind: ClientKind,
        urls: &[String],
        contended: bool,
        settings: &ClientSettings,
    ) -> Result<BenchClient, String> {
        match kind {
            ClientKind::Floor => Ok(BenchClient::Floor(
                Floor::connect(urls, settings.node_timeout).await?,
            )),
            ClientKind::Fredlock => {
                // Its defaults, restart quarantine included (see `Target::admit`).
                let mut builder = fredlock::Redlock::builder(urls.iter().cloned())
                    .node_timeout(settings.node_timeout);
                if contended {
                    builder = builder.acquire_timeout(settings.acquire_timeout);
                    if let Some(d) = settings.retry_delay {
                        builder = builder.retry_delay(d);
                    }
                    if let Some(j) = settings.retry_jitter {
                        builder = builder.retry_jitter(j);
                    }
                } else {
                    builder = builder.retry_count(0);
                }
                let redlock = builder.build().await.map_err(|e| e.to_string())?;
                Ok(BenchClient::Fredlock(redlock))
            }
            ClientKind::Rslock => {
                peers::check_redis_rs_urls(urls)?;
                Ok(BenchClient::Rslock(rslock::LockManager::new(urls.to_vec())))
            }
            ClientKind::Redlock => {
                peers::check_redis_rs_urls(urls)?;
                Ok(BenchClient::Redlock(Arc::new(redlock::RedLock::new(
                    urls.to_vec(),
                ))))
            }
            ClientKind::DistLock => Ok(BenchClient::DistLock(
                DistLock::connect(urls, settings).await?,
            )),
        }
    }

    /// Closes what can be closed.
    pub async fn close(self) {
        match self {
            BenchClient::Floor(floor) => floor.quit().await,
            BenchClient::Fredlock(redlock) => redlock.quit().await,
            // dist-lock's provider has no way to close its fred 9 clients.
            BenchClient::Rslock(_) | BenchClient::Redlock(_) | BenchClient::DistLock(_) => {}
        }
    }

    /// Runs one cycle on `resource`.
    pub async fn cycle(&self, resource: &str, params: &CycleParams) -> Cycle {
        if let BenchClient::Redlock(rl) = self {
            return peers::redlock_cycle(Arc::clone(rl), resource.to_string(), params.clone())
                .await;
        }
        let mut cycle = Cycle::new();
        let held = loop {
            let attempt = tokio::time::timeout(params.op_timeout, self.acquire(resource, params));
            match attempt.await {
                Ok(Ok(held)) => break Some(held),
                Ok(Err(failure)) => cycle.failures.push(failure),
                Err(_) => cycle
                    .failures
                    .push(op_timeout("acquire", params.op_timeout)),
            }
            if !params.contended || Instant::now() >= params.end {
                break None;
            }
            match self {
                // The spin must not starve the holder's task.
                BenchClient::Floor(_) => tokio::task::yield_now().await,
                // dist-lock does not retry: the pause is the benchmark's (see `DistLock`).
                BenchClient::DistLock(dl) => {
                    let left = params.end.saturating_duration_since(Instant::now());
                    tokio::time::sleep(dl.retry_pause().min(left)).await;
                }
                _ => {}
            }
        };
        let Some(held) = held else {
            return cycle;
        };
        cycle.acquired = Some(Instant::now());
        if !params.hold.is_zero() {
            tokio::time::sleep(params.hold).await;
        }
        cycle.release_started = Some(Instant::now());
        let release = tokio::time::timeout(params.op_timeout, self.release(resource, held)).await;
        cycle.released = Some(Instant::now());
        cycle.release_failure = match release {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(_) => Some(op_timeout("release", params.op_timeout)),
        };
        cycle
    }

    async fn acquire(&self, resource: &str, params: &CycleParams) -> Result<Held, Failure> {
        match self {
            BenchClient::Floor(floor) => floor.acquire(resource, params).await.map(Held::Floor),
            BenchClient::Fredlock(redlock) => {
                let result = if params.contended {
                    redlock.lock(resource, params.ttl).await
                } else {
                    redlock.try_lock(resource, params.ttl).await
                };
                result.map(Held::Fredlock).map_err(fredlock_failure)
            }
            BenchClient::Rslock(manager) => manager
                .lock(resource.as_bytes(), params.ttl)
                .await
                .map(Held::Rslock)
                .map_err(peers::rslock_failure),
            BenchClient::DistLock(dl) => dl.acquire(resource).await.map(Held::DistLock),
            BenchClient::Redlock(_) => unreachable!("redlock runs whole cycles on a thread"),
        }
    }

    async fn release(&self, resource: &str, held: Held) -> Result<(), Failure> {
        match (self, held) {
            (BenchClient::Floor(floor), Held::Floor(nodes)) => {
                floor.release(resource, &nodes).await
            }
            (BenchClient::Fredlock(_), Held::Fredlock(lock)) => {
                lock.release().await.map_err(fredlock_failure)
            }
            // rslock's unlock is best effort and reports nothing.
            (BenchClient::Rslock(manager), Held::Rslock(lock)) => {
                manager.unlock(&lock).await;
                Ok(())
            }
            (BenchClient::DistLock(_), Held::DistLock(handle)) => DistLock::release(handle).await,
            _ => unreachable!("a lock is released by the client that took it"),
        }
    }
}

fn fredlock_failure(e: fredlock::Error) -> Failure {
    let kind = match &e {
        fredlock::Error::Taken { .. } => "taken",
        fredlock::Error::NoQuorum { .. } => "no_quorum",
        fredlock::Error::TooLate { .. } => "too_late",
        fredlock::Error::Expired { .. } => "expired",
        fredlock::Error::InvalidArgument { .. } => "invalid_argument",
        _ => "other",
    };
    Failure::new(kind, e.to_string())
}

fn op_timeout(call: &str, bound: Duration) -> Failure {
    Failure::new("op_timeout", format!("{call} took more than {bound:?}"))
}
