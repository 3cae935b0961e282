//! One Redis master: its fred client, the per-node timeout, and the lock scripts.
//!
//! Every method returns a [`Vote`] and never waits longer than the node's timeout: a
//! node's error or timeout is a failed vote, never an abort.

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, Expiration, Key, KeysInterface,
    LuaInterface, Options, ReconnectPolicy, ServerConfig, SetOptions, Value,
};
use fred::types::scripts::Script;

use crate::quorum::Vote;

/// Compare-and-delete, see `scripts/release.lua`.
const RELEASE_LUA: &str = include_str!("scripts/release.lua");
/// A released key is announced on this prefix followed by the key, so that clients
/// waiting for it retry at once instead of at their next polling time.
pub(crate) const RELEASE_CHANNEL_PREFIX: &str = "fredlock:released:";

/// All-or-nothing acquisition of several keys, see `scripts/acquire.lua`.
const ACQUIRE_LUA: &str = include_str!("scripts/acquire.lua");
/// Compare-and-pexpire, see `scripts/extend.lua`.
const EXTEND_LUA: &str = include_str!("scripts/extend.lua");

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RELEASE_LUA));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(EXTEND_LUA));
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(ACQUIRE_LUA));

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

    /// `SET key token NX PX ttl_ms`.
    pub(crate) async fn acquire(&self, keys: &[Arc<str>], token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let [key] = keys else {
            // Several resources: all or nothing, in one script.
            let args = vec![Value::from(token), Value::Integer(px)];
            return self
                .bounded(|deadline| self.eval(deadline, &ACQUIRE, ACQUIRE_LUA, keys, args))
                .await;
        };
        self.bounded(|deadline| async move {
            let set: Option<String> = self
                .client
                .with_options(&Self::options(deadline))
                .set(
                    &**key,
                    token,
                    Some(Expiration::PX(px)),
                    Some(SetOptions::NX),
                    false,
                )
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Compare-and-delete, announcing each deleted key on its release channel.
    pub(crate) async fn release(&self, keys: &[Arc<str>], token: &str) -> Vote {
        let args = vec![Value::from(token), Value::from(RELEASE_CHANNEL_PREFIX)];
        self.bounded(|deadline| self.eval(deadline, &RELEASE, RELEASE_LUA, keys, args))
            .await
    }

    /// Compare-and-delete by `EVAL` with the script's text, for removing the token of
    /// a failed attempt. It does not depend on the node's script cache: when it runs
    /// late, queued behind a SET on a node that was frozen or cut off, there is no time
    /// left to answer a `NOSCRIPT` with a reload.
    pub(crate) async fn remove(&self, keys: &[Arc<str>], token: &str) -> Vote {
        self.bounded(|deadline| async move {
            let client = self.client.with_options(&Self::options(deadline));
            let removed: i64 = client
                .eval(RELEASE_LUA, fred_keys(keys), vec![Value::from(token)])
                .await?;
            Ok(removed == 1)
        })
        .await
    }

    /// Compare-and-pexpire.
    pub(crate) async fn extend(&self, keys: &[Arc<str>], token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let args = vec![Value::from(token), Value::Integer(px)];
        self.bounded(|deadline| self.eval(deadline, &EXTEND, EXTEND_LUA, keys, args))
            .await
    }

    /// `EVALSHA`, loading the script and trying once more when the node answers
    /// `NOSCRIPT` (a restarted or flushed node). Returns whether the script returned 1.
    async fn eval(
        &self,
        deadline: Instant,
        script: &Script,
        lua: &'static str,
        keys: &[Arc<str>],
        args: Vec<Value>,
    ) -> Result<bool, fred::error::Error> {
        let sha = script.sha1().clone();
        let key = fred_keys(keys);
        let client = self.client.with_options(&Self::options(deadline));
        let first: Result<i64, _> = client.evalsha(sha.clone(), key.clone(), args.clone()).await;
        let done = match first {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let client = self.client.with_options(&Self::options(deadline));
                let _: String = client.script_load(lua).await?;
                let client = self.client.with_options(&Self::options(deadline));
                client.evalsha(sha, key, args).await?
            }
            other => other?,
        };
        Ok(done == 1)
    }

    /// Runs one request under the node's timeout and turns its outcome into a vote.
    ///
    /// The request's commands carry the deadline to fred, whose timeout fires first;
    /// the outer timeout, a little later, is only a backstop.
    async fn bounded<F, Fut>(&self, request: F) -> Vote
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = Result<bool, fred::error::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        let backstop = self.timeout + (self.timeout / 10).max(Duration::from_millis(5));
        match tokio::time::timeout(backstop, request(deadline)).await {
            Err(_) => Vote::Timeout,
            Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Timeout => Vote::Timeout,
            Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Canceled => {
                let last = self
                    .connection_error
                    .lock()
                    .map(|last| last.clone())
                    .unwrap_or(None);
                match last {
                    Some(cause) => Vote::Error(format!("not connected: {cause}")),
                    None => Vote::Error(error_message(&e)),
                }
            }
            Ok(Err(e)) => Vote::Error(error_message(&e)),
            Ok(Ok(true)) => Vote::Yes,
            Ok(Ok(false)) => Vote::Taken,
        }
    }
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
