//! The report: the console tables, the goals, `results.json`, `results.md` (the tables
//! with every fredlock figure as a ratio to the floor and to each peer) and
//! `latency.svg`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Args;
use crate::clients::ClientKind;
use crate::run::{FailureCount, RunResult};
use crate::scenario::{Scenario, ScenarioKind, Target};
use crate::stats::{Summary, fmt_ms};

/// Where and on what the benchmark ran.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    pub command: String,
    pub build: &'static str,
    pub fredlock_version: &'static str,
    /// `git describe --always --dirty` of the working tree, when run from one.
    pub fredlock_source: Option<String>,
    pub cores: usize,
    pub memory_gib: Option<f64>,
    pub cpu: Option<String>,
    pub kernel: Option<String>,
    pub target: String,
    pub redis_image: Option<String>,
    pub redis_version: Option<String>,
    /// Other containers running when the benchmark started (for example another test
    /// suite): they share the CPU.
    pub other_containers_at_start: Option<usize>,
    pub loadavg_at_start: Option<f64>,
}

impl Environment {
    pub async fn collect(_args: &Args, target: &Target) -> Environment {
        let ours = match target {
            Target::Cluster(c) => c.len(),
            Target::Endpoints(_) => 0,
        };
        let redis_version = redis_version(&target.urls(1, None)).await;
        Environment {
            command: std::env::args().collect::<Vec<_>>().join(" "),
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            fredlock_version: fredlock_version(),
            fredlock_source: command_line("git", &["describe", "--always", "--dirty"]),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
                let kb: f64 = m
                    .lines()
                    .find(|l| l.starts_with("MemTotal:"))?
                    .split_whitespace()
                    .nth(1)?
                    .parse()
                    .ok()?;
                Some((kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
            }),
            cpu: std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            }),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|s| s.trim().to_string()),
            target: match target {
                Target::Cluster(c) => format!(
                    "throwaway cluster: {} Redis containers on this host, reached on 127.0.0.1",
                    c.len()
                ),
                Target::Endpoints(e) => format!(
                    "endpoints: {}",
                    e.iter().map(|u| host_of(u)).collect::<Vec<_>>().join(", ")
                ),
            },
            redis_image: match target {
                Target::Cluster(..) => std::env::var(fredlock_testcluster::IMAGE_ENV)
                    .ok()
                    .or_else(|| Some(fredlock_testcluster::DEFAULT_IMAGE.to_string())),
                Target::Endpoints(_) => None,
            },
            redis_version,
            other_containers_at_start: command_line("docker", &["ps", "-q"])
                .map(|out| out.lines().count().saturating_sub(ours)),
            loadavg_at_start: crate::run::loadavg(),
        }
    }
}

/// The `version` of the fredlock package this binary was built against (its
/// Cargo.toml's `[package]` section).
fn fredlock_version() -> &'static str {
    const MANIFEST: &str = include_str!("../../Cargo.toml");
    MANIFEST
        .lines()
        .skip_while(|l| l.trim() != "[package]")
        .find_map(|l| l.trim().strip_prefix("version = "))
        .map_or("?", |v| v.trim_matches('"'))
}

fn command_line(program: &str, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `host:port` of a URL, without credentials.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest).to_string()
}

async fn redis_version(urls: &[String]) -> Option<String> {
    use fred::prelude::{Builder, ClientLike, Config};
    use fred::types::CustomCommand;
    let url = urls.first()?;
    let client = Builder::from_config(Config::from_url(url).ok()?)
        .with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2))
        .build()
        .ok()?;
    tokio::time::timeout(Duration::from_secs(3), client.init())
        .await
        .ok()?
        .ok()?;
    let info: Option<String> = client
        .custom(
            CustomCommand::new_static("INFO", None::<u16>, false),
            vec!["server"],
        )
        .await
        .ok();
    let _ = client.quit().await;
    info?
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_string())
}

/// The options the run used, for the JSON.
#[derive(Clone, Debug, Serialize)]
struct Options {
    duration_s: f64,
    warmup_s: f64,
    ttl_ms: u128,
    node_timeout_ms: u128,
    op_timeout_ms: u128,
    fredlock_uncontended: String,
    fredlock_contended: String,
    rslock: &'static str,
    redlock: &'static str,
    floor: &'static str,
}

/// One goal of issue 5, evaluated on this run.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    pub id: &'static str,
    pub statement: &'static str,
    /// `None` when the run lacks a scenario or client the goal needs.
    pub met: Option<bool>,
    pub figures: String,
}

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub elapsed_s: f64,
    pub environment: Environment,
    options: Options,
    pub scenarios: Vec<Scenario>,
    pub results: Vec<RunResult>,
    pub goals: Vec<Goal>,
}

