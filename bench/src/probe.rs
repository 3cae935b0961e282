//! What the nodes say about a measured window: `INFO commandstats` (script calls, for
//! the operations fredlock sends per call) and `INFO cpu` (Redis's CPU time), read on
//! every node at the window's start and end through a connection of its own, together
//! with the benchmark process's CPU time.

use std::time::Duration;

use fred::prelude::{Client, ClientLike, ReconnectPolicy};
use fred::types::InfoKind;
use serde::Serialize;

use crate::fred_client;

/// How long a node may take to answer INFO: a killed or frozen node never does, and the
/// window must not wait for it.
const ANSWER: Duration = Duration::from_secs(1);

/// One connection per node, made before any fault is injected; `None` where it failed.
pub struct Probe {
    clients: Vec<Option<Client>>,
}

/// One node's counters at one instant.
#[derive(Clone, Copy, Debug)]
struct NodeSample {
    /// `calls` of `cmdstat_fcall`, `cmdstat_evalsha` and `cmdstat_eval`.
    script_calls: u64,
    /// `used_cpu_user` plus `used_cpu_sys`, seconds.
    cpu_s: f64,
    /// Keys in every database (`INFO keyspace`).
    keys: i64,
    /// `used_memory`, bytes.
    memory: i64,
}

/// Every node's counters and the benchmark's CPU time at one instant.
pub struct Sample {
    nodes: Vec<Option<NodeSample>>,
    own_cpu_s: Option<f64>,
}

/// The differences over a window, on the nodes that answered both times.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    /// Nodes that answered INFO at the start and at the end.
    pub nodes_read: usize,
    pub script_calls: u64,
    pub redis_cpu_s: f64,
    pub client_cpu_s: Option<f64>,
    /// Keys on the nodes at the end minus at the start, summed over the nodes read.
    pub keys_added: i64,
    /// Likewise for their `used_memory`.
    pub bytes_added: i64,
}

impl Probe {
    pub async fn connect(urls: &[String]) -> Probe {
        let connect = |url: &String| {
            let url = url.clone();
            async move {
                fred_client::connect(&url, Duration::from_secs(3), |b| {
                    b.with_performance_config(|p| p.default_command_timeout = ANSWER)
                        .with_connection_config(|c| {
                            c.connection_timeout = Duration::from_secs(2);
                            c.max_command_attempts = 1;
                        })
                        .set_policy(ReconnectPolicy::new_constant(0, 200));
                })
                .await
                .ok()
            }
        };
        let clients = futures::future::join_all(urls.iter().map(connect)).await;
        Probe { clients }
    }

    /// Reads every node at once; a node that fails or is late counts as unread.
    pub async fn sample(&self) -> Sample {
        let read = |client: &Option<Client>| {
            let client = client.clone();
            async move {
                let client = client?;
                let both = async {
                    let stats: String = client.info(Some(InfoKind::CommandStats)).await.ok()?;
                    let cpu: String = client.info(Some(InfoKind::Cpu)).await.ok()?;
                    let memory: String = client.info(Some(InfoKind::Memory)).await.ok()?;
                    let keyspace: String = client.info(Some(InfoKind::Keyspace)).await.ok()?;
                    Some(NodeSample {
                        script_calls: script_calls(&stats)?,
                        cpu_s: field(&cpu, "used_cpu_user")? + field(&cpu, "used_cpu_sys")?,
                        keys: keys(&keyspace),
                        memory: field(&memory, "used_memory")? as i64,
                    })
                };
                tokio::time::timeout(2 * ANSWER, both).await.ok().flatten()
            }
        };
        let own_cpu_s = crate::cpu::own_seconds();
        let nodes = futures::future::join_all(self.clients.iter().map(read)).await;
        Sample { nodes, own_cpu_s }
    }

    pub async fn quit(self) {
        for client in self.clients.into_iter().flatten() {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.quit()).await;
        }
    }
}

impl Window {
    pub fn between(start: &Sample, end: &Sample) -> Window {
        let mut window = Window {
            client_cpu_s: start
                .own_cpu_s
                .zip(end.own_cpu_s)
                .map(|(a, b)| (b - a).max(0.0)),
            ..Window::default()
        };
        for (a, b) in start.nodes.iter().zip(&end.nodes) {
            if let (Some(a), Some(b)) = (a, b) {
                window.nodes_read += 1;
                window.script_calls += b.script_calls.saturating_sub(a.script_calls);
                window.redis_cpu_s += (b.cpu_s - a.cpu_s).max(0.0);
                window.keys_added += b.keys - a.keys;
                window.bytes_added += b.memory - a.memory;
            }
        }
        window
    }
}

/// A `name:value` line of an INFO section, as a number.
fn field(info: &str, name: &str) -> Option<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// The keys of every database in `INFO keyspace`, whose lines read
/// `db0:keys=12,expires=12,avg_ttl=0`; an empty node has none (0).
fn keys(keyspace: &str) -> i64 {
    keyspace
        .lines()
        .filter_map(|l| {
            l.split_once(":keys=")?
                .1
                .split(',')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .sum()
}

/// FCALL, EVALSHA and EVAL calls in `INFO commandstats`, whose lines read
/// `cmdstat_fcall:calls=12,usec=...`; a command never called has no line (0).
fn script_calls(stats: &str) -> Option<u64> {
    if !stats.contains("# Commandstats") {
        return None;
    }
    let calls = |command: &str| {
        stats
            .lines()
            .find_map(|l| l.strip_prefix(command)?.strip_prefix(":calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Some(calls("cmdstat_fcall") + calls("cmdstat_evalsha") + calls("cmdstat_eval"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_lines_parse() {
        let stats = "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=30,usec_per_call=2.5\r\n\
                     cmdstat_eval:calls=3,usec=9\r\ncmdstat_evalsha_ro:calls=100,usec=1\r\n\
                     cmdstat_fcall:calls=5,usec=9\r\ncmdstat_fcall_ro:calls=7,usec=9\r\n";
        assert_eq!(script_calls(stats), Some(20));
        assert_eq!(script_calls("# Commandstats\r\n"), Some(0));
        assert_eq!(script_calls("NOPERM"), None);
        let cpu = "# CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\n\
                   used_cpu_sys_children:9.0\r\n";
        assert_eq!(field(cpu, "used_cpu_sys"), Some(1.5));
        assert_eq!(field(cpu, "used_cpu_user"), Some(2.25));
        let keyspace = "# Keyspace\r\ndb0:keys=12,expires=10,avg_ttl=5\r\ndb3:keys=1,expires=0\r\n";
        assert_eq!(keys(keyspace), 13);
        assert_eq!(keys("# Keyspace\r\n"), 0);
    }
}
