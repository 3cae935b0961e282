//! Sending a removal again when it may not have reached its node, so that a node that
//! comes back keeps no key of ours until its TTL.
//!
//! A removal (of a failed attempt's token, or a release) that was not handed to fred
//! is sent again once the node is connected. One that was handed over and not
//! answered stays in its connection's order, however late (fred has no timeout on it:
//! `Redis::run`), and TCP delivers it once a frozen or cut-off node comes back; it is
//! sent again only once fred has replaced that connection (the node went silent past
//! fred's `unresponsive` bound, or the connection failed), since a command on a
//! replaced connection may be lost. So a node that is only slow gets nothing more.
//!
//! Each node keeps its removals to send again in one list, at most [`MAX_PENDING`],
//! looked at by one task while the list is not empty: a node that is down costs a
//! timer a second, however many removals wait for it.

use std::collections::VecDeque;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::{Answer, Node, Reach};
use crate::scripts::Op;

/// The first wait before the removals of a node are looked at.
pub(crate) const RESEND_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two looks.
pub(crate) const RESEND_MAX: Duration = Duration::from_secs(1);
/// The most removals a node keeps to send again; past it the oldest is dropped, and
/// its keys expire with their TTL.
pub(crate) const MAX_PENDING: usize = 10_000;

/// A node's removals to send again.
#[derive(Debug, Default)]
pub(super) struct Pending {
    entries: VecDeque<Entry>,
    /// Whether a task is looking at them.
    draining: bool,
}

#[derive(Debug)]
struct Entry {
    op: Arc<Op>,
    /// How far its last send got.
    reach: Reach,
    /// When the keys it removes have expired.
    until: Instant,
}

impl Node {
    /// Keeps `op`, a removal of our token (idempotent) whose `last` answer says it may
    /// not have reached this node, to send again while it may not have (see the
    /// module's text): until the node answers it, until `until` (by then the keys it
    /// removes have expired), or until the node is [retired](Node::retire).
    pub(crate) fn resend(self: &Arc<Self>, op: Arc<Op>, last: &Answer, until: Instant) {
        if !last.unreached() || *self.retired.borrow() || until <= Instant::now() {
            return;
        }
        // Outside a runtime (one shutting down drops its tasks), the keys expire.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut pending = self.pending();
        if pending.entries.len() >= MAX_PENDING {
            pending.entries.pop_front();
        }
        pending.entries.push_back(Entry {
            op,
            reach: last.reach,
            until,
        });
        if !pending.draining {
            pending.draining = true;
            runtime.spawn(Arc::clone(self).drain());
        }
    }

    /// Looks at the removals after waits that double from [`RESEND_FIRST`] to
    /// [`RESEND_MAX`] (back to the first after a send), and sends those that may have
    /// been lost; ends when none is left or the node is retired.
    async fn drain(self: Arc<Self>) {
        let mut retired = self.retired.subscribe();
        let mut wait = RESEND_FIRST;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = retired.wait_for(|&retired| retired) => {}
            }
            let Some(due) = self.take_due() else {
                return;
            };
            if due.is_empty() {
                wait = wait.saturating_mul(2).min(RESEND_MAX);
                continue;
            }
            let sends = due
                .iter()
                .map(|e| Arc::clone(&self).call(Arc::clone(&e.op)));
            let answers = futures::future::join_all(sends).await;
            let mut pending = self.pending();
            for (entry, answer) in due.into_iter().zip(answers) {
                if answer.unreached() {
                    pending.entries.push_back(Entry {
                        reach: answer.reach,
                        ..entry
                    });
                }
            }
            wait = RESEND_FIRST;
        }
    }

    /// Drops the removals whose keys have expired and takes those to send now; `None`
    /// (and the task ends) when none is left or the node is retired.
    fn take_due(&self) -> Option<Vec<Entry>> {
        let mut pending = self.pending();
        let now = Instant::now();
        pending.entries.retain(|e| e.until > now);
        if pending.entries.is_empty() || *self.retired.borrow() {
            pending.entries.clear();
            pending.draining = false;
            return None;
        }
        if !self.connected() {
            return Some(Vec::new());
        }
        let connection = self.connection();
        let lost = |e: &Entry| match e.reach {
            Reach::Unsent => true,
            Reach::Unknown {
                connection: sent_on,
            } => sent_on != connection,
            Reach::Answered => false,
        };
        let (due, kept): (Vec<Entry>, Vec<Entry>) = pending.entries.drain(..).partition(lost);
        pending.entries.extend(kept);
        Some(due)
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many removals wait to be sent again.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending().entries.len()
    }
}
