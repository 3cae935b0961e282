//! The pure part of a Redlock round: votes and the quorum.
//!
//! Nothing here touches the network or a clock; the round in [`crate::round`] feeds it
//! votes.

use std::fmt;
use std::sync::Arc;

/// The number of nodes that must agree: `n / 2 + 1`, a strict majority.
///
/// ```
/// assert_eq!(fredlock::quorum(1), 1);
/// assert_eq!(fredlock::quorum(5), 3);
/// assert_eq!(fredlock::quorum(6), 4);
/// ```
pub const fn quorum(n: usize) -> usize {
    n / 2 + 1
}

/// What one node answered in one round.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vote {
    /// The node did what was asked: set our key (acquire), deleted it (release), or
    /// renewed its expiry (extend).
    Yes,
    /// The node answered, and the key is not ours: another token holds it (acquire), or
    /// our token is gone because the key expired or was taken over (extend, release).
    Taken,
    /// The node answered with an error, or the connection to it failed. Carries the
    /// node's message (for example `WRONGTYPE ...`, `NOAUTH ...`, `READONLY ...`).
    Error(String),
    /// The node did not answer within the per-node timeout.
    Timeout,
    /// The round was decided before this node answered. Its request still runs to
    /// completion or timeout in the background.
    Pending,
}

impl Vote {
    fn label(&self) -> &'static str {
        match self {
            Vote::Yes => "yes",
            Vote::Taken => "taken",
            Vote::Error(_) => "error",
            Vote::Timeout => "timeout",
            Vote::Pending => "pending",
        }
    }
}

impl fmt::Display for Vote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Vote::Error(message) => write!(f, "error: {message}"),
            other => f.write_str(other.label()),
        }
    }
}

/// One node's vote, with the node's address (`host:port`, never credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeVote {
    /// The node's address, `host:port`.
    pub node: Arc<str>,
    /// What it answered.
    pub vote: Vote,
}

/// Every node's vote in one round, in the order the nodes were configured.
///
/// Its `Display` form is a one-line summary such as
/// `3 yes, 1 taken, 1 timeout [127.0.0.1:7001 yes, ...]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Votes(pub(crate) Vec<NodeVote>);

impl Votes {
    /// The individual votes, one per node, in configuration order.
    pub fn iter(&self) -> std::slice::Iter<'_, NodeVote> {
        self.0.iter()
    }

    /// The number of nodes in the round.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the round had no nodes (never true for a round that ran).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many nodes answered [`Vote::Yes`].
    pub fn yes(&self) -> usize {
        self.count(|v| matches!(v, Vote::Yes))
    }

    /// How many nodes answered [`Vote::Taken`].
    pub fn taken(&self) -> usize {
        self.count(|v| matches!(v, Vote::Taken))
    }

    /// How many nodes failed: [`Vote::Error`] or [`Vote::Timeout`].
    pub fn failed(&self) -> usize {
        self.count(|v| matches!(v, Vote::Error(_) | Vote::Timeout))
    }

    fn count(&self, pred: impl Fn(&Vote) -> bool) -> usize {
        self.0.iter().filter(|nv| pred(&nv.vote)).count()
    }
}

impl<'a> IntoIterator for &'a Votes {
    type Item = &'a NodeVote;
    type IntoIter = std::slice::Iter<'a, NodeVote>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for Votes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for label in ["yes", "taken", "error", "timeout", "pending"] {
            let n = self.count(|v| v.label() == label);
            if n > 0 {
                if !first {
                    f.write_str(", ")?;
                }
                write!(f, "{n} {label}")?;
                first = false;
            }
        }
        f.write_str(" [")?;
        for (i, nv) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {}", nv.node, nv.vote)?;
        }
        f.write_str("]")
    }
}

/// How a round ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A quorum said yes.
    Quorum,
    /// Too many nodes said no, failed or timed out for a quorum to be possible.
    NoQuorum,
}

/// Running vote count for one round of `n` nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tally {
    n: usize,
    /// The yes votes that count towards the quorum: all of them, or for a permit those
    /// of the slot with the most.
    yes: usize,
    /// Every yes vote, for whatever slot.
    granted: usize,
    taken: usize,
    failed: usize,
}

impl Tally {
    pub(crate) fn new(n: usize) -> Self {
        Tally {
            n,
            yes: 0,
            granted: 0,
            taken: 0,
            failed: 0,
        }
    }

    /// A yes for one of a semaphore's slots, which now has `on_slot` yes votes with
    /// this one. Nodes may grant different slots; a permit needs a quorum on one, so
    /// only the best slot's votes count towards it.
    pub(crate) fn add_slot_yes(&mut self, on_slot: usize) {
        self.granted += 1;
        self.yes = self.yes.max(on_slot);
    }

    pub(crate) fn add(&mut self, vote: &Vote) {
        match vote {
            Vote::Yes => {
                self.yes += 1;
                self.granted += 1;
            }
            Vote::Taken => self.taken += 1,
            Vote::Error(_) | Vote::Timeout => self.failed += 1,
            Vote::Pending => {}
        }
    }

