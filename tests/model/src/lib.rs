//! A model of fredlock's protocol for the `stateright` model checker: acquisition with
//! cleanup, fencing tokens with their write-back, extension and release by 2 clients over 3 nodes that
//! crash, restart with or without their data, lose messages, and (in one
//! configuration) jump their clocks. The checker explores every interleaving within the
//! bounds of a [`Config`] (docs/safety.md, "Model checking").
//!
//! The clients decide with the crate's own pure parts: `Tally` for the votes and the
//! quorum, `Ttl::validity` for the validity a round leaves, `fencing::tokens` for
//! the token handed out and whether to write it back. The nodes run what
//! `scripts/ops.lua` runs (`node.rs`).
//!
//! Time is discrete: one tick is [`TICK`], and everything that happens within a tick
//! happens at its start. A node executes a request and its answer reaches the client
//! in one step; an answer that arrives later can only make a round's validity smaller
//! (the same end, a later start) or turn a vote into a timeout, which the model covers
//! by losing the answer.

// The crate's own pure parts, compiled here from their files: the model decides with
// the same code as the client. Items the model does not use are allowed to be unused.
#[allow(dead_code)]
#[path = "../../../src/error.rs"]
mod error;
#[allow(dead_code)]
#[path = "../../../src/fencing.rs"]
mod fencing;
#[allow(dead_code)]
#[path = "../../../src/quorum.rs"]
mod quorum;
#[allow(dead_code)]
#[path = "../../../src/ttl.rs"]
mod ttl;

mod client;
mod node;
pub mod rw;
mod symmetry;
#[cfg(test)]
mod tests;

use std::time::Duration;

use stateright::{Model, Property};

use crate::ttl::Ttl;
use client::{Client, Phase};
use node::{Node, Op, Restart, Token};
pub use symmetry::representative;

/// Time in ticks of [`TICK`].
pub type Tick = u8;

/// One tick of the model's clock.
pub const TICK: Duration = Duration::from_millis(20);
/// The lock TTL: 2 ticks (40 ms). A round decided in the tick it began leaves 34 ms
/// of validity, one decided a tick later 16 ms, two ticks later none.
pub const TTL: Tick = 2;
/// `fencing_retention`: a counter lives `TTL + RETENTION` from its last write.
pub const RETENTION: Tick = 1;
/// The restart quarantine period: the TTL, the largest a client may use.
pub const PERIOD: Tick = 2;
/// The drift factor the clients are configured with.
pub const DRIFT_FACTOR: f64 = 0.1;

/// A client's clock reading at tick `t`, in microseconds. The clients' clocks run at
/// `1 - DRIFT_FACTOR` of the nodes' rate: the slowest the configured factor allows,
/// which makes every validity last longest in real time (the worst case for mutual
/// exclusion; a faster client clock only ends its windows sooner).
pub fn client_clock(t: Tick) -> u64 {
    let tick_us = u64::try_from(TICK.as_micros()).unwrap_or(u64::MAX);
    u64::from(t) * tick_us * 9 / 10
}

/// What the checker explores: the bounds and the switches that break the protocol on
/// purpose, to show that the properties catch it.
#[derive(Clone, Debug)]
pub struct Config {
    pub nodes: usize,
    pub clients: usize,
    /// Acquisition attempts per client.
    pub attempts: u8,
    /// Extensions per client.
    pub extends: u8,
    /// Requests for a fencing token per client (each held lock asks at most once).
    pub fences: u8,
    /// The last tick.
    pub horizon: Tick,
    /// Node crashes (each followed by a restart of any kind, at any later time).
    pub crashes: u8,
    /// Requests or answers lost.
    pub losses: u8,
    /// Forward clock jumps on nodes.
    pub jumps: u8,
    /// The restart quarantine is on.
    pub quarantine: bool,
    /// The clients subtract the drift allowance from the validity.
    pub drift: bool,
    /// A failed attempt removes its token from every node.
    pub cleanup: bool,
    /// Disagreeing fencing counters are written back to a quorum before the token is
    /// handed out.
    pub write_back: bool,
}

impl Config {
    /// The implementation's protocol, two clients with one attempt each, over three
    /// nodes one of which may crash and restart, for two ticks (a whole TTL).
    pub fn protocol() -> Config {
        Config {
            nodes: 3,
            clients: 2,
            attempts: 1,
            extends: 0,
            fences: 1,
            horizon: 2,
            crashes: 1,
            losses: 0,
            jumps: 0,
            quarantine: true,
            drift: true,
            cleanup: true,
            write_back: true,
        }
    }

