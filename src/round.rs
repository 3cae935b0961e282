//! The fan-out of one round: every node's request, polled together in the caller's
//! task, and the votes counted until the quorum decides.
//!
//! No task is spawned for a round. Each time the caller's task is woken, every request
//! still running is polled; so the first poll hands every request to its node's
//! connection, in node order, before any vote can be counted. The round returns as
//! soon as the outcome is decided; the requests still running then go on in one
//! background task when the round is dropped (or wherever [`Round::take_running`]
//! hands them).

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use crate::node::Node;
use crate::quorum::{Decision, NodeVote, Tally, Vote, Votes};

/// One node's request in a round.
pub(crate) type NodeCall<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// What a node's request answers: a vote, and maybe more.
pub(crate) trait Answer {
    fn vote(&self) -> &Vote;
}

impl Answer for Vote {
    fn vote(&self) -> &Vote {
        self
    }
}

/// An acquisition's answer: the vote and, on `Yes`, the raised fencing counters.
impl Answer for (Vote, Vec<u64>) {
    fn vote(&self) -> &Vote {
        &self.0
    }
}

/// A round in flight. Dropped, it polls the requests still running to their end in
/// one background task: fred marks a command as timed out only when its future sees
/// the timeout (see `Node::options`), and a request may have a second command to send
/// (the `EVAL` after a `NOSCRIPT`).
pub(crate) struct Round<T: Send + 'static> {
    nodes: Arc<[Arc<Node>]>,
    /// Per node: its request while it runs.
    running: Vec<Option<NodeCall<T>>>,
    /// Per node: its answer once it came.
    answers: Vec<Option<T>>,
    tally: Tally,
}

impl<T: Answer + Send + 'static> Round<T> {
    /// Makes every node's request. Nothing is sent before the round is polled.
    pub(crate) fn new<F>(nodes: &Arc<[Arc<Node>]>, call: F) -> Self
    where
        F: FnMut(&Arc<Node>) -> NodeCall<T>,
    {
        let running = nodes.iter().map(call).map(Some).collect();
        Round {
            nodes: Arc::clone(nodes),
            running,
            answers: nodes.iter().map(|_| None).collect(),
            tally: Tally::new(nodes.len()),
        }
    }

    /// Polls the running requests until the outcome can no longer change. Nodes that
    /// have not answered by then are [`Vote::Pending`] in [`votes`](Round::votes).
    pub(crate) async fn decide(&mut self) -> Decision {
        poll_fn(|cx| {
            self.poll_running(cx);
            match self.tally.decision() {
                Some(decision) => Poll::Ready(decision),
                // Every node has answered, so the tally has decided; but should it
                // not have, what has not been counted is not a yes.
                None if self.running.iter().all(Option::is_none) => Poll::Ready(Decision::NoQuorum),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Polls every running request once and counts the answers.
    fn poll_running(&mut self, cx: &mut Context<'_>) {
        for (slot, answer) in self.running.iter_mut().zip(&mut self.answers) {
            if let Some(call) = slot {
                if let Poll::Ready(reply) = call.as_mut().poll(cx) {
                    self.tally.add(reply.vote());
                    *answer = Some(reply);
                    *slot = None;
                }
            }
        }
    }

    /// Runs `work` to its end while still counting the answers that come meanwhile
    /// (the decision does not change), so that an error built afterwards describes
    /// every answer known by then.
    pub(crate) async fn listen_during<W: Future>(&mut self, work: W) -> W::Output {
        let mut work = std::pin::pin!(work);
        poll_fn(|cx| {
            self.poll_running(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    pub(crate) fn tally(&self) -> &Tally {
        &self.tally
    }

    pub(crate) fn nodes(&self) -> &Arc<[Arc<Node>]> {
        &self.nodes
    }

    /// Per node, its answer if it came.
    pub(crate) fn answers(&self) -> &[Option<T>] {
        &self.answers
    }

    /// The votes so far, by node name.
    pub(crate) fn votes(&self) -> Votes {
        Votes(
            self.nodes
                .iter()
                .zip(&self.answers)
                .map(|(node, answer)| NodeVote {
                    node: Arc::clone(node.name()),
                    vote: answer.as_ref().map_or(Vote::Pending, |a| a.vote().clone()),
                })
                .collect(),
        )
    }

    /// Takes the requests still running, with their node's index. Dropping one
    /// abandons its answer; the command may still run on the node.
    pub(crate) fn take_running(&mut self) -> Vec<(usize, NodeCall<T>)> {
        self.running
            .iter_mut()
            .enumerate()
            .filter_map(|(index, slot)| slot.take().map(|call| (index, call)))
            .collect()
    }
}

impl<T: Send + 'static> Drop for Round<T> {
    fn drop(&mut self) {
        let running: Vec<NodeCall<T>> = self.running.iter_mut().filter_map(Option::take).collect();
        if running.is_empty() {
            return;
        }
        // Outside a runtime (one shutting down drops its tasks anyway), they are dropped.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                futures::future::join_all(running).await;
            });
        }
    }
}
