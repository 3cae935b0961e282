//! fredlock's Lua scripts, in one place, and the operations a batch carries.
//!
//! Every lock operation (acquire, extend, fencing, release, removal of a failed
//! attempt's token) runs in `scripts/ops.lua`, one call per batch of operations for
//! one node: by `FCALL` of the function library made of it where the server has
//! functions (Redis 7 and later), else by `EVALSHA`/`EVAL` of the script made of it.
//! `scripts/lift.lua` lifts the restart quarantine and `scripts/check.lua` is the
//! permission check of `build()`. Their texts are in `lua`; the operations, and the
//! arguments of a call, here.

mod lua;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fred::bytes_utils::Str;
use fred::prelude::Value;

pub(crate) use lua::{CHECK_LUA, LIBRARY, LIFT_LUA, OPS, OPS_EVAL};

use crate::request::{Mode, Request, Semaphore};
use crate::ttl;

/// A released key is announced on this prefix followed by the key, so that clients
/// waiting for it retry at once instead of at their next polling time.
pub(crate) const RELEASE_CHANNEL_PREFIX: &str = "fredlock:released:";

/// What an operation does on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// All-or-nothing `SET NX PX` of the keys.
    Acquire,
    /// A reader joins the key's readers, unless a writer holds or claims it.
    Read,
    /// The first free slot of a semaphore, in the order given, is set to the token.
    Permit,
    /// Compare-and-pexpire.
    Extend,
    /// Raise the fencing counters while the keys hold the token: a holder's first
    /// request for its fencing tokens.
    Fence,
    /// Fencing write-back: raise the counters to the tokens handed out while the keys
    /// hold the token.
    CatchUp,
    /// Compare-and-delete, announcing each deleted key.
    Release,
    /// Compare-and-delete of a failed attempt's token, without announcing it.
    Remove,
}

impl Kind {
    /// Whether it acquires (and so is refused by a quarantined node).
    pub(crate) fn acquires(self) -> bool {
        matches!(self, Kind::Acquire | Kind::Read | Kind::Permit)
    }

    /// Whether sending it after its caller gave up is harmless: a delete of our own
    /// token is, a `SET` or a renewal nobody waits for any more is not.
    pub(crate) fn harmless_late(self) -> bool {
        matches!(self, Kind::Release | Kind::Remove)
    }
}

/// The restart quarantine's keys on a node, and its period.
#[derive(Debug)]
pub(crate) struct QuarantineKeys {
    pub(crate) marker: Arc<str>,
    pub(crate) guard: Arc<str>,
    pub(crate) period: Duration,
}

/// One lock operation, made once per round and shared by every node's call.
#[derive(Debug)]
pub(crate) struct Op {
    pub(crate) kind: Kind,
    pub(crate) keys: Arc<[Arc<str>]>,
    /// The fencing counters, one per key (fence, catch-up; extend of a lock whose
    /// fencing tokens were asked for).
    pub(crate) fence_keys: Arc<[Arc<str>]>,
    pub(crate) token: Arc<str>,
    /// The lock TTL (acquire, extend).
    pub(crate) ttl_ms: u64,
    /// How long a counter outlives the lock: extend, the TTL plus the retention from
    /// now; fence and catch-up, the retention beyond the key's own life on the node.
    pub(crate) keep_ms: u64,
    /// The fencing floor (fence).
    pub(crate) floor: u64,
    /// How long a writer that will try again claims the key: where it finds readers
    /// (acquire), and in place of its own key when its attempt failed (remove); 0: no
    /// claim.
    pub(crate) claim_ms: u64,
    /// The fencing tokens to write back (catch-up).
    pub(crate) fences: Arc<[u64]>,
    /// With the restart quarantine on (acquire).
    pub(crate) quarantine: Option<Arc<QuarantineKeys>>,
    /// A semaphore's record and number of permits (permit acquire, extend, release).
    pub(crate) semaphore: Option<Arc<Semaphore>>,
    /// The operation as the script reads it, made once for all the nodes.
    wire: OnceLock<Wire>,
}

/// An operation's header (its name in the script, number of keys, number of arguments), keys and
/// arguments, as values that clone without copying their bytes.
#[derive(Debug)]
struct Wire {
    header: [Value; 3],
    keys: Vec<Value>,
    args: Vec<Value>,
}

impl Op {
    fn new(kind: Kind, keys: &Arc<[Arc<str>]>, token: &Arc<str>) -> Self {
        Op {
            kind,
            keys: Arc::clone(keys),
            fence_keys: Arc::from([]),
            token: Arc::clone(token),
            ttl_ms: 0,
            keep_ms: 0,
            floor: 0,
            claim_ms: 0,
            fences: Arc::from([]),
            quarantine: None,
            semaphore: None,
            wire: OnceLock::new(),
        }
    }

