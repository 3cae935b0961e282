//! An in-memory node for unit tests of what lies above the seam: the semantics of
//! `scripts/ops.lua` on a map with expiry, and the faults a test sets (down, frozen,
//! slow). Container tests against real Redis check the real thing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Reply;
use crate::quorum::Vote;
use crate::scripts::{Kind, Op};

/// How the node behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    Up,
    /// Every call fails at once (a refused connection).
    Down,
    /// Calls are held until the node is thawed, then run in order; their callers time
    /// out meanwhile.
    Frozen,
    /// Every call takes this long, and runs then, even after its caller timed out.
    Slow(Duration),
}

#[derive(Debug)]
pub(crate) struct Memory {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    mode: Mode,
    keys: HashMap<String, (String, Instant)>,
    counters: HashMap<String, (u64, Instant)>,
    /// Keys that hold another type: any operation reading them fails.
    wrong_type: HashSet<String>,
    /// Calls held while frozen.
    held: Vec<Vec<Arc<Op>>>,
    /// The size of every batch run, in order.
    batches: Vec<usize>,
    /// Every operation run, in order.
    log: Vec<(Kind, Arc<str>)>,
    /// The number of the client's connection to this node.
    connection: u64,
}

impl Memory {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Memory {
            state: Mutex::new(State {
                mode: Mode::Up,
                keys: HashMap::new(),
                counters: HashMap::new(),
                wrong_type: HashSet::new(),
                held: Vec::new(),
                batches: Vec::new(),
                log: Vec::new(),
                connection: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the mode; a thawed node runs what it held, in order.
    /// A node that was down is reached on a new connection.
    pub(crate) fn set_mode(&self, mode: Mode) {
        let mut state = self.state();
        if state.mode == Mode::Down && mode != Mode::Down {
            state.connection += 1;
        }
        state.mode = mode;
        if mode != Mode::Frozen {
            for ops in std::mem::take(&mut state.held) {
                state.apply(&ops);
            }
        }
    }

    /// The client replaces its connection: what a frozen node held on the old one is
    /// lost.
    pub(crate) fn reconnect(&self) {
        let mut state = self.state();
        state.held.clear();
        state.connection += 1;
    }

    pub(crate) fn connected(&self) -> bool {
        self.state().mode != Mode::Down
    }

    pub(crate) fn connection(&self) -> u64 {
        self.state().connection
    }

    pub(crate) fn set_wrong_type(&self, key: &str) {
        self.state().wrong_type.insert(key.to_string());
    }

    /// The token a live key holds.
    pub(crate) fn holder(&self, key: &str) -> Option<String> {
        let state = self.state();
        let (token, until) = state.keys.get(key)?;
        (*until > Instant::now()).then(|| token.clone())
    }

    /// The value of a live fencing counter.
    pub(crate) fn counter(&self, key: &str) -> Option<u64> {
        let state = self.state();
        let (value, until) = state.counters.get(key)?;
        (*until > Instant::now()).then_some(*value)
    }

    /// How many live keys the node holds, counters included.
    pub(crate) fn live_keys(&self) -> usize {
        let now = Instant::now();
        let state = self.state();
        let keys = state
            .keys
            .values()
            .filter(|(_, until)| *until > now)
            .count();
        keys + state
            .counters
            .values()
            .filter(|(_, until)| *until > now)
            .count()
    }

    pub(crate) fn batches(&self) -> Vec<usize> {
        self.state().batches.clone()
    }

    pub(crate) fn log(&self) -> Vec<(Kind, Arc<str>)> {
        self.state().log.clone()
    }

    pub(crate) async fn run(self: &Arc<Self>, ops: &[Arc<Op>], deadline: Instant) -> Vec<Reply> {
        let timeout = || ops.iter().map(|_| Reply::Vote(Vote::Timeout)).collect();
        let mode = self.state().mode;
        match mode {
            Mode::Up => self.state().apply(ops),
            Mode::Down => ops
                .iter()
                .map(|_| Reply::Unsent(Vote::Error("not connected: Connection refused".into())))
                .collect(),
            Mode::Frozen => {
                self.state().held.push(ops.to_vec());
                tokio::time::sleep_until(deadline.into()).await;
                timeout()
            }
            Mode::Slow(delay) => {
                let done = Instant::now() + delay;
                if done <= deadline {
                    tokio::time::sleep(delay).await;
                    return self.state().apply(ops);
                }
                let (memory, late) = (Arc::clone(self), ops.to_vec());
                tokio::spawn(async move {
                    tokio::time::sleep_until(done.into()).await;
                    memory.state().apply(&late);
                });
                tokio::time::sleep_until(deadline.into()).await;
                timeout()
            }
        }
    }
}

impl State {
    fn apply(&mut self, ops: &[Arc<Op>]) -> Vec<Reply> {
        self.batches.push(ops.len());
        ops.iter().map(|op| self.apply_one(op)).collect()
    }

    fn apply_one(&mut self, op: &Op) -> Reply {
        let now = Instant::now();
        self.log.push((op.kind, Arc::clone(&op.token)));
        self.keys.retain(|_, (_, until)| *until > now);
        self.counters.retain(|_, (_, until)| *until > now);
        let read = op.keys.iter().chain(op.fence_keys.iter());
        if let Some(key) = read.into_iter().find(|k| self.wrong_type.contains(&***k)) {
            return Reply::Failed(format!(
                "WRONGTYPE Operation against a key holding the wrong kind of value ({key})"
            ));
        }
        let ours = op
            .keys
            .iter()
            .all(|k| self.keys.get(&**k).is_some_and(|(t, _)| **t == *op.token));
        let at = |ms: u64| now + Duration::from_millis(ms);
        match op.kind {
            Kind::Acquire => {
                if op.keys.iter().any(|k| self.keys.contains_key(&**k)) {
                    return Reply::Int(0);
                }
                for key in op.keys.iter() {
                    self.keys
                        .insert(key.to_string(), (op.token.to_string(), at(op.ttl_ms)));
                }
                Reply::Int(1)
            }
            // The first free slot in the order given (the record of the number of
            // permits is not modelled here).
            Kind::Permit => {
                let Some(position) = op.keys.iter().position(|k| !self.keys.contains_key(&**k))
                else {
                    return Reply::Int(0);
                };
                self.keys.insert(
                    op.keys[position].to_string(),
                    (op.token.to_string(), at(op.ttl_ms)),
                );
                Reply::List(vec![u64::try_from(position + 1).unwrap_or(u64::MAX)])
            }
            Kind::Read => Reply::Failed("ERR read locks are not modelled in memory".into()),
            Kind::Extend | Kind::Fence | Kind::CatchUp if !ours => Reply::Int(0),
            Kind::Extend => {
                for key in op.keys.iter() {
                    if let Some(entry) = self.keys.get_mut(&**key) {
                        entry.1 = at(op.ttl_ms);
                    }
                }
                for counter in op.fence_keys.iter() {
                    if let Some(entry) = self.counters.get_mut(&**counter) {
                        entry.1 = entry.1.max(at(op.keep_ms));
                    }
                }
                Reply::Int(1)
            }
            // A raised counter outlives its key by the retention (`keep_ms`).
            Kind::Fence | Kind::CatchUp => {
                let mut fences = Vec::new();
                let pairs = op.keys.iter().zip(op.fence_keys.iter());
                for (i, (key, counter)) in pairs.enumerate() {
                    let key_until = self.keys.get(&**key).map_or(now, |(_, u)| *u);
                    let life = key_until + Duration::from_millis(op.keep_ms);
                    let (current, until) =
                        self.counters.get(&**counter).copied().unwrap_or((0, now));
                    let fence = match op.kind {
                        Kind::Fence => (current + 1).max(op.floor),
                        _ => current.max(op.fences.get(i).copied().unwrap_or(0)),
                    };
                    if fence != current {
                        self.counters
                            .insert(counter.to_string(), (fence, until.max(life)));
                    }
                    fences.push(fence);
                }
                match op.kind {
                    Kind::Fence => Reply::List(fences),
                    _ => Reply::Int(1),
                }
            }
            Kind::Release | Kind::Remove => {
                let mut all = 1;
                for key in op.keys.iter() {
                    if self.keys.get(&**key).is_some_and(|(t, _)| **t == *op.token) {
                        self.keys.remove(&**key);
                    } else {
                        all = 0;
                    }
                }
                Reply::Int(all)
            }
        }
    }
}

/// `n` in-memory nodes named `mem0`, `mem1`, ... with `timeout`, and their memories.
pub(crate) fn nodes(n: usize, timeout: Duration) -> (Arc<[Arc<super::Node>]>, Vec<Arc<Memory>>) {
    let memories: Vec<Arc<Memory>> = (0..n).map(|_| Memory::new()).collect();
    let nodes = memories
        .iter()
        .enumerate()
        .map(|(i, m)| Arc::new(super::Node::memory(&format!("mem{i}"), timeout, m)))
        .collect();
    (nodes, memories)
}
