//! The checker's nemesis: a seeded schedule of faults on a minority of nodes, each
//! undone after a while, everything undone at the end.

use std::time::{Duration, Instant};

use rand::Rng;
use rand::rngs::StdRng;

use crate::support::{Nodes, TestResult};

/// At most this many nodes are faulty at once: a minority of 5.
pub const MAX_FAULTY: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Partition,
    Latency,
}

/// How killed nodes come back.
#[derive(Clone, Copy, Debug)]
pub enum Restarts {
    /// Down for longer than any lock's TTL, then back empty: the "delayed restart"
    /// remedy, for clients without the restart quarantine.
    Delayed(Duration),
    /// Back at once, empty; the node still counts as faulty for `quarantine` after its
    /// restart, the time the restart quarantine keeps it out of new acquisitions.
    Prompt { quarantine: Duration },
}

#[derive(Default, Debug)]
pub struct FaultCounts {
    pub kill: usize,
    pub pause: usize,
    pub partition: usize,
    pub latency: usize,
}

/// A fault in place: undone at `undo_at`; the node counts as faulty until `busy_until`.
struct Active {
    node: usize,
    fault: Fault,
    undo_at: Instant,
    busy_until: Instant,
    undone: bool,
}

/// Runs the schedule until `stop()` says so (asked at every tick, 100-400 ms apart),
/// then undoes every fault still in place.
///
/// Pauses and partitions are meant to last at most 0.8 s, but faults are undone one
/// after another in this loop, so one waits while another node restarts (seconds on a
/// loaded machine): a fault can outlast the 2 s after which fredlock closes a
/// connection that stopped answering. The removals a client could not deliver
/// meanwhile are sent again once the node is back (`Node::resend`).
///
/// `restore`: keys (with their values) that another client holds on nodes 0-2 for the
/// whole run, written again on such a node when it restarts empty.
pub async fn run(
    nodes: &Nodes,
    rng: &mut StdRng,
    restarts: Restarts,
    stop: &(dyn Fn() -> bool + Sync),
    restore: &[(String, &str)],
) -> Result<FaultCounts, Box<dyn std::error::Error + Send + Sync>> {
    let mut counts = FaultCounts::default();
    let mut active: Vec<Active> = Vec::new();
    while !stop() {
        // The next tick, or the first fault due to be undone if that comes sooner.
        let tick = Instant::now() + Duration::from_millis(rng.random_range(100..400));
        let due = active
            .iter()
            .filter(|a| !a.undone)
            .map(|a| a.undo_at)
            .fold(tick, Instant::min);
        tokio::time::sleep_until(due.into()).await;
        let now = Instant::now();
        for a in active.iter_mut().filter(|a| !a.undone && a.undo_at <= now) {
            undo(nodes, a.node, a.fault, restore).await?;
            a.undone = true;
        }
        active.retain(|a| !a.undone || a.busy_until > now);
        if active.len() < MAX_FAULTY && rng.random_bool(0.7) {
            let free: Vec<usize> = (0..5)
                .filter(|n| active.iter().all(|a| a.node != *n))
                .collect();
            let node = free[rng.random_range(0..free.len())];
            let fault = [Fault::Kill, Fault::Pause, Fault::Partition, Fault::Latency]
                [rng.random_range(0..4)];
            let (down, after) = match (fault, restarts) {
                (Fault::Kill, Restarts::Delayed(delay)) => (
                    delay + Duration::from_millis(rng.random_range(0..500)),
                    Duration::ZERO,
                ),
                (Fault::Kill, Restarts::Prompt { quarantine }) => {
                    // Plus a second for the restart itself.
                    (
                        Duration::from_millis(rng.random_range(50..300)),
                        quarantine + Duration::from_secs(1),
                    )
                }
                _ => (
                    Duration::from_millis(rng.random_range(100..800)),
                    Duration::ZERO,
                ),
            };
            apply(nodes, node, fault, rng).await?;
            match fault {
                Fault::Kill => counts.kill += 1,
                Fault::Pause => counts.pause += 1,
                Fault::Partition => counts.partition += 1,
                Fault::Latency => counts.latency += 1,
            }
            let undo_at = Instant::now() + down;
            active.push(Active {
                node,
                fault,
                undo_at,
                busy_until: undo_at + after,
                undone: false,
            });
        }
    }
    for a in active.iter().filter(|a| !a.undone) {
        undo(nodes, a.node, a.fault, restore).await?;
    }
    Ok(counts)
}

async fn apply(nodes: &Nodes, node: usize, fault: Fault, rng: &mut StdRng) -> TestResult {
    match fault {
        Fault::Kill => nodes.cluster.kill(node).await?,
        Fault::Pause => nodes.cluster.pause(node).await?,
        Fault::Partition => nodes.cluster.partition(node).await?,
        Fault::Latency => nodes
            .cluster
            .set_latency(node, Duration::from_millis(rng.random_range(20..200))),
    }
    Ok(())
}

async fn undo(nodes: &Nodes, node: usize, fault: Fault, restore: &[(String, &str)]) -> TestResult {
    match fault {
        Fault::Kill => {
            nodes.cluster.restart(node).await?;
            if node < 3 {
                nodes.wait_admin(node, Duration::from_secs(10)).await;
                for (key, value) in restore {
                    let args = vec![
                        key.as_str().into(),
                        (*value).into(),
                        "NX".into(),
                        "PX".into(),
                        120_000.into(),
                    ];
                    nodes.cmd(node, "SET", args).await?;
                }
            }
        }
        Fault::Pause => nodes.cluster.unpause(node).await?,
        Fault::Partition => nodes.cluster.heal(node).await?,
        Fault::Latency => nodes.cluster.set_latency(node, Duration::ZERO),
    }
    Ok(())
}
