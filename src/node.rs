//! One Redis master: its fred client, the per-node timeout, and the lock scripts.
//!
//! Every method returns a [`Vote`] and never waits longer than the node's timeout: a
//! node's error or timeout is a failed vote, never an abort.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use fred::clients::WithOptions;
use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, Key, LuaInterface, Options,
    ReconnectPolicy, ServerConfig, Value,
};
use fred::types::scripts::Script;

use crate::quorum::Vote;
use crate::redlock::{MAX_TTL, Request};

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

/// The bound on loading the scripts into a node, in the background.
const SCRIPT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// Set while the scripts are being loaded again after a `NOSCRIPT`.
    reloading: Arc<AtomicBool>,
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
        let loader = client.clone();
        drop(client.on_reconnect(move |_| {
            set(&on_reconnect, None);
            // A restarted node has an empty script cache: fill it before the next
            // acquisition needs it (fred fires this on every new connection).
            tokio::spawn(load_scripts(loader.clone()));
            async { Ok(()) }
        }));
        Node {
            client,
            name,
            timeout,
            connection_error,
            quarantined_until: Mutex::new(None),
            reloading: Arc::default(),
        }
    }

    /// Per-command options for a request that must end by `deadline`.
    ///
    /// fred's command timeout is the only one around a request: when it fires it marks
    /// the command as timed out, so fred never writes it later from its retry buffer
    /// after a reconnection (a SET replayed that way would set a key that nobody
    /// removes). So a request's future must be polled until it ends.
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

    /// The acquisition script, one `EVALSHA`: all-or-nothing `SET NX PX` of the
    /// request's keys, raising their fencing counters, and with the restart quarantine
    /// on, the check of the node's incarnation marker. Returns the vote and, on `Yes`,
    /// the raised counters.
    ///
    /// It is always exactly one command, never followed by another: the round hands out
    /// the lock once every node's acquisition is on its connection, so a release sent
    /// next is queued behind it. A node that answers `NOSCRIPT` (restarted or flushed)
    /// votes no for this attempt and reloads the scripts in the background.
    pub(crate) async fn acquire(&self, call: &AcquireCall) -> (Vote, Vec<u64>) {
        if let Some(until) = self.quarantined_until() {
            return (
                Vote::Error(format!(
                    "quarantined after a restart for another {:?}",
                    until.saturating_duration_since(Instant::now())
                )),
                Vec::new(),
            );
        }
        let client = match self.request_client() {
            Ok(client) => client,
            Err(vote) => return (vote, Vec::new()),
        };
        let reply: Result<Value, _> = client
            .evalsha(ACQUIRE.sha1().clone(), call.keys.clone(), call.args.clone())
            .await;
        let vote = match reply {
            Ok(Value::Array(fences)) => {
                return (
                    Vote::Yes,
                    fences.iter().map(|f| f.as_u64().unwrap_or(0)).collect(),
                );
            }
            Ok(Value::Integer(0)) => Vote::Taken,
            Ok(other) => Vote::Error(format!(
                "unexpected reply to the acquisition script: {other:?}"
            )),
            Err(e) => {
                let details = e.details();
                if let Some(refusal) = details.strip_prefix("QUARANTINED ") {
                    Vote::Error(self.quarantine(refusal))
                } else if details.starts_with("NOSCRIPT") {
                    self.reload_scripts();
                    Vote::Error(
                        "NOSCRIPT: the node lost its scripts (restarted or flushed); \
                         reloading them for the next attempt"
                            .to_string(),
                    )
                } else {
                    self.failed(&e)
                }
            }
        };
        (vote, Vec::new())
    }

    /// Loads the scripts again in the background, once at a time however many requests
    /// met `NOSCRIPT`.
    fn reload_scripts(&self) {
        if self.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, reloading) = (self.client.clone(), Arc::clone(&self.reloading));
        tokio::spawn(async move {
            load_scripts(client).await;
            reloading.store(false, Ordering::Release);
        });
    }

    /// Remembers a node that refused an acquisition with `QUARANTINED <ms left>
    /// <uptime s>`, so that it is not asked again before then. Returns the vote's
    /// message.
    fn quarantine(&self, refusal: &str) -> String {
        let Some((left, uptime)) = parse_quarantine(refusal) else {
            return format!("quarantined after a restart: {refusal}");
        };
        if let Ok(mut until) = self.quarantined_until.lock() {
            *until = Instant::now().checked_add(left);
        }
        format!("restarted without its data {uptime:?} ago: quarantined for another {left:?}")
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
        self.compare(&FENCE, FENCE_LUA, || {
            let mut keys = fred_keys(&request.keys);
            keys.extend(request.fence_keys.iter().map(|k| Key::from(&**k)));
            let mut args = vec![Value::from(token)];
            args.extend(fences.iter().map(|f| Value::from(f.to_string())));
            (keys, args)
        })
        .await
    }

    /// Compare-and-delete, announcing each deleted key on its release channel.
    pub(crate) async fn release(&self, keys: &[Arc<str>], token: &str) -> Vote {
        self.compare(&RELEASE, RELEASE_LUA, || {
            let args = vec![Value::from(token), Value::from(RELEASE_CHANNEL_PREFIX)];
            (fred_keys(keys), args)
        })
        .await
    }

    /// Compare-and-delete by `EVAL` with the script's text, for removing the token of
    /// a failed attempt. It does not depend on the node's script cache: when it runs
    /// late, queued behind a SET on a node that was frozen or cut off, there is no time
    /// left to answer a `NOSCRIPT` with a reload.
    pub(crate) async fn remove(&self, keys: &[Arc<str>], token: &str) -> Vote {
        let client = match self.request_client() {
            Ok(client) => client,
            Err(vote) => return vote,
        };
        let removed: Result<i64, _> = client
            .eval(RELEASE_LUA, fred_keys(keys), vec![Value::from(token)])
            .await;
        match removed {
            Ok(1) => Vote::Yes,
            Ok(_) => Vote::Taken,
            Err(e) => self.failed(&e),
        }
    }

    /// Compare-and-pexpire.
    pub(crate) async fn extend(&self, keys: &[Arc<str>], token: &str, ttl_ms: u64) -> Vote {
        let px = i64::try_from(ttl_ms).unwrap_or(i64::MAX);
        self.compare(&EXTEND, EXTEND_LUA, || {
            (
                fred_keys(keys),
                vec![Value::from(token), Value::Integer(px)],
            )
        })
        .await
    }

    /// Runs a compare-and-something script (1: done on every key, else not ours) by
    /// `EVALSHA`, within the node's timeout. A node that answers `NOSCRIPT` (restarted
    /// or flushed) gets the script's text by `EVAL` at once, and its scripts are loaded
    /// again in the background. A second command is harmless here: these scripts
    /// only act on keys holding our token.
    async fn compare<F>(&self, script: &Script, lua: &'static str, call: F) -> Vote
    where
        F: Fn() -> (Vec<Key>, Vec<Value>),
    {
        if !self.client.is_connected() {
            return self.not_connected("the connection is down");
        }
        let deadline = Instant::now() + self.timeout;
        let client = self.client.with_options(&Self::options(deadline));
        let (keys, args) = call();
        let mut reply: Result<i64, _> = client.evalsha(script.sha1().clone(), keys, args).await;
        if matches!(&reply, Err(e) if e.details().starts_with("NOSCRIPT")) {
            self.reload_scripts();
            let client = self.client.with_options(&Self::options(deadline));
            let (keys, args) = call();
            reply = client.eval(lua, keys, args).await;
        }
        match reply {
            Ok(1) => Vote::Yes,
            Ok(_) => Vote::Taken,
            Err(e) => self.failed(&e),
        }
    }

    /// A client for one request, carrying the node's timeout (see
    /// [`options`](Node::options)), or the vote of a node that is not connected.
    fn request_client(&self) -> Result<WithOptions<Client>, Vote> {
        // fred's per-command fail-fast does not cover every command (an EVALSHA to a
        // disconnected client waited for its timeout): check the connection first.
        if !self.client.is_connected() {
            return Err(self.not_connected("the connection is down"));
        }
        Ok(self
            .client
            .with_options(&Self::options(Instant::now() + self.timeout)))
    }

    /// The vote of a request that failed.
    fn failed(&self, e: &fred::error::Error) -> Vote {
        match e.kind() {
            fred::error::ErrorKind::Timeout => Vote::Timeout,
            fred::error::ErrorKind::Canceled => self.not_connected(&error_message(e)),
            _ => Vote::Error(error_message(e)),
        }
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

/// The time left and the uptime in the acquisition script's refusal
/// `QUARANTINED <ms left> <uptime s>` (without its first word).
fn parse_quarantine(refusal: &str) -> Option<(Duration, Duration)> {
    let mut parts = refusal.split(' ').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(left_ms)), Some(Ok(uptime)), None) => {
            Some((Duration::from_millis(left_ms), Duration::from_secs(uptime)))
        }
        _ => None,
    }
}

