//! The scenarios, the nodes they run on (a throwaway cluster or the user's endpoints),
//! and the faults injected into the cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use fredlock_testcluster::{Cluster, IMAGE_ENV};
use serde::Serialize;

use crate::clients::ClientKind;
use crate::{Args, NetworkChoice};

/// The scenarios of issue 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScenarioKind {
    /// S1: all nodes healthy, uncontended.
    Healthy,
    /// S1: all nodes healthy, uncontended, a new resource for every lock (a lock per
    /// job id), with the keys and bytes each lock leaves on the nodes.
    PerJob,
    /// S2: one node with added latency (through a loopback proxy), uncontended.
    Latency,
    /// S3: one node killed (SIGKILL), uncontended.
    Killed,
    /// S3: one node frozen (docker pause), uncontended.
    Frozen,
    /// S4: 1, 3, 5, 7, 9 healthy nodes, one task.
    Scaling,
    /// S5: all tasks on one resource, with a hold time.
    Contended,
}

/// A fault injected after the clients connected, cleared after the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    None,
    /// `one_way` added in each direction of the node's traffic by its proxy.
    Latency {
        node: usize,
        one_way_ms: u64,
    },
    /// Killed with SIGKILL; restarted (empty) afterwards.
    Kill {
        node: usize,
    },
    /// Frozen with `docker pause`; unpaused afterwards.
    Pause {
        node: usize,
    },
}

impl Fault {
    /// The node that clients must reach through its proxy.
    pub fn proxied_node(&self) -> Option<usize> {
        match self {
            Fault::Latency { node, .. } => Some(*node),
            _ => None,
        }
    }
}

/// One scenario: which nodes, how many tasks, which workload, which fault.
#[derive(Clone, Debug, Serialize)]
pub struct Scenario {
    /// Short id: `s1-healthy`, `s4-n7`, ...
    pub id: String,
    /// The goal it measures: `S1`...`S5`.
    pub goal: &'static str,
    pub kind: ScenarioKind,
    pub title: String,
    pub nodes: usize,
    pub tasks: usize,
    pub contended: bool,
    /// A new resource for every lock instead of one per task.
    pub fresh_resources: bool,
    pub hold_ms: f64,
    #[serde(skip)]
    pub hold: Duration,
    pub fault: Fault,
    pub clients: Vec<ClientKind>,
}

/// Where the nodes are.
pub enum Target {
    /// A throwaway cluster; every node has a proxy, used only for the latency fault.
    Cluster(Arc<Cluster>),
    /// The user's masters: no faults.
    Endpoints(Vec<String>),
}

impl Target {
    pub async fn start_cluster(
        n: usize,
        network: NetworkChoice,
    ) -> Result<Target, fredlock_testcluster::Error> {
        let cluster = match network {
            NetworkChoice::Host => Cluster::start_on_host_network(n, true).await?,
            NetworkChoice::Mapped => Cluster::start_with_proxies(n).await?,
        };
        Ok(Target::Cluster(Arc::new(cluster)))
    }

    pub fn max_nodes(&self) -> usize {
        match self {
            Target::Cluster(c) => c.len(),
            Target::Endpoints(e) => e.len(),
        }
    }

