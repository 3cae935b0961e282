//! What every handle of one `Redlock` shares: its nodes and settings, the restart
//! quarantine's keys, and the release notifications.

use std::sync::{Arc, OnceLock};

use crate::node::Node;
use crate::quorum::{NodeVote, Votes, quorum};
use crate::request::RESERVED_PREFIX;
use crate::scripts::QuarantineKeys;
use crate::settings::{Quarantine, Settings};
use crate::wakeup::Wakeup;

pub(crate) struct Core {
    pub(crate) nodes: Arc<[Arc<Node>]>,
    pub(crate) settings: Settings,
    /// The key that records a node's incarnation (its `run_id`), the key whose life
    /// is its quarantine, and the period; `period` is unused with the quarantine off.
    keys: Arc<QuarantineKeys>,
    /// Release notifications, started by the first `lock()` that has to wait.
    wakeup: OnceLock<Arc<Wakeup>>,
    /// Whether fredlock created the clients (and so closes them when dropped).
    owns_clients: bool,
}

impl Core {
    pub(crate) fn new(nodes: Arc<[Arc<Node>]>, settings: Settings, owns_clients: bool) -> Self {
        let prefix = &settings.key_prefix;
        let keys = Arc::new(QuarantineKeys {
            marker: format!("{prefix}{RESERVED_PREFIX}incarnation").into(),
            guard: format!("{prefix}{RESERVED_PREFIX}quarantine").into(),
            period: match settings.quarantine {
                Quarantine::Period(period) => period,
                Quarantine::Off => std::time::Duration::ZERO,
            },
        });
        Core {
            nodes,
            settings,
            keys,
            wakeup: OnceLock::new(),
            owns_clients,
        }
    }

    pub(crate) fn quorum(&self) -> usize {
        quorum(self.nodes.len())
    }

    /// The quarantine keys an acquisition carries, when the quarantine is on.
    pub(crate) fn quarantine(&self) -> Option<Arc<QuarantineKeys>> {
        match self.settings.quarantine {
            Quarantine::Off => None,
            Quarantine::Period(_) => Some(Arc::clone(&self.keys)),
        }
    }

    pub(crate) fn wakeup(&self) -> &Arc<Wakeup> {
        self.wakeup
            .get_or_init(|| Wakeup::start(&self.nodes, self.settings.connect_timeout))
    }

    /// Closes the wake-up subscriptions and, when fredlock created them, the clients.
    pub(crate) async fn quit(&self) {
        if let Some(wakeup) = self.wakeup.get() {
            wakeup.close();
        }
        if self.owns_clients {
            for node in self.nodes.iter() {
                node.retire();
            }
            let timeout = self.settings.connect_timeout;
            futures::future::join_all(self.nodes.iter().map(|n| n.close(timeout))).await;
        }
    }

    /// Lifts the restart quarantine on every node; see `Redlock::lift_restart_quarantine`.
    pub(crate) async fn lift(&self) -> Votes {
        let keys = &self.keys;
        let votes = futures::future::join_all(self.nodes.iter().map(|node| async move {
            NodeVote {
                node: Arc::clone(node.name()),
                vote: node.lift(&keys.marker, &keys.guard).await,
            }
        }))
        .await;
        Votes(votes)
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The removals still being sent again stop: no task outlives the client.
        for node in self.nodes.iter() {
            node.retire();
        }
        if !self.owns_clients {
            return;
        }
        // Close our connections without blocking: only if a runtime is there to run it.
        for node in self.nodes.iter() {
            node.close_in_background(self.settings.connect_timeout);
        }
    }
}
