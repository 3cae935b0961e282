//! CPU time from `/proc` (Linux only; elsewhere the figures are absent): the benchmark
//! process's own, for the CPU cost per lock, and how much of the machine went to
//! processes other than the benchmark, its Redis nodes and Docker's plumbing during a
//! run, so that a run on a machine shared with, say, a compiler is flagged instead of
//! silently slower.

use std::time::Instant;

/// Processes that belong to the measurement.
const OURS: [&str; 6] = [
    "quorum-bench",
    "redis-server",
    "docker-proxy",
    "containerd-shim",
    "containerd",
    "dockerd",
];

/// `PF_KTHREAD` in the flags field of `/proc/PID/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// USER_HZ, the unit of `/proc`'s CPU times: fixed at 100 on Linux.
const HZ: f64 = 100.0;

/// The fields of `/proc/PID/stat` after the `(comm)`; comm may hold spaces and
/// parentheses, so the split is at the last ')'.
fn stat_fields(text: &str) -> Option<(&str, Vec<&str>)> {
    let (open, close) = (text.find('(')?, text.rfind(')')?);
    Some((
        &text[open + 1..close],
        text[close + 1..].split_whitespace().collect(),
    ))
}

/// utime + stime jiffies from the fields after the comm (state is field 0).
fn jiffies(fields: &[&str]) -> u64 {
    let at = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    at(11).unwrap_or(0) + at(12).unwrap_or(0)
}

/// CPU seconds (user + system, all threads) this process has used so far; 10 ms
/// resolution, plenty against the seconds a measured window costs.
pub fn own_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let (_, fields) = stat_fields(&text)?;
    Some(jiffies(&fields) as f64 / HZ)
}

pub struct Snapshot {
    at: Instant,
    /// user + nice + system jiffies of the whole machine.
    machine: u64,
    /// utime + stime jiffies of our processes.
    ours: u64,
}

impl Snapshot {
    pub fn take() -> Option<Snapshot> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(3)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let machine = cpu.iter().sum();
        let mut ours = 0;
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, fields)) = stat_fields(&text) else {
                continue;
            };
            // Kernel threads (ksoftirqd, kworker) mostly carry the loopback traffic of
            // the measurement itself: counted as ours.
            let kernel_thread = fields
                .get(6)
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|flags| flags & PF_KTHREAD != 0);
            if !kernel_thread && !OURS.iter().any(|o| comm.starts_with(o)) {
                continue;
            }
            ours += jiffies(&fields);
        }
        Some(Snapshot {
            at: Instant::now(),
            machine,
            ours,
        })
    }

    /// The share of all cores' time, between `self` and `later`, spent by other
    /// processes (0 = nobody else ran; 0.5 = half the machine was busy elsewhere).
    pub fn foreign_share(&self, later: &Snapshot) -> Option<f64> {
        let cores = std::thread::available_parallelism().ok()?.get() as f64;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let machine = later.machine.saturating_sub(self.machine) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        (wall > 0.0).then(|| ((machine - ours).max(0.0) / HZ / (wall * cores)).min(1.0))
    }
}
