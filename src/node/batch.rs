//! Group commit: one call in flight per node ([`MAX_IN_FLIGHT`]), and what arrives
//! while it is busy goes out together in the next call.
//!
//! An operation for a node with a free slot and nothing waiting is sent at once, from
//! the caller's task, with no hop and no added wait. Otherwise it waits in the node's
//! queue; when the call ends, everything waiting (up to [`MAX_BATCH`]) is sent as one
//! script call by a task spawned for it. So a busy node gets one write, one read and
//! one Lua invocation for many operations, and a lone one costs what it did before.
//!
//! The order in which operations enter the queue is the order in which the node runs
//! them. fred writes one connection's commands in the order they are handed over, a
//! call runs its operations in order, and an operation only skips the queue when the
//! queue is empty and no batch taken from it is still on its way to the connection.
//! So an acquisition is always run before a release or removal of its token that was
//! made after it, even when the acquisition is still waiting when its round is
//! decided.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Instant;

use tokio::sync::{Notify, oneshot};

use super::{Node, Reply};
use crate::quorum::Vote;
use crate::scripts::Op;

/// The most operations one call carries; more wait for the next call.
pub(crate) const MAX_BATCH: usize = 128;

/// The most calls of ours in flight on one node. One gives the largest batches; two
/// or four were measured (docs/benchmarks.md) and gave lower throughput with many
/// tasks and no better latency for one.
pub(crate) const MAX_IN_FLIGHT: usize = 1;

/// A node's queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    state: Mutex<State>,
    /// Told when the queue empties while someone waits for it ([`Queue::drained`]).
    idle: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Calls sent or about to be sent.
    in_flight: usize,
    /// A batch was taken from the queue and is not yet on the connection: nothing may
    /// skip the queue until it is, or it could overtake the batch.
    preparing: bool,
    /// The latest deadline of the calls counted in flight.
    latest_deadline: Option<Instant>,
    waiting: VecDeque<Waiting>,
    /// How many [`Queue::drained`] wait: only then does an empty queue tell `idle`.
    draining: usize,
}

#[derive(Debug)]
struct Waiting {
    op: Arc<Op>,
    deadline: Instant,
    reply: oneshot::Sender<Reply>,
}

impl Queue {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Waits until nothing waits in the queue and no call is in flight, or until
    /// `until`. Closing a connection waits for this first: a `QUIT` handed to fred
    /// while a release still waits here would go out ahead of it, and the release
    /// would meet a closed connection and leave its key until its TTL.
    pub(super) async fn drained(&self, until: Instant) {
        self.state().draining += 1;
        loop {
            // Made before the check, so a notification between the two is not missed.
            let notified = self.idle.notified();
            if self.state().is_idle() {
                break;
            }
            if tokio::time::timeout_at(until.into(), notified)
                .await
                .is_err()
            {
                break;
            }
        }
        let mut state = self.state();
        state.draining = state.draining.saturating_sub(1);
    }

    /// Tells [`drained`](Queue::drained) that the queue may be empty; `state` is this
    /// queue's, released here.
    fn tell_if_idle(&self, state: MutexGuard<'_, State>) {
        let tell = state.draining > 0 && state.is_idle();
        drop(state);
        if tell {
            self.idle.notify_waiters();
        }
    }
}

impl State {
    fn is_idle(&self) -> bool {
        self.in_flight == 0 && self.waiting.is_empty() && !self.preparing
    }

    /// Takes the next batch if one may go out now (a free slot, nothing preparing).
    fn next_batch(&mut self, deadline: Instant) -> Option<Vec<Waiting>> {
        if self.preparing || self.in_flight >= MAX_IN_FLIGHT || self.waiting.is_empty() {
            return None;
        }
        let take = self.waiting.len().min(MAX_BATCH);
        self.occupy(deadline);
        self.preparing = true;
        Some(self.waiting.drain(..take).collect())
    }

    fn occupy(&mut self, deadline: Instant) {
        self.in_flight += 1;
        self.latest_deadline = Some(self.latest_deadline.map_or(deadline, |d| d.max(deadline)));
    }
}