impl Report {
    pub fn new(
        args: &Args,
        environment: Environment,
        plan: &[Scenario],
        results: Vec<RunResult>,
        started: SystemTime,
        elapsed: Duration,
    ) -> Report {
        let retry = |d: Option<Duration>, default: Duration| format!("{:?}", d.unwrap_or(default));
        let options = Options {
            duration_s: args.duration.as_secs_f64(),
            warmup_s: args.warmup.as_secs_f64(),
            ttl_ms: args.ttl.as_millis(),
            node_timeout_ms: args.node_timeout.as_millis(),
            op_timeout_ms: args.op_timeout.as_millis(),
            fredlock_uncontended: format!(
                "try_lock + release; node_timeout {:?}, retry_count 0, other options default",
                args.node_timeout
            ),
            fredlock_contended: format!(
                "lock + release; node_timeout {:?}, acquire_timeout {:?}, retry_delay {}, \
                 retry_jitter {}",
                args.node_timeout,
                args.acquire_timeout,
                retry(args.retry_delay, fredlock::DEFAULT_RETRY_DELAY),
                retry(args.retry_jitter, fredlock::DEFAULT_RETRY_JITTER),
            ),
            rslock: "LockManager::new(urls), defaults (3 tries, 0-200 ms pause, redis-rs 1.x \
                     timeouts: connect 1 s, response 500 ms); lock + unlock",
            redlock: "RedLock::new(urls), defaults (3 tries, 0-200 ms pause, a new connection \
                      per command, no timeouts); lock + unlock on a blocking thread",
            floor: "bare fred clients (per-command timeout = node_timeout, 1 attempt, fail \
                    fast); SET NX PX to all, done at a quorum of yes; DEL to all, done at a \
                    quorum (contended: waits for every SET answer, DEL where set, retries at \
                    once)",
        };
        let goals = goals(&results);
        Report {
            started_utc: utc(started),
            elapsed_s: elapsed.as_secs_f64(),
            environment,
            options,
            scenarios: plan.to_vec(),
            results,
            goals,
        }
    }