/// Loads the lock scripts into the node's script cache, so that `EVALSHA` finds them.
/// Failures are only logged: a node without its scripts answers `NOSCRIPT`, which costs
/// it one vote and loads them again.
pub(crate) async fn load_scripts(client: Client) {
    let options = Options {
        max_attempts: Some(1),
        timeout: Some(SCRIPT_LOAD_TIMEOUT),
        ..Options::default()
    };
    let client = client.with_options(&options);
    let loads = [ACQUIRE_LUA, RELEASE_LUA, EXTEND_LUA, FENCE_LUA].map(|lua| {
        let client = &client;
        async move { client.script_load::<String, _>(lua).await }
    });
    for outcome in futures::future::join_all(loads).await {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "loading the lock scripts failed");
        }
    }
}

/// One attempt's acquisition script call, built once and sent to every node.
pub(crate) struct AcquireCall {
    keys: Vec<Key>,
    args: Vec<Value>,
}

impl AcquireCall {
    /// The call for `request` with `token`: `quarantine` is the restart quarantine
    /// period with the marker key, if it is on.
    pub(crate) fn new(
        request: &Request,
        token: &str,
        fencing_floor: u64,
        quarantine: Option<(&str, Duration)>,
    ) -> Self {
        let n = request.keys.len();
        let mut keys = Vec::with_capacity(2 * n + 1);
        keys.extend(request.keys.iter().map(|k| Key::from(&**k)));
        keys.extend(request.fence_keys.iter().map(|k| Key::from(&**k)));
        let period_ms = match quarantine {
            Some((marker, period)) => {
                keys.push(Key::from(marker));
                // No lock outlives MAX_TTL, so a longer period means no more; capped,
                // it stays exact in Lua's doubles.
                i64::try_from(period.min(MAX_TTL).as_millis()).unwrap_or(i64::MAX)
            }
            None => -1,
        };
        let args = vec![
            Value::from(token),
            Value::Integer(i64::try_from(request.ttl_ms).unwrap_or(i64::MAX)),
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
            Value::Integer(period_ms),
            Value::from(fencing_floor.to_string()),
        ];
        AcquireCall { keys, args }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_refusals_parse_or_are_kept_as_text() {
        assert_eq!(
            parse_quarantine("2650 3"),
            Some((Duration::from_millis(2650), Duration::from_secs(3)))
        );
        assert_eq!(parse_quarantine("2650"), None);
        assert_eq!(parse_quarantine("2650 3 4"), None);
        assert_eq!(parse_quarantine("-1 3"), None);
        assert_eq!(parse_quarantine("soon 3"), None);
    }
}
