//! Sending a removal again when it may not have reached its node, so that a node that
//! comes back keeps no key of ours until its TTL.
//!
//! A removal (of a failed attempt's token, or a release) that was not written is
//! sent again. One that was written and not answered is still on its connection,
//! which TCP delivers once a frozen or cut-off node comes back; it is sent again only
//! when fred has replaced that connection (the node went silent past fred's
//! `unresponsive` bound, or the connection failed), since a command on a replaced
//! connection may be lost. So a node that is only slow gets nothing more. Nothing is
//! sent while the node is not connected: each look at a node that stays down is a
//! timer and a read of the client's state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Answer, Node, Reach};
use crate::scripts::Op;

/// The first wait before a removal that may not have reached its node is looked at
/// again.
pub(crate) const RESEND_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between two looks.
pub(crate) const RESEND_MAX: Duration = Duration::from_secs(1);

impl Node {
    /// Sends `op`, a removal of our token (idempotent) whose `last` answer says it may
    /// not have reached this node, again while it may not have (see the module's
    /// text): until the node answers it, until `until` (by then the keys it removes
    /// have expired), or until the node is [retired](Node::retire). It looks again
    /// after waits that double from [`RESEND_FIRST`] to [`RESEND_MAX`]. Returns the
    /// last answer.
    pub(crate) async fn resend(
        self: Arc<Self>,
        op: Arc<Op>,
        mut last: Answer,
        until: Instant,
    ) -> Answer {
        let mut retired = self.retired.subscribe();
        let mut wait = RESEND_FIRST;
        while last.unreached() && !*retired.borrow() {
            if Instant::now()
                .checked_add(wait)
                .is_none_or(|next| next >= until)
            {
                break;
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = retired.wait_for(|&retired| retired) => break,
            }
            let lost = match last.reach {
                Reach::Unsent => true,
                Reach::Unknown { connection } => connection != self.connection(),
                Reach::Answered => false,
            };
            // While the node is not connected a send would fail at once: look later.
            if lost && self.connected() {
                last = Arc::clone(&self).call(Arc::clone(&op)).await;
            }
            wait = wait.saturating_mul(2).min(RESEND_MAX);
        }
        last
    }
}
