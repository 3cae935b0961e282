//! Where, on what and with which options the benchmark ran: the machine, the build, the
//! nodes, the clients' settings.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::Args;
use crate::scenario::Target;

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
    pub async fn collect(args: &Args, target: &Target) -> Environment {
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
                    "throwaway cluster: {} Redis containers on this host, {}",
                    c.len(),
                    match args.network {
                        crate::NetworkChoice::Host => {
                            "on the host's network (127.0.0.1, no port proxy)"
                        }
                        crate::NetworkChoice::Mapped => {
                            "reached on 127.0.0.1 through Docker's port proxy"
                        }
                    }
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
    use fred::prelude::ClientLike;
    use fred::types::CustomCommand;
    let url = urls.first()?;
    let client = crate::fred_client::connect(url, Duration::from_secs(3), |b| {
        b.with_performance_config(|p| p.default_command_timeout = Duration::from_secs(2));
    })
    .await
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
pub struct Options {
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

impl Options {
    pub fn of(args: &Args) -> Options {
        let retry = |d: Option<Duration>, default: Duration| format!("{:?}", d.unwrap_or(default));
        Options {
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
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc(t: SystemTime) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_credentials() {
        assert_eq!(host_of("redis://u:p@h:1/2"), "h:1");
    }

    #[test]
    fn utc_dates() {
        let at = |s: u64| utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_000_000), "2026-11-30T00:53:20Z");
    }
}
