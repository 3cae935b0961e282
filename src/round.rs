//! The fan-out of one round: one task per node, votes collected until the quorum
//! decides.
//!
//! Each node's request runs in its own task, so the round returns as soon as the
//! outcome is decided while the requests to the remaining nodes still run to completion
//! or timeout in the background.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::node::Node;
use crate::quorum::{Decision, NodeVote, Tally, Vote, Votes};

/// A node task's one vote in a round.
pub(crate) struct Ballot {
    index: usize,
    tx: mpsc::UnboundedSender<(usize, Vote, Vec<u64>)>,
}

impl Ballot {
    /// Casts the vote. After the round is decided nobody listens, which is fine.
    pub(crate) fn cast(self, vote: Vote) {
        self.cast_with(vote, Vec::new());
    }

    /// Casts the vote with the fencing counters the node returned.
    pub(crate) fn cast_with(self, vote: Vote, fences: Vec<u64>) {
        let _ = self.tx.send((self.index, vote, fences));
    }
}

/// The result of a decided round.
#[derive(Debug)]
pub(crate) struct Outcome {
    pub(crate) decision: Decision,
    pub(crate) tally: Tally,
    pub(crate) votes: Votes,
    /// Per node, the fencing counters it returned with its vote (acquisitions only).
    pub(crate) fences: Vec<Vec<u64>>,
}

/// A round in flight.
pub(crate) struct Round {
    names: Vec<Arc<str>>,
    rx: mpsc::UnboundedReceiver<(usize, Vote, Vec<u64>)>,
}

impl Round {
    /// Spawns `op` once per node. Each task gets a [`Ballot`] to cast its vote with.
    /// Returns the round and the tasks' handles, in node order; dropping a handle lets
    /// its task run on.
    pub(crate) fn spawn<F, Fut>(nodes: &[Arc<Node>], op: F) -> (Round, Vec<JoinHandle<()>>)
    where
        F: Fn(Arc<Node>, Ballot) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let handles = nodes
            .iter()
            .enumerate()
            .map(|(index, node)| {
                let ballot = Ballot {
                    index,
                    tx: tx.clone(),
                };
                tokio::spawn(op(Arc::clone(node), ballot))
            })
            .collect();
        let names = nodes.iter().map(|n| Arc::clone(n.name())).collect();
        (Round { names, rx }, handles)
    }

    /// Collects votes until the outcome can no longer change. Nodes that have not
    /// answered by then are reported as [`Vote::Pending`].
    pub(crate) async fn decide(&mut self) -> Outcome {
        let n = self.names.len();
        let mut tally = Tally::new(n);
        let mut votes = vec![Vote::Pending; n];
        let mut fences = vec![Vec::new(); n];
        let decision = loop {
            if let Some(decision) = tally.decision() {
                break decision;
            }
            match self.rx.recv().await {
                Some((index, vote, node_fences)) => {
                    tally.add(&vote);
                    if let Some(slot) = votes.get_mut(index) {
                        *slot = vote;
                    }
                    if let Some(slot) = fences.get_mut(index) {
                        *slot = node_fences;
                    }
                }
                // Every task ended without a vote (only possible if one panicked):
                // what has not been counted is not a yes.
                None => break Decision::NoQuorum,
            }
        };
        let votes = Votes(
            self.names
                .iter()
                .cloned()
                .zip(votes)
                .map(|(node, vote)| NodeVote { node, vote })
                .collect(),
        );
        Outcome {
            decision,
            tally,
            votes,
            fences,
        }
    }

    /// Counts the votes that arrived since the decision (without waiting), so an error
    /// built later describes every answer known by then. The decision stays as it was.
    pub(crate) fn absorb_late_votes(&mut self, outcome: &mut Outcome) {
        while let Ok((index, vote, _)) = self.rx.try_recv() {
            if let Some(slot) = outcome.votes.0.get_mut(index) {
                if slot.vote == Vote::Pending {
                    outcome.tally.add(&vote);
                    slot.vote = vote;
                }
            }
        }
    }
}
