//! One measurement: `tasks` tasks running cycles of one client for a warm-up and then
//! the measured window, and what they recorded, reduced to a [`RunResult`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinSet;

use crate::clients::{BenchClient, ClientKind};
use crate::cycle::{Cycle, CycleParams};
use crate::probe::{self, Probe};
use crate::stats::Summary;

/// What a run does, apart from the client.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub tasks: usize,
    pub contended: bool,
    /// A new resource for every cycle (a lock per job id) instead of one per task.
    pub fresh_resources: bool,
    pub ttl: Duration,
    pub hold: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub op_timeout: Duration,
    /// Prefix of the resource names, unique to the run.
    pub resource_prefix: String,
}

/// Above this share of the CPU taken by other processes, a run is flagged as disturbed.
pub const DISTURBED: f64 = 0.05;

/// Failures of one kind: how many, and the first message seen.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FailureCount {
    pub count: u64,
    pub example: String,
}

/// Acquisitions per task in the measured window.
#[derive(Clone, Debug, Serialize)]
pub struct PerTask {
    pub min: u64,
    pub max: u64,
    pub mean: f64,
}

/// What one client did in one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub scenario: String,
    pub client: ClientKind,
    /// Successful acquisitions that completed inside the measured window.
    pub acquisitions: u64,
    /// `acquisitions` per second of the measured window.
    pub throughput: f64,
    pub measured_s: f64,
    /// Acquire latency of the cycles started in the window (contended: from the first
    /// attempt to the acquisition, retries and waits included).
    pub acquire: Option<Summary>,
    pub release: Option<Summary>,
    /// Failed calls, by kind: acquire failures, and `release:`-prefixed release failures.
    pub failures: BTreeMap<String, FailureCount>,
    /// Contended: from one holder's release (its `release()` returning) to the next
    /// holder's acquisition (its acquire call returning), on one monotonic clock.
    pub handoff: Option<Summary>,
    /// Contended: the hand-offs where the lock went to another task (a task that
    /// releases and at once locks again hands off to itself).
    pub handoff_to_other: Option<Summary>,
    /// Contended: the share of hand-offs where the same task locked again.
    pub same_task_share: Option<f64>,
    /// Contended: hand-offs where the next acquisition returned before the previous
    /// holder's `release()` did (the nodes had deleted the key before the releaser saw
    /// the quorum); counted as 0 in `handoff`.
    pub handoff_overlaps: Option<u64>,
    pub per_task: PerTask,
    /// Cycles still running when the run ended and given up on (at most
    /// `op_timeout` after the end).
    pub abandoned_tasks: u64,
    /// 1-minute load average when the run ended.
    pub loadavg_after: Option<f64>,
    /// Share of all cores' time taken by other processes (not the benchmark, its Redis
    /// nodes or Docker's plumbing) during the run: above ~0.05 the run was disturbed.
    pub foreign_cpu_share: Option<f64>,
    /// What the nodes and this process's CPU clock said over the measured window.
    pub window: probe::Window,
    /// The benchmark's plus the nodes' CPU time per acquisition (with its release) in
    /// the window, µs; absent when no node's INFO could be read.
    pub cpu_us_per_lock: Option<f64>,
    /// fredlock, uncontended: node operations (lock attempts plus releases, times the
    /// nodes read) per script call (FCALL, EVALSHA, EVAL) the nodes counted; above 1
    /// when operations share a script call. Absent for the other clients (their
    /// commands are not all scripts), when contended (`lock()`'s retries are not seen
    /// from outside) and when INFO could not be read.
    pub ops_per_script_call: Option<f64>,
    /// A new resource per lock: the keys each lock and its release left on a node, on
    /// average over the nodes read (the change of their key count over the window,
    /// per acquisition in it).
    pub keys_left_per_lock: Option<f64>,
    /// Likewise, the bytes of node memory (`used_memory`) each lock left.
    pub bytes_left_per_lock: Option<f64>,
}

#[derive(Default)]
struct TaskLog {
    acquire: Vec<u64>,
    release: Vec<u64>,
    failures: BTreeMap<String, FailureCount>,
    /// `(acquired, released, task)`, times in ns since the run's start, for
    /// acquisitions in the window.
    holds: Vec<(u64, u64, usize)>,
    in_window: u64,
}

/// Runs the tasks without recording anything for `duration` (connections, caches).
pub async fn prewarm(client: &Arc<BenchClient>, spec: &RunSpec, duration: Duration) {
    let live = Arc::new(AtomicU64::new(0));
    let mut quick = spec.clone();
    quick.warmup = duration;
    quick.duration = Duration::ZERO;
    quick.resource_prefix = format!("{}:prewarm", spec.resource_prefix);
    let _ = execute(client, &quick, &live).await;
}

