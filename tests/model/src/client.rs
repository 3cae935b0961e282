//! A client of the model: the phases of `protocol.rs` (acquire, hold, fence and its
//! write-back, extend, release) and its decisions, made with the crate's `Tally`,
//! `Ttl` and `fencing::tokens`.

use std::time::Duration;

use super::node::{Answer, Op, Token};
use super::{DRIFT_FACTOR, Redlock, State, Tick, client_clock};
use crate::fencing;
use crate::quorum::{Decision, Tally, Vote, quorum};

/// Where a client is. Validity ends are readings of the client's own clock (µs); a
/// held lock's `fence` is the fencing token it handed out, once asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Idle,
    /// An acquisition round begun at `start`.
    Acquiring {
        start: Tick,
    },
    Holding {
        valid_until: u64,
        fence: Option<u64>,
    },
    /// The fencing round of a held lock (it holds meanwhile).
    Fencing {
        valid_until: u64,
    },
    /// The write-back of `fence`, after a fencing round whose counters disagreed.
    CatchingUp {
        valid_until: u64,
        fence: u64,
    },
    /// An extension round begun at `start`; the lock holds until `valid_until` meanwhile.
    Extending {
        start: Tick,
        valid_until: u64,
        fence: Option<u64>,
    },
}

/// One node's vote in the current round.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Ballot {
    /// Sent, no answer yet.
    Pending,
    Yes(u64),
    Taken,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    pub phase: Phase,
    /// Attempts begun; the current one is number `attempts`.
    pub attempts: u8,
    pub extends: u8,
    /// Fencing rounds begun.
    pub fences: u8,
    /// The current round (answers of earlier rounds are ignored); 0 is for removals.
    round: u8,
    /// The current round's votes, one per node; empty between rounds.
    votes: Vec<Ballot>,
}

impl Client {
    pub fn new() -> Client {
        Client {
            phase: Phase::Idle,
            attempts: 0,
            extends: 0,
            fences: 0,
            round: 0,
            votes: Vec::new(),
        }
    }

    pub fn token(&self, client: usize) -> Token {
        Token {
            client: u8::try_from(client).unwrap_or(u8::MAX),
            attempt: self.attempts,
        }
    }

    /// Whether the attempt has ended: failed, or its lock released.
    pub fn finished(&self, attempt: u8) -> bool {
        attempt < self.attempts || self.phase == Phase::Idle
    }

    /// Whether the client holds a lock with validity left at `now` on its clock.
    pub fn holds_at(&self, now: u64) -> bool {
        match self.phase {
            Phase::Holding { valid_until, .. }
            | Phase::Fencing { valid_until }
            | Phase::CatchingUp { valid_until, .. }
            | Phase::Extending { valid_until, .. } => valid_until > now,
            _ => false,
        }
    }

    pub fn new_round(&mut self, nodes: usize) -> u8 {
        self.round += 1;
        self.votes = vec![Ballot::Pending; nodes];
        self.round
    }

    pub fn vote(&mut self, node: usize, round: u8, answer: Answer) {
        if round == self.round && matches!(self.votes.get(node), Some(Ballot::Pending)) {
            self.votes[node] = match answer {
                Answer::Yes(counter) => Ballot::Yes(counter),
                Answer::Taken => Ballot::Taken,
                Answer::Quarantined => Ballot::Failed,
            };
        }
    }

    pub fn fail_vote(&mut self, node: usize) {
        if let Some(b @ Ballot::Pending) = self.votes.get_mut(node) {
            *b = Ballot::Failed;
        }
    }

    /// The node timeout (one tick) passed: every vote still pending fails.
    pub fn time_out(&mut self) {
        for b in &mut self.votes {
            if *b == Ballot::Pending {
                *b = Ballot::Failed;
            }
        }
    }

    /// The vote of `node` in the current round, if a round is on.
    pub fn ballot(&self, node: usize) -> Option<impl std::hash::Hash + use<>> {
        self.votes.get(node).copied()
    }

    /// Reorders the votes to a new order of the nodes: vote `j` becomes the vote of
    /// former node `order[j]`.
    pub fn permute(&mut self, order: &[usize]) {
        if !self.votes.is_empty() {
            self.votes = order.iter().map(|&i| self.votes[i]).collect();
        }
    }

    fn decision(&self) -> Option<Decision> {
        if self.votes.is_empty() {
            return None;
        }
        let mut tally = Tally::new(self.votes.len());
        for b in &self.votes {
            match b {
                Ballot::Yes(_) => tally.add(&Vote::Yes),
                Ballot::Taken => tally.add(&Vote::Taken),
                Ballot::Failed => tally.add(&Vote::Timeout),
                Ballot::Pending => {}
            }
        }
        tally.decision()
    }

    /// The fencing counters the yes votes returned, one list (of one resource) each.
    fn counters(&self) -> Vec<[u64; 1]> {
        let yes = self.votes.iter().filter_map(|b| match b {
            Ballot::Yes(counter) => Some([*counter]),
            _ => None,
        });
        yes.collect()
    }

    fn settle(&mut self, phase: Phase) {
        self.phase = phase;
        self.votes.clear();
    }
}

impl Redlock {
    pub fn start(&self, s: &mut State, c: usize) {
        let client = &mut s.clients[c];
        client.attempts += 1;
        client.phase = Phase::Acquiring { start: s.now };
        self.send(s, c, Op::Acquire);
    }

