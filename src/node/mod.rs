//! One Redis master behind a single seam: [`Node::call`] runs one of fredlock's
//! operations on it and returns that operation's [`Answer`], never later than the
//! node's timeout. A node's error or timeout is a failed vote, never an abort.
//!
//! Behind the seam: the group commit of [`batch`] (operations that meet a call in
//! flight go out together in the next one), the backend that runs a batch (a fred
//! client, or in unit tests an in-memory node), the memory of a quarantine the node
//! reported, and the reading of the script's per-operation replies.

mod batch;
mod client;
#[cfg(test)]
pub(crate) mod memory;
mod redis;
mod resend;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::{Client, ClientLike};
use tokio::sync::watch;

pub(crate) use client::{
    SCRIPT_LOAD_TIMEOUT, client_for, error_message, is_acl_refusal, server_name,
};

use crate::quorum::Vote;
use crate::scripts::{Kind, Op};

/// What one node answered to one operation: its vote and, for a fence, the counters it
/// raised, for a permit it granted, the slot it set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub(crate) vote: Vote,
    pub(crate) fences: Vec<u64>,
    /// A permit's slot: its index in the acquisition's keys.
    pub(crate) slot: Option<usize>,
    /// The permits the node's record of the semaphore holds, when it refused a permit
    /// for asking with another number.
    pub(crate) permits_held: Option<u32>,
    /// How far the operation got.
    pub(crate) reach: Reach,
    /// A writer's acquisition refused by live readers, where it left its claim.
    pub(crate) claimed: bool,
}

/// How far an operation got, as far as the client can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reach {
    /// The node answered it (done, refused, or a script error).
    Answered,
    /// It was not written: the node was not connected, quarantined (an acquisition),
    /// or the caller gave up while it waited in the queue (an acquisition).
    Unsent,
    /// It was written, or may have been, on the node's connection number
    /// `connection`, and no answer came (a timeout, or a failed connection). While
    /// that connection lasts it still reaches the node (TCP delivers it after a
    /// freeze or a cut); once fred has replaced the connection, it may be lost.
    Unknown { connection: u64 },
}

impl Answer {
    /// Whether the node did not answer the operation.
    pub(crate) fn unreached(&self) -> bool {
        self.reach != Reach::Answered
    }

    /// Whether the operation was not written: it changed nothing on the node.
    pub(crate) fn unsent(&self) -> bool {
        self.reach == Reach::Unsent
    }
}

impl From<Vote> for Answer {
    fn from(vote: Vote) -> Self {
        Answer {
            vote,
            fences: Vec::new(),
            slot: None,
            permits_held: None,
            reach: Reach::Answered,
            claimed: false,
        }
    }
}

/// One operation's result as the backend gives it.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A list of numbers: a permit's slot position, or the counters a fence raised.
    List(Vec<u64>),
    /// 1: done; 0: the key is not ours (taken, expired); 2: taken by readers, claimed.
    Int(i64),
    /// The script's error for this operation alone (`WRONGTYPE ...`, `QUARANTINED ..`).
    Failed(String),
    /// The call failed for the whole batch: timeout, connection, refused script.
    Vote(Vote),
    /// The operation was not written (see [`Reach::Unsent`]).
    Unsent(Vote),
}

/// One Redis master.
#[derive(Debug)]
pub(crate) struct Node {
    name: Arc<str>,
    /// The bound on every operation, from when it is made.
    timeout: Duration,
    backend: Backend,
    queue: batch::Queue,
    /// Set while the node is out of acquisition votes after losing its data.
    quarantined_until: Mutex<Option<Instant>>,
    /// Set once the client that owns this node is gone: removals are not sent again.
    retired: watch::Sender<bool>,
    /// The removals to send again (`resend`).
    pending: Mutex<resend::Pending>,
}

#[derive(Debug)]
enum Backend {
    Redis(redis::Redis),
    #[cfg(test)]
    Memory(Arc<memory::Memory>),
}

impl Node {
    /// A node reached through `client`. Must be called within a tokio runtime (it
    /// follows the client's connection events).
    pub(crate) fn new(client: Client, timeout: Duration) -> Self {
        let name = server_name(&client.client_config());
        Node::with(name, timeout, Backend::Redis(redis::Redis::new(client)))
    }

