//! A model of fredlock's read-write locks (docs/design.md 1.16) for the `stateright`
//! model checker: one writer that retries, with a claim, while reader clients keep
//! acquiring, holding and releasing read locks, over 3 nodes one of which the writer
//! cannot reach (partitioned from it, or slower than its node timeout) while the
//! readers can. It checks that the writer is granted within a bound of attempts and
//! that no writer's lock overlaps a reader's (docs/safety.md, "Model checking").
//!
//! Time is as in the plain-lock model (one tick is the node timeout), without clock
//! drift: clients and nodes share one clock, a round's validity ends `TTL` ticks after
//! it began and every key it set lives at least that long. The healthy nodes answer
//! within the tick a request was sent in: a writer's next attempt reaches them within
//! two ticks of the last, which the claim (2 ticks) covers, as `writer_claim` (the
//! pause and four node timeouts) does in the implementation.

mod node;
mod symmetry;
#[cfg(test)]
mod tests;

use stateright::{Model, Property};

use super::Tick;
use crate::quorum::{Decision, Tally, Vote};
use node::{Answer, Faults, Key, Op};
pub use symmetry::representative;

/// Nodes; the last one, [`FAR`], is the one the writer does not reach.
pub const NODES: usize = 3;
pub const FAR: usize = NODES - 1;
/// The TTL of every lock, readers' and the writer's.
pub const TTL: Tick = 2;
/// The writer's claim: from one attempt's request on a node to the next one's is at
/// most two ticks.
pub const CLAIM: Tick = 2;
/// The writer's index among the clients; the readers follow.
const WRITER: usize = 0;

/// Who wrote a key or a member: a client and the number of its attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token {
    pub client: u8,
    pub attempt: u8,
}

/// How the writer fails to reach the far node (readers reach it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Far {
    /// Cut off: the writer's requests to it are lost.
    Partitioned,
    /// Slow: each runs there during the tick after the one it was sent in, after the
    /// writer's timeout (a node slower than one node timeout, faster than two).
    Slow,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Reader clients, and the read locks each acquires in turn.
    pub readers: usize,
    pub reads: u8,
    /// Readers may release early (else each holds its lock until it lapses).
    pub releases: bool,
    /// The writer's attempts; the last one claims nothing.
    pub attempts: u8,
    /// The failed attempts the writer may make before it must be granted.
    pub bound: u8,
    pub far: Far,
    /// The claim's duration in ticks.
    pub claim: Tick,
    /// The fix: a failed attempt that another follows leaves a claim in place of the
    /// writer's key (without it, the current protocol: the key is deleted).
    pub cleanup_claims: bool,
    pub faults: Faults,
    pub horizon: Tick,
}

