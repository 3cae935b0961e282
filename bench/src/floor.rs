//! The floor: bare fred clients, one per node, configured like fredlock's (per-command
//! timeout = node timeout, one write attempt, fail fast, reconnect every 100 ms).
//! Acquire is `SET key value NX PX ttl` sent to every node at once, done when a quorum
//! said yes; release is `DEL` to every node, done when a quorum deleted. No token check,
//! no validity arithmetic, no cleanup, no task per node: the physical limit of one
//! parallel round trip per operation. In the contended workload it waits for every node
//! (so it knows where it set the key), deletes its key where it set it and tries again
//! at once (a spin: the lowest hand-off polling can reach).

use std::collections::BTreeMap;
use std::time::Duration;

use fred::prelude::{
    Client, ClientLike, Expiration, KeysInterface, Options, ReconnectPolicy, SetOptions,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::cycle::{CycleParams, Failure};
use crate::fred_client;

/// The floor: one bare fred client per node.
pub struct Floor {
    clients: Vec<Client>,
    options: Options,
    quorum: usize,
}

impl Floor {
    pub async fn connect(urls: &[String], node_timeout: Duration) -> Result<Floor, String> {
        let mut clients = Vec::with_capacity(urls.len());
        for url in urls {
            let client = fred_client::connect(url, Duration::from_secs(5), |b| {
                b.with_connection_config(|c| {
                    c.connection_timeout = Duration::from_secs(2);
                    c.internal_command_timeout = Duration::from_secs(2);
                    c.max_command_attempts = 1;
                    c.tcp.nodelay = Some(true);
                })
                .with_performance_config(|p| p.default_command_timeout = node_timeout)
                .set_policy(ReconnectPolicy::new_constant(0, 100));
            })
            .await?;
            clients.push(client);
        }
        let quorum = clients.len() / 2 + 1;
        Ok(Floor {
            clients,
            options: Options {
                max_attempts: Some(1),
                timeout: Some(node_timeout),
                fail_fast: true,
                ..Options::default()
            },
            quorum,
        })
    }

    pub async fn quit(self) {
        for client in &self.clients {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }

    /// Sets `key` on a quorum; returns the nodes to delete it from on release.
    pub async fn acquire(&self, key: &str, params: &CycleParams) -> Result<Vec<usize>, Failure> {
        let value = format!("{:016x}", rand::random::<u64>());
        let px = i64::try_from(params.ttl.as_millis()).unwrap_or(i64::MAX);
        let mut pending: FuturesUnordered<_> = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, client)| {
                let client = client.with_options(&self.options);
                let value = value.as_str();
                async move {
                    let set: Result<Option<String>, _> = client
                        .set(
                            key,
                            value,
                            Some(Expiration::PX(px)),
                            Some(SetOptions::NX),
                            false,
                        )
                        .await;
                    (i, set)
                }
            })
            .collect();
        let n = self.clients.len();
        let (mut yes, mut taken, mut failed) = (Vec::new(), 0usize, BTreeMap::new());
        while let Some((i, answer)) = pending.next().await {
            match answer {
                Ok(Some(_)) => yes.push(i),
                Ok(None) => taken += 1,
                Err(e) => *failed.entry(format!("{:?}", e.kind())).or_insert(0usize) += 1,
            }
            let answered = yes.len() + taken + failed.values().sum::<usize>();
            // Uncontended: done at the quorum. Contended: every answer, to know where
            // the key was set.
            let decided = if params.contended {
                answered == n
            } else {
                yes.len() >= self.quorum || yes.len() + (n - answered) < self.quorum
            };
            if decided {
                break;
            }
        }
        drop(pending);
        // Uncontended, the key is this task's alone: DEL it everywhere, including on the
        // nodes whose answer was not waited for. Contended, only where it was set.
        let ours: Vec<usize> = if params.contended {
            yes.clone()
        } else {
            (0..n).collect()
        };
        if yes.len() >= self.quorum {
            return Ok(ours);
        }
        let detail = format!("{} yes, {taken} taken, failed {failed:?}", yes.len());
        // Undo what was set; not timed, as a failure is not a cycle.
        self.del(key, &ours, ours.len()).await;
        let kind = if taken > n - self.quorum {
            "taken"
        } else {
            "no_quorum"
        };
        Err(Failure::new(kind, detail))
    }

    pub async fn release(&self, key: &str, set_on: &[usize]) -> Result<(), Failure> {
        let deleted = self.del(key, set_on, self.quorum).await;
        if deleted >= self.quorum {
            Ok(())
        } else {
            Err(Failure::new(
                "release_no_quorum",
                format!("{deleted} of {} nodes deleted the key", self.clients.len()),
            ))
        }
    }

    /// `DEL key` on `nodes`; returns once `enough` nodes deleted it or all answered
    /// (the other DELs still run).
    async fn del(&self, key: &str, nodes: &[usize], enough: usize) -> usize {
        let mut pending: FuturesUnordered<_> = nodes
            .iter()
            .map(|&i| {
                let client = self.clients[i].with_options(&self.options);
                async move { client.del::<i64, _>(key).await }
            })
            .collect();
        let mut deleted = 0;
        while let Some(answer) = pending.next().await {
            if matches!(answer, Ok(1)) {
                deleted += 1;
                if deleted >= enough {
                    break;
                }
            }
        }
        deleted
    }
}
