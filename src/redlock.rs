//! [`Redlock`]: the client that acquires locks over N independent masters.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::Client;

use crate::builder::Builder;
use crate::core::Core;
use crate::error::Error;
use crate::lease::Lease;
use crate::lock::Lock;
use crate::metrics;
use crate::quorum::Votes;
use crate::request::Request;
use crate::retry;
use crate::semaphore::Semaphore;
use crate::ttl::drift;

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
    core: Arc<Core>,
}

impl std::fmt::Debug for Redlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redlock")
            .field("nodes", &self.nodes().collect::<Vec<_>>())
            .field("settings", &self.core.settings)
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

    /// The number of nodes that must agree: `N / 2 + 1`.
    pub fn quorum(&self) -> usize {
        self.core.quorum()
    }

    /// The nodes' addresses, `host:port`, in configuration order.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.core.nodes.iter().map(|n| &**n.name())
    }

    /// The clock drift allowance for a TTL: `ttl * drift_factor + 2 ms`.
    pub fn drift(&self, ttl: Duration) -> Duration {
        drift(ttl, self.core.settings.drift_factor)
    }

    /// Acquires the lock on `resource` for `ttl`, trying again after a random pause
    /// while the configured retries and acquire timeout allow.
    ///
    /// Each attempt sends `SET key token NX PX ttl` to every node at once and returns as
    /// soon as a quorum has said yes, or as soon as a quorum can no longer be reached. A
    /// failed attempt removes its token from every node before the next one.
    ///
    /// # Errors
    /// [`Error::Taken`], [`Error::NoQuorum`] or [`Error::TooLate`] from the last
    /// attempt; [`Error::InvalidArgument`] for an empty resource or an unusable TTL.
    pub async fn lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = Request::one(resource, ttl, &self.core.settings)?;
        retry::lock(&self.core, request).await
    }

    /// Makes one attempt to acquire the lock on `resource` for `ttl`, without retries.
    ///
    /// # Errors
    /// As [`Redlock::lock`].
    pub async fn try_lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = Request::one(resource, ttl, &self.core.settings)?;
        self.try_request(request).await
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

    /// Acquires a read lock on `resource` for `ttl`, with the retries of
    /// [`lock`](Redlock::lock): shared with every other reader of `resource`, and
    /// excluded by its writer, which is [`lock`](Redlock::lock) on the same resource.
    ///
    /// The returned [`Lock`] is a reader's: its validity, extension, keep-alive,
    /// release and fencing token work as a writer's. A writer that finds readers
    /// claims the resource on the nodes: new readers are refused (as
    /// [`Error::Taken`]) until the readers present have left and the writer got the
    /// lock, or its claim ran out (its retry pause plus four node timeouts after its
    /// last attempt; a `try_lock` or a last attempt claims nothing), so a
    /// stream of readers cannot starve it (docs/design.md, "Read-write locks").
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn run(redlock: fredlock::Redlock) -> Result<(), fredlock::Error> {
    /// let reader = redlock.read_lock("catalog", Duration::from_secs(5)).await?;
    /// // ... read the catalog; other readers may too, no writer can ...
    /// reader.release().await?;
    ///
    /// let writer = redlock.lock("catalog", Duration::from_secs(5)).await?;
    /// // ... rewrite it, alone ...
    /// writer.release().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`lock`](Redlock::lock): [`Error::Taken`] while a writer holds or claims the
    /// resource.
    pub async fn read_lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = Request::read(resource, ttl, &self.core.settings)?;
        retry::lock(&self.core, request).await
    }

    /// One attempt of [`read_lock`](Redlock::read_lock), without retries.
    ///
    /// # Errors
    /// As [`read_lock`](Redlock::read_lock).
    pub async fn try_read_lock(&self, resource: &str, ttl: Duration) -> Result<Lock, Error> {
        let request = Request::read(resource, ttl, &self.core.settings)?;
        self.try_request(request).await
    }

    /// A counting semaphore named `name` with `permits` permits: at most that many
    /// holders of a [`Permit`](crate::Permit) at once; see [`Semaphore`].
    ///
    /// Its keys live in fredlock's namespace, apart from the locks': a semaphore and a
    /// lock of the same name are unrelated.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `name` when it is empty, or `permits` when it
    /// is 0 or above [`MAX_PERMITS`](crate::MAX_PERMITS). A number of permits that
    /// disagrees with what the nodes hold is found at acquisition
    /// ([`Error::PermitsMismatch`]).
    pub fn semaphore(&self, name: &str, permits: u32) -> Result<Semaphore, Error> {
        Semaphore::new(&self.core, name, permits)
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
        let request = Request::many(resources, ttl, &self.core.settings)?;
        retry::lock(&self.core, request).await
    }

    /// One attempt of [`lock_many`](Redlock::lock_many), without retries.
    ///
    /// # Errors
    /// As [`lock_many`](Redlock::lock_many).
    pub async fn try_lock_many(&self, resources: &[&str], ttl: Duration) -> Result<Lock, Error> {
        let request = Request::many(resources, ttl, &self.core.settings)?;
        self.try_request(request).await
    }

    async fn try_request(&self, request: Request) -> Result<Lock, Error> {
        retry::once(&self.core, request).await
    }

    /// Closes the connections fredlock opened: those to the nodes (not the clients
    /// given to [`Redlock::from_clients`]) and the wake-up subscriptions (for both;
    /// waiters then only poll). Locks still held keep their keys until their TTL.
    /// Dropping the last clone of a `Redlock` also closes them, in the background.
    ///
    /// A node's connection is closed once what is queued for it has gone out (a
    /// release that returned at its quorum may still be on its way to the other
    /// nodes), or after two node timeouts if that node does not answer; then `QUIT`,
    /// bounded by the connect timeout.
    ///
    /// Afterwards, on a `Redlock` built from endpoints, every node votes "not
    /// connected" at once, without a request: `try_lock`, `extend` and `release`
    /// return [`Error::NoQuorum`], and so does `lock` once its retries are spent.
    pub async fn quit(&self) {
        self.core.quit().await;
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
        self.core.lift().await
    }
}

impl Builder {
    /// Validates the configuration and connects to the nodes.
    ///
    /// From URLs: connects to every node concurrently and waits up to the connect
    /// timeout. It fails with [`Error::Connect`] if fewer than a quorum connected;
    /// nodes that are down while a quorum is up keep reconnecting in the background.
    /// From clients: the clients are used as they are (they should already be
    /// connected; see [`Redlock::from_clients`]).
    ///
    /// Either way, it then loads the lock script into every connected node (`SCRIPT
    /// LOAD`, bounded by 2 s), so that the first acquisition finds it (fredlock loads
    /// it again on every reconnection), and runs every command the script uses
    /// (`SET`, `GET`, `EXISTS`, `PTTL`, `PEXPIRE`, `DEL`, `PUBLISH`, and `INFO` when the
    /// restart quarantine is on) on a probe key in fredlock's namespace, so that a
    /// node whose ACL denies one of them is an error now rather than a lock that can
    /// never be taken.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid option, [`Error::Connect`], or
    /// [`Error::Denied`] naming the node and the command its ACL refuses.
    pub async fn build(self) -> Result<Redlock, Error> {
        metrics::describe();
        let (nodes, settings, owns_clients) = self.connect().await?;
        Ok(Redlock {
            core: Arc::new(Core::new(nodes, settings, owns_clients)),
        })
    }
}
