//! The fan-out of one round: one operation sent to every node, the calls polled
//! together in the caller's task, and the votes counted until the quorum decides.
//!
//! No task is spawned for a round. Each time the caller's task is woken, every call
//! still running is polled; so the first poll hands the operation to every node, in
//! node order, before any vote can be counted. The round returns as soon as the
//! outcome is decided; the calls still running then go on in one background task when
//! the round is dropped, or in the background task of [`Round::remove_where`].

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::metrics::{self, RoundKind};
use crate::node::{Answer, Node};
use crate::quorum::{Decision, NodeVote, Tally, Vote, Votes};
use crate::scripts::Op;

/// One node's call in a round.
pub(crate) type Call = Pin<Box<dyn Future<Output = Answer> + Send>>;

/// A round in flight. Dropped, it polls the calls still running to their end in one
/// background task: a call may have more to send (the batch again by another command,
/// after the node refused the first unrun), and fred marks a command as timed out only
/// when its future sees the timeout.
pub(crate) struct Round {
    nodes: Arc<[Arc<Node>]>,
    /// Per node: its call while it runs.
    running: Vec<Option<Call>>,
    /// Per node: its answer once it came.
    answers: Vec<Option<Answer>>,
    /// Per slot of a permit acquisition, its yes votes (empty for other operations).
    slots: Vec<usize>,
    tally: Tally,
}

impl Round {
    /// Prepares `op` for every node. Nothing is sent before the round is polled.
    pub(crate) fn new(nodes: &Arc<[Arc<Node>]>, op: Op) -> Self {
        Round::shared(nodes, &Arc::new(op))
    }

    /// [`new`](Round::new) for an operation the caller keeps too.
    pub(crate) fn shared(nodes: &Arc<[Arc<Node>]>, op: &Arc<Op>) -> Self {
        let running = nodes
            .iter()
            .map(|node| Some(Box::pin(Arc::clone(node).call(Arc::clone(op))) as Call))
            .collect();
        Round {
            nodes: Arc::clone(nodes),
            running,
            answers: nodes.iter().map(|_| None).collect(),
            slots: Vec::new(),
            tally: Tally::new(nodes.len()),
        }
    }

    /// Polls the running calls until the outcome can no longer change. Nodes that have
    /// not answered by then are [`Vote::Pending`] in [`votes`](Round::votes).
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

