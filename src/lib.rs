//! Failover-tolerant distributed locks over N independent Redis masters: the Redlock
//! algorithm on [fred](https://docs.rs/fred) and tokio.
//!
//! A [`Redlock`] sends `SET key token NX PX ttl` to every master at once and holds the
//! lock only when a quorum (`N / 2 + 1`) agreed and validity is left once the time the
//! round took and the clock drift allowance are subtracted. A minority of masters may be
//! down, frozen, slow or partitioned away: their votes are failed votes, each bounded by
//! the per-node timeout, and no call waits for them once the quorum has decided.
//!
//! ```no_run
//! use std::time::Duration;
//! use fredlock::{Error, Redlock};
//!
//! # async fn run() -> Result<(), Error> {
//! let redlock = Redlock::builder([
//!     "redis://10.0.0.1:6379",
//!     "redis://10.0.0.2:6379",
//!     "redis://10.0.0.3:6379",
//!     "redis://10.0.0.4:6379",
//!     "redis://10.0.0.5:6379",
//! ])
//! .build()
//! .await?;
//!
//! match redlock.lock("monthly-invoices", Duration::from_secs(30)).await {
//!     Ok(mut lock) => {
//!         // ... do the work while lock.remaining() is comfortably above zero ...
//!         lock.extend(Duration::from_secs(30)).await?;
//!         // ... more work ...
//!         lock.release().await?;
//!     }
//!     Err(Error::Taken { .. }) => println!("another worker is on it"),
//!     Err(e) => return Err(e),
//! }
//! # Ok(()) }
//! ```
//!
//! # What the outcome tells
//! * [`Error::Taken`]: nodes answered that another owner holds the resource.
//! * [`Error::NoQuorum`]: too many nodes were unreachable, failed or timed out.
//! * [`Error::TooLate`]: a quorum agreed but too little validity was left.
//! * [`Error::Expired`]: at extend, release or a fencing token's making, the lock is
//!   no longer ours.
//! * [`Error::FencingFailed`]: a fencing token's write-back failed on too many nodes;
//!   the lock is still held.
//! * [`Error::Lost`]: the lock was lost while [`Redlock::with_lock`] ran the work.
//! * [`Error::Denied`]: at `build()`, a node's ACL refuses a command fredlock needs.
//! * [`Error::PermitsMismatch`]: a semaphore asked for with another number of permits
//!   than its nodes hold.
//!
//! Share one `Redlock` (it is cheap to clone) between the tasks of a service: while a
//! node has a call of ours in flight, the operations of every task for that node wait
//! and then go out together as one script call, each with its own result, while a lone
//! operation is sent at once (`docs/design.md`, 1.9).
//!
//! Every round error carries each node's [`Vote`], and so does a granted lock
//! ([`Lock::votes`]). Acquire, extend, fence and release run in `tracing` spans
//! (`fredlock.acquire`, `fredlock.extend`, `fredlock.fence`, `fredlock.release`, at
//! DEBUG level) that record the resource, the votes, the elapsed time and the outcome.
//!
//! # Features
//! * `metrics`: records acquisition latency, attempts and outcomes, every node's
//!   votes, keep-alive renewals and lost locks through the
//!   [`metrics`](https://docs.rs/metrics) facade; the
//!   [`metrics` module](crate::metrics) lists every metric with its type, unit and
//!   labels. Off by default: then nothing is recorded and nothing of it is compiled
//!   in.
//! * `tls-rustls`, `tls-native`: `rediss://` endpoints, with rustls or the platform's
//!   TLS library.
//!
//! # Beyond acquire and release
//! * Long work: [`Lock::keep_alive`] extends in the background, [`Lease::lost`] says
//!   at once when the lock can no longer be trusted, and [`Redlock::with_lock`] runs a
//!   future under a kept-alive lock and cancels it if the lock is lost. A dropped
//!   [`Lock`] is released in the background.
//! * Waiting: a `lock()` that finds the resource taken is woken by its release.
//! * [`Redlock::lock_many`]: several resources, all or nothing on each node.
//! * [`Redlock::read_lock`]: a lock shared by readers and excluding the writer
//!   ([`Redlock::lock`] on the same resource); a waiting writer keeps new readers out.
//! * [`Redlock::semaphore`]: at most N holders of a [`Permit`] at once.
//! * [`Lock::fencing_token`]: strictly increasing from one holder that asks for it to
//!   the next, for resources that refuse stale writers; made on request, so a lock
//!   that does not ask pays nothing for it.
//! * [`Quarantine`]: nodes that lost or changed their data sit out acquisitions, for
//!   every client, until every lock they granted has expired; a fresh deployment lifts
//!   it once with [`Redlock::lift_restart_quarantine`].
//!
//! # Safety
//! Redlock's guarantees rest on assumptions about clocks, node persistence and process
//! pauses that no client can check. Read `docs/design.md`, `docs/safety.md` and
//! `docs/fencing.md` in the repository before relying on a lock for correctness rather
//! than efficiency.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

// Top-down: the client and its builder, the lock handle, the protocol, the round,
// the node seam, and the pure parts at the bottom.
mod acquisition;
mod builder;
mod connect;
mod core;
mod endpoints;
mod error;
mod fencing;
mod keep_alive;
mod lease;
mod lock;
pub mod metrics;
mod node;
mod protocol;
mod quorum;
mod redlock;
mod request;
mod retry;
mod round;
mod scripts;
mod semaphore;
mod settings;
mod shared;
mod ttl;
mod wakeup;

pub use builder::Builder;
pub use error::{Error, LostReason};
pub use lease::Lease;
pub use lock::Lock;
pub use quorum::{NodeVote, Vote, Votes, quorum};
pub use redlock::Redlock;
pub use request::{MAX_PERMITS, RESERVED_PREFIX};
pub use semaphore::{Permit, Semaphore};
pub use settings::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_DRIFT_FACTOR, DEFAULT_FENCING_RETENTION,
    DEFAULT_KEEP_ALIVE_AT, DEFAULT_NODE_TIMEOUT, DEFAULT_QUARANTINE_PERIOD,
    DEFAULT_RECONNECT_DELAY, DEFAULT_RETRY_COUNT, DEFAULT_RETRY_DELAY, DEFAULT_RETRY_JITTER,
    Quarantine,
};
pub use ttl::{DRIFT_FLOOR, MAX_TTL};

/// The fred crate fredlock is built on, for [`Redlock::from_clients`].
pub use fred;

/// The README's examples, compiled as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
