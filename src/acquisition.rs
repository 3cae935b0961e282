//! One acquisition round until its verdict (the lock is kept, or the attempt is given
//! up, or abandoned when the `lock()` future is dropped), and the removal of our token
//! wherever it may have been set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::node::{Answer, Node};
use crate::quorum::{Decision, Tally, Vote, Votes};
use crate::round::{self, Round};
use crate::scripts::Op;

/// An acquisition round in flight. Dropped before its verdict, it removes our token
/// from every node in the background.
pub(crate) struct Acquisition {
    round: Round,
    /// The acquisition, whose keys and token a removal needs.
    op: Arc<Op>,
    /// Whether the verdict was given; until then, dropping cleans up.
    settled: bool,
}

impl Acquisition {
    /// Prepares `op` (an acquisition) for every node; nothing is sent before
    /// [`decide`](Self::decide).
    pub(crate) fn new(nodes: &Arc<[Arc<Node>]>, op: Op) -> Self {
        let op = Arc::new(op);
        Acquisition {
            round: Round::shared(nodes, &op),
            op,
            settled: false,
        }
    }

    /// Sends the acquisition to every node and counts the votes until the quorum
    /// decides. When this returns, every node has the acquisition in its order (the
    /// round's first poll handed it over), so a release made next runs after it on
    /// every node.
    pub(crate) async fn decide(&mut self) -> Decision {
        self.round.decide().await
    }

    pub(crate) fn round(&self) -> &Round {
        &self.round
    }

    /// For a permit, the slot with the most yes votes (the granted one, at a quorum)
    /// and its key.
    pub(crate) fn best_slot(&self) -> Option<(usize, &Arc<str>)> {
        let slot = self.round.best_slot()?;
        Some((slot, self.op.keys.get(slot)?))
    }

    /// For a permit, the number of permits the nodes that refused ours hold, when
    /// they alone rule out a quorum of `quorum`; fewer are failed votes (a node may
    /// keep a stale record until its permits' TTL), and the attempt fails or succeeds
    /// as usual.
    pub(crate) fn permits_held(&self, quorum: usize) -> Option<u32> {
        let answers = self.round.answers();
        let mut held = answers.iter().flatten().filter_map(|a| a.permits_held);
        let first = held.next()?;
        let spare = answers.len().saturating_sub(quorum);
        (1 + held.count() > spare).then_some(first)
    }

    /// The compare-and-delete of our token, made only for an attempt that failed; with
    /// `claim`, a writer that will try again and found readers (it claimed a key they
    /// hold) leaves its claim in place of its key too (docs/design.md 1.16), which an
    /// abandoned attempt does not.
    fn removal(&self, claim: bool) -> Arc<Op> {
        let readers = || self.round.answers().iter().flatten().any(|a| a.claimed);
        Arc::new(Op::remove_all(&self.op, claim && readers()))
    }

    /// The lock is kept. The calls still running no longer matter (dropping the round
    /// polls them to their end in the background), except for a permit: a node that
    /// set another slot than the one granted, or may have, has our token removed from
    /// the other slots, so that it does not hold a second permit until its TTL.
    pub(crate) fn keep(mut self) {
        self.settled = true;
        let Some(slot) = self.round.best_slot() else {
            return;
        };
        let others: Arc<[Arc<str>]> = (self.op.keys.iter().enumerate())
            .filter(|&(index, _)| index != slot)
            .map(|(_, key)| Arc::clone(key))
            .collect();
        if others.is_empty() {
            return;
        }
        let remove = Arc::new(Op::remove(&others, &self.op.token));
        // Nothing to remove where the node set the granted slot, or set nothing.
        let clear = move |answer: &Answer| {
            answer.slot == Some(slot) || answer.vote == Vote::Taken || answer.unsent()
        };
        let until = self.keys_expire();
        drop((self.round).remove_where(&remove, &[], until, clear));
    }

    /// The attempt failed: removes our token from the nodes that voted yes, waiting
    /// for them (one more fast round trip; a node it may not have reached keeps it to
    /// send again) while counting the answers that come meanwhile. Returns the final votes and tally, and the background task that
    /// removes the token from the other nodes that may hold it, once they answer.
    pub(crate) async fn give_up(mut self) -> (Votes, Tally, Option<JoinHandle<()>>) {
        let yes: Vec<usize> = self
            .round
            .answers()
            .iter()
            .enumerate()
            .filter(|(_, answer)| matches!(answer, Some(a) if a.vote == Vote::Yes))
            .map(|(index, _)| index)
            .collect();
        let nodes = Arc::clone(self.round.nodes());
        let remove = self.removal(true);
        let until = self.keys_expire();
        let removals = futures::future::join_all(
            (yes.iter())
                .filter_map(|&index| Some(round::removal(nodes.get(index)?, &remove, until))),
        );
        self.round.listen_during(removals).await;
        self.settled = true;
        let cleanup = self.remove_in_background(&yes, true);
        (self.round.votes(), self.round.tally(), cleanup)
    }

    /// Removes our token, in one background task, from every node that may hold it
    /// (every node but those in `done`, those that answered "taken" and those the
    /// acquisition never reached); from a node still running, once it answers. A
    /// removal is made only after the node's acquisition answered or timed out, so it
    /// runs after it on the node (see `node::batch`); a timed-out acquisition that was
    /// never sent is never run.
    fn remove_in_background(&mut self, done: &[usize], claim: bool) -> Option<JoinHandle<()>> {
        let remove = self.removal(claim);
        let until = self.keys_expire();
        let clear = |answer: &Answer| answer.vote == Vote::Taken || answer.unsent();
        (self.round).remove_where(&remove, done, until, clear)
    }

    /// When every key this acquisition set, from now on, has expired: the bound on
    /// sending its removal again.
    fn keys_expire(&self) -> Instant {
        let now = Instant::now();
        now.checked_add(Duration::from_millis(self.op.ttl_ms))
            .unwrap_or(now)
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.settled {
            // Abandoned: the `lock()` future was dropped mid-attempt.
            drop(self.remove_in_background(&[], false));
        }
    }
}