    pub fn extend(&self, s: &mut State, c: usize) {
        let client = &mut s.clients[c];
        if let Phase::Holding { valid_until, fence } = client.phase {
            client.extends += 1;
            client.phase = Phase::Extending {
                start: s.now,
                valid_until,
                fence,
            };
            let counter = fence.is_some();
            self.send(s, c, Op::Extend { counter });
        }
    }

    /// The holder asks for its fencing token: the counters are raised from the
    /// client's clock.
    pub fn fence(&self, s: &mut State, c: usize) {
        let client = &mut s.clients[c];
        if let Phase::Holding {
            valid_until,
            fence: None,
        } = client.phase
        {
            client.fences += 1;
            client.phase = Phase::Fencing { valid_until };
            let floor = client_clock(s.now);
            self.send(s, c, Op::Raise { floor });
        }
    }

    /// The holder stops trusting the lock, then removes its key from every node.
    pub fn release(&self, s: &mut State, c: usize) {
        s.clients[c].settle(Phase::Idle);
        self.remove(s, c);
    }

    /// Acts on the current round once its votes decide it.
    pub fn advance(&self, s: &mut State, c: usize) {
        let now = s.now;
        let client = &s.clients[c];
        let Some(decision) = client.decision() else {
            return;
        };
        let quorum_said_yes = decision == Decision::Quorum;
        match client.phase {
            Phase::Acquiring { start } => match self.valid(start, now) {
                Some(valid_until) if quorum_said_yes => {
                    s.grants = s.grants.saturating_add(1);
                    s.clients[c].settle(Phase::Holding {
                        valid_until,
                        fence: None,
                    });
                }
                _ => self.give_up(s, c),
            },
            Phase::Fencing { valid_until } => {
                let counters = client.counters();
                let yes: Vec<&[u64]> = counters.iter().map(|f| f.as_slice()).collect();
                let tokens = fencing::tokens(&yes, quorum(self.config.nodes));
                match tokens.filter(|_| quorum_said_yes) {
                    Some((fences, true)) if self.config.write_back => {
                        let fence = fences[0];
                        s.clients[c].phase = Phase::CatchingUp { valid_until, fence };
                        self.send(s, c, Op::CatchUp { fence });
                    }
                    Some((fences, _)) => self.hand_out(s, c, valid_until, fences[0]),
                    None => self.no_token(s, c, valid_until),
                }
            }
            Phase::CatchingUp { valid_until, fence } if quorum_said_yes => {
                self.hand_out(s, c, valid_until, fence);
            }
            Phase::CatchingUp { valid_until, .. } => self.no_token(s, c, valid_until),
            Phase::Extending {
                start,
                valid_until,
                fence,
            } => {
                // Renewed only by a quorum reached while the lock was valid, with
                // validity left; otherwise the lock lasts no longer than the nodes that
                // applied the extension keep the key.
                let renewed = self
                    .valid(start, now)
                    .filter(|_| quorum_said_yes && client_clock(now) < valid_until);
                let valid_until = renewed.unwrap_or_else(|| valid_until.min(self.renewed(start)));
                s.clients[c].settle(Phase::Holding { valid_until, fence });
            }
            Phase::Idle | Phase::Holding { .. } => {}
        }
    }

    /// The client's clock reading at which the validity of a round begun at `start`
    /// and decided at `now` ends, if validity is left (`min_validity` 0).
    fn valid(&self, start: Tick, now: Tick) -> Option<u64> {
        let elapsed_us = client_clock(now) - client_clock(start);
        let elapsed = Duration::from_micros(elapsed_us);
        let validity = if self.config.drift {
            self.ttl.validity(elapsed)
        } else {
            self.ttl.duration().saturating_sub(elapsed)
        };
        let validity_us = u64::try_from(validity.as_micros()).unwrap_or(u64::MAX);
        (validity_us > 0).then(|| client_clock(start) + elapsed_us + validity_us)
    }

    /// `Ttl::renewed_until` on the client's clock: a round begun at `start` renews
    /// no node's key beyond `start + ttl`, less the drift.
    fn renewed(&self, start: Tick) -> u64 {
        let drift = if self.config.drift {
            crate::ttl::drift(self.ttl.duration(), DRIFT_FACTOR)
        } else {
            Duration::ZERO
        };
        let life = self.ttl.duration().saturating_sub(drift);
        client_clock(start) + u64::try_from(life.as_micros()).unwrap_or(u64::MAX)
    }

    /// The fencing token is handed out only if the rounds ended while the lock was
    /// valid; otherwise the lock holds on without one.
    fn hand_out(&self, s: &mut State, c: usize, valid_until: u64, fence: u64) {
        if client_clock(s.now) >= valid_until {
            return self.no_token(s, c, valid_until);
        }
        if s.max_fence.is_some_and(|max| fence <= max) {
            s.fence_violation = true;
        }
        s.max_fence = Some(s.max_fence.map_or(fence, |max| max.max(fence)));
        s.tokens = s.tokens.saturating_add(1);
        s.clients[c].settle(Phase::Holding {
            valid_until,
            fence: Some(fence),
        });
    }

    fn no_token(&self, s: &mut State, c: usize, valid_until: u64) {
        s.clients[c].settle(Phase::Holding {
            valid_until,
            fence: None,
        });
    }

    /// A failed attempt: it ends, and (unless switched off) removes its token.
    fn give_up(&self, s: &mut State, c: usize) {
        s.clients[c].settle(Phase::Idle);
        if self.config.cleanup {
            self.remove(s, c);
        }
    }
}
