//! `quorum-bench`: fredlock measured side by side with the physical floor (a bare fred
//! fan-out) and the Rust Redlock peers (rslock 0.10, redlock 2.0, distributed-lock-redis
//! 0.2), on the user's own masters (`--endpoints`) or on a throwaway cluster of Redis
//! containers.
//!
//! ```sh
//! cargo run --release -p fredlock-bench --bin quorum-bench -- --out bench-results
//! ```
//!
//! See `docs/benchmarks.md` for the scenarios, the goals and the latest results.

mod clients;
mod cpu;
mod cycle;
mod env;
mod floor;
mod fred_client;
mod goals;
mod measured;
mod peers;
mod plot;
mod probe;
mod report;
mod run;
mod scenario;
mod stats;
mod table;
mod tables;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::clients::{BenchClient, ClientKind};
use crate::cycle::ClientSettings;
use crate::probe::Probe;
use crate::run::{RunResult, RunSpec};
use crate::scenario::{Scenario, ScenarioKind, Target};

/// How the throwaway cluster's nodes are reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkChoice {
    /// Each container shares the host's network and its Redis listens on a port of
    /// 127.0.0.1, as a redis-server process on a server does.
    Host,
    /// Docker maps a host port to each container, through its user-space port proxy
    /// (docker-proxy), which copies every message between two sockets.
    Mapped,
}

/// Which workloads to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum WorkloadChoice {
    /// Each task locks its own resource (scenarios healthy, latency, killed, frozen,
    /// scaling).
    Uncontended,
    /// All tasks lock one resource (scenario contended).
    Contended,
    /// Both.
    Both,
}

/// Redlock quorum benchmark: fredlock, the floor (a bare fred fan-out: SET NX PX to all
/// nodes, then DEL) and the Rust peers rslock 0.10, redlock 2.0 and distributed-lock-redis
/// 0.2 (`dist-lock`), in the same run on the same nodes. Without --endpoints it starts a
/// throwaway cluster of Redis containers (image from FREDLOCK_REDIS_IMAGE, else
/// scripts/redis-image.sh, else redis:7.4) and removes it afterwards.
#[derive(Debug, Parser)]
#[command(name = "quorum-bench", version)]
pub struct Args {
    /// Your own masters, comma-separated redis:// URLs (the fault scenarios are then
    /// skipped; keys are named `fredlock-bench:*` and expire after the TTL at worst).
    #[arg(long, value_delimiter = ',')]
    endpoints: Vec<String>,
    /// How the throwaway cluster's nodes are reached: `host` (no port proxy, as users'
    /// nodes are) or `mapped` (through Docker's port proxy).
    #[arg(long, value_enum, default_value = "host")]
    network: NetworkChoice,
    /// Nodes of the main scenarios (the throwaway cluster also gets the largest
    /// --scaling size).
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Tasks of the uncontended scenarios (healthy, latency, killed, frozen).
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// Tasks of the contended scenario, all on one resource.
    #[arg(long, default_value_t = 16)]
    contended_tasks: usize,
    /// Measured time per scenario and client (e.g. 5s, 1500ms).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Unrecorded time before each measured window, after any fault is injected.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Workloads to run.
    #[arg(long, value_enum, default_value = "both")]
    workload: WorkloadChoice,
    /// Scenarios to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "healthy,per-job,latency,killed,frozen,scaling,contended"
    )]
    scenarios: Vec<ScenarioKind>,
    /// Clients to run, comma-separated, in this order within each scenario.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "floor,fredlock,rslock,redlock,dist-lock"
    )]
    clients: Vec<ClientKind>,
    /// Cluster sizes of the scaling scenario (one task each).
    #[arg(long, value_delimiter = ',', default_value = "1,3,5,7,9")]
    scaling: Vec<usize>,
    /// Hold time in the uncontended scenarios.
    #[arg(long, default_value = "0ms", value_parser = parse_duration)]
    hold: Duration,
    /// Hold time in the contended scenario.
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    contended_hold: Duration,
    /// Lock TTL.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    ttl: Duration,
    /// fredlock's and the floor's per-node timeout.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    node_timeout: Duration,
    /// One-way latency added to one node in the latency scenario.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    latency: Duration,
    /// fredlock's acquire timeout in the contended scenario (lock() retries until it).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    acquire_timeout: Duration,
    /// fredlock's retry delay in the contended scenario, also dist-lock's pause between
    /// attempts there [default: the library's, 100ms].
    #[arg(long, value_parser = parse_duration)]
    retry_delay: Option<Duration>,
    /// fredlock's retry jitter in the contended scenario, also dist-lock's [default: the
    /// library's, 100ms].
    #[arg(long, value_parser = parse_duration)]
    retry_jitter: Option<Duration>,
    /// Bound on one lock or release call of any client; longer is a failure.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    op_timeout: Duration,
    /// Folder under which the results folder (named after the UTC time) is made.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = check(&args) {
        eprintln!("quorum-bench: {e}");
        return ExitCode::from(2);
    }
    if args.endpoints.is_empty() {
        scenario::choose_image();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quorum-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run_main(args));
    // redlock threads stuck on a frozen node are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}