    fn ttl(&self) -> Ttl {
        let factor = if self.drift { DRIFT_FACTOR } else { 0.0 };
        // 40 ms is above the drift allowance of either factor.
        Ttl::new(TICK * u32::from(TTL), factor).unwrap_or_else(|_| unreachable!())
    }
}

/// The whole system at one moment, with the history the properties need.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub now: Tick,
    pub nodes: Vec<Node>,
    pub clients: Vec<Client>,
    /// Requests in flight, one FIFO per client and node (`client * nodes + node`): one
    /// connection each, so a removal always runs after the acquisition it undoes.
    pub wires: Vec<Vec<(Token, u8, Op)>>,
    /// Per wire: a request of it was lost (a removal may never arrive).
    pub lossy: Vec<bool>,
    pub crashes: u8,
    pub losses: u8,
    pub jumps: u8,
    /// The largest fencing token handed out so far.
    pub max_fence: Option<u64>,
    /// A token was handed out that was not above every earlier one.
    pub fence_violation: bool,
    pub grants: u8,
    /// Fencing tokens handed out.
    pub tokens: u8,
    /// A node refused an acquisition while quarantined.
    pub refused: bool,
}

/// One step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Time advances one tick: keys expire, and every vote still pending fails (the
    /// node timeout is one tick).
    Tick,
    Start(u8),
    Extend(u8),
    /// The holder asks for its fencing token.
    Fence(u8),
    Release(u8),
    /// The node runs the first request on the wire from this client; its answer arrives.
    Deliver(u8, u8),
    /// The first request on the wire is lost.
    LoseRequest(u8, u8),
    /// The node runs the first request; its answer is lost.
    LoseAnswer(u8, u8),
    Crash(u8),
    Restart(u8, Restart),
    Jump(u8),
}

/// The model: a [`Config`] and the TTL every client uses.
pub struct Redlock {
    pub config: Config,
    ttl: Ttl,
}

impl Redlock {
    pub fn new(config: Config) -> Redlock {
        let ttl = config.ttl();
        Redlock { config, ttl }
    }

    fn wire(&self, client: usize, node: usize) -> usize {
        client * self.config.nodes + node
    }
}