    /// One line on how much other processes took of the CPU during the runs.
    fn disturbance(&self) -> String {
        let shares: Vec<(&RunResult, f64)> = self
            .results
            .iter()
            .filter_map(|r| r.foreign_cpu_share.map(|x| (r, x)))
            .collect();
        let Some((worst, max)) = shares.iter().copied().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            return "CPU taken by other processes: not measured".into();
        };
        let disturbed: Vec<String> = shares
            .iter()
            .filter(|(_, x)| *x > crate::DISTURBED)
            .map(|(r, x)| format!("{}/{} {:.0}%", r.scenario, r.client.name(), x * 100.0))
            .collect();
        format!(
            "CPU taken by other processes during the runs: at most {:.1}% ({}/{}); {}",
            max * 100.0,
            worst.scenario,
            worst.client.name(),
            if disturbed.is_empty() {
                "no run disturbed (limit 5%)".to_string()
            } else {
                format!("DISTURBED runs (over 5%): {}", disturbed.join(", "))
            }
        )
    }

    fn result(&self, scenario: &str, client: ClientKind) -> Option<&RunResult> {
        find(&self.results, scenario, client)
    }

    /// The console report: one table per scenario, then the goals.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let env = &self.environment;
        let _ = writeln!(
            out,
            "\nquorum-bench {} · {} cores · {} build · Redis {} · {} · took {:.0} s",
            self.started_utc,
            env.cores,
            env.build,
            env.redis_version.as_deref().unwrap_or("?"),
            env.target,
            self.elapsed_s
        );
        let _ = writeln!(out, "{}", self.disturbance());
        for scenario in self
            .scenarios
            .iter()
            .filter(|s| s.kind != ScenarioKind::Scaling)
        {
            self.scenario_text(&mut out, scenario);
        }
        self.scaling_text(&mut out);
        let _ = writeln!(out, "\nGoals (fredlock)");
        for goal in &self.goals {
            let verdict = match goal.met {
                Some(true) => "met   ",
                Some(false) => "MISSED",
                None => "n/a   ",
            };
            let _ = writeln!(out, "  {} {verdict} {}", goal.id, goal.statement);
            let _ = writeln!(out, "            {}", goal.figures);
        }
        out
    }

    fn scenario_text(&self, out: &mut String, s: &Scenario) {
        let measured = self
            .results
            .iter()
            .find(|r| r.scenario == s.id)
            .map_or(0.0, |r| r.measured_s);
        let _ = writeln!(
            out,
            "\n{} {}: {} · {} · {} tasks · hold {} ms · {:.1} s measured",
            s.goal,
            s.id,
            s.title,
            if s.contended {
                "contended"
            } else {
                "uncontended"
            },
            s.tasks,
            s.hold_ms,
            measured
        );
        let _ = writeln!(
            out,
            "  {:<9} {:>9} {:>7}  {:<9} {:>8} {:>8} {:>8} {:>8} {:>8}  failures",
            "client", "locks/s", "×floor", "ms", "p50", "p90", "p99", "p99.9", "max"
        );
        let floor = self.result(&s.id, ClientKind::Floor).map(|r| r.throughput);
        for &client in &s.clients {
            let Some(r) = self.result(&s.id, client) else {
                let _ = writeln!(out, "  {:<9} (not run)", client.name());
                continue;
            };
            let ratio = floor
                .filter(|f| *f > 0.0)
                .map_or("-".to_string(), |f| format!("{:.2}", r.throughput / f));
            let mut lines: Vec<(&str, Option<&Summary>)> = vec![
                ("acquire", r.acquire.as_ref()),
                ("release", r.release.as_ref()),
            ];
            if s.contended {
                lines.push(("hand-off", r.handoff.as_ref()));
                lines.push(("→ other", r.handoff_to_other.as_ref()));
            }
            for (i, (op, summary)) in lines.into_iter().enumerate() {
                let head = if i == 0 {
                    format!(
                        "  {:<9} {:>9} {:>7}",
                        client.name(),
                        thousands(r.throughput),
                        ratio
                    )
                } else {
                    format!("  {:<9} {:>9} {:>7}", "", "", "")
                };
                let figures = match summary {
                    Some(x) => format!(
                        "{:>8} {:>8} {:>8} {:>8} {:>8}",
                        fmt_ms(x.p50_us),
                        fmt_ms(x.p90_us),
                        fmt_ms(x.p99_us),
                        fmt_ms(x.p999_us),
                        fmt_ms(x.max_us)
                    ),
                    None => format!("{:>8} {:>8} {:>8} {:>8} {:>8}", "-", "-", "-", "-", "-"),
                };
                let tail = if i == 0 {
                    failures_line(&r.failures)
                } else if i == 1 && s.contended {
                    format!(
                        "locks per task min {} / mean {:.0} / max {}",
                        r.per_task.min, r.per_task.mean, r.per_task.max
                    )
                } else if i == 2 && s.contended {
                    format!(
                        "{:.0}% of hand-offs to the same task",
                        r.same_task_share.unwrap_or(0.0) * 100.0
                    )
                } else {
                    String::new()
                };
                let _ = writeln!(out, "{head}  {op:<9} {figures}  {tail}");
            }
        }
    }

    fn scaling_text(&self, out: &mut String) {
        let sizes = self.scaling_sizes();
        if sizes.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\nS4 scaling: one task, healthy nodes · acquire latency p50 / p99 (ms) against N"
        );
        let mut head = format!("  {:<9}", "client");
        for (n, _) in &sizes {
            let _ = write!(head, " {:>15}", format!("N={n}"));
        }
        let _ = writeln!(out, "{head}");
        for client in self.clients_in(sizes.iter().map(|(_, id)| id.as_str())) {
            let mut line = format!("  {:<9}", client.name());
            for (_, id) in &sizes {
                let _ = write!(line, " {:>15}", self.scaling_cell(id, client));
            }
            let _ = writeln!(out, "{line}");
        }
    }

    /// One client's acquire latency in one scaling run: `p50 / p99` in ms, or `-`.
    fn scaling_cell(&self, id: &str, client: ClientKind) -> String {
        self.result(id, client)
            .and_then(|r| r.acquire.as_ref())
            .map_or("-".to_string(), |a| {
                format!("{} / {}", fmt_ms(a.p50_us), fmt_ms(a.p99_us))
            })
    }

    /// `(N, scenario id)` of the scaling runs, in order.
    fn scaling_sizes(&self) -> Vec<(usize, String)> {
        self.scenarios
            .iter()
            .filter(|s| s.kind == ScenarioKind::Scaling)
            .map(|s| (s.nodes, s.id.clone()))
            .collect()
    }

    fn clients_in<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<ClientKind> {
        let ids: Vec<&str> = ids.collect();
        let mut clients: Vec<ClientKind> = self
            .results
            .iter()
            .filter(|r| ids.contains(&r.scenario.as_str()))
            .map(|r| r.client)
            .collect();
        clients.sort();
        clients.dedup();
        clients
    }

    /// Writes `results.json`, `results.md`, `summary.txt` and `latency.svg` into a new
    /// folder under `out`, named after the start time; returns the folder.
    pub fn write(&self, out: &Path) -> std::io::Result<PathBuf> {
        let dir = out.join(self.started_utc.replace(':', "-"));
        std::fs::create_dir_all(&dir)?;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(dir.join("results.json"), json + "\n")?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(dir.join("summary.txt"), self.text())?;
        std::fs::write(dir.join("latency.svg"), crate::report::svg(self))?;
        Ok(dir)
    }

    /// The tables for docs/benchmarks.md: every figure, then fredlock's figures divided
    /// by the floor's and each peer's.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let env = &self.environment;
        let _ = writeln!(
            md,
            "Run {} · {} cores, {} GiB · {} · {} build · Redis {} ({}) · {} · took {:.0} s\n",
            self.started_utc,
            env.cores,
            env.memory_gib.map_or("?".into(), |m| format!("{m}")),
            env.cpu.as_deref().unwrap_or("?"),
            env.build,
            env.redis_version.as_deref().unwrap_or("?"),
            env.redis_image.as_deref().unwrap_or("own endpoints"),
            env.target,
            self.elapsed_s,
        );
        let _ = writeln!(md, "{}.\n", self.disturbance());
        let _ = writeln!(
            md,
            "Latencies in ms. Rows `÷ floor`, `÷ rslock`, `÷ redlock` divide fredlock's figure \
             by that client's in the same scenario: above 1 is better for locks/s, below 1 is \
             better for latencies.\n"
        );
        for s in self
            .scenarios
            .iter()
            .filter(|s| s.kind != ScenarioKind::Scaling)
        {
            let _ = writeln!(
                md,
                "### {} `{}`: {}, {}, {} tasks, hold {} ms\n",
                s.goal,
                s.id,
                s.title,
                if s.contended {
                    "contended"
                } else {
                    "uncontended"
                },
                s.tasks,
                s.hold_ms
            );
            // (header, whether the figure is a count rather than milliseconds, getter)
            let mut columns: Vec<(&str, bool, Getter)> = vec![
                (
                    "locks/s",
                    true,
                    Box::new(|r: &RunResult| Some(r.throughput)),
                ),
                ("acquire p50", false, pick(|r| r.acquire.as_ref(), "p50")),
                ("p90", false, pick(|r| r.acquire.as_ref(), "p90")),
                ("p99", false, pick(|r| r.acquire.as_ref(), "p99")),
                ("p99.9", false, pick(|r| r.acquire.as_ref(), "p99.9")),
                ("max", false, pick(|r| r.acquire.as_ref(), "max")),
                ("release p50", false, pick(|r| r.release.as_ref(), "p50")),
                ("p99", false, pick(|r| r.release.as_ref(), "p99")),
                ("max", false, pick(|r| r.release.as_ref(), "max")),
            ];
            if s.contended {
                columns.push(("hand-off p50", false, pick(|r| r.handoff.as_ref(), "p50")));
                columns.push(("p99", false, pick(|r| r.handoff.as_ref(), "p99")));
                columns.push((
                    "to another task p50",
                    false,
                    pick(|r| r.handoff_to_other.as_ref(), "p50"),
                ));
                columns.push((
                    "same-task share %",
                    true,
                    Box::new(|r| r.same_task_share.map(|x| x * 100.0)),
                ));
                columns.push((
                    "locks/task min",
                    true,
                    Box::new(|r| Some(r.per_task.min as f64)),
                ));
                columns.push(("max", true, Box::new(|r| Some(r.per_task.max as f64))));
            }
            let mut head = String::from("| client |");
            let mut rule = String::from("| --- |");
            for (name, _, _) in &columns {
                let _ = write!(head, " {name} |");
                rule.push_str(" ---: |");
            }
            let _ = writeln!(md, "{head} failures |\n{rule} --- |");
            for &client in &s.clients {
                let Some(r) = self.result(&s.id, client) else {
                    continue;
                };
                let mut row = format!("| {} |", client.name());
                for (_, count, get) in &columns {
                    let cell =
                        get(r).map_or(
                            "-".into(),
                            |v| {
                                if *count { thousands(v) } else { fmt_ms(v) }
                            },
                        );
                    let _ = write!(row, " {cell} |");
                }
                let _ = writeln!(md, "{row} {} |", md_failures(&r.failures));
            }
            if let Some(fl) = self.result(&s.id, ClientKind::Fredlock) {
                for other in [ClientKind::Floor, ClientKind::Rslock, ClientKind::Redlock] {
                    let Some(o) = self.result(&s.id, other) else {
                        continue;
                    };
                    let mut row = format!("| *fredlock ÷ {}* |", other.name());
                    for (_, _, get) in &columns {
                        let cell = match (get(fl), get(o)) {
                            (Some(a), Some(b)) if b > 0.0 => ratio(a / b),
                            _ => "-".into(),
                        };
                        let _ = write!(row, " {cell} |");
                    }
                    let _ = writeln!(row, " |");
                    md.push_str(&row);
                }
            }
            md.push('\n');
        }
        let sizes = self.scaling_sizes();
        if !sizes.is_empty() {
            let _ = writeln!(
                md,
                "### S4 scaling: one task, healthy nodes, acquire latency p50 / p99 (ms) against N\n"
            );
            let mut head = String::from("| client |");
            let mut rule = String::from("| --- |");
            for (n, _) in &sizes {
                let _ = write!(head, " N={n} |");
                rule.push_str(" ---: |");
            }
            let _ = writeln!(md, "{head}\n{rule}");
            let clients = self.clients_in(sizes.iter().map(|(_, id)| id.as_str()));
            for &client in &clients {
                let mut row = format!("| {} |", client.name());
                for (_, id) in &sizes {
                    let _ = write!(row, " {} |", self.scaling_cell(id, client));
                }
                let _ = writeln!(md, "{row}");
            }
            for other in [ClientKind::Floor, ClientKind::Rslock, ClientKind::Redlock] {
                if !clients.contains(&other) || !clients.contains(&ClientKind::Fredlock) {
                    continue;
                }
                let mut row = format!("| *fredlock ÷ {}* |", other.name());
                for (_, id) in &sizes {
                    let a = self
                        .result(id, ClientKind::Fredlock)
                        .and_then(|r| r.acquire.as_ref());
                    let b = self.result(id, other).and_then(|r| r.acquire.as_ref());
                    let cell = match (a, b) {
                        (Some(a), Some(b)) => format!(
                            "{} / {}",
                            ratio(a.p50_us / b.p50_us),
                            ratio(a.p99_us / b.p99_us)
                        ),
                        _ => "-".into(),
                    };
                    let _ = write!(row, " {cell} |");
                }
                let _ = writeln!(md, "{row}");
            }
            md.push('\n');
        }
        let _ = writeln!(
            md,
            "### Goals\n\n| goal | verdict | figures |\n| --- | --- | --- |"
        );
        for g in &self.goals {
            let verdict = match g.met {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "not measured",
            };
            let _ = writeln!(
                md,
                "| {}: {} | {verdict} | {} |",
                g.id, g.statement, g.figures
            );
        }
        md
    }
}

