//! One Redis master: its fred client, the per-node timeout, and the lock scripts.
//!
//! Every method returns a [`Vote`] and never waits longer than the node's timeout: a
//! node's error or timeout is a failed vote, never an abort.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use tokio::task::{AbortHandle, JoinHandle};

use fred::bytes_utils::Str;
use fred::clients::WithOptions;
use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, FromValue, Key, Options, ReconnectPolicy,
    ServerConfig, Value,
};
use fred::types::CustomCommand;
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
/// Lifting the restart quarantine, see `scripts/lift.lua`.
const LIFT_LUA: &str = include_str!("scripts/lift.lua");
/// The permission check of `build()`, see `scripts/check.lua`.
const CHECK_LUA: &str = include_str!("scripts/check.lua");

/// The bound on loading the scripts into a node, in the background.
pub(crate) const SCRIPT_LOAD_TIMEOUT: Duration = Duration::from_secs(2);

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
    /// The tasks that follow the client's connection events; they hold a clone of the
    /// client, so they are ended with the node.
    listeners: [AbortHandle; 2],
    /// The client's connection task, when fredlock started it (see
    /// [`connect`](Node::connect)).
    connection: Mutex<Option<JoinHandle<Result<(), fred::error::Error>>>>,
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
        let errors = client.on_error(move |(error, _)| {
            set(&on_error, Some(error_message(&error)));
            async { Ok(()) }
        });
        let on_reconnect = Arc::clone(&connection_error);
        let loader = client.clone();
        let reconnects = client.on_reconnect(move |_| {
            set(&on_reconnect, None);
            // A restarted node has an empty script cache: fill it before the next
            // acquisition needs it (fred fires this on every new connection). Bounded
            // by the script load timeout.
            tokio::spawn(load_scripts(loader.clone()));
            async { Ok(()) }
        });
        Node {
            client,
            name,
            timeout,
            connection_error,
            quarantined_until: Mutex::new(None),
            reloading: Arc::default(),
            listeners: [errors.abort_handle(), reconnects.abort_handle()],
            connection: Mutex::new(None),
        }
    }

    /// Starts the client's connection task (for a client fredlock created), kept so
    /// that [`close`](Node::close) can end it.
    pub(crate) fn connect(&self) {
        let task = self.client.connect();
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(task);
        }
    }

    /// [`close`](Node::close) in the background, for `Drop`; outside a runtime there
    /// is no task left to end.
    pub(crate) fn close_in_background(&self, timeout: Duration) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.close(timeout));
        }
    }

    /// Closes a client fredlock created: `QUIT` within `timeout`, then the connection
    /// task is ended whether or not the node answered (a frozen node never does).
    pub(crate) fn close(&self, timeout: Duration) -> impl Future<Output = ()> + Send + 'static {
        let connection = self.connection.lock().ok().and_then(|mut slot| slot.take());
        let client = self.client.clone();
        async move {
            let _ = tokio::time::timeout(timeout, client.quit()).await;
            if let Some(connection) = connection {
                connection.abort();
            }
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
        let reply: Result<Value, _> = script_command(&client, "EVALSHA", call.args.clone()).await;
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
                } else if let Some(index) = details.strip_prefix("FENCE_EXHAUSTED ") {
                    Vote::Error(format!(
                        "the fencing counter of resource {index} reached 2^53 - 1, the \
                         largest a Lua number counts exactly: no larger token can be \
                         made until the counter expires"
                    ))
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

    /// Remembers a node that refused an acquisition with `QUARANTINED <ms left>`, so
    /// that it is not asked again before then. Returns the vote's message.
    fn quarantine(&self, refusal: &str) -> String {
        let Some(left) = parse_quarantine(refusal) else {
            return format!("quarantined after a lost or changed incarnation: {refusal}");
        };
        if let Ok(mut until) = self.quarantined_until.lock() {
            *until = Instant::now().checked_add(left);
        }
        format!(
            "quarantined for another {left:?}: the node lost or changed its data \
             (restart, flush, failover) and may have forgotten locks it granted"
        )
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
    /// least `fences`, keeping them for the TTL plus `retention`.
    pub(crate) async fn fence(
        &self,
        request: &Request,
        token: &str,
        fences: &[u64],
        retention: Duration,
    ) -> Vote {
        let keep = ms_arg(request.ttl_ms).saturating_add(duration_arg(retention));
        self.compare(&FENCE, FENCE_LUA, || {
            let mut args = vec![Value::from(token), Value::Integer(keep)];
            args.extend(fences.iter().map(|f| Value::from(f.to_string())));
            (lock_and_fence_keys(request), args)
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
        let removed: Result<i64, _> = eval(
            &client,
            RELEASE_LUA,
            fred_keys(keys),
            vec![Value::from(token)],
        )
        .await;
        match removed {
            Ok(1) => Vote::Yes,
            Ok(_) => Vote::Taken,
            Err(e) => self.failed(&e),
        }
    }

    /// Compare-and-pexpire of the lock keys to `request.ttl_ms`; the fencing counters
    /// are kept for that plus `retention`.
    pub(crate) async fn extend(&self, request: &Request, token: &str, retention: Duration) -> Vote {
        let (px, retention) = (ms_arg(request.ttl_ms), duration_arg(retention));
        self.compare(&EXTEND, EXTEND_LUA, || {
            let args = vec![
                Value::from(token),
                Value::Integer(px),
                Value::Integer(retention),
            ];
            (lock_and_fence_keys(request), args)
        })
        .await
    }

    /// Lifts the restart quarantine on this node (`scripts/lift.lua`): records its
    /// current incarnation in `marker` and deletes `guard`.
    pub(crate) async fn lift(&self, marker: &str, guard: &str) -> Vote {
        let client = match self.request_client() {
            Ok(client) => client,
            Err(vote) => return vote,
        };
        let keys = vec![Key::from(marker), Key::from(guard)];
        let reply: Result<Value, _> = eval(&client, LIFT_LUA, keys, Vec::new()).await;
        match reply {
            Ok(_) => {
                if let Ok(mut until) = self.quarantined_until.lock() {
                    *until = None;
                }
                Vote::Yes
            }
            Err(e) => self.failed(&e),
        }
    }

    /// Runs every command fredlock needs on this node (`scripts/check.lua`), within
    /// `timeout`. `Err((command, message))` for the first one the node's ACL denies;
    /// other failures (a node that is read-only, out of memory, slow) are left to the
    /// votes of the lock rounds.
    pub(crate) async fn check(
        &self,
        probe: &str,
        quarantine: bool,
        timeout: Duration,
    ) -> Result<(), (String, String)> {
        let options = Options {
            max_attempts: Some(1),
            timeout: Some(timeout),
            ..Options::default()
        };
        let client = self.client.with_options(&options);
        let args = vec![
            Value::from(RELEASE_CHANNEL_PREFIX),
            Value::from(if quarantine { "1" } else { "0" }),
        ];
        let reply: Result<Value, _> = eval(&client, CHECK_LUA, vec![Key::from(probe)], args).await;
        match reply {
            Ok(Value::Array(refused)) => {
                if let [command, message] = refused.as_slice() {
                    let message = message.as_string().unwrap_or_default();
                    if is_acl_refusal(&message) {
                        return Err((command.as_string().unwrap_or_default(), message));
                    }
                }
            }
            Err(e) if is_acl_refusal(e.details()) => {
                return Err(("EVAL".to_string(), e.details().to_string()));
            }
            _ => {}
        }
        // Every lock round runs its script by EVALSHA: a compare-and-delete of the probe
        // key with a token nobody holds changes nothing.
        let keys = vec![Key::from(probe)];
        let reply: Result<Value, _> =
            evalsha(&client, &RELEASE, keys, vec![Value::from("fredlock-probe")]).await;
        match reply {
            Err(e) if is_acl_refusal(e.details()) => {
                Err(("EVALSHA".to_string(), e.details().to_string()))
            }
            _ => Ok(()),
        }
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
        let mut reply: Result<i64, _> = evalsha(&client, script, keys, args).await;
        if matches!(&reply, Err(e) if e.details().starts_with("NOSCRIPT")) {
            self.reload_scripts();
            let client = self.client.with_options(&Self::options(deadline));
            let (keys, args) = call();
            reply = eval(&client, lua, keys, args).await;
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
        // A node known to be disconnected votes at once, without a request.
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
            _ if is_acl_refusal(e.details()) => Vote::Error(format!(
                "{}: the node's ACL refuses a command fredlock's scripts use (EVAL, EVALSHA, \
                 SCRIPT LOAD, SET, GET, EXISTS, PTTL, PEXPIRE, DEL, PUBLISH, and INFO for the \
                 restart quarantine)",
                error_message(e)
            )),
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

impl Drop for Node {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// The floor proposed for fencing counters: this client's clock in microseconds since
/// the Unix epoch (0 if the clock is before it), taken once per attempt so that every
/// node gets the same one, and at most [`MAX_FENCING_FLOOR`]. Only a floor: the
/// counters, not the clock, make the tokens increase.
pub(crate) fn fencing_floor() -> u64 {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    clamp_floor(micros)
}

/// The largest fencing floor sent: 2^53 - 2^40. Lua's numbers are doubles, exact up to
/// 2^53; a clock far in the future (past the year 2250) is held here, leaving 2^40
/// increments below the limit where the script refuses to count further.
pub(crate) const MAX_FENCING_FLOOR: u64 = (1 << 53) - (1 << 40);

fn clamp_floor(micros: u64) -> u64 {
    micros.min(MAX_FENCING_FLOOR)
}

/// Whether a reply is an ACL refusal: `NOPERM ...` for a command sent directly, and
/// Redis's message for a command a script called.
pub(crate) fn is_acl_refusal(message: &str) -> bool {
    message.starts_with("NOPERM") || message.contains("user executing the script can't run")
}

/// The time left in the acquisition script's refusal `QUARANTINED <ms left>` (without
/// its first word).
fn parse_quarantine(refusal: &str) -> Option<Duration> {
    refusal
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

/// `EVALSHA` of `script` through `client`, with the client's per-command options.
async fn evalsha<R: FromValue>(
    client: &WithOptions<Client>,
    script: &Script,
    keys: Vec<Key>,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    let sha = Value::from(script.sha1().clone());
    script_command(client, "EVALSHA", script_args(sha, keys, args)).await
}

/// `EVAL` of `lua` through `client`, with the client's per-command options.
async fn eval<R: FromValue>(
    client: &WithOptions<Client>,
    lua: &'static str,
    keys: Vec<Key>,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    // The script's text as a static string: no copy per request.
    let lua = Value::String(Str::from_static(lua));
    script_command(client, "EVAL", script_args(lua, keys, args)).await
}

/// `script numkeys key... arg...`, the arguments of `EVAL` and `EVALSHA`.
fn script_args(script: Value, keys: Vec<Key>, args: Vec<Value>) -> Vec<Value> {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script);
    all.push(Value::Integer(
        i64::try_from(keys.len()).unwrap_or(i64::MAX),
    ));
    all.extend(keys.into_iter().map(Value::from));
    all.extend(args);
    all
}

/// A script command sent as a custom command. fred 10.1 implements its Lua methods
/// (`eval`, `evalsha`, `script_load`) for `Client` but not for `WithOptions`, so
/// calling them on a `WithOptions` reaches the plain client through `Deref` and drops
/// the request's timeout, attempt count and fail-fast; a custom command keeps them.
async fn script_command<R: FromValue>(
    client: &WithOptions<Client>,
    command: &'static str,
    args: Vec<Value>,
) -> Result<R, fred::error::Error> {
    client
        .custom(CustomCommand::new_static(command, None::<u16>, false), args)
        .await
}

/// Loads the lock scripts into the node's script cache, so that `EVALSHA` finds them.
/// Returns the first failure's message; a node without its scripts answers `NOSCRIPT`,
/// which costs it one vote and loads them again.
pub(crate) async fn load_scripts(client: Client) -> Option<String> {
    let options = Options {
        max_attempts: Some(1),
        timeout: Some(SCRIPT_LOAD_TIMEOUT),
        ..Options::default()
    };
    let client = client.with_options(&options);
    let loads = [ACQUIRE_LUA, RELEASE_LUA, EXTEND_LUA, FENCE_LUA].map(|lua| {
        let client = &client;
        async move {
            let args = vec![Value::from("LOAD"), Value::from(lua)];
            script_command::<String>(client, "SCRIPT", args).await
        }
    });
    let mut first = None;
    for outcome in futures::future::join_all(loads).await {
        if let Err(e) = outcome {
            tracing::debug!(error = %e, "loading the lock scripts failed");
            first.get_or_insert_with(|| error_message(&e));
        }
    }
    first
}

/// One attempt's acquisition script call, built once and sent to every node.
pub(crate) struct AcquireCall {
    /// The `EVALSHA` arguments: the script's digest, the keys, the script's arguments.
    args: Vec<Value>,
}

impl AcquireCall {
    /// The call for `request` with `token`: `quarantine` is the restart quarantine
    /// period with the marker and guard keys, if it is on; `retention` is how long a
    /// fencing counter outlives the lock.
    pub(crate) fn new(
        request: &Request,
        token: &str,
        fencing_floor: u64,
        quarantine: Option<(&str, &str, Duration)>,
        retention: Duration,
    ) -> Self {
        let n = request.keys.len();
        let mut keys = Vec::with_capacity(2 * n + 2);
        keys.extend(request.keys.iter().map(|k| Key::from(&**k)));
        keys.extend(request.fence_keys.iter().map(|k| Key::from(&**k)));
        let period_ms = match quarantine {
            Some((marker, guard, period)) => {
                keys.push(Key::from(marker));
                keys.push(Key::from(guard));
                duration_arg(period)
            }
            None => -1,
        };
        let args = vec![
            Value::from(token),
            Value::Integer(ms_arg(request.ttl_ms)),
            Value::Integer(i64::try_from(n).unwrap_or(i64::MAX)),
            Value::Integer(period_ms),
            Value::from(fencing_floor.to_string()),
            Value::Integer(duration_arg(retention)),
        ];
        let sha = Value::from(ACQUIRE.sha1().clone());
        AcquireCall {
            args: script_args(sha, keys, args),
        }
    }
}

/// Milliseconds for a script argument. Every duration fredlock sends is at most
/// [`MAX_TTL`] (2^40 ms), or a sum of two such: exact in Lua's doubles.
fn ms_arg(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

fn duration_arg(d: Duration) -> i64 {
    ms_arg(u64::try_from(d.min(MAX_TTL).as_millis()).unwrap_or(u64::MAX))
}

/// The lock keys, then the fencing-counter keys.
fn lock_and_fence_keys(request: &Request) -> Vec<Key> {
    let mut keys = fred_keys(&request.keys);
    keys.extend(request.fence_keys.iter().map(|k| Key::from(&**k)));
    keys
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

/// The server's reply text when there is one (`WRONGTYPE ...`), else fred's message;
/// an I/O error as its text.
pub(crate) fn error_message(e: &fred::error::Error) -> String {
    let details = e.details();
    if details.is_empty() {
        format!("{:?}", e.kind())
    } else if *e.kind() == fred::error::ErrorKind::IO {
        io_text(details)
    } else {
        details.to_string()
    }
}

/// fred keeps an I/O error as its debug form (`Os { code: 111, kind:
/// ConnectionRefused, message: "Connection refused" }`); this gives it as
/// `std::io::Error` displays it (`Connection refused (os error 111)`), and anything
/// else unchanged.
fn io_text(debug: &str) -> String {
    let field = |name: &str| {
        let start = debug.find(name)? + name.len();
        let rest = &debug[start..];
        let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim_matches('"'))
    };
    let message = debug.find("message: \"").and_then(|start| {
        let rest = &debug[start + "message: \"".len()..];
        rest.find('"').map(|end| &rest[..end])
    });
    match (message, field("code: ")) {
        (Some(message), Some(code)) if debug.starts_with("Os {") => {
            format!("{message} (os error {code})")
        }
        (Some(message), _) => message.to_string(),
        _ => match debug.find("error: \"") {
            Some(start) => {
                let rest = &debug[start + "error: \"".len()..];
                rest.split('"').next().unwrap_or(rest).to_string()
            }
            None => debug.to_string(),
        },
    }
}

/// `host:port` for a centralized config; for the others (refused by the builder), their
/// kind and hosts, never their credentials.
pub(crate) fn server_name(config: &Config) -> Arc<str> {
    let hosts = |hosts: &[fred::types::config::Server]| {
        hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match &config.server {
        ServerConfig::Centralized { server } => server.to_string().into(),
        ServerConfig::Clustered { hosts: list, .. } => format!("cluster at {}", hosts(list)).into(),
        ServerConfig::Sentinel {
            hosts: list,
            service_name,
            ..
        } => format!("sentinel service `{service_name}` at {}", hosts(list)).into(),
        #[allow(unreachable_patterns)]
        _ => "a non-TCP server".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quarantine_refusals_parse_or_are_kept_as_text() {
        assert_eq!(parse_quarantine("2650"), Some(Duration::from_millis(2650)));
        assert_eq!(parse_quarantine("2650 3"), None);
        assert_eq!(parse_quarantine("-1"), None);
        assert_eq!(parse_quarantine("soon"), None);
    }

    #[test]
    fn the_fencing_floor_stays_exact_in_lua() {
        assert_eq!(clamp_floor(1_700_000_000_000_000), 1_700_000_000_000_000);
        assert_eq!(clamp_floor(1 << 53), MAX_FENCING_FLOOR);
        assert_eq!(clamp_floor(u64::MAX), MAX_FENCING_FLOOR);
        // The floor and every increment up to the script's limit are exact doubles.
        assert_eq!((MAX_FENCING_FLOOR as f64) as u64, MAX_FENCING_FLOOR);
        assert!(fencing_floor() <= MAX_FENCING_FLOOR);
    }

    #[test]
    fn io_errors_read_as_text() {
        assert_eq!(
            io_text(r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#),
            "Connection refused (os error 111)"
        );
        assert_eq!(
            io_text(r#"Custom { kind: InvalidData, error: "bad frame" }"#),
            "bad frame"
        );
        assert_eq!(io_text("Kind(UnexpectedEof)"), "Kind(UnexpectedEof)");
    }
}
