//! [`Redlock`]: the client that acquires locks over N independent masters.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use fred::prelude::Client;
use rand::RngCore;
use tracing::Instrument;
use tracing::field::{Empty, display};

use crate::acquisition::{Acquired, Acquisition};
use crate::config::{Builder, Quarantine, Settings, retry_pause, wake_jitter};
use crate::error::Error;
use crate::lease::Lease;
use crate::lock::Lock;
use crate::node::{AcquireCall, Node, fencing_floor};
use crate::quorum::{
    Decision, NodeVote, Tally, Vote, Votes, drift, fencing_tokens, quorum, validity,
};
use crate::round::Round;
use crate::wakeup::Wakeup;

/// The largest TTL accepted: 2^40 ms, about 34.8 years.
pub const MAX_TTL: Duration = Duration::from_millis(1 << 40);

/// fredlock's own keys (fencing counters, each node's incarnation marker and
/// quarantine guard) live under the key prefix followed by this; resource names that
/// start with it are refused, so no resource's key under the same prefix is ever one
/// of them. (Clients with different prefixes on the same nodes can still collide: a
/// resource `app:fredlock:fence:x` without a prefix is the counter of `x` under the
/// prefix `app:`.)
pub const RESERVED_PREFIX: &str = "fredlock:";

/// Bytes of CSPRNG output in a lock token (hex-encoded: 40 characters).
const TOKEN_BYTES: usize = 20;

/// A Redlock client over N independent Redis masters.
///
/// Cheap to clone: clones share the connections. Build one with [`Redlock::builder`] or
/// [`Redlock::from_clients`].
///
/// ```no_run
/// use std::time::Duration;
/// use fredlock::Redlock;
///
/// # async fn run() -> Result<(), fredlock::Error> {
/// let redlock = Redlock::builder([
///     "redis://127.0.0.1:7001",
///     "redis://127.0.0.1:7002",
///     "redis://127.0.0.1:7003",
/// ])
/// .build()
/// .await?;
///
/// let mut lock = redlock.lock("nightly-report", Duration::from_secs(30)).await?;
/// // ... work, checking lock.remaining() ...
/// lock.extend(Duration::from_secs(30)).await?;
/// lock.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Arc<[Arc<Node>]>,
    settings: Settings,
    /// The key that records a node's incarnation (its `run_id`), for the quarantine.
    marker: Arc<str>,
    /// The key whose life is a node's quarantine after a lost or changed incarnation.
    guard: Arc<str>,
    /// Release notifications, started by the first `lock()` that has to wait.
    wakeup: OnceLock<Arc<Wakeup>>,
    /// Whether fredlock created the clients (and so closes them when dropped).
    owns_clients: bool,
}

/// A validated lock request.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// The resource name; for several resources, their names joined by `", "`.
    pub(crate) resource: Arc<str>,
    pub(crate) resources: Arc<[Arc<str>]>,
    /// One key per resource: the key prefix followed by the resource name.
    pub(crate) keys: Arc<[Arc<str>]>,
    /// One fencing-counter key per resource, in the reserved namespace.
    pub(crate) fence_keys: Arc<[Arc<str>]>,
    /// The TTL sent to the nodes, whole milliseconds.
    pub(crate) ttl: Duration,
    pub(crate) ttl_ms: u64,
    pub(crate) drift: Duration,
}

impl std::fmt::Debug for Redlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .field("settings", &self.inner.settings)
            .finish()
    }
}

