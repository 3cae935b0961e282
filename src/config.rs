//! The builder: every option, its default, and its validation.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use fred::prelude::{Client, ClientLike, Config, EventInterface};
use rand::Rng;

use crate::error::Error;
use crate::node::{
    ClientSettings, Node, SCRIPT_LOAD_TIMEOUT, error_message, is_acl_refusal, load_scripts,
    server_name,
};
use crate::quorum::{NodeVote, Vote, Votes, quorum};
use crate::redlock::{MAX_TTL, RESERVED_PREFIX, Redlock};

/// Default number of retries after the first attempt when no acquire timeout is set.
pub const DEFAULT_RETRY_COUNT: u32 = 3;
/// Default fixed part of the delay between two attempts.
pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_millis(100);
/// Default random part of the delay between two attempts.
pub const DEFAULT_RETRY_JITTER: Duration = Duration::from_millis(100);
/// Default clock drift factor: 1% of the TTL.
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;
/// Default bound on every request to one node.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// Default bound on connecting to the nodes in `build()`, and on each reconnection.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Default delay between two reconnection attempts to a node that is down.
pub const DEFAULT_RECONNECT_DELAY: Duration = Duration::from_millis(100);
/// Default share of the validity left when the keep-alive task extends a lock.
pub const DEFAULT_KEEP_ALIVE_AT: f64 = 0.5;

/// Default restart quarantine period, and so the longest TTL accepted by default.
pub const DEFAULT_QUARANTINE_PERIOD: Duration = Duration::from_secs(60);
/// Default time a resource's fencing counter outlives its last lock.
pub const DEFAULT_FENCING_RETENTION: Duration = Duration::from_secs(600);

/// The restart quarantine: how long a node that lost or changed its data stays out of
/// acquisitions. Such a node may have forgotten locks it granted; counted at once, it
/// could help a second client win a second majority for a resource that is still
/// locked. See docs/safety.md.
///
/// The acquisition script compares the node's `run_id` (new on every start of the
/// server process, and different on a promoted replica) with the one fredlock recorded
/// on the node; a missing or different record (a restart, with or without a snapshot,
/// a `FLUSHALL`, a failover) starts the quarantine on that node, for every client, in
/// the same atomic step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Quarantine {
    /// No quarantine: for nodes that keep every write across restarts (`appendonly yes`
    /// with `appendfsync always`) and never fail over to a replica.
    Off,
    /// Keep such a node out for this long from the moment any client notices. It must
    /// be at least the longest TTL any client of the deployment uses, so locks with a
    /// longer TTL (at acquire and at extend) are refused (`InvalidArgument` naming
    /// `restart_quarantine`). Give every client the same period; the default,
    /// [`DEFAULT_QUARANTINE_PERIOD`], is one all clients share without configuration.
    Period(Duration),
}

impl Default for Quarantine {
    /// `Period(DEFAULT_QUARANTINE_PERIOD)`.
    fn default() -> Self {
        Quarantine::Period(DEFAULT_QUARANTINE_PERIOD)
    }
}

/// Where the nodes come from.
enum Source {
    Urls(Vec<String>),
    Clients(Vec<Client>),
}