    /// An in-memory node, for unit tests of what lies above the seam.
    #[cfg(test)]
    pub(crate) fn memory(name: &str, timeout: Duration, memory: &Arc<memory::Memory>) -> Self {
        Node::with(name.into(), timeout, Backend::Memory(Arc::clone(memory)))
    }

    fn with(name: Arc<str>, timeout: Duration, backend: Backend) -> Self {
        Node {
            name,
            timeout,
            backend,
            queue: batch::Queue::default(),
            quarantined_until: Mutex::new(None),
            retired: watch::Sender::new(false),
            pending: Mutex::default(),
        }
    }

    /// The node's address, `host:port`.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The fred client, for a node reached through one.
    pub(crate) fn client(&self) -> Option<&Client> {
        match &self.backend {
            Backend::Redis(redis) => Some(&redis.client),
            #[cfg(test)]
            Backend::Memory(_) => None,
        }
    }

    /// Runs `op` on this node: the seam every lock round goes through. Returns by the
    /// node's timeout. The operation is in the node's order when the first poll of
    /// this future returns, so an operation made after that runs after it.
    pub(crate) async fn call(self: Arc<Self>, op: Arc<Op>) -> Answer {
        if op.kind.acquires() {
            if let Some(until) = self.quarantined_until() {
                return Answer {
                    reach: Reach::Unsent,
                    ..Vote::Error(format!(
                        "quarantined after a restart for another {:?}",
                        until.saturating_duration_since(Instant::now())
                    ))
                    .into()
                };
            }
        }
        let connection = self.connection();
        let deadline = Instant::now()
            .checked_add(self.timeout)
            .unwrap_or_else(Instant::now);
        let reply = batch::submit(&self, Arc::clone(&op), deadline).await;
        self.answer(&op, reply, connection)
    }

    /// Ends the resending of removals ([`resend`](Node::resend)): the
    /// client that made them is gone, and its keys expire with their TTL.
    pub(crate) fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Runs a batch on the backend: one reply per operation, in order.
    async fn run(&self, ops: &[Arc<Op>], deadline: Instant) -> Vec<Reply> {
        match &self.backend {
            Backend::Redis(redis) => redis.run(ops, deadline).await,
            #[cfg(test)]
            Backend::Memory(memory) => memory.run(ops, deadline).await,
        }
    }

    /// Whether the node's client is connected now.
    fn connected(&self) -> bool {
        match &self.backend {
            Backend::Redis(redis) => redis.client.is_connected(),
            #[cfg(test)]
            Backend::Memory(memory) => memory.connected(),
        }
    }

    /// The number of the node's current connection: it changes when fred replaces a
    /// connection that failed or went silent.
    fn connection(&self) -> u64 {
        match &self.backend {
            Backend::Redis(redis) => redis.connection(),
            #[cfg(test)]
            Backend::Memory(memory) => memory.connection(),
        }
    }

    /// The answer to `op` from its `reply`; `connection` is the one it was sent on.
    fn answer(&self, op: &Op, reply: Reply, connection: u64) -> Answer {
        let kind = op.kind;
        let vote = match reply {
            // A permit: the slot's position from 1 among the operation's keys.
            Reply::List(list) if kind == Kind::Permit => {
                let slot = match list[..] {
                    [position] => usize::try_from(position)
                        .ok()
                        .and_then(|p| p.checked_sub(1)),
                    _ => None,
                };
                match slot {
                    Some(slot) if slot < op.keys.len() => {
                        return Answer {
                            slot: Some(slot),
                            ..Vote::Yes.into()
                        };
                    }
                    _ => Vote::Error(format!("unexpected reply to a permit: {list:?}")),
                }
            }
            Reply::List(fences) if kind == Kind::Fence && fences.len() == op.keys.len() => {
                return Answer {
                    fences,
                    ..Vote::Yes.into()
                };
            }
            Reply::Failed(message) if message.starts_with("PERMITS ") => {
                let held = message["PERMITS ".len()..].trim().parse().ok();
                return Answer {
                    permits_held: held,
                    ..Vote::Error(format!(
                        "the semaphore is held here with {} permits",
                        held.map_or_else(|| "another number of".into(), |n: u32| n.to_string())
                    ))
                    .into()
                };
            }
            Reply::Int(1) => Vote::Yes,
            Reply::Int(2) if kind == Kind::Acquire => {
                return Answer {
                    claimed: true,
                    ..Vote::Taken.into()
                };
            }
            Reply::Int(0) => Vote::Taken,
            Reply::List(_) | Reply::Int(_) => {
                Vote::Error(format!("unexpected reply to a {kind:?} operation"))
            }
            Reply::Failed(message) => self.failed(&message),
            Reply::Vote(vote) => {
                return Answer {
                    reach: Reach::Unknown { connection },
                    ..vote.into()
                };
            }
            Reply::Unsent(vote) => {
                return Answer {
                    reach: Reach::Unsent,
                    ..vote.into()
                };
            }
        };
        vote.into()
    }

