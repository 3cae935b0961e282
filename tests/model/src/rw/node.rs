//! One node of the read-write model: what `scripts/ops.lua` does to a resource's key
//! for a writer (`acquire_one`, `writer_finds`, `claim_key`), a reader (`read`) and a
//! removal (`delete`), on a clock of whole ticks. Fencing counters and the quarantine
//! are left out (the plain-lock model checks them).

use super::{Tick, Token};

/// The resource's key on one node. Members of a set live while their score (expiry)
/// lies ahead; the model drops them when it passes (every operation of `ops.lua`
/// ignores or removes them, and `settle` keeps the key's expiry at its latest member's,
/// so a set with no live member is gone).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Key {
    Free,
    /// A writer's string: its token and expiry.
    Writer(Token, Tick),
    /// The readers' sorted set: live readers (sorted) and the `#writer` claim's end.
    Set {
        readers: Vec<(Token, Tick)>,
        claim: Option<Tick>,
    },
}

/// An operation of `ops.lua`, as a client sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// A writer's `acquire` of one key: `SET NX`, else what `writer_finds` says: a set
    /// without live readers is replaced, one with live readers is claimed until
    /// `claim` ticks from now (0: no claim) and refused.
    Acquire { claim: Tick },
    /// `read`: refused by a writer's key or a live claim, else the token joins the set.
    Read,
    /// `delete`: compare-and-delete of a writer's key or of a reader's member. With
    /// `claim` > 0 (the fix, for a writer that will try again) a writer's own key is
    /// replaced by a set holding only a claim until `claim` ticks from now.
    Delete { claim: Tick },
}

/// What a node answered (a removal's answer is not waited for).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Answer {
    Yes,
    Taken,
}

/// Switches that break the node on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Faults {
    /// A writer replaces a set even with live readers in it.
    pub replace_readers: bool,
}

impl Key {
    fn set(readers: Vec<(Token, Tick)>, claim: Option<Tick>) -> Key {
        if readers.is_empty() && claim.is_none() {
            Key::Free
        } else {
            Key::Set { readers, claim }
        }
    }

    /// Runs one operation of `token` at `now`; keys set live `ttl` ticks.
    pub fn apply(&mut self, token: Token, op: Op, now: Tick, ttl: Tick, f: Faults) -> Answer {
        match (op, &mut *self) {
            (
                Op::Acquire { claim },
                Key::Set {
                    readers,
                    claim: end,
                },
            ) => {
                if readers.is_empty() || f.replace_readers {
                    // A set of expired readers or a claim: "free" for a writer.
                    *self = Key::Writer(token, now + ttl);
                    return Answer::Yes;
                }
                if claim > 0 {
                    // ZADD GT: a claim is raised, never lowered.
                    *end = Some(end.map_or(now + claim, |e| e.max(now + claim)));
                }
                Answer::Taken
            }
            (Op::Acquire { .. } | Op::Read, Key::Free) => {
                *self = match op {
                    Op::Read => Key::set(vec![(token, now + ttl)], None),
                    _ => Key::Writer(token, now + ttl),
                };
                Answer::Yes
            }
            (Op::Acquire { .. } | Op::Read, Key::Writer(..)) => Answer::Taken,
            (Op::Read, Key::Set { claim: Some(_), .. }) => Answer::Taken,
            (Op::Read, Key::Set { readers, .. }) => {
                readers.push((token, now + ttl));
                readers.sort();
                Answer::Yes
            }
            (Op::Delete { claim }, Key::Writer(t, _)) if *t == token => {
                *self = if claim > 0 {
                    Key::set(Vec::new(), Some(now + claim))
                } else {
                    Key::Free
                };
                Answer::Yes
            }
            (Op::Delete { .. }, Key::Set { readers, claim }) => {
                let before = readers.len();
                readers.retain(|(t, _)| *t != token);
                let found = readers.len() < before;
                *self = Key::set(std::mem::take(readers), *claim);
                if found { Answer::Yes } else { Answer::Taken }
            }
            (Op::Delete { .. }, _) => Answer::Taken,
        }
    }

    /// Time reaches `now`: what expired is gone.
    pub fn expire(&mut self, now: Tick) {
        match self {
            Key::Writer(_, until) if *until <= now => *self = Key::Free,
            Key::Set { readers, claim } => {
                readers.retain(|&(_, until)| until > now);
                let claim = claim.filter(|&until| until > now);
                *self = Key::set(std::mem::take(readers), claim);
            }
            _ => {}
        }
    }

    /// Whether a live claim keeps new readers out.
    pub fn claimed(&self) -> bool {
        matches!(self, Key::Set { claim: Some(_), .. })
    }
}
