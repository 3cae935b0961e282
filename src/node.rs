//! One Redis master: its fred client, the per-node timeout, and the lock scripts.
//!
//! Every method returns a [`Vote`] and never waits longer than the node's timeout: a
//! node's error or timeout is a failed vote, never an abort.

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, Key, KeysInterface, LuaInterface, Options,
    ReconnectPolicy, ServerConfig, Value,
};
use fred::types::CustomCommand;
use fred::types::scripts::Script;

use crate::quorum::Vote;
use crate::redlock::Request;

/// Compare-and-delete, see `scripts/release.lua`.
const RELEASE_LUA: &str = include_str!("scripts/release.lua");
/// A released key is announced on this prefix followed by the key, so that clients
/// waiting for it retry at once instead of at their next polling time.
pub(crate) const RELEASE_CHANNEL_PREFIX: &str = "fredlock:released:";

/// All-or-nothing acquisition of several keys, see `scripts/acquire.lua`.
const ACQUIRE_LUA: &str = include_str!("scripts/acquire.lua");
/// Fencing write-back, see `scripts/fence.lua`.
const FENCE_LUA: &str = include_str!("scripts/fence.lua");
/// Compare-and-pexpire, see `scripts/extend.lua`.
const EXTEND_LUA: &str = include_str!("scripts/extend.lua");

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RELEASE_LUA));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(EXTEND_LUA));
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ACQUIRE_LUA));
static FENCE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(FENCE_LUA));

/// How fredlock configures the fred clients it creates from URLs.
#[derive(Clone, Debug)]
pub(crate) struct ClientSettings {
    pub(crate) node_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) reconnect_delay: Duration,
}

/// One Redis master.
#[derive(Debug)]
pub(crate) struct Node {
    client: Client,
    name: Arc<str>,
    timeout: Duration,
    /// Why the last connection attempt failed (for example `NOAUTH ...`), until the
    /// next successful connection. A command refused because the node is not
    /// connected carries it in its vote.
    connection_error: Arc<Mutex<Option<String>>>,
    /// Set while the node is out of acquisition votes after losing its data.
    quarantined_until: Mutex<Option<Instant>>,
}

