//! One acquisition round until its verdict (the lock is kept, or the attempt is given
//! up, or abandoned when the `lock()` future is dropped), and the removal of our token
//! wherever it may have been set.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::node::{AcquireCall, Node};
use crate::quorum::{Decision, Tally, Vote, Votes};
use crate::round::Round;

/// A node's answer to an acquisition: its vote and, on `Yes`, the raised fencing
/// counters.
pub(crate) type Acquired = (Vote, Vec<u64>);

/// An acquisition round in flight. Dropped before its verdict, it removes our token
/// from every node in the background.
pub(crate) struct Acquisition {
    round: Round<Acquired>,
    keys: Arc<[Arc<str>]>,
    token: Arc<str>,
    /// Whether the verdict was given; until then, dropping cleans up.
    settled: bool,
}

impl Acquisition {
    /// Prepares `call` for every node; nothing is sent before [`decide`](Self::decide).
    pub(crate) fn new(
        nodes: &Arc<[Arc<Node>]>,
        call: AcquireCall,
        keys: &Arc<[Arc<str>]>,
        token: &Arc<str>,
    ) -> Self {
        let call = Arc::new(call);
        let round = Round::new(nodes, |node| {
            let (node, call) = (Arc::clone(node), Arc::clone(&call));
            Box::pin(async move { node.acquire(&call).await })
        });
        Acquisition {
            round,
            keys: Arc::clone(keys),
            token: Arc::clone(token),
            settled: false,
        }
    }

    /// Sends the acquisition to every node and counts the votes until the quorum
    /// decides. When this returns, every node's acquisition is on its connection (the
    /// round's first poll handed them over), so a release sent next is queued behind
    /// it on every node.
    pub(crate) async fn decide(&mut self) -> Decision {
        self.round.decide().await
    }

    pub(crate) fn round(&self) -> &Round<Acquired> {
        &self.round
    }

    /// The lock is kept. The requests still running no longer matter; dropping the
    /// round polls them to their end in the background.
    pub(crate) fn keep(mut self) {
        self.settled = true;
    }

    /// The attempt failed: removes our token from the nodes that voted yes, waiting
    /// for them (one more fast round trip) while counting the answers that come
    /// meanwhile. Returns the final votes and tally, and the background task that
    /// removes the token from the other nodes that may hold it, once they answer.
    pub(crate) async fn give_up(mut self) -> (Votes, Tally, Option<JoinHandle<()>>) {
        let yes: Vec<usize> = self
            .round
            .answers()
            .iter()
            .enumerate()
            .filter(|(_, answer)| matches!(answer, Some((Vote::Yes, _))))
            .map(|(index, _)| index)
            .collect();
        let nodes = Arc::clone(self.round.nodes());
        let removals = futures::future::join_all(yes.iter().filter_map(|&index| {
            let node = nodes.get(index)?;
            Some(node.remove(&self.keys, &self.token))
        }));
        self.round.listen_during(removals).await;
        self.settled = true;
        let cleanup = self.remove_in_background(&yes);
        (self.round.votes(), *self.round.tally(), cleanup)
    }

    /// Removes our token, in one background task, from every node that may hold it,
    /// except those in `done`: those that answered anything but "taken", and those
    /// still running once they answer so. A removal is sent only after the node's
    /// acquisition answered or timed out: a SET that timed out is either never written
    /// (fred drops timed-out commands) or was written before the removal on the same
    /// connection.
    fn remove_in_background(&mut self, done: &[usize]) -> Option<JoinHandle<()>> {
        let nodes = Arc::clone(self.round.nodes());
        let mut work: Vec<Pin<Box<dyn Future<Output = ()> + Send>>> = Vec::new();
        let answered = self.round.answers().iter().enumerate();
        for (index, answer) in answered {
            let may_be_set = matches!(answer, Some((vote, _)) if *vote != Vote::Taken);
            if let (true, false, Some(node)) = (may_be_set, done.contains(&index), nodes.get(index))
            {
                let remove = Removal::new(node, &self.keys, &self.token);
                work.push(Box::pin(remove.run()));
            }
        }
        for (index, call) in self.round.take_running() {
            if let Some(node) = nodes.get(index) {
                let remove = Removal::new(node, &self.keys, &self.token);
                work.push(Box::pin(async move {
                    let (vote, _) = call.await;
                    if vote != Vote::Taken {
                        remove.run().await;
                    }
                }));
            }
        }
        if work.is_empty() {
            return None;
        }
        // Outside a runtime (a runtime shutting down drops its tasks), the keys expire
        // with their TTL.
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(runtime.spawn(futures::future::join_all(work).map(drop)))
    }
}

impl Drop for Acquisition {
    fn drop(&mut self) {
        if !self.settled {
            // Abandoned: the `lock()` future was dropped mid-attempt.
            drop(self.remove_in_background(&[]));
        }
    }
}

/// The removal of our token from one node.
struct Removal {
    node: Arc<Node>,
    keys: Arc<[Arc<str>]>,
    token: Arc<str>,
}

impl Removal {
    fn new(node: &Arc<Node>, keys: &Arc<[Arc<str>]>, token: &Arc<str>) -> Self {
        Removal {
            node: Arc::clone(node),
            keys: Arc::clone(keys),
            token: Arc::clone(token),
        }
    }

    async fn run(self) {
        self.node.remove(&self.keys, &self.token).await;
    }
}