impl Config {
    /// The fixed protocol: 2 readers with 3 read locks each (each holding its lock
    /// until it lapses, enough for new readers to keep coming for the whole horizon),
    /// a writer with 4 attempts (bound 2, see docs/safety.md), the far node
    /// partitioned, 5 ticks.
    pub fn fixed() -> Config {
        Config {
            readers: 2,
            reads: 3,
            releases: false,
            attempts: 4,
            bound: 2,
            far: Far::Partitioned,
            claim: CLAIM,
            cleanup_claims: true,
            faults: Faults {
                replace_readers: false,
            },
            horizon: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Idle,
    Acquiring {
        start: Tick,
    },
    /// Valid while the clock reads less than `until`.
    Holding {
        until: Tick,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    pub phase: Phase,
    /// Attempts begun; the current one is number `attempts`.
    pub attempts: u8,
    /// The current round's votes (`None`: pending), one per node; empty once decided.
    votes: Vec<Option<Answer>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub now: Tick,
    pub keys: Vec<Key>,
    /// The writer first, then the readers.
    pub clients: Vec<Client>,
    /// Requests in flight, one FIFO per client and node: a removal's answer is waited
    /// for by no one, an acquisition's by the attempt of its token.
    pub wires: Vec<Vec<(Token, Op)>>,
    /// The writer's attempts that failed, and whether it will try again next tick.
    pub failed: u8,
    pub retry: bool,
    /// The writer's requests to the slow far node that were sent before this tick.
    pub late: u8,
    pub granted: bool,
    /// Two readers held at once; a reader was refused by a claim.
    pub shared: bool,
    pub refused: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time advances: keys expire, pending votes time out, the writer retries.
    Tick,
    /// A client begins an attempt (the writer's first; a reader's next read lock).
    Start(u8),
    Release(u8),
    /// The node runs the first request on the wire from this client.
    Deliver(u8, u8),
}

pub struct ReadWrite {
    pub config: Config,
}

impl ReadWrite {
    fn wire(c: usize, n: usize) -> usize {
        c * NODES + n
    }

    fn token(s: &State, c: usize) -> Token {
        let attempt = s.clients[c].attempts;
        Token {
            client: c as u8,
            attempt,
        }
    }

    /// Whether the client's requests to this node are lost (the writer's to the
    /// partitioned far node).
    fn lost(&self, c: usize, n: usize) -> bool {
        c == WRITER && n == FAR && self.config.far == Far::Partitioned
    }

    fn start(&self, s: &mut State, c: usize) {
        let token = {
            let client = &mut s.clients[c];
            client.attempts += 1;
            client.phase = Phase::Acquiring { start: s.now };
            client.votes = vec![None; NODES];
            Self::token(s, c)
        };
        let op = if c == WRITER {
            let retry_follows = s.clients[c].attempts < self.config.attempts;
            Op::Acquire {
                claim: if retry_follows { self.config.claim } else { 0 },
            }
        } else {
            Op::Read
        };
        for n in 0..NODES {
            if !self.lost(c, n) {
                s.wires[Self::wire(c, n)].push((token, op));
            }
        }
    }

    /// Sends the removal of the client's current token to every node that did not
    /// answer `Taken` in its round (`acquisition.rs`), or to every node for a release
    /// (its round is over).
    fn remove(&self, s: &mut State, c: usize, op: Op) {
        let token = Self::token(s, c);
        for n in 0..NODES {
            let taken = s.clients[c].votes.get(n) == Some(&Some(Answer::Taken));
            if !self.lost(c, n) && !taken {
                s.wires[Self::wire(c, n)].push((token, op));
            }
        }
    }

    fn release(&self, s: &mut State, c: usize) {
        s.clients[c].phase = Phase::Idle;
        self.remove(s, c, Op::Delete { claim: 0 });
    }

    /// Acts on the current round once its votes decide it; `timed_out`: the tick ended.
    fn advance(&self, s: &mut State, c: usize, timed_out: bool) {
        let client = &s.clients[c];
        let Phase::Acquiring { start } = client.phase else {
            return;
        };
        let mut tally = Tally::new(NODES);
        for vote in &client.votes {
            tally.add(&match vote {
                Some(Answer::Yes) => Vote::Yes,
                Some(Answer::Taken) => Vote::Taken,
                None if timed_out => Vote::Timeout,
                None => Vote::Pending,
            });
        }
        match tally.decision() {
            None => {}
            Some(Decision::Quorum) if s.now < start + TTL => {
                s.clients[c].phase = Phase::Holding { until: start + TTL };
                if c == WRITER {
                    s.granted = true;
                }
                let readers = s.clients[1..].iter();
                let holding = readers.filter(|r| matches!(r.phase, Phase::Holding { .. }));
                s.shared |= holding.count() >= 2;
            }
            Some(_) => {
                s.clients[c].phase = Phase::Idle;
                let mut claim = 0;
                if c == WRITER {
                    s.failed += 1;
                    s.retry = s.clients[c].attempts < self.config.attempts;
                    if s.retry && self.config.cleanup_claims {
                        claim = self.config.claim;
                    }
                }
                self.remove(s, c, Op::Delete { claim });
            }
        }
        if !matches!(s.clients[c].phase, Phase::Acquiring { .. }) && !s.clients[c].votes.is_empty()
        {
            // Decided: later answers count for nothing.
            s.clients[c].votes.clear();
        }
    }

    fn tick(&self, s: &mut State) {
        s.now += 1;
        s.late = s.wires[Self::wire(WRITER, FAR)].len() as u8;
        for key in &mut s.keys {
            key.expire(s.now);
        }
        for c in 0..s.clients.len() {
            if matches!(s.clients[c].phase, Phase::Holding { until } if until <= s.now) {
                s.clients[c].phase = Phase::Idle;
            }
            self.advance(s, c, true);
        }
        if s.retry {
            s.retry = false;
            self.start(s, WRITER);
        }
    }

    fn deliver(&self, s: &mut State, c: usize, n: usize) {
        let (token, op) = s.wires[Self::wire(c, n)].remove(0);
        if (c, n) == (WRITER, FAR) {
            s.late -= 1;
        }
        let faults = self.config.faults;
        let answer = s.keys[n].apply(token, op, s.now, TTL, faults);
        if op == Op::Read && answer == Answer::Taken && s.keys[n].claimed() {
            s.refused = true;
        }
        let client = &mut s.clients[c];
        let current = token.attempt == client.attempts && !client.votes.is_empty();
        // The far node's answers to the writer come after its round ended.
        if current && !matches!(op, Op::Delete { .. }) {
            client.votes[n] = Some(answer);
            self.advance(s, c, false);
        }
    }

    /// The writer's lock overlaps no reader's.
    fn exclusive(s: &State) -> bool {
        let holds = |c: &Client| matches!(c.phase, Phase::Holding { until } if until > s.now);
        !holds(&s.clients[WRITER]) || !s.clients[1..].iter().any(holds)
    }
}

impl Model for ReadWrite {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let client = Client {
            phase: Phase::Idle,
            attempts: 0,
            votes: Vec::new(),
        };
        let clients = 1 + self.config.readers;
        vec![State {
            now: 0,
            keys: vec![Key::Free; NODES],
            clients: vec![client; clients],
            wires: vec![Vec::new(); clients * NODES],
            failed: 0,
            retry: false,
            late: 0,
            granted: false,
            shared: false,
            refused: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        // The healthy nodes answer within the tick: time waits for their wires.
        // The healthy nodes answer within the tick, the slow far node within the next:
        // time waits for them.
        let far = Self::wire(WRITER, FAR);
        let drained = s
            .wires
            .iter()
            .enumerate()
            .all(|(w, q)| q.is_empty() || w == far);
        if s.now < self.config.horizon && drained && s.late == 0 {
            actions.push(Action::Tick);
        }
        for (c, client) in s.clients.iter().enumerate() {
            let i = c as u8;
            match client.phase {
                Phase::Idle if c == WRITER && client.attempts == 0 => {
                    actions.push(Action::Start(i));
                }
                Phase::Idle if c != WRITER && client.attempts < self.config.reads => {
                    actions.push(Action::Start(i));
                }
                Phase::Holding { .. } if c == WRITER || self.config.releases => {
                    actions.push(Action::Release(i));
                }
                _ => {}
            }
        }
        for (w, wire) in s.wires.iter().enumerate() {
            if !wire.is_empty() && (w != far || s.late > 0) {
                actions.push(Action::Deliver((w / NODES) as u8, (w % NODES) as u8));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => self.tick(&mut s),
            Action::Start(c) => self.start(&mut s, usize::from(c)),
            Action::Release(c) => self.release(&mut s, usize::from(c)),
            Action::Deliver(c, n) => self.deliver(&mut s, usize::from(c), usize::from(n)),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("no writer overlaps a reader", |_, s: &State| {
                Self::exclusive(s)
            }),
            Property::always(
                "the writer is granted within the bound",
                |m: &Self, s: &State| s.failed <= m.config.bound,
            ),
            Property::sometimes(
                "the writer is granted after the bound",
                |m: &Self, s: &State| s.granted && s.failed == m.config.bound,
            ),
            Property::sometimes("the writer fails every attempt", |m: &Self, s: &State| {
                s.failed == m.config.attempts
            }),
            Property::sometimes("two readers hold at once", |_, s: &State| s.shared),
            Property::sometimes("a claim refuses a reader", |_, s: &State| s.refused),
        ]
    }
}