    pub fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(..))
    }

    /// The URLs of the first `n` nodes: each node's own port, except `proxied`, which is
    /// reached through its latency proxy.
    pub fn urls(&self, n: usize, proxied: Option<usize>) -> Vec<String> {
        match self {
            Target::Cluster(c) => (0..n)
                .map(|i| {
                    if Some(i) == proxied {
                        c.url(i)
                    } else {
                        c.direct_url(i)
                    }
                })
                .collect(),
            Target::Endpoints(e) => e.iter().take(n).cloned().collect(),
        }
    }

    /// fredlock keeps a node whose incarnation it has not recorded (a fresh or
    /// restarted node) out of acquisitions for its restart quarantine period. On a
    /// throwaway cluster no lock of anyone else can be held, so the run lifts the
    /// quarantine, as an operator does for a new deployment; on the user's masters it
    /// waits, trying a probe lock, until the nodes vote (at most the period and 10 s).
    /// Returns how long it waited.
    pub async fn admit(&self, redlock: &fredlock::Redlock) -> Duration {
        let start = Instant::now();
        if let Target::Cluster(_) = self {
            redlock.lift_restart_quarantine().await;
            return start.elapsed();
        }
        let limit = fredlock::DEFAULT_QUARANTINE_PERIOD + Duration::from_secs(10);
        while start.elapsed() < limit {
            let probe = redlock
                .try_lock("quorum-bench:admitted", Duration::from_secs(1))
                .await;
            if let Ok(lock) = probe {
                let _ = lock.release().await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        start.elapsed()
    }

    pub async fn inject(&self, fault: &Fault) -> Result<(), String> {
        let Target::Cluster(c) = self else {
            return match fault {
                Fault::None => Ok(()),
                _ => Err("faults need the throwaway cluster".into()),
            };
        };
        let result = match *fault {
            Fault::None => Ok(()),
            Fault::Latency { node, one_way_ms } => {
                c.try_set_latency(node, Duration::from_millis(one_way_ms))
            }
            Fault::Kill { node } => c.kill(node).await,
            Fault::Pause { node } => c.pause(node).await,
        };
        result.map_err(|e| e.to_string())
    }

    pub async fn clear(&self, fault: &Fault) -> Result<(), String> {
        let Target::Cluster(c) = self else {
            return Ok(());
        };
        let result = match *fault {
            Fault::None => Ok(()),
            Fault::Latency { node, .. } => c.try_set_latency(node, Duration::ZERO),
            Fault::Kill { node } => c.restart(node).await,
            Fault::Pause { node } => c.unpause(node).await,
        };
        result.map_err(|e| e.to_string())
    }
}

/// Containers to start: the main scenarios' nodes, and the largest scaling size.
pub fn cluster_size(args: &Args) -> usize {
    let scaling = if args.scenarios.contains(&ScenarioKind::Scaling) {
        args.scaling.iter().copied().max().unwrap_or(0)
    } else {
        0
    };
    args.nodes.max(scaling)
}

/// The scenarios to run, in order, with the clients of each.
pub fn plan(args: &Args, target: &Target) -> Vec<Scenario> {
    let wants = |k: ScenarioKind| args.scenarios.contains(&k);
    let uncontended = args.workload != crate::WorkloadChoice::Contended;
    let contended = args.workload != crate::WorkloadChoice::Uncontended;
    let n = args.nodes;
    let faulty = n - 1;
    let mut plan = Vec::new();
    let base = |id: &str, goal, kind, title: String, nodes, fault| Scenario {
        id: id.to_string(),
        goal,
        kind,
        title,
        nodes,
        tasks: args.tasks,
        contended: false,
        fresh_resources: false,
        hold_ms: args.hold.as_secs_f64() * 1e3,
        hold: args.hold,
        fault,
        clients: args.clients.clone(),
    };
    if uncontended && wants(ScenarioKind::Healthy) {
        plan.push(base(
            "s1-healthy",
            "S1",
            ScenarioKind::Healthy,
            format!("{n} healthy nodes"),
            n,
            Fault::None,
        ));
    }
    if uncontended && wants(ScenarioKind::PerJob) {
        let mut s = base(
            "s1-per-job",
            "S1",
            ScenarioKind::PerJob,
            format!("{n} healthy nodes, a new resource per lock"),
            n,
            Fault::None,
        );
        s.fresh_resources = true;
        plan.push(s);
    }
    let faults_possible = target.is_cluster() && n >= 2;
    if !target.is_cluster()
        && (wants(ScenarioKind::Latency)
            || wants(ScenarioKind::Killed)
            || wants(ScenarioKind::Frozen))
        && uncontended
    {
        eprintln!(
            "quorum-bench: --endpoints given: the latency, killed and frozen scenarios are skipped"
        );
    }
    if uncontended && faults_possible {
        let latency_ms = args.latency.as_millis() as u64;
        if wants(ScenarioKind::Latency) {
            plan.push(base(
                "s2-latency",
                "S2",
                ScenarioKind::Latency,
                format!("{n} nodes, node {faulty} +{latency_ms} ms each way"),
                n,
                Fault::Latency {
                    node: faulty,
                    one_way_ms: latency_ms,
                },
            ));
        }
        if wants(ScenarioKind::Killed) {
            plan.push(base(
                "s3-killed",
                "S3",
                ScenarioKind::Killed,
                format!("{n} nodes, node {faulty} killed"),
                n,
                Fault::Kill { node: faulty },
            ));
        }
        if wants(ScenarioKind::Frozen) {
            plan.push(base(
                "s3-frozen",
                "S3",
                ScenarioKind::Frozen,
                format!("{n} nodes, node {faulty} frozen"),
                n,
                Fault::Pause { node: faulty },
            ));
        }
    }
    if uncontended && wants(ScenarioKind::Scaling) {
        for &size in &args.scaling {
            if size > target.max_nodes() {
                eprintln!(
                    "quorum-bench: scaling size {size} skipped: only {} nodes",
                    target.max_nodes()
                );
                continue;
            }
            let mut s = base(
                &format!("s4-n{size}"),
                "S4",
                ScenarioKind::Scaling,
                format!("{size} healthy nodes, one task"),
                size,
                Fault::None,
            );
            s.tasks = 1;
            plan.push(s);
        }
    }
    if contended && wants(ScenarioKind::Contended) {
        let mut s = base(
            "s5-contended",
            "S5",
            ScenarioKind::Contended,
            format!("{n} healthy nodes, one resource"),
            n,
            Fault::None,
        );
        s.tasks = args.contended_tasks;
        s.contended = true;
        s.hold = args.contended_hold;
        s.hold_ms = args.contended_hold.as_secs_f64() * 1e3;
        plan.push(s);
    }
    plan
}

/// Makes sure the cluster has an image: `FREDLOCK_REDIS_IMAGE` if set, else the one
/// `scripts/redis-image.sh` prints (it builds one from Debian's redis-server when no
/// registry is reachable), else the cluster's default.
pub fn choose_image() {
    if std::env::var_os(IMAGE_ENV).is_some() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/redis-image.sh");
    if !script.exists() {
        return;
    }
    eprintln!("quorum-bench: {IMAGE_ENV} not set; asking scripts/redis-image.sh for an image");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output();
    let image = match output {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_string(),
        _ => String::new(),
    };
    if !image.is_empty() {
        eprintln!("quorum-bench: Redis image {image}");
        // SAFETY: called from `main` before the runtime or any other thread starts, so
        // nothing reads the environment concurrently.
        unsafe { std::env::set_var(IMAGE_ENV, image) };
    }
}
