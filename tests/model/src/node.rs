//! One Redis node of the model: what `scripts/ops.lua` does to a node's keys, one
//! operation at a time, on a clock of whole ticks, and what a crash, a restart and a
//! clock jump do to them.

use super::{PERIOD, RETENTION, TTL, Tick};

/// Who set a lock key: a client and the number of its attempt (the random token of
/// the implementation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    pub client: u8,
    pub attempt: u8,
}

/// An operation of `ops.lua`, as a client sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `lock`: the quarantine check, then SET NX PX (the counter is not touched).
    Acquire,
    /// `extend`: compare-and-pexpire of the key and, for a lock that has handed out a
    /// fencing token, of its counter.
    Extend { counter: bool },
    /// `fence`: while the key is ours, the counter raised to `max(counter + 1, floor)`.
    Raise { floor: u64 },
    /// `catch_up`: the write-back, raising the counter to `fence` while the key is ours.
    CatchUp { fence: u64 },
    /// `delete`: compare-and-delete (a release, or the removal of a failed attempt).
    Delete,
}

/// What a node answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    /// Done: for a fence, the counter it returned.
    Yes(u64),
    /// The key is not ours (another token holds it, or ours is gone).
    Taken,
    /// `QUARANTINED <ms>`: the node sits out acquisitions.
    Quarantined,
}

/// How a node comes back after a crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Restart {
    /// No persistence: every key is gone.
    Empty,
    /// From an old snapshot: the incarnation marker of an earlier run is back, the
    /// recent lock keys and counter raises are not.
    Snapshot,
    /// `appendfsync always`: every acknowledged write is back.
    Persisted,
}

/// A node's keyspace, each key with the tick at which it expires.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Node {
    pub up: bool,
    /// The server process's `run_id`: a new one at every start.
    pub run_id: u8,
    /// The lock key: its token and expiry.
    pub key: Option<(Token, Tick)>,
    /// The fencing counter: its value and expiry.
    pub counter: Option<(u64, Tick)>,
    /// `fredlock:incarnation`: the `run_id` recorded by the last client (no expiry).
    pub marker: Option<u8>,
    /// `fredlock:quarantine`: its expiry.
    pub guard: Option<Tick>,
}

impl Node {
    /// A node of a deployment whose quarantine was lifted: the marker holds its run_id.
    pub fn new() -> Node {
        Node {
            up: true,
            run_id: 0,
            key: None,
            counter: None,
            marker: Some(0),
            guard: None,
        }
    }

    /// Runs one operation at `now`; `quarantine` is whether the client sends a period.
    pub fn apply(&mut self, token: Token, op: Op, now: Tick, quarantine: bool) -> Answer {
        let ours = matches!(self.key, Some((t, _)) if t == token);
        // A counter's life: RETENTION beyond `until` (an extension: TTL from now; a
        // raise or write-back: the key's own expiry), or what it has left if longer.
        let counter_until = |counter: Option<(u64, Tick)>, until: Tick| {
            (until + RETENTION).max(counter.map_or(0, |(_, until)| until))
        };
        let key_until = self.key.map_or(now, |(_, until)| until);
        match op {
            Op::Acquire => {
                if quarantine && self.quarantined(now) {
                    return Answer::Quarantined;
                }
                if self.key.is_some() {
                    return Answer::Taken;
                }
                self.key = Some((token, now + TTL));
                Answer::Yes(0)
            }
            _ if !ours => Answer::Taken,
            Op::Extend { counter } => {
                self.key = Some((token, now + TTL));
                // PEXPIRE does not bring back a counter that is gone.
                if let Some((value, _)) = self.counter.filter(|_| counter) {
                    self.counter = Some((value, counter_until(self.counter, now + TTL)));
                }
                Answer::Yes(0)
            }
            Op::Raise { floor } => {
                let current = self.counter.map_or(0, |(value, _)| value);
                let fence = (current + 1).max(floor);
                self.counter = Some((fence, counter_until(self.counter, key_until)));
                Answer::Yes(fence)
            }
            Op::CatchUp { fence } => {
                if self.counter.is_none_or(|(value, _)| value < fence) {
                    self.counter = Some((fence, counter_until(self.counter, key_until)));
                }
                Answer::Yes(0)
            }
            Op::Delete => {
                self.key = None;
                Answer::Yes(0)
            }
        }
    }

    /// The quarantine step of `ops.lua`: a marker that is missing or holds another
    /// run_id starts (never shortens) the guard and records this run_id; the node sits
    /// out while the guard lives.
    fn quarantined(&mut self, now: Tick) -> bool {
        if self.marker != Some(self.run_id) {
            if self.guard.is_none_or(|until| until < now + PERIOD) {
                self.guard = Some(now + PERIOD);
            }
            self.marker = Some(self.run_id);
        }
        self.guard.is_some()
    }

    /// Time reaches `now`: keys whose expiry came are gone (Redis expires by its own
    /// clock, whether the process runs or not).
    pub fn expire(&mut self, now: Tick) {
        if self.key.is_some_and(|(_, until)| until <= now) {
            self.key = None;
        }
        if self.counter.is_some_and(|(_, until)| until <= now) {
            self.counter = None;
        }
        if self.guard.is_some_and(|until| until <= now) {
            self.guard = None;
        }
    }

    pub fn restart(&mut self, how: Restart) {
        self.up = true;
        self.run_id += 1;
        match how {
            Restart::Empty => {
                self.key = None;
                self.counter = None;
                self.marker = None;
                self.guard = None;
            }
            Restart::Snapshot => {
                self.key = None;
                self.counter = None;
            }
            Restart::Persisted => {}
        }
    }

    /// The node's wall clock steps forward by more than any expiry: every key with an
    /// expiry is gone at once (the marker has none).
    pub fn jump(&mut self) {
        self.key = None;
        self.counter = None;
        self.guard = None;
    }
}