/// Runs the warm-up and the measured window, reading `probe` at the window's start and
/// end, and reduces the logs.
pub async fn measure(
    scenario: &str,
    kind: ClientKind,
    client: &Arc<BenchClient>,
    spec: &RunSpec,
    live: &Arc<AtomicU64>,
    probe: &Probe,
) -> RunResult {
    let before = crate::cpu::Snapshot::take();
    let window_start = Instant::now() + spec.warmup;
    let sampler = async {
        tokio::time::sleep_until(window_start.into()).await;
        let start = probe.sample().await;
        tokio::time::sleep_until((window_start + spec.duration).into()).await;
        probe::Window::between(&start, &probe.sample().await)
    };
    let ((logs, window, abandoned), nodes) = tokio::join!(execute(client, spec, live), sampler);
    let after = crate::cpu::Snapshot::take();
    let mut result = reduce(scenario, kind, spec, logs, window, abandoned);
    result.foreign_cpu_share = before.zip(after).and_then(|(b, a)| b.foreign_share(&a));
    if nodes.nodes_read > 0 {
        result.cpu_us_per_lock = nodes.client_cpu_s.and_then(|own| {
            let locks = result.acquisitions as f64;
            (locks > 0.0).then(|| (own + nodes.redis_cpu_s) * 1e6 / locks)
        });
        if kind == ClientKind::Fredlock && !spec.contended && nodes.script_calls > 0 {
            let count = |s: &Option<Summary>| s.as_ref().map_or(0, |s| s.count as u64);
            let failed: u64 = result.failures.values().map(|f| f.count).sum();
            // Failed acquisitions and failed releases are operations too.
            let calls = count(&result.acquire) + count(&result.release) + failed;
            let ops = calls * nodes.nodes_read as u64;
            result.ops_per_script_call = Some(ops as f64 / nodes.script_calls as f64);
        }
    }
    if spec.fresh_resources && nodes.nodes_read > 0 && result.acquisitions > 0 {
        let per_lock =
            |added: i64| added as f64 / nodes.nodes_read as f64 / result.acquisitions as f64;
        result.keys_left_per_lock = Some(per_lock(nodes.keys_added));
        result.bytes_left_per_lock = Some(per_lock(nodes.bytes_added));
    }
    result.window = nodes;
    result
}

type Window = (Instant, Instant, Instant);

async fn execute(
    client: &Arc<BenchClient>,
    spec: &RunSpec,
    live: &Arc<AtomicU64>,
) -> (Vec<TaskLog>, Window, u64) {
    let t0 = Instant::now();
    let measure_start = t0 + spec.warmup;
    let end = measure_start + spec.duration;
    let params = CycleParams {
        ttl: spec.ttl,
        hold: spec.hold,
        contended: spec.contended,
        end,
        op_timeout: spec.op_timeout,
    };
    let mut set = JoinSet::new();
    for task in 0..spec.tasks {
        let client = Arc::clone(client);
        let params = params.clone();
        let live = Arc::clone(live);
        let resource = if spec.contended {
            spec.resource_prefix.clone()
        } else {
            format!("{}:{task}", spec.resource_prefix)
        };
        let fresh = spec.fresh_resources;
        set.spawn(async move {
            let mut log = TaskLog::default();
            let mut job = 0u64;
            while Instant::now() < end {
                let cycle = if fresh {
                    job += 1;
                    client.cycle(&format!("{resource}:{job}"), &params).await
                } else {
                    client.cycle(&resource, &params).await
                };
                record(&mut log, &cycle, task, t0, measure_start, end);
                if cycle.acquired.is_some() {
                    live.fetch_add(1, Ordering::Relaxed);
                }
            }
            log
        });
    }
    // Every cycle is bounded by the operation timeout (redlock's contended wait by the
    // end plus it), so this only gives up on tasks stuck beyond those bounds.
    let give_up = end + spec.op_timeout + Duration::from_secs(1);
    let mut logs = Vec::with_capacity(spec.tasks);
    let mut abandoned = 0;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, set.join_next()).await {
            Ok(Some(Ok(log))) => logs.push(log),
            Ok(Some(Err(_))) => abandoned += 1,
            Ok(None) => break,
            Err(_) => {
                abandoned += set.len() as u64;
                set.abort_all();
                break;
            }
        }
    }
    (logs, (t0, measure_start, end), abandoned)
}