impl Model for Redlock {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        let c = &self.config;
        vec![State {
            now: 0,
            nodes: vec![Node::new(); c.nodes],
            clients: vec![Client::new(); c.clients],
            wires: vec![Vec::new(); c.nodes * c.clients],
            lossy: vec![false; c.nodes * c.clients],
            crashes: c.crashes,
            losses: c.losses,
            jumps: c.jumps,
            max_fence: None,
            fence_violation: false,
            grants: 0,
            tokens: 0,
            refused: false,
        }]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        let c = &self.config;
        if s.now < c.horizon {
            actions.push(Action::Tick);
        }
        for (i, client) in s.clients.iter().enumerate() {
            let i = i as u8;
            match client.phase {
                Phase::Idle if client.attempts < c.attempts => actions.push(Action::Start(i)),
                Phase::Holding { valid_until, fence } => {
                    actions.push(Action::Release(i));
                    let valid = valid_until > client_clock(s.now);
                    if client.extends < c.extends && valid {
                        actions.push(Action::Extend(i));
                    }
                    if client.fences < c.fences && valid && fence.is_none() {
                        actions.push(Action::Fence(i));
                    }
                }
                _ => {}
            }
        }
        for (w, wire) in s.wires.iter().enumerate() {
            let (client, node) = ((w / c.nodes) as u8, (w % c.nodes) as u8);
            if wire.is_empty() || !s.nodes[usize::from(node)].up {
                continue;
            }
            actions.push(Action::Deliver(client, node));
            if s.losses > 0 {
                actions.push(Action::LoseRequest(client, node));
                actions.push(Action::LoseAnswer(client, node));
            }
        }
        for (n, node) in s.nodes.iter().enumerate() {
            let n = n as u8;
            if !node.up {
                actions.push(Action::Restart(n, Restart::Empty));
                actions.push(Action::Restart(n, Restart::Snapshot));
                actions.push(Action::Restart(n, Restart::Persisted));
            } else if s.crashes > 0 {
                actions.push(Action::Crash(n));
            }
            if node.up && s.jumps > 0 {
                actions.push(Action::Jump(n));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Tick => self.tick(&mut s),
            Action::Start(c) => self.start(&mut s, usize::from(c)),
            Action::Extend(c) => self.extend(&mut s, usize::from(c)),
            Action::Fence(c) => self.fence(&mut s, usize::from(c)),
            Action::Release(c) => self.release(&mut s, usize::from(c)),
            Action::Deliver(c, n) => self.deliver(&mut s, usize::from(c), usize::from(n), true),
            Action::LoseAnswer(c, n) => {
                s.losses -= 1;
                self.deliver(&mut s, usize::from(c), usize::from(n), false);
            }
            Action::LoseRequest(c, n) => {
                s.losses -= 1;
                let w = self.wire(usize::from(c), usize::from(n));
                s.wires[w].remove(0);
                s.lossy[w] = true;
            }
            Action::Crash(n) => self.crash(&mut s, usize::from(n)),
            Action::Restart(n, how) => s.nodes[usize::from(n)].restart(how),
            Action::Jump(n) => {
                s.jumps -= 1;
                s.nodes[usize::from(n)].jump();
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always("mutual exclusion", |_, s: &State| {
                let now = client_clock(s.now);
                s.clients.iter().filter(|c| c.holds_at(now)).count() <= 1
            }),
            Property::always("fencing tokens increase", |_, s: &State| !s.fence_violation),
            Property::always(
                "no key of a finished attempt stays",
                |m: &Self, s: &State| m.finished_keys_are_going(s),
            ),
            Property::sometimes("two holders, one after the other", |_, s: &State| {
                s.grants >= 2
            }),
            Property::sometimes("a quarantined node refuses", |_, s: &State| s.refused),
            Property::sometimes("two fencing tokens handed out", |_, s: &State| {
                s.tokens >= 2
            }),
        ]
    }
}

impl Redlock {
    /// Every lock key of an attempt that ended (failed or released) has its removal on
    /// the wire, or a request of that wire was lost (then it expires with its TTL,
    /// which every key carries: at most `TTL` after its last write).
    fn finished_keys_are_going(&self, s: &State) -> bool {
        s.nodes.iter().enumerate().all(|(n, node)| {
            let Some((token, until)) = node.key else {
                return true;
            };
            let client = &s.clients[usize::from(token.client)];
            let w = self.wire(usize::from(token.client), n);
            let removal = s.wires[w].contains(&(token, 0, Op::Delete));
            until <= s.now + TTL && (!client.finished(token.attempt) || removal || s.lossy[w])
        })
    }

    fn tick(&self, s: &mut State) {
        s.now += 1;
        for node in &mut s.nodes {
            node.expire(s.now);
        }
        for c in 0..s.clients.len() {
            s.clients[c].time_out();
            self.advance(s, c);
        }
    }

    fn crash(&self, s: &mut State, n: usize) {
        s.crashes -= 1;
        s.nodes[n].up = false;
        // The connections fail: what was on their wires is lost, and the votes waiting
        // for it fail.
        for c in 0..s.clients.len() {
            let w = self.wire(c, n);
            if !s.wires[w].is_empty() {
                s.wires[w].clear();
                s.lossy[w] = true;
            }
            s.clients[c].fail_vote(n);
            self.advance(s, c);
        }
    }

    fn deliver(&self, s: &mut State, c: usize, n: usize, answered: bool) {
        let w = self.wire(c, n);
        let (token, round, op) = s.wires[w].remove(0);
        let answer = s.nodes[n].apply(token, op, s.now, self.config.quarantine);
        s.refused |= answer == node::Answer::Quarantined;
        if answered {
            s.clients[c].vote(n, round, answer);
            self.advance(s, c);
        }
    }

    /// Sends `op` of the client's current attempt to every node, as a new round: a
    /// node that is down fails its vote at once (a refused connection).
    fn send(&self, s: &mut State, c: usize, op: Op) {
        let token = s.clients[c].token(c);
        let round = s.clients[c].new_round(self.config.nodes);
        for n in 0..self.config.nodes {
            if s.nodes[n].up {
                s.wires[self.wire(c, n)].push((token, round, op));
            } else {
                s.clients[c].fail_vote(n);
            }
        }
        self.advance(s, c);
    }

    /// Sends the removal of the client's current token to every node, in round 0: no
    /// one waits for its answers. A node that is down never gets it.
    fn remove(&self, s: &mut State, c: usize) {
        let token = s.clients[c].token(c);
        for n in 0..self.config.nodes {
            let w = self.wire(c, n);
            if s.nodes[n].up {
                s.wires[w].push((token, 0, Op::Delete));
            } else {
                s.lossy[w] = true;
            }
        }
    }
}