/// Configures and connects a [`Redlock`]. Made by [`Redlock::builder`] or
/// [`Redlock::from_clients`].
///
/// ```no_run
/// use std::time::Duration;
/// use fredlock::Redlock;
///
/// # async fn run() -> Result<(), fredlock::Error> {
/// let redlock = Redlock::builder([
///     "redis://10.0.0.1:6379",
///     "redis://10.0.0.2:6379",
///     "redis://:secret@10.0.0.3:6379",
/// ])
/// .node_timeout(Duration::from_millis(20))
/// .retry_delay(Duration::from_millis(50))
/// .key_prefix("locks:")
/// .build()
/// .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `.build().await`"]
pub struct Builder {
    source: Source,
    retry_count: Option<u32>,
    retry_delay: Duration,
    retry_jitter: Duration,
    drift_factor: f64,
    node_timeout: Duration,
    min_validity: Duration,
    key_prefix: String,
    acquire_timeout: Option<Duration>,
    connect_timeout: Duration,
    reconnect_delay: Duration,
    keep_alive_at: f64,
    quarantine: Quarantine,
    fencing_retention: Duration,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = match &self.source {
            Source::Urls(urls) => urls.len(),
            Source::Clients(clients) => clients.len(),
        };
        f.debug_struct("Builder")
            .field("nodes", &nodes)
            .field("retry_count", &self.retry_count)
            .field("retry_delay", &self.retry_delay)
            .field("retry_jitter", &self.retry_jitter)
            .field("drift_factor", &self.drift_factor)
            .field("node_timeout", &self.node_timeout)
            .field("min_validity", &self.min_validity)
            .field("key_prefix", &self.key_prefix)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("keep_alive_at", &self.keep_alive_at)
            .field("quarantine", &self.quarantine)
            .field("fencing_retention", &self.fencing_retention)
            .finish()
    }
}

/// The validated settings a [`Redlock`] runs with.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// Retries after the first attempt (`u32::MAX`: until the acquire deadline).
    pub(crate) retry_count: u32,
    pub(crate) retry_delay: Duration,
    pub(crate) retry_jitter: Duration,
    pub(crate) drift_factor: f64,
    pub(crate) node_timeout: Duration,
    pub(crate) min_validity: Duration,
    pub(crate) key_prefix: String,
    pub(crate) acquire_timeout: Option<Duration>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keep_alive_at: f64,
    pub(crate) quarantine: Quarantine,
    pub(crate) fencing_retention: Duration,
}

impl Builder {
    fn new(source: Source) -> Self {
        Builder {
            source,
            retry_count: None,
            retry_delay: DEFAULT_RETRY_DELAY,
            retry_jitter: DEFAULT_RETRY_JITTER,
            drift_factor: DEFAULT_DRIFT_FACTOR,
            node_timeout: DEFAULT_NODE_TIMEOUT,
            min_validity: Duration::ZERO,
            key_prefix: String::new(),
            acquire_timeout: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_delay: DEFAULT_RECONNECT_DELAY,
            keep_alive_at: DEFAULT_KEEP_ALIVE_AT,
            quarantine: Quarantine::default(),
            fencing_retention: DEFAULT_FENCING_RETENTION,
        }
    }

    pub(crate) fn from_urls(urls: Vec<String>) -> Self {
        Builder::new(Source::Urls(urls))
    }

    pub(crate) fn from_clients(clients: Vec<Client>) -> Self {
        Builder::new(Source::Clients(clients))
    }

    /// How many times [`Redlock::lock`] tries again after a failed attempt.
    ///
    /// Default: 3, or unlimited (until the deadline) when an
    /// [`acquire_timeout`](Self::acquire_timeout) is set.
    pub fn retry_count(mut self, retries: u32) -> Self {
        self.retry_count = Some(retries);
        self
    }

    /// The fixed part of the pause between two attempts. Default: 100 ms.
    pub fn retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// The random part of the pause between two attempts: each pause is
    /// `retry_delay + uniform(0..=retry_jitter)`, so competing clients fall out of step
    /// instead of splitting the votes again and again. Default: 100 ms.
    pub fn retry_jitter(mut self, jitter: Duration) -> Self {
        self.retry_jitter = jitter;
        self
    }