fn record(
    log: &mut TaskLog,
    cycle: &Cycle,
    task: usize,
    t0: Instant,
    measure_start: Instant,
    end: Instant,
) {
    let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    if let Some(acquired) = cycle.acquired {
        if acquired >= measure_start && acquired <= end {
            log.in_window += 1;
            if let Some(released) = cycle.released {
                log.holds.push((
                    ns(acquired - t0),
                    ns(released.saturating_duration_since(t0)),
                    task,
                ));
            }
        }
    }
    if cycle.started < measure_start {
        return;
    }
    for failure in &cycle.failures {
        count(&mut log.failures, &failure.kind, &failure.detail);
    }
    if let Some(acquired) = cycle.acquired {
        log.acquire.push(ns(acquired - cycle.started));
    }
    if let (Some(start), Some(done)) = (cycle.release_started, cycle.released) {
        match &cycle.release_failure {
            None => log.release.push(ns(done - start)),
            Some(failure) => count(
                &mut log.failures,
                &format!("release:{}", failure.kind),
                &failure.detail,
            ),
        }
    }
}

fn count(map: &mut BTreeMap<String, FailureCount>, kind: &str, detail: &str) {
    let entry = map.entry(kind.to_string()).or_default();
    if entry.count == 0 {
        entry.example = detail.chars().take(300).collect();
    }
    entry.count += 1;
}

fn reduce(
    scenario: &str,
    kind: ClientKind,
    spec: &RunSpec,
    logs: Vec<TaskLog>,
    (_, measure_start, end): Window,
    abandoned: u64,
) -> RunResult {
    let measured = end - measure_start;
    let mut acquire = Vec::new();
    let mut release = Vec::new();
    let mut holds = Vec::new();
    let mut failures: BTreeMap<String, FailureCount> = BTreeMap::new();
    let mut per_task = Vec::new();
    for log in logs {
        acquire.extend(log.acquire);
        release.extend(log.release);
        holds.extend(log.holds);
        per_task.push(log.in_window);
        for (k, v) in log.failures {
            let entry = failures.entry(k).or_default();
            if entry.count == 0 {
                entry.example = v.example;
            }
            entry.count += v.count;
        }
    }
    // Tasks that never came back acquired nothing that was counted.
    per_task.extend(std::iter::repeat_n(0, abandoned as usize));
    let acquisitions: u64 = per_task.iter().sum();
    let (mut handoff, mut handoff_to_other, mut same_task_share, mut overlaps) =
        (None, None, None, None);
    if spec.contended {
        holds.sort_unstable();
        let mut gaps = Vec::with_capacity(holds.len());
        let mut to_other = Vec::with_capacity(holds.len());
        let mut over = 0;
        for pair in holds.windows(2) {
            let (_, prev_released, prev_task) = pair[0];
            let (next_acquired, _, next_task) = pair[1];
            if next_acquired < prev_released {
                over += 1;
            }
            let gap = next_acquired.saturating_sub(prev_released);
            gaps.push(gap);
            if next_task != prev_task {
                to_other.push(gap);
            }
        }
        if !gaps.is_empty() {
            same_task_share = Some(1.0 - to_other.len() as f64 / gaps.len() as f64);
        }
        handoff = Summary::of(&mut gaps);
        handoff_to_other = Summary::of(&mut to_other);
        overlaps = Some(over);
    }
    RunResult {
        scenario: scenario.to_string(),
        client: kind,
        acquisitions,
        throughput: acquisitions as f64 / measured.as_secs_f64(),
        measured_s: measured.as_secs_f64(),
        acquire: Summary::of(&mut acquire),
        release: Summary::of(&mut release),
        failures,
        handoff,
        handoff_to_other,
        same_task_share,
        handoff_overlaps: overlaps,
        per_task: PerTask {
            min: per_task.iter().copied().min().unwrap_or(0),
            max: per_task.iter().copied().max().unwrap_or(0),
            mean: if per_task.is_empty() {
                0.0
            } else {
                acquisitions as f64 / per_task.len() as f64
            },
        },
        abandoned_tasks: abandoned,
        loadavg_after: loadavg(),
        foreign_cpu_share: None,
        window: probe::Window::default(),
        cpu_us_per_lock: None,
        ops_per_script_call: None,
        keys_left_per_lock: None,
        bytes_left_per_lock: None,
    }
}

/// The 1-minute load average (Linux), if readable.
pub fn loadavg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `taken 12, release:no_quorum 3`, or `none`.
pub fn failures_line(failures: &BTreeMap<String, FailureCount>) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    let kinds: Vec<String> = failures
        .iter()
        .map(|(k, v)| format!("{k} {}", v.count))
        .collect();
    kinds.join(", ")
}