    /// An acquisition of `request` as its mode says: a lock, a read lock, or a permit
    /// (whose free slots are tried from `first_slot` on, round the semaphore).
    pub(crate) fn acquire(
        request: &Request,
        token: &Arc<str>,
        quarantine: Option<Arc<QuarantineKeys>>,
        first_slot: usize,
    ) -> Self {
        let (kind, keys) = match &request.mode {
            Mode::Write => (Kind::Acquire, Arc::clone(&request.keys)),
            Mode::Read => (Kind::Read, Arc::clone(&request.keys)),
            Mode::Permit(semaphore) => (Kind::Permit, semaphore.slots_from(first_slot)),
        };
        Op {
            ttl_ms: request.ttl.ms(),
            quarantine,
            semaphore: request.semaphore().cloned(),
            ..Op::new(kind, &keys, token)
        }
    }

    /// With a writer's claim on a key held by readers, for `claim` (at most
    /// [`ttl::MAX_TTL`], which the node's expiry arithmetic holds).
    pub(crate) fn claiming(self, claim: Option<Duration>) -> Self {
        Op {
            claim_ms: claim.map_or(0, |claim| ttl::ms(claim.min(ttl::MAX_TTL))),
            ..self
        }
    }

    /// Renews the keys for the request's TTL and, with `retention` (a lock whose
    /// fencing tokens were asked for), their counters for the TTL plus `retention`.
    pub(crate) fn extend(request: &Request, token: &Arc<str>, retention: Option<Duration>) -> Self {
        Op {
            fence_keys: match retention {
                Some(_) => Arc::clone(&request.fence_keys),
                None => Arc::from([]),
            },
            ttl_ms: request.ttl.ms(),
            keep_ms: retention.map_or(0, |r| life(request, r)),
            semaphore: request.semaphore().cloned(),
            ..Op::new(Kind::Extend, &request.keys, token)
        }
    }

    /// Raises the counters from `floor`, each to outlive its lock key by `retention`.
    pub(crate) fn fence(
        request: &Request,
        token: &Arc<str>,
        floor: u64,
        retention: Duration,
    ) -> Self {
        Op {
            floor,
            ..Op::counters(Kind::Fence, request, token, retention)
        }
    }

    /// Writes `fences` back to the counters, each to outlive its lock key by
    /// `retention`.
    pub(crate) fn catch_up(
        request: &Request,
        token: &Arc<str>,
        fences: &Arc<[u64]>,
        retention: Duration,
    ) -> Self {
        Op {
            fences: Arc::clone(fences),
            ..Op::counters(Kind::CatchUp, request, token, retention)
        }
    }

    fn counters(kind: Kind, request: &Request, token: &Arc<str>, retention: Duration) -> Self {
        Op {
            fence_keys: Arc::clone(&request.fence_keys),
            keep_ms: ttl::ms(retention),
            ..Op::new(kind, &request.keys, token)
        }
    }

    pub(crate) fn release(request: &Request, token: &Arc<str>) -> Self {
        Op {
            semaphore: request.semaphore().cloned(),
            ..Op::release_keys(&request.keys, token)
        }
    }

    pub(crate) fn release_keys(keys: &Arc<[Arc<str>]>, token: &Arc<str>) -> Self {
        Op::new(Kind::Release, keys, token)
    }

    pub(crate) fn remove(keys: &Arc<[Arc<str>]>, token: &Arc<str>) -> Self {
        Op::new(Kind::Remove, keys, token)
    }

    /// The removal of a failed acquisition's token from every key it asked for; for a
    /// permit (every slot), also of the semaphore's record where no slot is left. With
    /// `claim`, a writer that will try again leaves its claim where it removes its key,
    /// for as long as the acquisition claimed keys that readers hold.
    pub(crate) fn remove_all(acquisition: &Op, claim: bool) -> Self {
        Op {
            semaphore: acquisition.semaphore.clone(),
            claim_ms: if claim { acquisition.claim_ms } else { 0 },
            ..Op::remove(&acquisition.keys, &acquisition.token)
        }
    }

    /// Appends this operation's header, keys and arguments (`scripts/ops.lua`).
    fn encode(&self, headers: &mut Vec<Value>, keys: &mut Vec<Value>, args: &mut Vec<Value>) {
        let wire = self.wire.get_or_init(|| self.wire());
        headers.extend(wire.header.iter().cloned());
        keys.extend(wire.keys.iter().cloned());
        args.extend(wire.args.iter().cloned());
    }