impl Node {
    /// Wraps a client. `timeout` bounds every request made through this node.
    ///
    /// Must be called within a tokio runtime: it starts two small listener tasks that
    /// follow the client's connection errors and reconnections.
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        let name = server_name(&client.client_config());
        let connection_error = Arc::new(Mutex::new(None));
        let on_error = Arc::clone(&connection_error);
        drop(client.on_error(move |(error, _)| {
            set(&on_error, Some(error_message(&error)));
            async { Ok(()) }
        }));
        let on_reconnect = Arc::clone(&connection_error);
        drop(client.on_reconnect(move |_| {
            set(&on_reconnect, None);
            async { Ok(()) }
        }));
        Node {
            client,
            name,
            timeout,
            connection_error,
            quarantined_until: Mutex::new(None),
        }
    }

    /// Per-command options for a request that must end by `deadline`.
    ///
    /// fred's own command timeout (not only ours around it) must fire: it marks the
    /// command as timed out, so fred never writes it later from its retry buffer
    /// after a reconnection. A SET replayed that way would set a key that nobody
    /// removes.
    fn options(deadline: Instant) -> Options {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        Options {
            // One write attempt: a command is never replayed on a new connection.
            max_attempts: Some(1),
            timeout: Some(left),
            // A disconnected node answers at once instead of queueing the command
            // until it reconnects.
            fail_fast: true,
            ..Options::default()
        }
    }

    /// Creates (but does not connect) a fred client for `config` that never hangs on a
    /// dead node and reconnects by itself when the node comes back.
    pub(crate) fn client_for(
        mut config: Config,
        settings: &ClientSettings,
    ) -> Result<Client, fred::error::Error> {
        // Keep reconnecting in the background when the first connection fails, rather
        // than giving up on a node that is down at start-up.
        config.fail_fast = false;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1);
        let unresponsive = settings
            .node_timeout
            .saturating_mul(20)
            .max(Duration::from_secs(2));
        Builder::from_config(config)
            .with_connection_config(|c| {
                c.connection_timeout = settings.connect_timeout;
                c.internal_command_timeout = settings.connect_timeout;
                c.max_command_attempts = 1;
                c.tcp.nodelay = Some(true);
                // A connection on which nothing has come back for this long (a host
                // that vanished without a reset) is closed and reconnected.
                c.unresponsive.max_timeout = Some(unresponsive);
                c.unresponsive.interval = unresponsive / 4;
            })
            .with_performance_config(|p| {
                p.default_command_timeout = settings.node_timeout;
            })
            // Unlimited attempts at a constant delay: a node that comes back is used
            // again without any action by the caller.
            .set_policy({
                let mut policy = ReconnectPolicy::new_constant(0, ms(settings.reconnect_delay));
                // fred adds up to 100 ms of jitter by default; the delay is ours to set.
                policy.set_jitter(0);
                policy
            })
            .build()
    }

    /// The node's address, `host:port`.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    /// The acquisition script: all-or-nothing `SET NX PX` of the request's keys, raising
    /// their fencing counters to at least `fencing_floor`. With `quarantine`, a node without its incarnation marker
    /// (it lost its data) sets nothing until it has been up for the quarantine period.
    /// Returns the vote and, on `Yes`, the raised counters.
    pub(crate) async fn acquire(
        &self,
        request: &Request,
        token: &str,
        fencing_floor: u64,
        quarantine: Option<&Quarantined<'_>>,
    ) -> (Vote, Vec<u64>) {
        if let Some(until) = self.quarantined_until() {
            return (
                Vote::Error(format!(
                    "quarantined after a restart for another {:?}",
                    until.saturating_duration_since(Instant::now())
                )),
                Vec::new(),
            );
        }
        let px = i64::try_from(request.ttl_ms).unwrap_or(i64::MAX);
        let n = request.keys.len();
        let mut keys: Vec<Arc<str>> = Vec::with_capacity(2 * n + 1);
        keys.extend(request.keys.iter().cloned());
        keys.extend(request.fence_keys.iter().cloned());
        if let Some(q) = quarantine {
            keys.push(Arc::clone(q.marker));
        }
        let args = vec![
            Value::from(token),
            Value::Integer(px),
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
            Value::from(if quarantine.is_some() { "1" } else { "0" }),
            Value::from(fencing_floor.to_string()),
        ];
        let outcome = self
            .bounded(|deadline| async move {
                let mut reply = self
                    .eval(deadline, &ACQUIRE, ACQUIRE_LUA, &keys, args.clone())
                    .await?;
                if let (Value::Integer(-1), Some(q)) = (&reply, quarantine) {
                    // No marker: the node lost its data since it was last checked.
                    match self.check_incarnation(deadline, q).await? {
                        Some(refusal) => return Ok(Err(refusal)),
                        None => {
                            reply = self
                                .eval(deadline, &ACQUIRE, ACQUIRE_LUA, &keys, args)
                                .await?
                        }
                    }
                }
                Ok(Ok(reply))
            })
            .await;
        match outcome {
            Err(vote) => (vote, Vec::new()),
            Ok(Err(refusal)) => (Vote::Error(refusal), Vec::new()),
            Ok(Ok(Value::Array(fences))) => (
                Vote::Yes,
                fences.iter().map(|f| f.as_u64().unwrap_or(0)).collect(),
            ),
            Ok(Ok(Value::Integer(0))) => (Vote::Taken, Vec::new()),
            Ok(Ok(other)) => (
                Vote::Error(format!(
                    "unexpected reply to the acquisition script: {other:?}"
                )),
                Vec::new(),
            ),
        }
    }

    /// A node without its incarnation marker: if it has been up for the quarantine
    /// period, its data loss is older than any lock it granted before; mark it and go
    /// on (`None`). Otherwise it is quarantined until then, and the refusal says so.
    async fn check_incarnation(
        &self,
        deadline: Instant,
        q: &Quarantined<'_>,
    ) -> Result<Option<String>, fred::error::Error> {
        let client = self.client.with_options(&Self::options(deadline));
        let info: String = client
            .custom(
                CustomCommand::new_static("INFO", None::<u16>, false),
                vec!["server"],
            )
            .await?;
        let uptime = info
            .lines()
            .find_map(|line| line.strip_prefix("uptime_in_seconds:"))
            .and_then(|secs| secs.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::ZERO);
        // Uptime counts whole seconds: treat it as up to one second shorter.
        let up = uptime.saturating_sub(Duration::from_secs(1));
        if up >= q.period {
            let client = self.client.with_options(&Self::options(deadline));
            let _: Value = client.set(&**q.marker, "1", None, None, false).await?;
            return Ok(None);
        }
        let left = q.period - up;
        if let Ok(mut until) = self.quarantined_until.lock() {
            *until = Instant::now().checked_add(left);
        }
        Ok(Some(format!(
            "restarted without its data {uptime:?} ago: quarantined for another {left:?}"
        )))
    }

    fn quarantined_until(&self) -> Option<Instant> {
        let mut guard = self.quarantined_until.lock().ok()?;
        match *guard {
            Some(until) if until > Instant::now() => Some(until),
            Some(_) => {
                *guard = None;
                None
            }
            None => None,
        }
    }

    /// Fencing write-back: while our lock keys hold `token`, raise the counters to at
    /// least `fences`.
    pub(crate) async fn fence(&self, request: &Request, token: &str, fences: &[u64]) -> Vote {
        let mut keys: Vec<Arc<str>> = request.keys.to_vec();
        keys.extend(request.fence_keys.iter().cloned());
        let mut args = vec![Value::from(token)];
        args.extend(fences.iter().map(|f| Value::from(f.to_string())));
        yes_or_taken(
            self.bounded(|deadline| async move {
                let reply = self.eval(deadline, &FENCE, FENCE_LUA, &keys, args).await?;
                Ok(reply.as_i64() == Some(1))
            })
            .await,
        )
    }

    /// Compare-and-delete, announcing each deleted key on its release channel.
    pub(crate) async fn release(&self, keys: &[Arc<str>], token: &str) -> Vote {
        let args = vec![Value::from(token), Value::from(RELEASE_CHANNEL_PREFIX)];
        yes_or_taken(
            self.bounded(|deadline| async move {
                let reply = self
                    .eval(deadline, &RELEASE, RELEASE_LUA, keys, args)
                    .await?;
                Ok(reply.as_i64() == Some(1))
            })
            .await,
        )
    }

    /// Compare-and-delete by `EVAL` with the script's text, for removing the token of
    /// a failed attempt. It does not depend on the node's script cache: when it runs
    /// late, queued behind a SET on a node that was frozen or cut off, there is no time
    /// left to answer a `NOSCRIPT` with a reload.
    pub(crate) async fn remove(&self, keys: &[Arc<str>], token: &str) -> Vote {
        yes_or_taken(
            self.bounded(|deadline| async move {
                let client = self.client.with_options(&Self::options(deadline));
                let removed: i64 = client
                    .eval(RELEASE_LUA, fred_keys(keys), vec![Value::from(token)])
                    .await?;
                Ok(removed == 1)
            })
            .await,
        )
    }

    /// Compare-and-pexpire.
    pub(crate) async fn extend(&self, keys: &[Arc<str>], token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let args = vec![Value::from(token), Value::Integer(px)];
        yes_or_taken(
            self.bounded(|deadline| async move {
                let reply = self.eval(deadline, &EXTEND, EXTEND_LUA, keys, args).await?;
                Ok(reply.as_i64() == Some(1))
            })
            .await,
        )
    }

    /// `EVALSHA`, loading the script and trying once more when the node answers
    /// `NOSCRIPT` (a restarted or flushed node). Returns the script's reply.
    async fn eval(
        &self,
        deadline: Instant,
        script: &Script,
        lua: &'static str,
        keys: &[Arc<str>],
        args: Vec<Value>,
    ) -> Result<Value, fred::error::Error> {
        let sha = script.sha1().clone();
        let key = fred_keys(keys);
        let client = self.client.with_options(&Self::options(deadline));
        let first: Result<Value, _> = client.evalsha(sha.clone(), key.clone(), args.clone()).await;
        match first {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let client = self.client.with_options(&Self::options(deadline));
                let _: String = client.script_load(lua).await?;
                let client = self.client.with_options(&Self::options(deadline));
                client.evalsha(sha, key, args).await
            }
            other => other,
        }
    }

    /// Runs one request under the node's timeout and turns its outcome into a vote.
    ///
    /// The request's commands carry the deadline to fred, whose timeout fires first;
    /// the outer timeout, a little later, is only a backstop.
    async fn bounded<T, F, Fut>(&self, request: F) -> Result<T, Vote>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<T, fred::error::Error>>,
    {
        // fred's per-command fail-fast does not cover every command (an EVALSHA to a
        // disconnected client waited for its timeout): check the connection first.
        if !self.client.is_connected() {
            return Err(self.not_connected("the connection is down"));
        }
        let deadline = Instant::now() + self.timeout;
        let backstop = self.timeout + (self.timeout / 10).max(Duration::from_millis(5));
        let failed = match tokio::time::timeout(backstop, request(deadline)).await {
            Ok(Ok(answer)) => return Ok(answer),
            Err(_) => Vote::Timeout,
            Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Timeout => Vote::Timeout,
            Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Canceled => {
                self.not_connected(&error_message(&e))
            }
            Ok(Err(e)) => Vote::Error(error_message(&e)),
        };
        Err(failed)
    }

    /// The vote of a node that is not connected: its last connection error if known.
    fn not_connected(&self, otherwise: &str) -> Vote {
        let last = self
            .connection_error
            .lock()
            .map(|last| last.clone())
            .unwrap_or(None);
        Vote::Error(format!(
            "not connected: {}",
            last.as_deref().unwrap_or(otherwise)
        ))
    }
}

