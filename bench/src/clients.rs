//! The clients measured side by side, behind one interface: a cycle is acquire, hold,
//! release, timed on the monotonic clock.
//!
//! * `floor`: bare fred clients, one per node, configured like fredlock's (per-command
//!   timeout = node timeout, one write attempt, fail fast, reconnect every 100 ms).
//!   Acquire is `SET key value NX PX ttl` sent to every node at once, done when a quorum
//!   said yes; release is `DEL` to every node, done when a quorum deleted. No token
//!   check, no validity arithmetic, no cleanup, no task per node: the physical limit of
//!   one parallel round trip per operation. In the contended workload it waits for every
//!   node (so it knows where it set the key), deletes its key where it set it and tries
//!   again at once (a spin: the lowest hand-off polling can reach).
//! * `fredlock`: `try_lock` + `release` (uncontended, `retry_count(0)`), or `lock` with an
//!   acquire timeout and the library's default retry delay and jitter (contended).
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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use distributed_lock_core::error::LockError;
use distributed_lock_core::traits::{DistributedLock, LockHandle, LockProvider};
use distributed_lock_redis::{RedisLockHandle, RedisLockProvider};
use fred::prelude::{
    Builder as FredBuilder, Client, ClientLike, Config, Expiration, KeysInterface, Options,
    ReconnectPolicy, SetOptions,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

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

/// What every run's clients are configured with.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// fredlock's and the floor's per-node timeout.
    pub node_timeout: Duration,
    /// fredlock's acquire timeout in the contended workload.
    pub acquire_timeout: Duration,
    /// fredlock's retry delay and jitter in the contended workload (library defaults when
    /// `None`).
    pub retry_delay: Option<Duration>,
    pub retry_jitter: Option<Duration>,
    /// The lock TTL, for dist-lock, which fixes it when its provider is built.
    pub ttl: Duration,
}

/// The parameters of one cycle.
#[derive(Clone, Debug)]
pub struct CycleParams {
    pub ttl: Duration,
    pub hold: Duration,
    /// Contended: wait (retrying) until acquired or the run ends.
    pub contended: bool,
    /// No new attempt starts at or after this instant.
    pub end: Instant,
    /// Bound on one library call; a call that takes longer is a failure `op_timeout`.
    pub op_timeout: Duration,
}

/// One failed call: a short kind for the tables, and the client's message.
#[derive(Clone, Debug)]
pub struct Failure {
    pub kind: String,
    pub detail: String,
}

impl Failure {
    fn new(kind: impl Into<String>, detail: impl Into<String>) -> Self {
        Failure {
            kind: kind.into(),
            detail: detail.into(),
        }
    }
}

/// One cycle: acquire (retrying when contended), hold, release.
#[derive(Debug)]
pub struct Cycle {
    pub started: Instant,
    /// When the successful acquire call returned; `None` if none did.
    pub acquired: Option<Instant>,
    pub release_started: Option<Instant>,
    pub released: Option<Instant>,
    pub release_failure: Option<Failure>,
    /// Failed acquire calls in this cycle (contended: the ones before the success).
    pub failures: Vec<Failure>,
}