fn check(args: &Args) -> Result<(), String> {
    if args.nodes == 0 || args.tasks == 0 || args.contended_tasks == 0 {
        return Err("--nodes, --tasks and --contended-tasks must be at least 1".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    if args.clients.is_empty() || args.scenarios.is_empty() {
        return Err("nothing to run: --clients and --scenarios must not be empty".into());
    }
    if args.scaling.contains(&0) {
        return Err("--scaling sizes must be at least 1".into());
    }
    if !args.endpoints.is_empty() && args.endpoints.len() < args.nodes {
        return Err(format!(
            "--nodes {} but only {} endpoints; pass --nodes {} or more endpoints",
            args.nodes,
            args.endpoints.len(),
            args.endpoints.len()
        ));
    }
    Ok(())
}

async fn run_main(args: Args) -> ExitCode {
    let started_at = std::time::SystemTime::now();
    let wall = Instant::now();
    let target = if args.endpoints.is_empty() {
        let size = scenario::cluster_size(&args);
        eprintln!("quorum-bench: starting a throwaway cluster of {size} Redis containers");
        match Target::start_cluster(size, args.network).await {
            Ok(t) => t,
            Err(e) => {
                eprintln!("quorum-bench: cannot start the cluster: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        Target::Endpoints(args.endpoints.clone())
    };
    let plan = scenario::plan(&args, &target);
    if plan.is_empty() {
        eprintln!("quorum-bench: no scenario left to run with these options");
        return ExitCode::from(2);
    }
    let environment = env::Environment::collect(&args, &target).await;

    let outcome = tokio::select! {
        results = execute(&args, &target, &plan) => Some(results),
        _ = tokio::signal::ctrl_c() => None,
    };
    // Removes the containers (after unpausing any frozen node).
    drop(target);
    let Some(results) = outcome else {
        eprintln!("quorum-bench: interrupted; the cluster was removed, nothing was written");
        return ExitCode::from(130);
    };
    let elapsed = wall.elapsed();
    let report = report::Report::new(&args, environment, &plan, results, started_at, elapsed);
    print!("{}", report.text());
    match report.write(&args.out) {
        Ok(dir) => {
            println!("results written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("quorum-bench: cannot write the results: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every scenario of the plan, each client after the other, with a progress bar.
async fn execute(args: &Args, target: &Target, plan: &[Scenario]) -> Vec<RunResult> {
    const PREWARM: Duration = Duration::from_millis(300);
    let runs: usize = plan.iter().map(|s| s.clients.len()).sum();
    let per_run = PREWARM + args.warmup + args.duration;
    let bar = if args.no_progress {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
    } else {
        ProgressBar::new((per_run * runs as u32).as_millis() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}% ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let settings = ClientSettings {
        node_timeout: args.node_timeout,
        acquire_timeout: args.acquire_timeout,
        retry_delay: args.retry_delay,
        retry_jitter: args.retry_jitter,
        ttl: args.ttl,
    };
    let mut results = Vec::new();
    let mut done = Duration::ZERO;
    let session = format!("{:08x}", rand::random::<u32>());
    for scenario in plan {
        for &kind in &scenario.clients {
            let label = format!("{} · {}", scenario.id, kind.name());
            bar.set_message(format!("{label}: connecting"));
            let urls = target.urls(scenario.nodes, scenario.fault.proxied_node());
            let client =
                match BenchClient::connect(kind, &urls, scenario.contended, &settings).await {
                    Ok(c) => {
                        if let BenchClient::Fredlock(redlock) = &c {
                            bar.set_message(format!("{label}: fredlock's restart quarantine"));
                            target.admit(redlock).await;
                        }
                        Arc::new(c)
                    }
                    Err(e) => {
                        bar.println(format!("{label}: cannot connect: {e}; skipped"));
                        done += per_run;
                        continue;
                    }
                };
            let spec = RunSpec {
                tasks: scenario.tasks,
                contended: scenario.contended,
                fresh_resources: scenario.fresh_resources,
                ttl: args.ttl,
                hold: scenario.hold,
                warmup: args.warmup,
                duration: args.duration,
                op_timeout: args.op_timeout,
                resource_prefix: format!(
                    "fredlock-bench:{session}:{}:{}",
                    scenario.id,
                    kind.name()
                ),
            };
            run::prewarm(&client, &spec, PREWARM).await;
            // Connected before the fault, which would keep it from connecting.
            let probe = Probe::connect(&target.urls(scenario.nodes, None)).await;
            if let Err(e) = target.inject(&scenario.fault).await {
                bar.println(format!(
                    "{label}: cannot inject {:?}: {e}; skipped",
                    scenario.fault
                ));
                let _ = target.clear(&scenario.fault).await;
                probe.quit().await;
                done += per_run;
                continue;
            }
            let live = Arc::new(AtomicU64::new(0));
            let start = Instant::now();
            let result = {
                let measured = run::measure(&scenario.id, kind, &client, &spec, &live, &probe);
                tokio::pin!(measured);
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    tokio::select! {
                        result = &mut measured => break result,
                        _ = tick.tick() => {
                            let ran = (PREWARM + start.elapsed()).min(per_run);
                            bar.set_position((done + ran).as_millis() as u64);
                            let n = live.load(Ordering::Relaxed);
                            let rate = n as f64 / start.elapsed().as_secs_f64().max(0.001);
                            bar.set_message(format!("{label}: {n} locks, {rate:.0}/s"));
                        }
                    }
                }
            };
            probe.quit().await;
            if let Err(e) = target.clear(&scenario.fault).await {
                bar.println(format!("{label}: cannot clear {:?}: {e}", scenario.fault));
            }
            if let Ok(client) = Arc::try_unwrap(client) {
                tokio::time::timeout(Duration::from_secs(3), client.close())
                    .await
                    .ok();
            }
            done += per_run;
            bar.set_position(done.as_millis() as u64);
            bar.println(format!("{label}: {}", report::progress_line(&result)));
            results.push(result);
        }
    }
    bar.finish_and_clear();
    results
}

/// Parses `250ms`, `5s`, `1.5s`, `2m`, `100us`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}`: expected a number and a unit, e.g. 5s or 250ms"))?;
    let seconds = match unit.trim() {
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" | "min" => value * 60.0,
        other => return Err(format!("`{text}`: unknown unit `{other}` (us, ms, s, m)")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("`{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn the_default_command_line_parses() {
        let args = Args::try_parse_from(["quorum-bench"]).unwrap();
        assert_eq!(args.nodes, 5);
        assert_eq!(args.tasks, 64);
        assert_eq!(args.scaling, vec![1, 3, 5, 7, 9]);
        assert_eq!(args.clients.len(), 5);
        assert!(check(&args).is_ok());
    }
}