    /// Polls every running call once and counts the answers.
    fn poll_running(&mut self, cx: &mut Context<'_>) {
        for (slot, answer) in self.running.iter_mut().zip(&mut self.answers) {
            if let Some(call) = slot {
                if let Poll::Ready(reply) = call.as_mut().poll(cx) {
                    match reply.slot {
                        Some(index) => {
                            if self.slots.len() <= index {
                                self.slots.resize(index + 1, 0);
                            }
                            self.slots[index] += 1;
                            self.tally.add_slot_yes(self.slots[index]);
                        }
                        None => self.tally.add(&reply.vote),
                    }
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

    /// For a permit acquisition, the slot with the most yes votes (the first of
    /// equals); the granted slot once the round decided on a quorum.
    pub(crate) fn best_slot(&self) -> Option<usize> {
        let best = self.slots.iter().max()?;
        self.slots.iter().position(|count| count == best)
    }

    /// Counts every node's vote in the metrics, once the round is decided (nodes that
    /// had not answered by then as pending).
    pub(crate) fn count_votes(&self, kind: RoundKind) {
        for (node, answer) in self.nodes.iter().zip(&self.answers) {
            metrics::vote(kind, node.name(), answer.as_ref().map(|a| &a.vote));
        }
    }

    pub(crate) fn tally(&self) -> Tally {
        self.tally
    }

    pub(crate) fn nodes(&self) -> &Arc<[Arc<Node>]> {
        &self.nodes
    }

    /// Per node, its answer if it came.
    pub(crate) fn answers(&self) -> &[Option<Answer>] {
        &self.answers
    }

    /// The votes so far, by node name. For a permit, a node that granted another slot
    /// than the best one votes [`Vote::Taken`]: it does not hold the permit.
    pub(crate) fn votes(&self) -> Votes {
        let best = self.best_slot();
        let vote = |answer: &Answer| match answer.slot {
            Some(slot) if Some(slot) != best => Vote::Taken,
            _ => answer.vote.clone(),
        };
        Votes(
            self.nodes
                .iter()
                .zip(&self.answers)
                .map(|(node, answer)| NodeVote {
                    node: Arc::clone(node.name()),
                    vote: answer.as_ref().map_or(Vote::Pending, vote),
                })
                .collect(),
        )
    }

    /// Sends `remove` (a removal of our token), in one background task, to every node
    /// except those in `done` and those whose answer is `clear` (nothing of ours to
    /// remove there): at once to the nodes that answered, and to those still running
    /// once they answer. The task ends when every node has answered or timed out; a
    /// node it may not have reached keeps it to send again until `until` (see
    /// `Node::resend`).
    pub(crate) fn remove_where(
        &mut self,
        remove: &Arc<Op>,
        done: &[usize],
        until: Instant,
        clear: impl Fn(&Answer) -> bool + Copy + Send + 'static,
    ) -> Option<JoinHandle<()>> {
        let mut work: Vec<Call> = Vec::new();
        for ((index, answer), node) in self.answers.iter().enumerate().zip(self.nodes.iter()) {
            if matches!(answer, Some(a) if !clear(a)) && !done.contains(&index) {
                work.push(Box::pin(removal(node, remove, until)));
            }
        }
        for (slot, node) in self.running.iter_mut().zip(self.nodes.iter()) {
            if let Some(call) = slot.take() {
                let (node, remove) = (Arc::clone(node), Arc::clone(remove));
                work.push(Box::pin(async move {
                    let answer = call.await;
                    if clear(&answer) {
                        return answer;
                    }
                    removal(&node, &remove, until).await
                }));
            }
        }
        spawn_all(work)
    }

    /// Has the round's own operation `op` (a release) sent again to every node it may
    /// not have reached, until `until` (see `Node::resend`): those that answered so
    /// now, and those still running once they answer so (polled in one background
    /// task).
    pub(crate) fn resend_unreached(&mut self, op: &Arc<Op>, until: Instant) {
        for (answer, node) in self.answers.iter().zip(self.nodes.iter()) {
            if let Some(answer) = answer {
                node.resend(Arc::clone(op), answer, until);
            }
        }
        let mut work: Vec<Call> = Vec::new();
        for (slot, node) in self.running.iter_mut().zip(self.nodes.iter()) {
            if let Some(call) = slot.take() {
                let (node, op) = (Arc::clone(node), Arc::clone(op));
                work.push(Box::pin(async move {
                    let answer = call.await;
                    node.resend(op, &answer, until);
                    answer
                }));
            }
        }
        drop(spawn_all(work));
    }
}

/// Runs `work` in one background task. Outside a runtime (a runtime shutting down
/// drops its tasks), nothing runs and the keys expire with their TTL.
fn spawn_all(work: Vec<Call>) -> Option<JoinHandle<()>> {
    if work.is_empty() {
        return None;
    }
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    Some(runtime.spawn(futures::future::join_all(work).map(drop)))
}

/// One node's removal; if it may not have reached the node, the node sends it again
/// later, so that whoever waits for this one waits one node timeout at most.
pub(crate) fn removal(
    node: &Arc<Node>,
    remove: &Arc<Op>,
    until: Instant,
) -> impl Future<Output = Answer> + use<> {
    let (node, remove) = (Arc::clone(node), Arc::clone(remove));
    async move {
        let answer = Arc::clone(&node).call(Arc::clone(&remove)).await;
        node.resend(remove, &answer, until);
        answer
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        let running: Vec<Call> = self.running.iter_mut().filter_map(Option::take).collect();
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

#[cfg(test)]
mod tests;