impl Redlock {
    /// Starts configuring a client for the given masters, one `redis://` or `rediss://`
    /// URL each, with user and password where needed
    /// (`redis://user:password@host:port/db`).
    ///
    /// The masters must be independent (no replication between them). One endpoint
    /// gives a single-instance lock.
    pub fn builder<I, S>(endpoints: I) -> Builder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder::from_urls(endpoints.into_iter().map(Into::into).collect())
    }

    /// Starts configuring a client over fred clients the service already holds, one per
    /// master. fredlock bounds every request by its own node timeout; configure the
    /// clients with a reconnect policy so that a node that restarts is used again (with
    /// fred's defaults a killed node is never reconnected). Do not use these clients
    /// for blocking commands (`BLPOP` and the like): a blocked connection holds
    /// fredlock's requests back until they time out, and with
    /// `Blocking::Interrupt` an acquisition may reach the node after the lock was
    /// handed out. fredlock does not close these clients.
    ///
    /// ```no_run
    /// use fred::prelude::*;
    /// use fredlock::Redlock;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut clients = Vec::new();
    /// for url in ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"] {
    ///     let client = Builder::from_config(Config::from_url(url)?)
    ///         .set_policy(ReconnectPolicy::new_constant(0, 100))
    ///         .build()?;
    ///     client.init().await?;
    ///     clients.push(client);
    /// }
    /// let redlock = fredlock::Redlock::from_clients(clients).build().await?;
    /// # Ok(()) }
    /// ```
    pub fn from_clients<I>(clients: I) -> Builder
    where
        I: IntoIterator<Item = Client>,
    {
        Builder::from_clients(clients.into_iter().collect())
    }

    pub(crate) fn new(nodes: Arc<[Arc<Node>]>, settings: Settings, owns_clients: bool) -> Self {
        Redlock {
            inner: Arc::new(Inner {
                nodes,
                marker: format!("{}{RESERVED_PREFIX}incarnation", settings.key_prefix).into(),
                guard: format!("{}{RESERVED_PREFIX}quarantine", settings.key_prefix).into(),
                settings,
                wakeup: OnceLock::new(),
                owns_clients,
            }),
        }
    }

    /// The number of nodes that must agree: `N / 2 + 1`.
    pub fn quorum(&self) -> usize {
        quorum(self.inner.nodes.len())
    }

    /// The nodes' addresses, `host:port`, in configuration order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.inner.nodes.iter().map(|n| &**n.name())
    }

    /// The clock drift allowance for a TTL: `ttl * drift_factor + 2 ms`.
    pub fn drift(&self, ttl: Duration) -> Duration {
        drift(ttl, self.inner.settings.drift_factor)
    }

    /// Acquires the lock on `resource` for `ttl`, trying again after a random pause
    /// while the configured retries and acquire timeout allow.
    ///
    /// Each attempt sends `SET key token NX PX ttl` to every node at once and returns as
    /// soon as a quorum has said yes, or as soon as a quorum can no longer be reached. A
    /// failed attempt removes its token from every node before the next one.
    ///
    /// # Errors
    /// [`Error::Taken`], [`Error::NoQuorum`], [`Error::TooLate`] or
    /// [`Error::FencingFailed`] from the last attempt; [`Error::InvalidArgument`] for an
    /// empty resource or an unusable TTL.
    pub async fn lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = self.request(resource, ttl)?;
        self.lock_request(request).await
    }

    /// The retry loop of `lock` and `lock_many`.
    async fn lock_request(&self, request: Request) -> Result<Lock, Error> {
        let settings = &self.inner.settings;
        let start = Instant::now();
        let deadline = settings.acquire_timeout.and_then(|t| start.checked_add(t));
        // The latest moment an attempt can start and still end by the deadline.
        let latest_start = deadline.map(|d| d.checked_sub(settings.node_timeout).unwrap_or(start));
        let mut attempt = 0u32;
        let mut subscription = None;
        loop {
            let attempt_start = Instant::now();
            let Failed { error, cleanup } = match self.attempt(&request, attempt).await {
                Ok(lock) => return Ok(lock),
                Err(failed) => failed,
            };
            if attempt >= settings.retry_count {
                return Err(error);
            }
            let round_trip = attempt_start.elapsed().min(settings.node_timeout);
            let mut pause = retry_pause(
                settings.retry_delay,
                settings.retry_jitter,
                &mut rand::rng(),
            );
            // The pause is cut so that the next attempt can still end its vote round by
            // the deadline: it ends by `latest_start` at the latest.
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
                subscription = Some(self.wakeup().subscribe(&request.keys));
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
            // The next attempt starts after the wait and after every node of this one
            // has removed our token (bounded by two node timeouts).
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

    /// Makes one attempt to acquire the lock on `resource` for `ttl`, without retries.
    ///
    /// # Errors
    /// As [`Redlock::lock`].
    pub async fn try_lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = self.request(resource, ttl)?;
        self.attempt(&request, 0)
            .await
            .map_err(|failed| failed.error)
    }

    /// Runs `work` while holding the lock on `resource`: acquires it as
    /// [`lock`](Redlock::lock) does, keeps it alive in the background
    /// ([`Lock::keep_alive`]), releases it when `work` ends, and returns `work`'s
    /// output.
    ///
    /// If the lock is lost while `work` runs (keeping it alive failed, or its validity
    /// ran out), `work` is dropped at once, which cancels it at its next `.await`, and
    /// [`Error::Lost`] is returned without waiting for the release, which goes on in the
    /// background. `work` gets a [`Lease`] to check the validity or hand the lost-lock
    /// signal to tasks it starts.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn migrate() {}
    /// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
    /// let rows = redlock
    ///     .with_lock("schema-migration", Duration::from_secs(10), |lease| async move {
    ///         migrate().await;
    ///         lease.remaining()
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// The errors of [`lock`](Redlock::lock), or [`Error::Lost`]. A failed release after
    /// `work` completed is not an error: `work` finished while the lock was held.
    pub async fn with_lock<F, Fut, T>(
        &self,
        resource: &str,
        ttl: Duration,
        work: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(Lease) -> Fut,
        Fut: Future<Output = T>,
    {
        let mut lock = self.lock(resource, ttl).await?;
        lock.keep_alive();
        let lease = lock.lease();
        let outcome = {
            let work = work(lease.clone());
            tokio::select! {
                biased;
                reason = lease.lost() => Err(reason),
                output = work => Ok(output),
            }
        };
        match outcome {
            Ok(output) => {
                if let Err(error) = lock.release().await {
                    tracing::debug!(resource, %error, "release after the protected work failed");
                }
                Ok(output)
            }
            Err(reason) => {
                // Dropping the lock releases it in the background.
                drop(lock);
                Err(Error::Lost {
                    resource: resource.to_string(),
                    reason,
                })
            }
        }
    }

    /// Acquires one lock over several resources at once, with the retries of
    /// [`lock`](Redlock::lock). On each node all the keys are set in one script, or
    /// none if any of them is taken there; the quorum, validity, extend and release
    /// rules are those of a single resource, applied to the set.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
    /// let lock = redlock
    ///     .lock_many(&["account:17", "account:42"], Duration::from_secs(5))
    ///     .await?;
    /// // ... move money between the two accounts ...
    /// lock.release().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Redlock::lock); [`Error::InvalidArgument`] naming `resources` for an
    /// empty list, an empty name or a name listed twice.
    pub async fn lock_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let request = self.request_many(resources, ttl)?;
        self.lock_request(request).await
    }

    /// One attempt of [`lock_many`](Redlock::lock_many), without retries.
    ///
    /// # Errors
    /// As [`lock_many`](Redlock::lock_many).
    pub async fn try_lock_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let request = self.request_many(resources, ttl)?;
        self.attempt(&request, 0)
            .await
            .map_err(|failed| failed.error)
    }

    /// Closes the connections fredlock opened: those to the nodes (not the clients
    /// given to [`Redlock::from_clients`]) and the wake-up subscriptions (for both;
    /// waiters then only poll). Locks still held keep their keys until their TTL.
    /// Dropping the last clone of a `Redlock` also closes them, in the background.
    ///
    /// Afterwards, on a `Redlock` built from endpoints, every node votes "not
    /// connected" at once, without a request: `try_lock`, `extend` and `release`
    /// return [`Error::NoQuorum`], and so does `lock` once its retries are spent.
    pub async fn quit(&self) {
        if let Some(wakeup) = self.inner.wakeup.get() {
            wakeup.close();
        }
        if self.inner.owns_clients {
            let timeout = self.inner.settings.connect_timeout;
            futures::future::join_all(self.inner.nodes.iter().map(|n| n.close(timeout))).await;
        }
    }

    /// Lifts the restart quarantine on every node: records each node's current
    /// incarnation and deletes its quarantine guard, so that it votes at once.
    ///
    /// This is the operator's way through the wait of a **first deployment** (every
    /// node is new to fredlock, so the first acquisition quarantines each one for the
    /// period) and after a planned restart of **all** clients. Call it only when no
    /// lock granted by these nodes can still be held: lifting the quarantine of a node
    /// that forgot a live lock lets a second client in (docs/safety.md). Returns each
    /// node's vote; a node that is down keeps its quarantine.
    ///
    /// ```no_run
    /// # async fn run(redlock: fredlock::Redlock) {
    /// // A new deployment: no client has ever held a lock on these nodes.
    /// let votes = redlock.lift_restart_quarantine().await;
    /// assert_eq!(votes.yes(), votes.len(), "{votes}");
    /// # }
    /// ```
    pub async fn lift_restart_quarantine(&self) -> Votes {
        let inner = &self.inner;
        let votes = futures::future::join_all(inner.nodes.iter().map(|node| async move {
            NodeVote {
                node: Arc::clone(node.name()),
                vote: node.lift(&inner.marker, &inner.guard).await,
            }
        }))
        .await;
        Votes(votes)
    }

    /// Validates a resource and TTL and derives the key, the TTL in milliseconds and
    /// the drift.
    pub(crate) fn request(&self, resource: &str, ttl: Duration) -> Result<Request, Error> {
        if resource.is_empty() {
            return Err(Error::invalid("resource", "must not be empty"));
        }
        self.request_for(vec![Arc::from(resource)], ttl)
    }

    /// Validates a list of resources: at least one, none empty, no duplicates.
    fn request_many(&self, resources: &[&str], ttl: Duration) -> Result<Request, Error> {
        if resources.is_empty() {
            return Err(Error::invalid(
                "resources",
                "at least one resource is required",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for resource in resources {
            if resource.is_empty() {
                return Err(Error::invalid("resources", "a resource name is empty"));
            }
            if !seen.insert(*resource) {
                return Err(Error::invalid(
                    "resources",
                    format!("`{resource}` is listed twice"),
                ));
            }
        }
        self.request_for(resources.iter().map(|r| Arc::from(*r)).collect(), ttl)
    }

    /// The same resources for another TTL.
    pub(crate) fn retimed(&self, request: &Request, ttl: Duration) -> Result<Request, Error> {
        self.request_for(request.resources.to_vec(), ttl)
    }

    fn request_for(&self, resources: Vec<Arc<str>>, ttl: Duration) -> Result<Request, Error> {
        let argument = if resources.len() == 1 {
            "resource"
        } else {
            "resources"
        };
        if let Some(reserved) = resources.iter().find(|r| r.starts_with(RESERVED_PREFIX)) {
            return Err(Error::invalid(
                argument,
                format!(
                    "`{reserved}` is in fredlock's reserved namespace: names starting with \
                     `{RESERVED_PREFIX}` hold its counters and markers"
                ),
            ));
        }
        let ttl_ms = checked_ttl_ms(ttl)?;
        let ttl = Duration::from_millis(ttl_ms);
        let drift = self.drift(ttl);
        if ttl <= drift {
            return Err(Error::invalid(
                "ttl",
                format!("{ttl:?} is not larger than the clock drift allowance {drift:?}"),
            ));
        }
        if let Quarantine::Period(period) = self.inner.settings.quarantine {
            if ttl > period {
                return Err(Error::invalid(
                    "ttl",
                    format!(
                        "{ttl:?} is longer than the restart_quarantine period {period:?}: a \
                         node that lost its data would vote again while this lock may still \
                         be held. Use a shorter TTL with keep_alive(), or raise \
                         Builder::restart_quarantine on every client"
                    ),
                ));
            }
        }
        let prefix = &self.inner.settings.key_prefix;
        let keys = resources
            .iter()
            .map(|r| Arc::from(format!("{prefix}{r}")))
            .collect();
        let fence_keys = resources
            .iter()
            .map(|r| Arc::from(format!("{prefix}{RESERVED_PREFIX}fence:{r}")))
            .collect();
        let resource = resources
            .iter()
            .map(|r| &**r)
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Request {
            resource: resource.into(),
            resources: resources.into(),
            keys,
            fence_keys,
            ttl,
            ttl_ms,
            drift,
        })
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.inner.settings
    }

    fn wakeup(&self) -> &Arc<Wakeup> {
        self.inner
            .wakeup
            .get_or_init(|| Wakeup::start(&self.inner.nodes, self.inner.settings.connect_timeout))
    }

    /// One acquisition attempt.
    async fn attempt(&self, request: &Request, attempt: u32) -> Result<Lock, Failed> {
        let span = tracing::debug_span!(
            "fredlock.acquire",
            resource = %request.resource,
            attempt,
            outcome = Empty,
            votes = Empty,
            elapsed_us = Empty,
            validity_ms = Empty,
        );
        self.attempt_in(request, span.clone())
            .instrument(span)
            .await
    }

    async fn attempt_in(&self, request: &Request, span: tracing::Span) -> Result<Lock, Failed> {
        let token: Arc<str> = new_token().into();
        let start = Instant::now();
        let quarantine = match self.inner.settings.quarantine {
            Quarantine::Off => None,
            Quarantine::Period(period) => Some((&*self.inner.marker, &*self.inner.guard, period)),
        };
        let call = AcquireCall::new(
            request,
            &token,
            fencing_floor(),
            quarantine,
            self.inner.settings.fencing_retention,
        );
        // Dropped before its verdict (this future was dropped), it removes our token
        // from every node in the background.
        let mut acquisition = Acquisition::new(&self.inner.nodes, call, &request.keys, &token);
        let decision = acquisition.decide().await;
        let mut elapsed = start.elapsed();
        let mut validity = validity(request.ttl, elapsed, request.drift);
        let min_validity = self.inner.settings.min_validity;
        let mut fencing_failed = None;

        if decision == Decision::Quorum && validity > min_validity {
            let fenced = match self.fencing(acquisition.round().answers()) {
                None => Err(acquisition.round().votes()),
                Some((fences, false)) => Ok(fences),
                Some((fences, true)) => self
                    .write_back(request, &token, &fences)
                    .await
                    .map(|()| fences),
            };
            match fenced {
                Ok(fences) => {
                    // A write-back round took time too: the validity counts it.
                    elapsed = start.elapsed();
                    validity = crate::quorum::validity(request.ttl, elapsed, request.drift);
                    if validity > min_validity {
                        if !span.is_disabled() {
                            record(&span, &acquisition.round().votes(), elapsed);
                            span.record("validity_ms", validity.as_millis());
                            span.record("outcome", "acquired");
                        }
                        acquisition.keep();
                        let valid_until = (start + elapsed).checked_add(validity).unwrap_or(start);
                        return Ok(Lock::new(self.clone(), request, token, valid_until, fences));
                    }
                }
                Err(votes) => fencing_failed = Some(votes),
            }
        }
        span.record("validity_ms", validity.as_millis());
        // Our token is removed from the nodes that set it before the error is returned
        // (they answered quickly, so this is one more fast round trip); the others
        // remove it in the background, after their own request, so a late SET is
        // undone too.
        let (votes, tally, cleanup) = acquisition.give_up().await;
        record(&span, &votes, elapsed);
        let resource = request.resource.to_string();
        let error = if let Some(votes) = fencing_failed {
            Error::FencingFailed { resource, votes }
        } else if decision == Decision::Quorum {
            Error::TooLate {
                resource,
                validity,
                min_validity,
                votes,
            }
        } else if tally.taken_rules_out_quorum() {
            Error::Taken { resource, votes }
        } else {
            Error::NoQuorum { resource, votes }
        };
        span.record("outcome", outcome_label(&error));
        tracing::debug!(parent: &span, %error, "attempt failed");
        Err(Failed { error, cleanup })
    }

    /// The fencing tokens of a round that reached its quorum, from its answers: per
    /// resource, the largest counter among the yes votes, and whether they must be
    /// written back (docs/fencing.md). `None` if no quorum of yes votes carries them.
    fn fencing(&self, answers: &[Option<Acquired>]) -> Option<(Arc<[u64]>, bool)> {
        let yes: Vec<&[u64]> = answers
            .iter()
            .flatten()
            .filter(|(vote, _)| *vote == Vote::Yes)
            .map(|(_, fences)| fences.as_slice())
            .collect();
        fencing_tokens(&yes, self.quorum()).map(|(fences, write_back)| (fences.into(), write_back))
    }

    /// Raises the fencing counters to `fences` on a quorum of nodes that still hold our
    /// lock. `Err` with the votes when that quorum cannot be reached.
    async fn write_back(
        &self,
        request: &Request,
        token: &Arc<str>,
        fences: &Arc<[u64]>,
    ) -> Result<(), Votes> {
        let retention = self.inner.settings.fencing_retention;
        let mut written = Round::new(&self.inner.nodes, |node| {
            let (node, request, token, fences) = (
                Arc::clone(node),
                request.clone(),
                Arc::clone(token),
                Arc::clone(fences),
            );
            Box::pin(async move { node.fence(&request, &token, &fences, retention).await })
        });
        match written.decide().await {
            Decision::Quorum => Ok(()),
            Decision::NoQuorum => Err(written.votes()),
        }
    }

    /// Runs a compare-and-delete round. Returns at the decision; the requests to the
    /// remaining nodes run on.
    /// `was_valid`: whether the lock was still valid when the release began; if not,
    /// the round still removes the keys but reports [`Error::Expired`].
    pub(crate) async fn release_round(
        &self,
        request: &Request,
        token: &Arc<str>,
        was_valid: bool,
    ) -> Result<(), Error> {
        let span = tracing::debug_span!(
            "fredlock.release",
            resource = %request.resource,
            outcome = Empty,
            votes = Empty,
            elapsed_us = Empty,
        );
        let start = Instant::now();
        let mut round = Round::new(&self.inner.nodes, |node| {
            let (node, keys, token) = (
                Arc::clone(node),
                Arc::clone(&request.keys),
                Arc::clone(token),
            );
            Box::pin(async move { node.release(&keys, &token).await })
        });
        let decision = round.decide().instrument(span.clone()).await;
        // The releases still running go on in the background when the round is
        // dropped, so every node deletes our key.
        if !span.is_disabled() {
            record(&span, &round.votes(), start.elapsed());
        }
        let result = match decision {
            Decision::Quorum if was_valid => Ok(()),
            Decision::Quorum => Err(Error::Expired {
                resource: request.resource.to_string(),
                votes: round.votes(),
            }),
            Decision::NoQuorum => Err(lost(request, *round.tally(), round.votes())),
        };
        span.record(
            "outcome",
            result.as_ref().map_or_else(outcome_label, |_| "released"),
        );
        result
    }

    /// Runs a compare-and-pexpire round for `request.ttl`. Returns the decision, the
    /// votes and when the round started; the requests to the remaining nodes run on.
    pub(crate) async fn extend_round(
        &self,
        request: &Request,
        token: &Arc<str>,
        span: &tracing::Span,
    ) -> (Decision, Tally, Votes, Instant, Duration) {
        let start = Instant::now();
        let retention = self.inner.settings.fencing_retention;
        let mut round = Round::new(&self.inner.nodes, |node| {
            let (node, request, token) = (Arc::clone(node), request.clone(), Arc::clone(token));
            Box::pin(async move { node.extend(&request, &token, retention).await })
        });
        let decision = round.decide().instrument(span.clone()).await;
        let elapsed = start.elapsed();
        let votes = round.votes();
        record(span, &votes, elapsed);
        let tally = *round.tally();
        (decision, tally, votes, start, elapsed)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.owns_clients {
            return;
        }
        // Close our connections without blocking: only if a runtime is there to run it.
        for node in self.nodes.iter() {
            node.close_in_background(self.settings.connect_timeout);
        }
    }
}

/// A failed attempt: its error, and the task still removing its token from the nodes
/// that had not answered.
struct Failed {
    error: Error,
    cleanup: Option<tokio::task::JoinHandle<()>>,
}

/// The error for a release or extend round that found no quorum.
pub(crate) fn lost(request: &Request, tally: Tally, votes: Votes) -> Error {
    let resource = request.resource.to_string();
    if tally.taken_rules_out_quorum() {
        Error::Expired { resource, votes }
    } else {
        Error::NoQuorum { resource, votes }
    }
}

pub(crate) fn outcome_label(error: &Error) -> &'static str {
    match error {
        Error::Taken { .. } => "taken",
        Error::NoQuorum { .. } => "no_quorum",
        Error::TooLate { .. } => "too_late",
        Error::FencingFailed { .. } => "fencing_failed",
        Error::Expired { .. } => "expired",
        _ => "error",
    }
}