/// The floor proposed for fencing counters: this client's clock in microseconds since
/// the Unix epoch (0 if the clock is before it), taken once per attempt so that every
/// node gets the same one. Only a floor: the counters, not the clock, make the tokens
/// increase.
pub(crate) fn fencing_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The vote of a compare-and-something script: 1 is yes, anything else not ours.
fn yes_or_taken(reply: Result<bool, Vote>) -> Vote {
    match reply {
        Ok(true) => Vote::Yes,
        Ok(false) => Vote::Taken,
        Err(vote) => vote,
    }
}

/// What the restart quarantine needs for one acquisition.
pub(crate) struct Quarantined<'a> {
    /// The node's incarnation marker key (with the key prefix).
    pub(crate) marker: &'a Arc<str>,
    /// How long a node that lost its data stays out of the votes.
    pub(crate) period: Duration,
}

/// The lock keys as fred keys.
fn fred_keys(keys: &[Arc<str>]) -> Vec<Key> {
    keys.iter().map(|k| Key::from(&**k)).collect()
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    if let Ok(mut slot) = slot.lock() {
        *slot = value;
    }
}

/// The server's reply text when there is one (`WRONGTYPE ...`), else fred's message.
fn error_message(e: &fred::error::Error) -> String {
    let details = e.details();
    if details.is_empty() {
        format!("{:?}", e.kind())
    } else {
        details.to_string()
    }
}

/// `host:port` for a centralized config; fred's debug form otherwise.
pub(crate) fn server_name(config: &Config) -> Arc<str> {
    match &config.server {
        ServerConfig::Centralized { server } => server.to_string().into(),
        other => format!("{other:?}").into(),
    }
}
