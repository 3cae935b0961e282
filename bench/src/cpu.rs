//! How much of the machine's CPU went to processes other than the benchmark, its Redis
//! nodes and Docker's plumbing during a run: a run on a machine shared with, say, a
//! compiler is flagged instead of silently slower. Linux only (`/proc`); elsewhere the
//! figure is absent.

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
            // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
            let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
                continue;
            };
            let comm = &text[open + 1..close];
            let fields: Vec<&str> = text[close + 1..].split_whitespace().collect();
            // Kernel threads (ksoftirqd, kworker) mostly carry the loopback traffic of
            // the measurement itself: counted as ours.
            let kernel_thread = fields
                .get(6)
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|flags| flags & PF_KTHREAD != 0);
            if !kernel_thread && !OURS.iter().any(|o| comm.starts_with(o)) {
                continue;
            }
            // After the comm: state is field 0, utime field 11, stime field 12.
            let jiffies = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
            ours += jiffies(11).unwrap_or(0) + jiffies(12).unwrap_or(0);
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
        let hz = 100.0; // USER_HZ, fixed at 100 on Linux
        let cores = std::thread::available_parallelism().ok()?.get() as f64;
        let wall = later.at.duration_since(self.at).as_secs_f64();
        let machine = later.machine.saturating_sub(self.machine) as f64;
        let ours = later.ours.saturating_sub(self.ours) as f64;
        (wall > 0.0).then(|| ((machine - ours).max(0.0) / hz / (wall * cores)).min(1.0))
    }
}
