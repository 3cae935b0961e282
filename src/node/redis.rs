//! A node reached through a fred client: one script call per batch, the connection's
//! events, and closing the connection fredlock opened.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::bytes_utils::Str;
use fred::prelude::{Client, ClientLike, EventInterface, Value};
use tokio::task::{AbortHandle, JoinHandle};

use super::Reply;
use super::client::{
    error_message, error_vote, is_acl_refusal, kept_in_order, load_scripts, options,
    refuses_functions, script_command,
};
use crate::quorum::Vote;
use crate::scripts::{
    CHECK_LUA, Kind, LIBRARY, LIFT_LUA, OPS, OPS_EVAL, Op, batch_args, script_args,
};

#[derive(Debug)]
pub(super) struct Redis {
    pub(super) client: Client,
    /// Why the last connection attempt failed (for example `NOAUTH ...`), until the
    /// next successful connection. A command refused because the node is not
    /// connected carries it in its vote.
    connection_error: Arc<Mutex<Option<String>>>,
    /// What sends the batches.
    sender: Sender,
    /// How many connections fred has made: the number of the current one.
    connections: Arc<AtomicU64>,
    /// The tasks that follow the client's connection events; they hold a clone of the
    /// client, so they are ended with the node.
    listeners: [AbortHandle; 2],
    /// The client's connection task, when fredlock started it.
    connection: Mutex<Option<JoinHandle<Result<(), fred::error::Error>>>>,
}