impl Cycle {
    fn new() -> Self {
        Cycle {
            started: Instant::now(),
            acquired: None,
            release_started: None,
            released: None,
            release_failure: None,
            failures: Vec::new(),
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
    Floor { value: String, nodes: Vec<usize> },
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
                for url in urls {
                    check_peer_url(url)?;
                }
                Ok(BenchClient::Rslock(rslock::LockManager::new(urls.to_vec())))
            }
            ClientKind::Redlock => {
                for url in urls {
                    check_peer_url(url)?;
                }
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
            return redlock_cycle(Arc::clone(rl), resource.to_string(), params.clone()).await;
        }
        let mut cycle = Cycle::new();
        let held = loop {
            let attempt = tokio::time::timeout(params.op_timeout, self.acquire(resource, params));
            match attempt.await {
                Ok(Ok(held)) => break Some(held),
                Ok(Err(failure)) => cycle.failures.push(failure),
                Err(_) => cycle.failures.push(Failure::new(
                    "op_timeout",
                    format!("acquire took more than {:?}", params.op_timeout),
                )),
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
            Err(_) => Some(Failure::new(
                "op_timeout",
                format!("release took more than {:?}", params.op_timeout),
            )),
        };
        cycle
    }

    async fn acquire(&self, resource: &str, params: &CycleParams) -> Result<Held, Failure> {
        match self {
            BenchClient::Floor(floor) => floor.acquire(resource, params).await,
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
                .map_err(rslock_failure),
            BenchClient::DistLock(dl) => dl.acquire(resource).await,
            BenchClient::Redlock(_) => unreachable!("redlock runs whole cycles on a thread"),
        }
    }

    async fn release(&self, resource: &str, held: Held) -> Result<(), Failure> {
        match (self, held) {
            (BenchClient::Floor(floor), Held::Floor { value, nodes }) => {
                floor.release(resource, &value, &nodes).await
            }
            (BenchClient::Fredlock(_), Held::Fredlock(lock)) => {
                lock.release().await.map_err(fredlock_failure)
            }
            // rslock's unlock is best effort and reports nothing.
            (BenchClient::Rslock(manager), Held::Rslock(lock)) => {
                manager.unlock(&lock).await;
                Ok(())
            }
            (BenchClient::DistLock(_), Held::DistLock(handle)) => {
                handle.release().await.map_err(dist_lock_failure)
            }
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

fn rslock_failure(e: rslock::LockError) -> Failure {
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
fn check_peer_url(url: &str) -> Result<(), String> {
    match url.split_once("://") {
        Some(("redis", rest)) if !rest.is_empty() => Ok(()),
        Some(("rediss", _)) => Err(format!(
            "{url}: the benchmark connects the peers without TLS; use redis:// endpoints"
        )),
        _ => Err(format!("{url}: expected redis://host:port")),
    }
}

/// The floor: one bare fred client per node.
pub struct Floor {
    clients: Vec<Client>,
    options: Options,
    quorum: usize,
}

impl Floor {
    async fn connect(urls: &[String], node_timeout: Duration) -> Result<Floor, String> {
        let mut clients = Vec::with_capacity(urls.len());
        for url in urls {
            let config = Config::from_url(url).map_err(|e| format!("{url}: {e}"))?;
            let client = FredBuilder::from_config(config)
                .with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 1;
                    c.tcp.nodelay = Some(true);
                })
                .with_performance_config(|p| p.default_command_timeout = node_timeout)
                .set_policy(ReconnectPolicy::new_constant(0, 100))
                .build()
                .map_err(|e| format!("{url}: {e}"))?;
            tokio::time::timeout(Duration::from_secs(5), client.init())
                .await
                .map_err(|_| format!("{url}: no connection within 5 s"))?
                .map_err(|e| format!("{url}: {e}"))?;
            clients.push(client);
        }
        let quorum = clients.len() / 2 + 1;
        Ok(Floor {
            clients,
            options: Options {
                max_attempts: Some(1),
                timeout: Some(node_timeout),
                fail_fast: true,
                ..Options::default()
            },
            quorum,
        })
    }

    async fn quit(self) {
        for client in &self.clients {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }

    async fn acquire(&self, key: &str, params: &CycleParams) -> Result<Held, Failure> {
        let value = format!("{:016x}", rand::random::<u64>());
        let px = i64::try_from(params.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pending: FuturesUnordered<_> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let client = client.with_options(&self.options);
                let value = value.as_str();
                async move {
                    let set: Result<Option<String>, _> = client
                        .set(
                            key,
                            value,
                            Some(Expiration::PX(px)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await;
                    (i, set)
                }
            })
            .collect();
        let n = self.clients.len();
        let (mut yes, mut taken, mut failed) = (Vec::new(), 0usize, BTreeMap::new());
        while let Some((i, answer)) = pending.next().await {
            match answer {
                Ok(Some(_)) => yes.push(i),
                Ok(None) => taken += 1,
                Err(e) => *failed.entry(format!("{:?}", e.kind())).or_insert(0usize) += 1,
            }
            let answered = yes.len() + taken + failed.values().sum::<usize>();
            // Uncontended: done at the quorum. Contended: every answer, to know where
            // the key was set.
            let decided = if params.contended {
                answered == n
            } else {
                yes.len() >= self.quorum || yes.len() + (n - answered) < self.quorum
            };
            if decided {
                break;
            }
        }
        drop(pending);
        // Uncontended, the key is this task's alone: DEL it everywhere, including on the
        // nodes whose answer was not waited for. Contended, only where it was set.
        let ours: Vec<usize> = if params.contended {
            yes.clone()
        } else {
            (0..n).collect()
        };
        if yes.len() >= self.quorum {
            return Ok(Held::Floor { value, nodes: ours });
        }
        let detail = format!("{} yes, {taken} taken, failed {failed:?}", yes.len());
        // Undo what was set; not timed, as a failure is not a cycle.
        self.del(key, &ours, ours.len()).await;
        let kind = if taken > n - self.quorum {
            "taken"
        } else {
            "no_quorum"
        };
        Err(Failure::new(kind, detail))
    }

    async fn release(&self, key: &str, _value: &str, set_on: &[usize]) -> Result<(), Failure> {
        let deleted = self.del(key, set_on, self.quorum).await;
        if deleted >= self.quorum {
            Ok(())
        } else {
            Err(Failure::new(
                "release_no_quorum",
                format!("{deleted} of {} nodes deleted the key", self.clients.len()),
            ))
        }
    }

    /// `DEL key` on `nodes`; returns once `enough` nodes deleted it or all answered
    /// (the other DELs still run).
    async fn del(&self, key: &str, nodes: &[usize], enough: usize) -> usize {
        let mut pending: FuturesUnordered<_> = nodes
            .iter()
            .map(|&i| {
                let client = self.clients[i].with_options(&self.options);
                async move { client.del::<i64, _>(key).await }
            })
            .collect();
        let mut deleted = 0;
        while let Some(answer) = pending.next().await {
            if matches!(answer, Ok(1)) {
                deleted += 1;
                if deleted >= enough {
                    break;
                }
            }
        }
        deleted
    }
}

/// A whole redlock cycle on a blocking thread, bounded by the operation timeout (plus
/// the run's end when contended). A thread stuck on a frozen node (redis-rs 0.23 has no
/// read timeout by default) is left behind and the cycle reported as `hung`.
async fn redlock_cycle(rl: Arc<redlock::RedLock>, resource: String, params: CycleParams) -> Cycle {
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
        Ok(Err(join)) => {
            let mut cycle = Cycle::new();
            cycle.started = started;
            cycle.failures.push(Failure::new("panic", join.to_string()));
            cycle
        }
        Err(_) => {
            let mut cycle = Cycle::new();
            cycle.started = started;
            cycle.failures.push(Failure::new(
                "hung",
                format!("no answer within {bound:?}; the blocking thread is left behind"),
            ));
            cycle
        }
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
    async fn connect(urls: &[String], settings: &ClientSettings) -> Result<DistLock, String> {
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

    fn retry_pause(&self) -> Duration {
        self.retry_delay + self.retry_jitter.mul_f64(rand::random::<f64>())
    }

    async fn acquire(&self, resource: &str) -> Result<Held, Failure> {
        // A lock object draws its id when created: one per cycle, as one per acquisition.
        let lock = self.provider.create_lock(resource);
        match lock.try_acquire().await {
            Ok(Some(handle)) => Ok(Held::DistLock(handle)),
            // Taken, node errors and its time budget all come back as `None`.
            Ok(None) => Err(Failure::new(
                "not_acquired",
                "try_acquire returned None (taken, failed nodes or out of time)",
            )),
            Err(e) => Err(dist_lock_failure(e)),
        }
    }
}