    /// The vote of an operation the script failed.
    fn failed(&self, message: &str) -> Vote {
        if let Some(refusal) = message.strip_prefix("QUARANTINED ") {
            return Vote::Error(self.quarantine(refusal));
        }
        if let Some(index) = message.strip_prefix("FENCE_EXHAUSTED ") {
            return Vote::Error(format!(
                "the fencing counter of resource {index} reached 2^53 - 1, the largest a Lua \
                 number counts exactly: no larger token can be made until the counter expires"
            ));
        }
        client::error_vote(message.to_string())
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
            "quarantined for another {left:?}: the node lost or changed its data (restart, \
             flush, failover) and may have forgotten locks it granted"
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

    /// Lifts the restart quarantine on this node (`scripts/lift.lua`): records its
    /// current incarnation in `marker` and deletes `guard`.
    pub(crate) async fn lift(&self, marker: &str, guard: &str) -> Vote {
        let vote = match &self.backend {
            Backend::Redis(redis) => redis.lift(marker, guard, self.timeout).await,
            #[cfg(test)]
            Backend::Memory(_) => Vote::Yes,
        };
        if vote == Vote::Yes {
            if let Ok(mut until) = self.quarantined_until.lock() {
                *until = None;
            }
        }
        vote
    }

    /// Loads fredlock's function library and script into the node, before its first
    /// operation; the script's failure message (see `load_scripts`).
    pub(crate) async fn load(&self) -> Option<String> {
        match &self.backend {
            Backend::Redis(redis) => redis.load().await,
            #[cfg(test)]
            Backend::Memory(_) => None,
        }
    }

    /// The permission check of `build()`; see `Redis::check`.
    pub(crate) async fn check(
        &self,
        probe: &str,
        quarantine: bool,
        timeout: Duration,
    ) -> Result<(), (String, String)> {
        match &self.backend {
            Backend::Redis(redis) => redis.check(probe, quarantine, timeout).await,
            #[cfg(test)]
            Backend::Memory(_) => Ok(()),
        }
    }

    /// Starts the client's connection task (for a client fredlock created), kept so
    /// that [`close`](Node::close) can end it.
    pub(crate) fn connect(&self) {
        match &self.backend {
            Backend::Redis(redis) => redis.connect(),
            #[cfg(test)]
            Backend::Memory(_) => {}
        }
    }

    /// Closes a client fredlock created: first lets what is queued for the node go out
    /// (a release made just before, whose `QUIT` must not overtake it) for at most two
    /// node timeouts, which is how long a call in flight and the batch waiting behind
    /// it can take; then `QUIT` within `timeout`, and its connection task is ended
    /// whether or not the node answered.
    pub(crate) fn close(
        self: &Arc<Self>,
        timeout: Duration,
    ) -> impl Future<Output = ()> + Send + 'static {
        let node = Arc::clone(self);
        async move {
            let now = Instant::now();
            let until = now
                .checked_add(node.timeout.saturating_mul(2))
                .unwrap_or(now);
            node.queue.drained(until).await;
            match &node.backend {
                Backend::Redis(redis) => redis.close(timeout).await,
                #[cfg(test)]
                Backend::Memory(_) => {}
            }
        }
    }

    /// [`close`](Node::close) in the background, for `Drop`; outside a runtime there
    /// is no task left to end.
    pub(crate) fn close_in_background(self: &Arc<Self>, timeout: Duration) {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(self.close(timeout));
        }
    }
}

/// The time left in the refusal `QUARANTINED <ms left>` (without its first word).
fn parse_quarantine(refusal: &str) -> Option<Duration> {
    refusal
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests;