/// Runs `op` on `node`, alone if the node has a free slot and nothing waits, else in a
/// batch; answers by `deadline` (a `Timeout` vote then, while the operation may still
/// be sent).
pub(super) async fn submit(node: &Arc<Node>, op: Arc<Op>, deadline: Instant) -> Reply {
    let waiting = {
        let mut state = node.queue.state();
        if state.in_flight < MAX_IN_FLIGHT && state.waiting.is_empty() && !state.preparing {
            state.occupy(deadline);
            Ok(op)
        } else {
            let (reply, answer) = oneshot::channel();
            state.waiting.push_back(Waiting {
                op,
                deadline,
                reply,
            });
            Err(answer)
        }
    };
    match waiting {
        Ok(op) => {
            let slot = Slot(Arc::clone(node));
            let reply = node.run(std::slice::from_ref(&op), deadline).await.pop();
            drop(slot);
            reply.unwrap_or_else(|| Reply::Vote(Vote::Error("no reply".into())))
        }
        Err(answer) => match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Reply::Vote(Vote::Error(
                "the batch carrying this operation was dropped (runtime shutting down)".into(),
            )),
            Err(_) => {
                unstick(node);
                Reply::Vote(Vote::Timeout)
            }
        },
    }
}

/// A call in flight frees its slot when its future ends, which needs the future to be
/// polled: fredlock polls every call it starts, but the caller of `lock()` may hold a
/// future it no longer polls. A waiter that times out while every call in flight is a
/// node timeout past its deadline stops counting them (they were handed to fred when
/// first polled, so the order does not depend on them) and sends what waits.
fn unstick(node: &Arc<Node>) {
    let now = Instant::now();
    let batch = {
        let mut state = node.queue.state();
        let stalled = state
            .latest_deadline
            .and_then(|d| d.checked_add(node.timeout))
            .is_some_and(|d| d < now);
        if !stalled || state.preparing {
            return;
        }
        state.in_flight = 0;
        let batch = state.next_batch(now.checked_add(node.timeout).unwrap_or(now));
        node.queue.tell_if_idle(state);
        batch
    };
    if let Some(batch) = batch {
        send(node, batch);
    }
}

/// One call in flight on a node. Dropped (the call ended, or its future was dropped),
/// it frees its slot and sends the next batch if one is waiting.
struct Slot(Arc<Node>);

impl Drop for Slot {
    fn drop(&mut self) {
        let batch = {
            let mut state = self.0.queue.state();
            state.in_flight = state.in_flight.saturating_sub(1);
            let now = Instant::now();
            let batch = state.next_batch(now.checked_add(self.0.timeout).unwrap_or(now));
            self.0.queue.tell_if_idle(state);
            batch
        };
        if let Some(batch) = batch {
            send(&self.0, batch);
        }
    }
}

/// Sends `batch` (already counted in flight) from a task of its own.
fn send(node: &Arc<Node>, batch: Vec<Waiting>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(flush(Arc::clone(node), batch));
        }
        Err(_) => {
            // No runtime to send it (one shutting down): the waiting callers are
            // answered with an error as their senders drop.
            let mut state = node.queue.state();
            state.in_flight = state.in_flight.saturating_sub(1);
            state.preparing = false;
            node.queue.tell_if_idle(state);
        }
    }
}

/// Sends one batch, answers its callers, then frees its slot.
async fn flush(node: Arc<Node>, batch: Vec<Waiting>) {
    let slot = Slot(Arc::clone(&node));
    let now = Instant::now();
    // An acquisition, extension or write-back whose caller has given up is not sent:
    // nobody would remove its key or use its renewal.
    let (send_now, late): (Vec<Waiting>, Vec<Waiting>) = batch
        .into_iter()
        .partition(|w| w.deadline > now || w.op.kind.harmless_late());
    for waiting in late {
        let _ = waiting.reply.send(Reply::Unsent(Vote::Timeout));
    }
    let ops: Vec<Arc<Op>> = send_now.iter().map(|w| Arc::clone(&w.op)).collect();
    if ops.is_empty() {
        node.queue.state().preparing = false;
        // The slot's drop sends whatever waits now.
        return;
    }
    let deadline = now.checked_add(node.timeout).unwrap_or(now);
    let mut call = pin!(node.run(&ops, deadline));
    // The first poll hands the call to the connection; from then on, later operations
    // may skip the queue again, and another batch may go out.
    let first = poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
    let next = {
        let mut state = node.queue.state();
        state.preparing = false;
        let now = Instant::now();
        state.next_batch(now.checked_add(node.timeout).unwrap_or(now))
    };
    if let Some(next) = next {
        send(&node, next);
    }
    let replies = match first {
        Poll::Ready(replies) => replies,
        Poll::Pending => call.await,
    };
    for (waiting, reply) in send_now.into_iter().zip(replies) {
        let _ = waiting.reply.send(reply);
    }
    drop(slot);
}