    /// The operation as `scripts/ops.lua` reads it: its name, and the keys and
    /// arguments that name's section of the script lists, in that order.
    fn wire(&self) -> Wire {
        let names = || self.keys.iter().map(|k| string(k));
        let counters = || self.fence_keys.iter().map(|k| string(k));
        let token = string(&self.token);
        let record = self.semaphore.as_ref().map(|s| string(&s.record));
        let permits = self
            .semaphore
            .as_ref()
            .map(|s| Value::from(s.permits.to_string()));
        let (name, keys, args): (&'static str, Vec<Value>, Vec<Value>) = match self.kind {
            Kind::Acquire => (
                "lock",
                names().collect(),
                vec![token, int(self.ttl_ms), int(self.claim_ms)],
            ),
            Kind::Read => ("read", names().collect(), vec![token, int(self.ttl_ms)]),
            Kind::Permit => (
                "permit",
                names().chain(record).collect(),
                vec![
                    token,
                    int(self.ttl_ms),
                    permits.unwrap_or_else(|| string("")),
                ],
            ),
            Kind::Extend => (
                "extend",
                names().chain(counters()).chain(record.clone()).collect(),
                vec![
                    token,
                    int(self.ttl_ms),
                    if self.fence_keys.is_empty() {
                        string("")
                    } else {
                        int(self.keep_ms)
                    },
                    string(if record.is_some() { "permit" } else { "" }),
                ],
            ),
            Kind::Fence => (
                "fence",
                names().chain(counters()).collect(),
                vec![
                    token,
                    Value::from(self.floor.to_string()),
                    int(self.keep_ms),
                ],
            ),
            Kind::CatchUp => (
                "catch_up",
                names().chain(counters()).collect(),
                [token, int(self.keep_ms)]
                    .into_iter()
                    .chain(self.fences.iter().map(|f| Value::from(f.to_string())))
                    .collect(),
            ),
            // A permit's release wakes the semaphore's waiters, whichever slot it frees.
            Kind::Release => (
                "release",
                names().collect(),
                vec![
                    token,
                    Value::String(Str::from_static(RELEASE_CHANNEL_PREFIX)),
                    record.unwrap_or_else(|| string("")),
                ],
            ),
            Kind::Remove => (
                "remove",
                names().chain(record).collect(),
                vec![
                    token,
                    int(self.claim_ms),
                    permits.unwrap_or_else(|| string("")),
                ],
            ),
        };
        Wire {
            header: [
                Value::String(Str::from_static(name)),
                count(keys.len()),
                count(args.len()),
            ],
            keys,
            args,
        }
    }
}

/// The arguments of `EVAL`/`EVALSHA` of the batch script for `ops`: `script` (its
/// text or digest), the number of keys, the quarantine's keys when an operation
/// acquires with the quarantine on, every operation's keys, then the number of
/// operations, the quarantine's period (-1: off), the headers and the arguments.
pub(crate) fn batch_args(script: Value, ops: &[Arc<Op>]) -> Vec<Value> {
    let quarantine = ops
        .iter()
        .filter(|op| op.kind.acquires())
        .find_map(|op| op.quarantine.as_ref());
    let (mut headers, mut keys, mut args) = (
        Vec::with_capacity(2 + 3 * ops.len()),
        Vec::new(),
        Vec::new(),
    );
    headers.push(count(ops.len()));
    match quarantine {
        Some(q) => {
            keys.extend([string(&q.marker), string(&q.guard)]);
            headers.push(int(ttl::ms(q.period)));
        }
        None => headers.push(Value::Integer(-1)),
    }
    for op in ops {
        op.encode(&mut headers, &mut keys, &mut args);
    }
    let mut all = Vec::with_capacity(2 + keys.len() + headers.len() + args.len());
    all.push(script);
    all.push(count(keys.len()));
    all.extend(keys);
    all.extend(headers);
    all.extend(args);
    all
}

/// `script numkeys key... arg...` for a script fredlock sends by itself.
pub(crate) fn script_args(script: Value, keys: &[&str], args: Vec<Value>) -> Vec<Value> {
    let mut all = Vec::with_capacity(2 + keys.len() + args.len());
    all.push(script);
    all.push(count(keys.len()));
    all.extend(keys.iter().map(|k| string(k)));
    all.extend(args);
    all
}

/// A counter's life in ms: the request's TTL plus `retention`.
fn life(request: &Request, retention: Duration) -> u64 {
    request.ttl.ms().saturating_add(ttl::ms(retention))
}

fn string(s: &str) -> Value {
    Value::String(Str::from(s))
}

fn int(ms: u64) -> Value {
    Value::Integer(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn count(n: usize) -> Value {
    Value::Integer(i64::try_from(n).unwrap_or(i64::MAX))
}
