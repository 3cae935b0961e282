//! One Redis master: its fred client, the per-node timeout, and the lock scripts.
//!
//! Every method returns a [`Vote`] and never waits longer than the node's timeout: a
//! node's error or timeout is a failed vote, never an abort.

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use fred::prelude::{
    Builder, Client, ClientLike, Config, Expiration, KeysInterface, LuaInterface, Options,
    ReconnectPolicy, ServerConfig, SetOptions, Value,
};
use fred::types::scripts::Script;

use crate::quorum::Vote;

/// Compare-and-delete, see `scripts/release.lua`.
const RELEASE_LUA: &str = include_str!("scripts/release.lua");
/// Compare-and-pexpire, see `scripts/extend.lua`.
const EXTEND_LUA: &str = include_str!("scripts/extend.lua");

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::from_lua(RELEASE_LUA));
static EXTEND: LazyLock<Script> = LazyLock::new(|| Script::from_lua(EXTEND_LUA));

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
    options: Options,
}

impl Node {
    /// Wraps a client. `timeout` bounds every request made through this node.
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        let name = server_name(&client.client_config());
        let options = Options {
            // One write attempt: a command is never replayed on a new connection
            // after the lock round that sent it has been decided.
            max_attempts: Some(1),
            timeout: Some(timeout),
            // A disconnected node answers at once instead of queueing the command
            // until it reconnects.
            fail_fast: true,
            ..Options::default()
        };
        Node {
            client,
            name,
            timeout,
            options,
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
            .set_policy(ReconnectPolicy::new_constant(
                0,
                ms(settings.reconnect_delay),
            ))
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
    pub(crate) async fn acquire(&self, key: &str, token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        self.bounded(async {
            let set: Option<String> = self
                .client
                .with_options(&self.options)
                .set(
                    key,
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

    /// Compare-and-delete.
    pub(crate) async fn release(&self, key: &str, token: &str) -> Vote {
        let args = vec![Value::from(token)];
        self.bounded(self.eval(&RELEASE, RELEASE_LUA, key, args))
            .await
    }

    /// Compare-and-pexpire.
    pub(crate) async fn extend(&self, key: &str, token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        let args = vec![Value::from(token), Value::Integer(px)];
        self.bounded(self.eval(&EXTEND, EXTEND_LUA, key, args))
            .await
    }

    /// `EVALSHA`, loading the script and trying once more when the node answers
    /// `NOSCRIPT` (a restarted or flushed node). Returns whether the script returned 1.
    async fn eval(
        &self,
        script: &Script,
        lua: &'static str,
        key: &str,
        args: Vec<Value>,
    ) -> Result<bool, fred::error::Error> {
        let client = self.client.with_options(&self.options);
        let sha = script.sha1().clone();
        let first: Result<i64, _> = client.evalsha(sha.clone(), key, args.clone()).await;
        let done = match first {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                let _: String = client.script_load(lua).await?;
                client.evalsha(sha, key, args).await?
            }
            other => other?,
        };
        Ok(done == 1)
    }

    /// Runs one request under the node's timeout and turns its outcome into a vote.
    async fn bounded<F>(&self, request: F) -> Vote
    where
        F: Future<Output = Result<bool, fred::error::Error>>,
    {
        match tokio::time::timeout(self.timeout, request).await {
            Err(_) => Vote::Timeout,
            Ok(Err(e)) if *e.kind() == fred::error::ErrorKind::Timeout => Vote::Timeout,
            Ok(Err(e)) => Vote::Error(error_message(&e)),
            Ok(Ok(true)) => Vote::Yes,
            Ok(Ok(false)) => Vote::Taken,
        }
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