type Getter = Box<dyn Fn(&RunResult) -> Option<f64>>;

fn pick(summary: fn(&RunResult) -> Option<&Summary>, figure: &'static str) -> Getter {
    Box::new(move |r| summary(r).map(|s| s.get(figure)))
}

fn ratio(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn thousands(x: f64) -> String {
    let n = x.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `taken 12, release:no_quorum 3`, or `none`.
pub fn failures_line(failures: &BTreeMap<String, FailureCount>) -> String {
    if failures.is_empty() {
        return "none".into();
    }
    failures
        .iter()
        .map(|(k, v)| format!("{k} {}", v.count))
        .collect::<Vec<_>>()
        .join(", ")
}

fn md_failures(failures: &BTreeMap<String, FailureCount>) -> String {
    failures_line(failures).replace('|', "/")
}

fn find<'a>(results: &'a [RunResult], scenario: &str, client: ClientKind) -> Option<&'a RunResult> {
    results
        .iter()
        .find(|r| r.scenario == scenario && r.client == client)
}

/// The goals of issue 5, on fredlock's figures.
fn goals(results: &[RunResult]) -> Vec<Goal> {
    let get = |s: &str, c| find(results, s, c);
    let fl = |s: &str| get(s, ClientKind::Fredlock);
    let acq = |r: &RunResult, f: fn(&Summary) -> f64| r.acquire.as_ref().map(f);
    let rel = |r: &RunResult, f: fn(&Summary) -> f64| r.release.as_ref().map(f);
    let p99 = |s: &Summary| s.p99_us;
    let mut goals = Vec::new();

    // S1
    let (met, figures) = match (
        fl("s1-healthy"),
        get("s1-healthy", ClientKind::Floor),
        get("s1-healthy", ClientKind::Rslock),
    ) {
        (Some(f), Some(floor), rs) => {
            let to_floor = f.throughput / floor.throughput.max(f64::MIN_POSITIVE);
            let mut text = format!(
                "fredlock {} locks/s = {:.2}× the floor ({})",
                thousands(f.throughput),
                to_floor,
                thousands(floor.throughput)
            );
            let mut met = to_floor >= 0.8;
            if let Some(rs) = rs {
                let to_rs = f.throughput / rs.throughput.max(f64::MIN_POSITIVE);
                let _ = write!(text, ", {to_rs:.2}× rslock ({})", thousands(rs.throughput));
                met &= to_rs > 1.0;
            }
            (Some(met), text)
        }
        _ => (None, "needs s1-healthy with floor and fredlock".into()),
    };
    goals.push(Goal {
        id: "S1",
        statement: "healthy: fredlock throughput >= 0.8× the floor and above rslock's",
        met,
        figures,
    });

    // S2
    let (met, figures) = match (fl("s1-healthy"), fl("s2-latency")) {
        (Some(h), Some(l)) => match (acq(h, p99), acq(l, p99)) {
            (Some(a), Some(b)) => (
                Some(b <= 2.0 * a),
                format!(
                    "acquire p99 {} ms with a slow node vs {} ms healthy = {:.2}× (limit 2×); \
                     throughput {:.2}× healthy",
                    fmt_ms(b),
                    fmt_ms(a),
                    b / a,
                    l.throughput / h.throughput.max(f64::MIN_POSITIVE)
                ),
            ),
            _ => (Some(false), "no successful acquisition".into()),
        },
        _ => (None, "needs s1-healthy and s2-latency".into()),
    };
    goals.push(Goal {
        id: "S2",
        statement: "one node +50 ms: fredlock acquire p99 <= 2× its healthy p99",
        met,
        figures,
    });

    // S3
    for (id, label) in [("s3-killed", "killed"), ("s3-frozen", "frozen")] {
        let (met, figures) = match (fl("s1-healthy"), fl(id)) {
            (Some(h), Some(x)) => {
                let a = acq(x, p99).zip(acq(h, p99)).map(|(x, h)| x / h);
                let r = rel(x, p99).zip(rel(h, p99)).map(|(x, h)| x / h);
                let t = x.throughput / h.throughput.max(f64::MIN_POSITIVE);
                let ok = a.is_some_and(|a| a <= 1.5) && r.is_some_and(|r| r <= 1.5) && t >= 0.8;
                let show = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}×"));
                (
                    Some(ok),
                    format!(
                        "acquire p99 {} ({} ms), release p99 {} ({} ms), throughput {t:.2}× \
                         healthy; failures: {}",
                        show(a),
                        acq(x, p99).map_or("-".into(), fmt_ms),
                        show(r),
                        rel(x, p99).map_or("-".into(), fmt_ms),
                        failures_line(&x.failures)
                    ),
                )
            }
            _ => (None, format!("needs s1-healthy and {id}")),
        };
        goals.push(Goal {
            id: "S3",
            statement: if label == "killed" {
                "one node killed: acquire and release p99 <= 1.5× healthy, throughput >= 0.8×"
            } else {
                "one node frozen: acquire and release p99 <= 1.5× healthy, throughput >= 0.8×"
            },
            met,
            figures,
        });
    }

    // S4
    let mut sizes: Vec<(usize, &RunResult)> = results
        .iter()
        .filter(|r| r.client == ClientKind::Fredlock)
        .filter_map(|r| {
            let n = r.scenario.strip_prefix("s4-n")?.parse().ok()?;
            Some((n, r))
        })
        .collect();
    sizes.sort_by_key(|(n, _)| *n);
    let (met, figures) = match sizes.first() {
        Some((n0, first)) if sizes.len() >= 2 => {
            let base = first.acquire.as_ref().map_or(f64::NAN, |a| a.p50_us);
            let base99 = first.acquire.as_ref().map_or(f64::NAN, |a| a.p99_us);
            let mut worst: f64 = 0.0;
            let mut parts = Vec::new();
            for (n, r) in &sizes {
                let (p50, p99) = r
                    .acquire
                    .as_ref()
                    .map_or((f64::NAN, f64::NAN), |a| (a.p50_us, a.p99_us));
                worst = worst.max(p50 / base);
                parts.push(format!(
                    "N={n} {} ({:.2}×, p99 {:.2}×)",
                    fmt_ms(p50),
                    p50 / base,
                    p99 / base99
                ));
            }
            (
                Some(worst <= 1.5),
                format!(
                    "acquire p50 vs N={n0}: {}; worst {worst:.2}×",
                    parts.join(", ")
                ),
            )
        }
        _ => (None, "needs at least two scaling sizes".into()),
    };
    goals.push(Goal {
        id: "S4",
        statement: "fredlock acquire latency flat in N: p50 within 1.5× from N=1 to N=9",
        met,
        figures,
    });

    // S5
    let (met, figures) = match fl("s5-contended") {
        Some(c) => match &c.handoff {
            Some(h) => (
                Some(h.p50_us < 5000.0 && c.per_task.min > 0),
                format!(
                    "hand-off p50 {} ms (p99 {} ms; to another task p50 {} ms, {:.0}% to the \
                     same task); locks per task min {} / max {} (mean {:.0})",
                    fmt_ms(h.p50_us),
                    fmt_ms(h.p99_us),
                    c.handoff_to_other
                        .as_ref()
                        .map_or("-".into(), |o| fmt_ms(o.p50_us)),
                    c.same_task_share.unwrap_or(0.0) * 100.0,
                    c.per_task.min,
                    c.per_task.max,
                    c.per_task.mean
                ),
            ),
            None => (Some(false), "fewer than two acquisitions".into()),
        },
        None => (None, "needs s5-contended".into()),
    };
    goals.push(Goal {
        id: "S5",
        statement: "contended: hand-off p50 < 5 ms and no task starves (every task locks)",
        met,
        figures,
    });
    goals
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

