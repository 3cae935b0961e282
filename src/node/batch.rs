//! Group commit: one call in flight per node, and what arrives meanwhile goes out
//! together in the next call.
//!
//! An operation for an idle node is sent at once, from the caller's task, with no
//! hop and no added wait. While a call is in flight, the operations for that node
//! wait in its queue; when the call ends, everything waiting (up to [`MAX_BATCH`]) is
//! sent as one script call by a task spawned for it. So a busy node gets one write,
//! one read and one Lua invocation for many operations, and a lone one costs what it
//! did before.
//!
//! The order in which operations enter the queue is the order in which the node runs
//! them: nothing of ours reaches a node while one of its calls is in flight, and a
//! call runs its operations in order. So an acquisition is always run before a
//! release or removal of its token that was made after it, even when the
//! acquisition is still waiting when its round is decided.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Node, Reply};
use crate::quorum::Vote;
use crate::scripts::Op;

/// The most operations one call carries; more wait for the next call.
pub(crate) const MAX_BATCH: usize = 128;

/// A node's queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Whether a call is in flight (or about to be sent) on this node.
    busy: bool,
    waiting: VecDeque<Waiting>,
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
}

/// Runs `op` on `node`, alone if the node is idle, else in the next batch; answers by
/// `deadline` (a `Timeout` vote then, while the operation may still be sent).
pub(super) async fn submit(node: &Arc<Node>, op: Arc<Op>, deadline: Instant) -> Reply {
    let waiting = {
        let mut state = node.queue.state();
        if state.busy {
            let (reply, answer) = oneshot::channel();
            state.waiting.push_back(Waiting {
                op,
                deadline,
                reply,
            });
            Err(answer)
        } else {
            state.busy = true;
            Ok(op)
        }
    };
    match waiting {
        Ok(op) => {
            let turn = Turn(Arc::clone(node));
            let reply = node.run(std::slice::from_ref(&op), deadline).await.pop();
            drop(turn);
            reply.unwrap_or_else(|| Reply::Vote(Vote::Error("no reply".into())))
        }
        Err(answer) => match tokio::time::timeout_at(deadline.into(), answer).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => Reply::Vote(Vote::Error(
                "the batch carrying this operation was dropped (runtime shutting down)".into(),
            )),
            Err(_) => Reply::Vote(Vote::Timeout),
        },
    }
}

/// The node's one call in flight. Dropped (the call ended, or its future was dropped),
/// it hands the node to the next batch, or marks it idle.
struct Turn(Arc<Node>);

impl Drop for Turn {
    fn drop(&mut self) {
        let node = &self.0;
        let batch: Vec<Waiting> = {
            let mut state = node.queue.state();
            let take = state.waiting.len().min(MAX_BATCH);
            let batch: Vec<Waiting> = state.waiting.drain(..take).collect();
            if batch.is_empty() {
                state.busy = false;
                return;
            }
            batch
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(flush(Arc::clone(node), batch));
            }
            Err(_) => {
                // No runtime to send it (one shutting down): the waiting callers are
                // answered with an error as their senders drop, and the node is idle.
                node.queue.state().busy = false;
            }
        }
    }
}

/// Sends one batch, answers its callers, then hands the node on.
async fn flush(node: Arc<Node>, batch: Vec<Waiting>) {
    let turn = Turn(Arc::clone(&node));
    let now = Instant::now();
    // An acquisition, extension or write-back whose caller has given up is not sent:
    // nobody would remove its key or use its renewal.
    let (send, late): (Vec<Waiting>, Vec<Waiting>) = batch
        .into_iter()
        .partition(|w| w.deadline > now || w.op.kind.harmless_late());
    for waiting in late {
        let _ = waiting.reply.send(Reply::Vote(Vote::Timeout));
    }
    if !send.is_empty() {
        let ops: Vec<Arc<Op>> = send.iter().map(|w| Arc::clone(&w.op)).collect();
        let deadline = now.checked_add(node.timeout).unwrap_or(now);
        let replies = node.run(&ops, deadline).await;
        for (waiting, reply) in send.into_iter().zip(replies) {
            let _ = waiting.reply.send(reply);
        }
    }
    drop(turn);
}