    /// `Some` as soon as the outcome can no longer change, whatever the nodes that have
    /// not answered yet say.
    pub(crate) fn decision(&self) -> Option<Decision> {
        let q = quorum(self.n);
        let answered = self.granted + self.taken + self.failed;
        let outstanding = self.n.saturating_sub(answered);
        if self.yes >= q {
            Some(Decision::Quorum)
        } else if self.yes + outstanding < q {
            Some(Decision::NoQuorum)
        } else {
            None
        }
    }

    /// Whether the `Taken` answers alone rule out a quorum: the resource is held by
    /// someone else (or, at release and extend, our lock is gone), whatever the
    /// unreachable nodes would have said.
    pub(crate) fn taken_rules_out_quorum(&self) -> bool {
        self.taken > self.n - quorum(self.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(n: usize, votes: &[Vote]) -> Tally {
        let mut t = Tally::new(n);
        for v in votes {
            t.add(v);
        }
        t
    }

    #[test]
    fn quorum_is_a_strict_majority_for_every_n() {
        for n in 1..=101usize {
            let q = quorum(n);
            assert!(2 * q > n, "n={n} q={q} is not a majority");
            assert!(2 * (q - 1) <= n, "n={n} q={q} is larger than needed");
        }
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(2), 2);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum(9), 5);
    }

    #[test]
    fn decides_at_quorum_without_waiting_for_the_rest() {
        assert_eq!(tally(5, &[Vote::Yes, Vote::Yes]).decision(), None);
        assert_eq!(
            tally(5, &[Vote::Yes, Vote::Yes, Vote::Yes]).decision(),
            Some(Decision::Quorum)
        );
        assert_eq!(tally(1, &[Vote::Yes]).decision(), Some(Decision::Quorum));
    }

    #[test]
    fn decides_no_quorum_as_soon_as_it_is_out_of_reach() {
        let t = tally(5, &[Vote::Timeout, Vote::Error("x".into())]);
        assert_eq!(t.decision(), None);
        let t = tally(5, &[Vote::Timeout, Vote::Error("x".into()), Vote::Taken]);
        assert_eq!(t.decision(), Some(Decision::NoQuorum));
        assert_eq!(
            tally(1, &[Vote::Timeout]).decision(),
            Some(Decision::NoQuorum)
        );
        // N = 2 needs both.
        assert_eq!(
            tally(2, &[Vote::Taken]).decision(),
            Some(Decision::NoQuorum)
        );
    }

    #[test]
    fn every_complete_round_is_decided() {
        let kinds = [Vote::Yes, Vote::Taken, Vote::Timeout];
        for n in 1..=7usize {
            for code in 0..3usize.pow(n as u32) {
                let mut c = code;
                let votes: Vec<Vote> = (0..n)
                    .map(|_| {
                        let v = kinds[c % 3].clone();
                        c /= 3;
                        v
                    })
                    .collect();
                let t = tally(n, &votes);
                let yes = votes.iter().filter(|v| **v == Vote::Yes).count();
                let expected = if yes >= quorum(n) {
                    Decision::Quorum
                } else {
                    Decision::NoQuorum
                };
                assert_eq!(t.decision(), Some(expected), "{votes:?}");
            }
        }
    }

    #[test]
    fn a_permit_needs_a_quorum_on_one_slot() {
        // 5 nodes: slots 0, 0, 1 granted, one taken; the fifth decides.
        let mut t = Tally::new(5);
        for on_slot in [1, 2, 1] {
            t.add_slot_yes(on_slot);
        }
        t.add(&Vote::Taken);
        assert_eq!(t.decision(), None);
        let mut yes = t;
        yes.add_slot_yes(3);
        assert_eq!(yes.decision(), Some(Decision::Quorum));
        let mut other = t;
        other.add_slot_yes(2);
        assert_eq!(other.decision(), Some(Decision::NoQuorum));
        // Three grants split over three slots on 3 nodes: no quorum, decided.
        let mut split = Tally::new(3);
        for _ in 0..3 {
            split.add_slot_yes(1);
        }
        assert_eq!(split.decision(), Some(Decision::NoQuorum));
    }

    #[test]
    fn taken_rules_out_quorum_only_when_taken_alone_blocks() {
        assert!(!tally(5, &[Vote::Taken, Vote::Taken, Vote::Timeout]).taken_rules_out_quorum());
        assert!(tally(5, &[Vote::Taken, Vote::Taken, Vote::Taken]).taken_rules_out_quorum());
        assert!(tally(1, &[Vote::Taken]).taken_rules_out_quorum());
    }

    #[test]
    fn votes_display_summarises_and_lists_nodes() {
        let votes = Votes(vec![
            NodeVote {
                node: "a:1".into(),
                vote: Vote::Yes,
            },
            NodeVote {
                node: "b:2".into(),
                vote: Vote::Error("WRONGTYPE bad".into()),
            },
            NodeVote {
                node: "c:3".into(),
                vote: Vote::Timeout,
            },
        ]);
        assert_eq!(
            votes.to_string(),
            "1 yes, 1 error, 1 timeout [a:1 yes, b:2 error: WRONGTYPE bad, c:3 timeout]"
        );
        assert_eq!((votes.yes(), votes.taken(), votes.failed()), (1, 0, 2));
    }
}