const COLORS: [(ClientKind, &str); 4] = [
    (ClientKind::Floor, "#7f7f7f"),
    (ClientKind::Fredlock, "#d62728"),
    (ClientKind::Rslock, "#1f77b4"),
    (ClientKind::Redlock, "#2ca02c"),
];

fn color(c: ClientKind) -> &'static str {
    COLORS
        .iter()
        .find(|(k, _)| *k == c)
        .map_or("#000000", |(_, col)| col)
}

/// The latency plot: one panel per scenario with each client's acquire-latency
/// percentile curve (log scale), the contended hand-off curves, and acquire p50 / p99
/// against N for the scaling runs.
pub fn svg(report: &Report) -> String {
    /// A client's curve: whether dashed, and its `(x, µs)` points.
    type Line = (ClientKind, bool, Vec<(f64, f64)>);
    struct Panel {
        title: String,
        lines: Vec<Line>,
        scaling: bool,
    }
    let mut panels = Vec::new();
    for s in report
        .scenarios
        .iter()
        .filter(|s| s.kind != ScenarioKind::Scaling)
    {
        let mut lines = Vec::new();
        let mut handoff = Vec::new();
        for &c in &s.clients {
            if let Some(r) = report.result(&s.id, c) {
                if let Some(a) = &r.acquire {
                    lines.push((c, false, a.curve.clone()));
                }
                if let Some(h) = &r.handoff {
                    handoff.push((c, false, h.curve.clone()));
                }
            }
        }
        let what = if s.contended {
            "acquire wait"
        } else {
            "acquire"
        };
        panels.push(Panel {
            title: format!("{} {}: {what}", s.goal, s.title),
            lines,
            scaling: false,
        });
        if s.contended {
            panels.push(Panel {
                title: format!("{} {}: hand-off", s.goal, s.title),
                lines: handoff,
                scaling: false,
            });
        }
    }
    let sizes = report.scaling_sizes();
    if !sizes.is_empty() {
        let mut lines = Vec::new();
        for c in report.clients_in(sizes.iter().map(|(_, id)| id.as_str())) {
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for (n, id) in &sizes {
                if let Some(a) = report.result(id, c).and_then(|r| r.acquire.as_ref()) {
                    p50.push((*n as f64, a.p50_us));
                    p99.push((*n as f64, a.p99_us));
                }
            }
            lines.push((c, false, p50));
            lines.push((c, true, p99));
        }
        panels.push(Panel {
            title: "S4 acquire p50 (solid) / p99 (dashed) against N".into(),
            lines,
            scaling: true,
        });
    }

    let (pw, ph) = (420.0, 300.0);
    let cols = 3usize;
    let rows = panels.len().div_ceil(cols).max(1);
    let (top, width) = (60.0, pw * cols as f64);
    let height = top + ph * rows as f64;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="20" font-size="14">quorum-bench {} · {} cores · {} · Redis {} · latency (log scale) by percentile</text>"#,
        report.started_utc,
        report.environment.cores,
        report.environment.build,
        report.environment.redis_version.as_deref().unwrap_or("?")
    );
    for (i, (c, col)) in COLORS.iter().enumerate() {
        let x = 10.0 + 110.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="40" x2="{}" y2="40" stroke="{col}" stroke-width="2.5"/><text x="{}" y="44">{}</text>"#,
            x + 25.0,
            x + 30.0,
            c.name()
        );
    }
    for (i, panel) in panels.iter().enumerate() {
        let ox = pw * (i % cols) as f64;
        let oy = top + ph * (i / cols) as f64;
        let (l, r, t, b) = (ox + 55.0, ox + pw - 15.0, oy + 25.0, oy + ph - 40.0);
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" font-weight="bold">{}</text>"#,
            l,
            oy + 15.0,
            escape(&panel.title)
        );
        let ys: Vec<f64> = panel
            .lines
            .iter()
            .flat_map(|(_, _, pts)| pts.iter().map(|p| p.1))
            .filter(|y| *y > 0.0)
            .collect();
        if ys.is_empty() {
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}">no data</text>"#,
                l + 10.0,
                t + 20.0
            );
            continue;
        }
        let lo = ys
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min)
            .log10()
            .floor();
        let hi = ys
            .iter()
            .copied()
            .fold(0.0, f64::max)
            .log10()
            .ceil()
            .max(lo + 1.0);
        // Points below the lowest decade (a hand-off of 0) sit on the bottom edge.
        let yp = |us: f64| b - (us.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * (b - t);
        let (xmin, xmax, xs): (f64, f64, Vec<(f64, String)>) = if panel.scaling {
            let ns: Vec<f64> = panel
                .lines
                .iter()
                .flat_map(|(_, _, p)| p.iter().map(|q| q.0))
                .collect();
            let max = ns.iter().copied().fold(1.0, f64::max);
            let mut ticks: Vec<f64> = ns.clone();
            ticks.sort_by(f64::total_cmp);
            ticks.dedup();
            (
                1.0,
                max.max(2.0),
                ticks.into_iter().map(|n| (n, format!("N={n}"))).collect(),
            )
        } else {
            (
                0.0,
                3.6,
                vec![
                    (0.0, "p0".into()),
                    (nines(0.9), "p90".into()),
                    (nines(0.99), "p99".into()),
                    (nines(0.999), "p99.9".into()),
                    (3.6, "max".into()),
                ],
            )
        };
        let xp = |x: f64| l + (x - xmin) / (xmax - xmin) * (r - l);
        let _ = writeln!(
            svg,
            r##"<rect x="{l}" y="{t}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            r - l,
            b - t
        );
        let mut e = lo;
        while e <= hi + 1e-9 {
            let y = yp(10f64.powf(e));
            let _ = writeln!(
                svg,
                r##"<line x1="{l}" y1="{y}" x2="{r}" y2="{y}" stroke="#e5e5e5"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
                l - 4.0,
                y + 4.0,
                axis_label(10f64.powf(e))
            );
            e += 1.0;
        }
        for (x, label) in &xs {
            let x = xp(*x);
            let _ = writeln!(
                svg,
                r##"<line x1="{x}" y1="{t}" x2="{x}" y2="{b}" stroke="#eeeeee"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
                b + 14.0
            );
        }
        for (c, dashed, pts) in &panel.lines {
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, y)| {
                    let x = if panel.scaling {
                        x
                    } else if x >= 1.0 {
                        3.6
                    } else {
                        nines(x)
                    };
                    format!("{:.1},{:.1}", xp(x), yp(y))
                })
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"{}/>"#,
                path.join(" "),
                color(*c),
                if *dashed {
                    r#" stroke-dasharray="5,3""#
                } else {
                    ""
                }
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The x position of a percentile on the "nines" scale: p90 = 1, p99 = 2, p99.9 = 3.
fn nines(p: f64) -> f64 {
    -(1.0 - p.min(0.9995)).log10()
}

fn axis_label(us: f64) -> String {
    if us >= 1e6 {
        format!("{}s", us / 1e6)
    } else if us >= 1e3 {
        format!("{}ms", us / 1e3)
    } else {
        format!("{us}µs")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_000_000), "2026-11-30T00:53:20Z");
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(host_of("redis://u:p@h:1/2"), "h:1");
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(axis_label(1000.0), "1ms");
    }
}