impl Redis {
    /// Must be called within a tokio runtime: it starts two small listener tasks that
    /// follow the client's connection errors and reconnections.
    pub(super) fn new(client: Client) -> Self {
        let connection_error = Arc::new(Mutex::new(None));
        let on_error = Arc::clone(&connection_error);
        let errors = client.on_error(move |(error, _)| {
            set(&on_error, Some(error_message(&error)));
            async { Ok(()) }
        });
        let on_reconnect = Arc::clone(&connection_error);
        let connections = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&connections);
        let loader = client.clone();
        let no_library = Arc::new(AtomicBool::new(false));
        let refused = Arc::clone(&no_library);
        let reconnects = client.on_reconnect(move |_| {
            set(&on_reconnect, None);
            counter.fetch_add(1, Ordering::AcqRel);
            // A restarted node without persistence has neither the library nor the
            // script: load them before the next operation needs them (fred fires this
            // on every new connection).
            tokio::spawn(load_scripts(loader.clone(), Arc::clone(&refused)));
            async { Ok(()) }
        });
        Redis {
            sender: Sender {
                client: client.clone(),
                reloading: Arc::default(),
                no_library,
            },
            client,
            connection_error,
            connections,
            listeners: [errors.abort_handle(), reconnects.abort_handle()],
            connection: Mutex::new(None),
        }
    }

    /// The number of the current connection (see `Reach::Unknown`).
    pub(super) fn connection(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    pub(super) fn connect(&self) {
        let task = self.client.connect();
        if let Ok(mut slot) = self.connection.lock() {
            *slot = Some(task);
        }
    }

    /// `QUIT` within `timeout`, then the connection task is ended whether or not the
    /// node answered (a frozen node never does).
    pub(super) fn close(&self, timeout: Duration) -> impl Future<Output = ()> + Send + 'static {
        let connection = self.connection.lock().ok().and_then(|mut slot| slot.take());
        let client = self.client.clone();
        async move {
            let _ = tokio::time::timeout(timeout, client.quit()).await;
            if let Some(connection) = connection {
                connection.abort();
            }
        }
    }

    /// Runs `ops` in one call of the batch (see [`Sender::call`]), answered by
    /// `deadline`.
    ///
    /// A call that carries a release or a removal is never dropped by fred: it stays
    /// in the connection's order, however long the connection takes to get to it,
    /// and only our wait for it ends at the deadline (fred drops a command whose own
    /// timeout fired before it was written, which left a released key on its node
    /// until its TTL). If the node has not answered by then, the call goes on in a
    /// task of its own, so that a refusal that comes late is still followed by the
    /// next command and the release still reaches the node. An acquisition riding in
    /// the same call may then run after its caller gave up; its caller counts the
    /// timeout as a vote that may have set the key and removes it in a later call,
    /// which comes after it.
    pub(super) async fn run(&self, ops: &[Arc<Op>], deadline: Instant) -> Vec<Reply> {
        if !self.client.is_connected() {
            let vote = self.not_connected("the connection is down");
            return ops.iter().map(|_| Reply::Unsent(vote.clone())).collect();
        }
        let must_run = ops.iter().any(|op| op.kind.harmless_late());
        let reply = if must_run {
            let (sender, ops) = (self.sender.clone(), ops.to_vec());
            let mut call = Box::pin(async move { sender.call(&ops, None).await });
            match tokio::time::timeout_at(deadline.into(), &mut call).await {
                Ok(reply) => reply,
                Err(_) => {
                    tokio::spawn(call);
                    Err(fred::error::Error::new(
                        fred::error::ErrorKind::Timeout,
                        "no answer within the node timeout",
                    ))
                }
            }
        } else {
            self.sender.call(ops, Some(deadline)).await
        };
        match reply {
            Ok(Value::Array(replies)) if replies.len() == ops.len() => {
                replies.into_iter().map(decode).collect()
            }
            Ok(other) => failed_all(
                ops,
                Vote::Error(format!("unexpected reply to the lock script: {other:?}")),
            ),
            Err(e) => failed_all(ops, self.failed(&e)),
        }
    }

    /// Loads the library and the script into the node (see `load_scripts`); the
    /// script's failure message.
    pub(super) async fn load(&self) -> Option<String> {
        let sender = &self.sender;
        load_scripts(sender.client.clone(), Arc::clone(&sender.no_library)).await
    }

    /// `scripts/lift.lua` on `marker` and `guard`, within `timeout`.
    pub(super) async fn lift(&self, marker: &str, guard: &str, timeout: Duration) -> Vote {
        if !self.client.is_connected() {
            return self.not_connected("the connection is down");
        }
        let client = self.client.with_options(&options(timeout, true));
        let lua = Value::String(Str::from_static(LIFT_LUA));
        let args = script_args(lua, &[marker, guard], Vec::new());
        match script_command::<Value>(&client, "EVAL", args).await {
            Ok(_) => Vote::Yes,
            Err(e) => self.failed(&e),
        }
    }

    /// Runs every command fredlock needs (`scripts/check.lua`) on `probe`, then one
    /// `EVALSHA` of the batch script. `Err((command, message))` for the first one the
    /// node's ACL denies; other failures are left to the votes of the lock rounds.
    pub(super) async fn check(
        &self,
        probe: &str,
        quarantine: bool,
        timeout: Duration,
    ) -> Result<(), (String, String)> {
        let client = self.client.with_options(&options(timeout, false));
        let args = vec![
            Value::from(crate::scripts::RELEASE_CHANNEL_PREFIX),
            Value::from(if quarantine { "1" } else { "0" }),
        ];
        let lua = Value::String(Str::from_static(CHECK_LUA));
        let reply = script_command::<Value>(&client, "EVAL", script_args(lua, &[probe], args));
        match reply.await {
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
        // A release of the probe key with a token nobody holds changes nothing.
        let keys: Arc<[Arc<str>]> = Arc::from([Arc::from(probe)]);
        let op = Arc::new(Op::release_keys(&keys, &Arc::from("fredlock-probe")));
        let sha = Value::from(OPS.sha1().clone());
        match script_command::<Value>(&client, "EVALSHA", batch_args(sha, &[op])).await {
            Err(e) if is_acl_refusal(e.details()) => {
                Err(("EVALSHA".to_string(), e.details().to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The vote of a request that failed.
    fn failed(&self, e: &fred::error::Error) -> Vote {
        match e.kind() {
            fred::error::ErrorKind::Timeout => Vote::Timeout,
            fred::error::ErrorKind::Canceled => self.not_connected(&error_message(e)),
            _ => error_vote(error_message(e)),
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

impl Drop for Redis {
    fn drop(&mut self) {
        for listener in &self.listeners {
            listener.abort();
        }
    }
}

/// What sends a node's batches: its client, and what it knows of the node's library
/// and script. A clone shares that knowledge.
#[derive(Clone, Debug)]
struct Sender {
    client: Client,
    /// Set while the library and the script are being loaded again after a call
    /// missed them.
    reloading: Arc<AtomicBool>,
    /// Set for good once the node refused the function library (no functions, an ACL
    /// that refuses `FUNCTION LOAD` or `FCALL`, a proxy that does not pass them):
    /// batches then go by `EVALSHA`.
    no_library: Arc<AtomicBool>,
}

impl Sender {
    /// Sends `ops` as one call of the batch: by `FCALL` of the function library unless
    /// the node refused it, else by `EVALSHA`. A call the node refuses before running
    /// it goes again at once by the next command that can take it
    /// ([`retry`](Self::retry)): the script's text when the library or the script is
    /// missing (a restarted or flushed node; they are loaded again in the background),
    /// and `EVALSHA` when functions are refused or the node is out of memory (a
    /// function is refused whole then, a script runs until a write that needs memory
    /// fails, so a release still deletes its key). The node runs nothing else of ours
    /// in between (one call in flight per node), so the second command keeps every
    /// operation's place in the node's order. A batch with a removal goes by `EVAL`
    /// from the start: a removal must not miss its node for want of a cache. At most
    /// three commands (`FCALL`, `EVALSHA`, `EVAL`), each bounded by `deadline`; without
    /// one (a release or a removal), each is written in its turn however late.
    async fn call(
        &self,
        ops: &[Arc<Op>],
        deadline: Option<Instant>,
    ) -> Result<Value, fred::error::Error> {
        let mut command = if ops.iter().any(|op| op.kind == Kind::Remove) {
            "EVAL"
        } else if self.no_library.load(Ordering::Acquire) {
            "EVALSHA"
        } else {
            "FCALL"
        };
        loop {
            let script = match command {
                "FCALL" => Value::String(LIBRARY.name.clone()),
                "EVALSHA" => Value::from(OPS.sha1().clone()),
                _ => Value::String(Str::from_static(OPS_EVAL)),
            };
            let reply = self.send(command, batch_args(script, ops), deadline).await;
            match &reply {
                Err(e) => match self.retry(command, e.details()) {
                    Some(next) => command = next,
                    None => return reply,
                },
                Ok(_) => return reply,
            }
        }
    }

    /// One script command: with a `deadline`, answered by then (fred's own timeout);
    /// without, written in its turn however late.
    async fn send(
        &self,
        command: &'static str,
        args: Vec<Value>,
        deadline: Option<Instant>,
    ) -> Result<Value, fred::error::Error> {
        let options = match deadline {
            Some(deadline) => options(deadline.saturating_duration_since(Instant::now()), true),
            None => kept_in_order(),
        };
        script_command(&self.client.with_options(&options), command, args).await
    }

    /// The command to send the batch by after the node answered `command` with `error`,
    /// if it refused it before running it for a reason the next one does not meet:
    /// every error matched here is given before the function or script runs, so the
    /// batch never runs twice. (This holds because the batch runs each operation under
    /// `pcall`, so no error of a command inside it ends the whole call.)
    fn retry(&self, command: &str, error: &str) -> Option<&'static str> {
        match command {
            "FCALL" if error.starts_with("ERR Function not found") => {
                self.reload_scripts();
                Some("EVAL")
            }
            "FCALL" if refuses_functions(error) => {
                self.no_library.store(true, Ordering::Release);
                Some("EVALSHA")
            }
            "FCALL" if error.starts_with("OOM") => Some("EVALSHA"),
            "EVALSHA" if error.starts_with("NOSCRIPT") => {
                self.reload_scripts();
                Some("EVAL")
            }
            _ => None,
        }
    }

    /// Loads the library and the script again in the background, once at a time
    /// however many calls missed them.
    fn reload_scripts(&self) {
        if self.reloading.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, reloading) = (self.client.clone(), Arc::clone(&self.reloading));
        let no_library = Arc::clone(&self.no_library);
        tokio::spawn(async move {
            load_scripts(client, no_library).await;
            reloading.store(false, Ordering::Release);
        });
    }
}

/// One operation's result in the script's reply.
fn decode(value: Value) -> Reply {
    match value {
        Value::Integer(n) => Reply::Int(n),
        Value::Array(list) => Reply::List(list.iter().map(|f| f.as_u64().unwrap_or(0)).collect()),
        other => match other.as_string() {
            Some(text) => match text.strip_prefix('!') {
                Some(error) => Reply::Failed(error.to_string()),
                None => Reply::Failed(format!("unexpected reply: {text}")),
            },
            None => Reply::Failed(format!("unexpected reply: {other:?}")),
        },
    }
}

fn failed_all(ops: &[Arc<Op>], vote: Vote) -> Vec<Reply> {
    ops.iter().map(|_| Reply::Vote(vote.clone())).collect()
}

fn set(slot: &Mutex<Option<String>>, value: Option<String>) {
    if let Ok(mut slot) = slot.lock() {
        *slot = value;
    }
}
