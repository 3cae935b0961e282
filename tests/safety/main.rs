//! Safety under faults: the contention checker and the fault scenarios, on a 5-node
//! container cluster whose nodes the nemesis kills, pauses, partitions and slows down,
//! and whose clocks clock_jump.rs steps forward.
//! docs/safety.md reports the figures of a long run.

mod checker;
mod clock_jump;
mod fencing;
mod history;
mod nemesis;
mod quarantine;
mod scenarios;
mod shared;
mod soak;
#[path = "../redlock/support.rs"]
mod support;