    /// The clock drift factor: the validity of a lock is
    /// `ttl - elapsed - (ttl * drift_factor + 2 ms)`. Must be in `[0, 1)`.
    /// Default: 0.01.
    pub fn drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = factor;
        self
    }

    /// The bound on every request to one node (acquire, extend, release). A node that
    /// does not answer within it is a failed vote. Should be small next to the TTL;
    /// at most [`MAX_TTL`](crate::MAX_TTL). Default: 50 ms.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// A lock is granted only if more than this much validity is left once the quorum
    /// is reached. Default: zero (any positive validity).
    pub fn min_validity(mut self, min: Duration) -> Self {
        self.min_validity = min;
        self
    }

    /// A prefix put before every resource name to make its key. Default: none, so the
    /// key is the resource name and fredlock excludes other Redlock clients that lock
    /// the same resource on the same nodes.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Bounds the total wait of [`Redlock::lock`]: no attempt starts unless it can end
    /// before this deadline (give or take the lateness of a timer on a busy runtime).
    /// Without an explicit [`retry_count`](Self::retry_count), `lock()` then retries
    /// until the deadline. Must be at least the node timeout.
    /// Default: none (the retry count bounds the wait).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = Some(timeout);
        self
    }

    /// How long `build()` waits for the nodes to connect, and the bound on each
    /// reconnection attempt; at most [`MAX_TTL`](crate::MAX_TTL). Default: 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The pause between two reconnection attempts to a node that is down; a node that
    /// comes back is used again without any action by the caller. Default: 100 ms.
    pub fn reconnect_delay(mut self, delay: Duration) -> Self {
        self.reconnect_delay = delay;
        self
    }

    /// When a kept-alive lock ([`Lock::keep_alive`](crate::Lock::keep_alive),
    /// [`Redlock::with_lock`]) is extended: once this share of its validity is left.
    /// Must be in `(0, 1)`. Default: 0.5.
    pub fn keep_alive_at(mut self, share: f64) -> Self {
        self.keep_alive_at = share;
        self
    }

    /// The restart quarantine: how long a node that lost or changed its data stays out
    /// of acquisitions, and so the longest TTL accepted. Default:
    /// `Quarantine::Period(DEFAULT_QUARANTINE_PERIOD)` (60 s). While a node is
    /// quarantined, the cluster tolerates one failure fewer. A fresh deployment's nodes
    /// are quarantined by the first acquisition; see
    /// [`Redlock::lift_restart_quarantine`](crate::Redlock::lift_restart_quarantine).
    /// Every client of a deployment should use the same setting.
    pub fn restart_quarantine(mut self, quarantine: Quarantine) -> Self {
        self.quarantine = quarantine;
        self
    }

    /// How long a resource's fencing counter outlives its lock on each node: every
    /// acquisition and extension keeps it for the TTL plus this, so a resource used
    /// once leaves no key behind after that. A counter that expired comes back at the
    /// acquiring client's clock (docs/fencing.md): tokens keep increasing as long as no
    /// two clients' clocks differ by more than this. Default: 10 minutes; at most
    /// [`MAX_TTL`](crate::MAX_TTL).
    pub fn fencing_retention(mut self, retention: Duration) -> Self {
        self.fencing_retention = retention;
        self
    }

    /// Validates the configuration and connects to the nodes.
    ///
    /// From URLs: connects to every node concurrently and waits up to the connect
    /// timeout. It fails with [`Error::Connect`] if fewer than a quorum connected;
    /// nodes that are down while a quorum is up keep reconnecting in the background.
    /// From clients: the clients are used as they are (they should already be
    /// connected; see [`Redlock::from_clients`]).
    ///
    /// Either way, it then loads the lock scripts into every connected node (`SCRIPT
    /// LOAD`, bounded by 2 s), so that the first acquisition finds them (fredlock loads
    /// them again on every reconnection), and runs every command the scripts use
    /// (`SET`, `GET`, `EXISTS`, `PTTL`, `PEXPIRE`, `DEL`, `PUBLISH`, and `INFO` when the
    /// restart quarantine is on) on a probe key in fredlock's namespace, so that a
    /// node whose ACL denies one of them is an error now rather than a lock that can
    /// never be taken.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid option, [`Error::Connect`], or
    /// [`Error::Denied`] naming the node and the command its ACL refuses.
    pub async fn build(self) -> Result<Redlock, Error> {
        let settings = self.settings()?;
        let client_settings = ClientSettings {
            node_timeout: self.node_timeout,
            connect_timeout: self.connect_timeout,
            reconnect_delay: self.reconnect_delay,
        };
        match self.source {
            Source::Urls(urls) => {
                let configs = parse_endpoints(&urls)?;
                let mut clients = Vec::with_capacity(configs.len());
                for (i, config) in configs.into_iter().enumerate() {
                    let client = Node::client_for(config, &client_settings).map_err(|e| {
                        Error::config("endpoints", format!("endpoint {i}: {}", e.details()))
                    })?;
                    clients.push(client);
                }
                // Nodes first: they listen for connection errors from the start.
                let nodes = to_nodes(clients, settings.node_timeout);
                connect(&nodes, settings.connect_timeout).await?;
                if let Err(denied) = prepare(&nodes, &settings).await {
                    let timeout = settings.connect_timeout;
                    futures::future::join_all(nodes.iter().map(|n| n.close(timeout))).await;
                    return Err(denied);
                }
                Ok(Redlock::new(nodes, settings, true))
            }
            Source::Clients(clients) => {
                if clients.is_empty() {
                    return Err(Error::config("clients", "at least one client is required"));
                }
                let mut seen = HashSet::new();
                for client in &clients {
                    let name = server_name(&client.client_config());
                    if client.is_clustered() || client.uses_sentinels() {
                        return Err(Error::config(
                            "clients",
                            format!(
                                "{name}: a cluster or sentinel client; each client must be \
                                 one independent master"
                            ),
                        ));
                    }
                    if !seen.insert(name.to_ascii_lowercase()) {
                        return Err(Error::config(
                            "clients",
                            format!("two clients point at {name}: the masters must be independent"),
                        ));
                    }
                }
                let nodes = to_nodes(clients, settings.node_timeout);
                prepare(&nodes, &settings).await?;
                Ok(Redlock::new(nodes, settings, false))
            }
        }
    }

    /// Validates every option except the endpoints.
    fn settings(&self) -> Result<Settings, Error> {
        if !(self.drift_factor.is_finite() && (0.0..1.0).contains(&self.drift_factor)) {
            return Err(Error::config(
                "drift_factor",
                format!("must be in [0, 1), got {}", self.drift_factor),
            ));
        }
        if !(self.keep_alive_at.is_finite() && self.keep_alive_at > 0.0 && self.keep_alive_at < 1.0)
        {
            return Err(Error::config(
                "keep_alive_at",
                format!("must be in (0, 1), got {}", self.keep_alive_at),
            ));
        }
        if let Quarantine::Period(period) = self.quarantine {
            if period.is_zero() {
                return Err(Error::config(
                    "restart_quarantine",
                    "a zero period quarantines nothing: use Quarantine::Off to mean that",
                ));
            }
            if period > MAX_TTL {
                return Err(Error::config(
                    "restart_quarantine",
                    format!("{period:?} is longer than the longest TTL ({MAX_TTL:?})"),
                ));
            }
        }
        if self.fencing_retention > MAX_TTL {
            return Err(Error::config(
                "fencing_retention",
                format!(
                    "{:?} is longer than the longest TTL ({MAX_TTL:?})",
                    self.fencing_retention
                ),
            ));
        }
        for (name, timeout) in [
            ("node_timeout", self.node_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if timeout.is_zero() {
                return Err(Error::config(name, "must be greater than zero"));
            }
            // Deadlines are `Instant::now() + timeout`: keep that far from overflowing.
            if timeout > MAX_TTL {
                return Err(Error::config(
                    name,
                    format!("{timeout:?} is longer than the longest TTL ({MAX_TTL:?})"),
                ));
            }
        }
        if let Some(deadline) = self.acquire_timeout {
            if deadline < self.node_timeout {
                return Err(Error::config(
                    "acquire_timeout",
                    format!(
                        "{deadline:?} is shorter than one attempt (node_timeout {:?})",
                        self.node_timeout
                    ),
                ));
            }
        }
        let retry_count = match (self.retry_count, self.acquire_timeout) {
            (Some(n), _) => n,
            (None, Some(_)) => u32::MAX,
            (None, None) => DEFAULT_RETRY_COUNT,
        };
        Ok(Settings {
            retry_count,
            retry_delay: self.retry_delay,
            retry_jitter: self.retry_jitter,
            drift_factor: self.drift_factor,
            node_timeout: self.node_timeout,
            min_validity: self.min_validity,
            key_prefix: self.key_prefix.clone(),
            acquire_timeout: self.acquire_timeout,
            connect_timeout: self.connect_timeout,
            keep_alive_at: self.keep_alive_at,
            quarantine: self.quarantine,
            fencing_retention: self.fencing_retention,
        })
    }
}