fn record(span: &tracing::Span, votes: &Votes, elapsed: Duration) {
    span.record("votes", display(votes));
    span.record("elapsed_us", elapsed.as_micros());
}

/// `ttl` in whole milliseconds, at least 1 and at most [`MAX_TTL`].
pub(crate) fn checked_ttl_ms(ttl: Duration) -> Result<u64, Error> {
    if ttl > MAX_TTL {
        return Err(Error::invalid(
            "ttl",
            format!("{ttl:?} is larger than the maximum {MAX_TTL:?}"),
        ));
    }
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::invalid(
            "ttl",
            format!("must be at least 1 ms, got {ttl:?}"),
        ));
    }
    Ok(ms)
}

/// A fresh token: [`TOKEN_BYTES`] bytes from the thread-local CSPRNG, hex-encoded.
pub(crate) fn new_token() -> String {
    let mut bytes = [0u8; TOKEN_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let mut hex = String::with_capacity(TOKEN_BYTES * 2);
    for b in bytes {
        hex.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_40_hex_chars_and_distinct() {
        let tokens: std::collections::HashSet<String> = (0..10_000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 10_000);
        for t in tokens.iter().take(100) {
            assert_eq!(t.len(), 2 * TOKEN_BYTES);
            assert!(
                t.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

    #[test]
    fn ttl_bounds() {
        assert!(checked_ttl_ms(Duration::ZERO).is_err());
        assert!(checked_ttl_ms(Duration::from_micros(999)).is_err());
        assert_eq!(checked_ttl_ms(Duration::from_micros(1999)).unwrap(), 1);
        assert_eq!(checked_ttl_ms(MAX_TTL).unwrap(), 1 << 40);
        assert!(checked_ttl_ms(MAX_TTL + Duration::from_millis(1)).is_err());
        assert!(checked_ttl_ms(Duration::MAX).is_err());
    }
}