fn to_nodes(clients: Vec<Client>, timeout: Duration) -> Arc<[Arc<Node>]> {
    clients
        .into_iter()
        .map(|c| Arc::new(Node::new(c, timeout)))
        .collect()
}

/// Parses and checks the endpoint URLs: at least one, `redis://` or `rediss://` only
/// (the latter needs a TLS feature), no two for the same `host:port`.
pub(crate) fn parse_endpoints(urls: &[String]) -> Result<Vec<Config>, Error> {
    if urls.is_empty() {
        return Err(Error::config(
            "endpoints",
            "at least one endpoint is required",
        ));
    }
    let mut seen = HashSet::new();
    let mut configs = Vec::with_capacity(urls.len());
    for (i, url) in urls.iter().enumerate() {
        let shown = redact(url);
        let bad = |reason: String| {
            Error::config("endpoints", format!("endpoint {i} `{shown}`: {reason}"))
        };
        let Some((scheme, _)) = url.split_once("://") else {
            return Err(bad(
                "not a URL; expected redis://host:port or rediss://host:port".into(),
            ));
        };
        match scheme {
            "redis" => {}
            "rediss" if cfg!(any(feature = "tls-rustls", feature = "tls-native")) => {}
            "rediss" => {
                return Err(bad(
                    "rediss:// needs the crate feature `tls-rustls` or `tls-native`".into(),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}`; each endpoint is one independent master, \
                     redis:// or rediss://"
                )));
            }
        }
        let config = Config::from_url_centralized(url).map_err(|e| bad(e.details().to_string()))?;
        let name = server_name(&config);
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(bad(format!(
                "duplicate endpoint {name}: the masters must be independent"
            )));
        }
        configs.push(config);
    }
    Ok(configs)
}

/// The URL with any `user:password@` part hidden.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, _)), Some(at)) if at > scheme.len() + 3 => {
            format!("{scheme}://***@{}", &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Starts every node's connection task and waits until each node has connected or
/// failed its first attempt (at most `timeout`). Fails unless a quorum connected; the
/// other nodes keep reconnecting in the background.
async fn connect(nodes: &[Arc<Node>], timeout: Duration) -> Result<(), Error> {
    let outcomes = futures::future::join_all(nodes.iter().map(|node| async move {
        let client = node.client();
        // Subscribed before the connection task starts, so no outcome is missed.
        let mut errors = client.error_rx();
        // The connection task runs until the node is closed.
        node.connect();
        let first = tokio::time::timeout(timeout, async {
            tokio::select! {
                connected = client.wait_for_connect() => connected.err(),
                failed = errors.recv() => failed.ok().map(|(e, _)| e),
            }
        })
        .await;
        let vote = match first {
            _ if client.is_connected() => Vote::Yes,
            Ok(None) => Vote::Yes,
            Ok(Some(e)) => Vote::Error(error_message(&e)),
            Err(_) => Vote::Timeout,
        };
        NodeVote {
            node: Arc::clone(node.name()),
            vote,
        }
    }))
    .await;
    let votes = Votes(outcomes);
    if votes.yes() >= quorum(nodes.len()) {
        return Ok(());
    }
    futures::future::join_all(nodes.iter().map(|n| n.close(timeout))).await;
    Err(Error::Connect { votes })
}

/// On every connected node: loads the scripts (the node loads them on each connection
/// too, but in the background: waiting here means the first acquisition finds them),
/// then checks that its ACL allows every command fredlock needs.
async fn prepare(nodes: &[Arc<Node>], settings: &Settings) -> Result<(), Error> {
    let probe = format!("{}{RESERVED_PREFIX}probe", settings.key_prefix);
    let quarantine = settings.quarantine != Quarantine::Off;
    let checks = nodes
        .iter()
        .filter(|node| node.client().is_connected())
        .map(|node| {
            let probe = &probe;
            async move {
                let denied = match load_scripts(node.client().clone()).await {
                    Some(message) if is_acl_refusal(&message) => {
                        Err(("SCRIPT LOAD".to_string(), message))
                    }
                    _ => node.check(probe, quarantine, SCRIPT_LOAD_TIMEOUT).await,
                };
                denied.map_err(|(command, message)| Error::Denied {
                    node: node.name().to_string(),
                    command,
                    message,
                })
            }
        });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .collect()
}

/// The pause before the next attempt: `delay + uniform(0..=jitter)`.
pub(crate) fn retry_pause(delay: Duration, jitter: Duration, rng: &mut impl Rng) -> Duration {
    let jitter_ns = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    delay.saturating_add(Duration::from_nanos(rng.random_range(0..=jitter_ns)))
}

/// The pause of a waiter woken by a release before it tries: up to one round trip
/// (`round_trip`, its last attempt's), divided by the attempts it has made. Woken
/// waiters then reach the nodes spread over about a round trip instead of splitting
/// the votes, and those that have waited longer go first.
pub(crate) fn wake_jitter(round_trip: Duration, attempt: u32, rng: &mut impl Rng) -> Duration {
    retry_pause(Duration::ZERO, round_trip, rng) / attempt.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn field(err: Error) -> &'static str {
        match err {
            Error::Config { field, .. } => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn endpoints_parse_with_credentials_and_default_port() {
        let configs = parse_endpoints(&urls(&[
            "redis://127.0.0.1:7001",
            "redis://user:pw@127.0.0.1:7002/2",
            "redis://localhost",
        ]))
        .expect("valid endpoints");
        assert_eq!(configs.len(), 3);
        assert_eq!(configs[1].username.as_deref(), Some("user"));
        assert_eq!(configs[1].password.as_deref(), Some("pw"));
        assert_eq!(configs[1].database, Some(2));
        assert_eq!(&*server_name(&configs[2]), "localhost:6379");
    }

    #[test]
    fn bad_endpoints_name_the_problem() {
        let cases: &[(&[&str], &str)] = &[
            (&[], "at least one endpoint"),
            (&["127.0.0.1:6379"], "not a URL"),
            (&["http://127.0.0.1:6379"], "unsupported scheme `http`"),
            (&["redis-cluster://127.0.0.1:6379"], "unsupported scheme"),
            (&["redis://127.0.0.1:notaport"], "endpoint 0"),
            (
                &["redis://a:1", "redis://b:2", "redis://A:1"],
                "duplicate endpoint",
            ),
        ];
        for (list, expected) in cases {
            let err = parse_endpoints(&urls(list)).expect_err("must be rejected");
            let text = err.to_string();
            assert!(text.contains(expected), "{list:?}: {text}");
            assert_eq!(field(err), "endpoints");
        }
    }

    #[cfg(not(any(feature = "tls-rustls", feature = "tls-native")))]
    #[test]
    fn rediss_without_a_tls_feature_is_rejected() {
        let err = parse_endpoints(&urls(&["rediss://127.0.0.1:6380"])).expect_err("no TLS");
        assert!(err.to_string().contains("tls-rustls"), "{err}");
    }

    #[test]
    fn errors_never_show_passwords() {
        let err = parse_endpoints(&urls(&["redis://u:hunter2@host:bad"])).expect_err("bad port");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert_eq!(redact("redis://u:p@h:1"), "redis://***@h:1");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }

    fn builder() -> Builder {
        Builder::from_urls(urls(&["redis://127.0.0.1:1"]))
    }

    #[test]
    fn option_validation_names_the_field() {
        for f in [-0.1, 1.0, 2.0, f64::NAN, f64::INFINITY] {
            assert_eq!(
                field(builder().drift_factor(f).settings().unwrap_err()),
                "drift_factor"
            );
        }
        assert!(builder().drift_factor(0.0).settings().is_ok());
        assert!(builder().drift_factor(0.999).settings().is_ok());
        for share in [0.0, 1.0, -0.5, 1.5, f64::NAN] {
            let err = builder().keep_alive_at(share).settings().unwrap_err();
            assert_eq!(field(err), "keep_alive_at");
        }
        assert!(builder().keep_alive_at(0.01).settings().is_ok());
        assert_eq!(
            field(
                builder()
                    .node_timeout(Duration::ZERO)
                    .settings()
                    .unwrap_err()
            ),
            "node_timeout"
        );
        assert_eq!(
            field(
                builder()
                    .connect_timeout(Duration::ZERO)
                    .settings()
                    .unwrap_err()
            ),
            "connect_timeout"
        );
        for huge in [MAX_TTL + Duration::from_millis(1), Duration::MAX] {
            let node = builder().node_timeout(huge).settings().unwrap_err();
            assert_eq!(field(node), "node_timeout");
            let connect = builder().connect_timeout(huge).settings().unwrap_err();
            assert_eq!(field(connect), "connect_timeout");
        }
        let short = builder()
            .node_timeout(Duration::from_millis(50))
            .acquire_timeout(Duration::from_millis(49));
        assert_eq!(field(short.settings().unwrap_err()), "acquire_timeout");
    }

    #[test]
    fn retry_count_defaults_depend_on_the_deadline() {
        assert_eq!(
            builder().settings().unwrap().retry_count,
            DEFAULT_RETRY_COUNT
        );
        let deadline = builder().acquire_timeout(Duration::from_secs(1));
        assert_eq!(deadline.settings().unwrap().retry_count, u32::MAX);
        let both = builder()
            .acquire_timeout(Duration::from_secs(1))
            .retry_count(5);
        assert_eq!(both.settings().unwrap().retry_count, 5);
    }

    #[test]
    fn wake_jitter_scales_with_the_round_trip_and_favours_older_waiters() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for rtt in [Duration::from_micros(200), Duration::from_millis(40)] {
            let first: Vec<Duration> = (0..1000).map(|_| wake_jitter(rtt, 0, &mut rng)).collect();
            assert!(first.iter().all(|j| *j <= rtt));
            // Spread over the round trip: some near its end, not all near zero.
            assert!(first.iter().any(|j| *j > rtt * 3 / 4), "{rtt:?}");
            let later: Vec<Duration> = (0..1000).map(|_| wake_jitter(rtt, 3, &mut rng)).collect();
            assert!(later.iter().all(|j| *j <= rtt / 4), "{rtt:?}");
        }
        assert_eq!(wake_jitter(Duration::ZERO, 0, &mut rng), Duration::ZERO);
        assert!(wake_jitter(Duration::MAX, u32::MAX, &mut rng) <= Duration::MAX);
    }

    #[test]
    fn retry_pause_stays_within_delay_plus_jitter_and_varies() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let (delay, jitter) = (Duration::from_millis(100), Duration::from_millis(100));
        let pauses: Vec<Duration> = (0..1000)
            .map(|_| retry_pause(delay, jitter, &mut rng))
            .collect();
        assert!(pauses.iter().all(|p| *p >= delay && *p <= delay + jitter));
        let distinct: HashSet<_> = pauses.iter().collect();
        assert!(distinct.len() > 900, "jitter should spread the pauses");
        let low = pauses.iter().filter(|p| **p < delay + jitter / 2).count();
        assert!(
            (400..=600).contains(&low),
            "roughly uniform: {low} of 1000 in the lower half"
        );
        assert_eq!(retry_pause(delay, Duration::ZERO, &mut rng), delay);
        assert_eq!(
            retry_pause(Duration::MAX, Duration::MAX, &mut rng),
            Duration::MAX
        );
    }
}
