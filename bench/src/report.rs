//! The report: one [`Table`] per scenario and the [`Goal`]s, built once from the
//! results, then printed to the console and written as `results.json` (the results, the
//! tables and the goals), `results.md`, `summary.txt` and `latency.svg`.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::Args;
use crate::env::{Environment, Options, utc};
use crate::goals::{self, Goal};
use crate::measured::Measured;
use crate::run::{DISTURBED, RunResult, failures_line};
use crate::scenario::{Scenario, ScenarioKind};
use crate::stats::{Summary, fmt_ms, sig3};
use crate::table::Table;

/// What the columns mean, printed once above the tables.
const LEGEND: [&str; 3] = [
    "Latencies in ms. CPU µs: the benchmark's plus the nodes' CPU time per lock and its \
     release. Rows `fredlock ÷ x`: fredlock's figure divided by x's.",
    "ops/call: fredlock's node operations (lock attempts and releases, times the nodes) per \
     script call (FCALL, EVALSHA, EVAL) the nodes counted in the window;",
    "n/a where INFO cannot be read, and contended, where lock() retries out of sight.",
];

/// Everything a run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub started_utc: String,
    pub elapsed_s: f64,
    pub environment: Environment,
    options: Options,
    #[serde(flatten)]
    pub measured: Measured,
    pub tables: Vec<Table>,
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
        let mut report = Report {
            started_utc: utc(started),
            elapsed_s: elapsed.as_secs_f64(),
            environment,
            options: Options::of(args),
            goals: goals::evaluate(plan, &results),
            measured: Measured {
                scenarios: plan.to_vec(),
                results,
            },
            tables: Vec::new(),
        };
        let measured = &report.measured;
        report.tables = measured
            .scenarios
            .iter()
            .filter(|s| s.kind != ScenarioKind::Scaling)
            .map(|s| measured.scenario_table(s))
            .chain(measured.scaling_table())
            .collect();
        report
    }

    /// One line on how much other processes took of the CPU during the runs.
    fn disturbance(&self) -> String {
        let shares = self
            .measured
            .results
            .iter()
            .filter_map(|r| r.foreign_cpu_share.map(|x| (r, x)));
        let Some((worst, max)) = shares.clone().max_by(|a, b| a.1.total_cmp(&b.1)) else {
            return "CPU taken by other processes: not measured".into();
        };
        let disturbed = shares.filter(|(_, x)| *x > DISTURBED).count();
        format!(
            "CPU taken by other processes during the runs: at most {:.1}% ({}/{}); {}",
            max * 100.0,
            worst.scenario,
            worst.client.name(),
            match disturbed {
                0 => format!("no run disturbed (limit {:.0}%)", DISTURBED * 100.0),
                n => format!(
                    "{n} runs DISTURBED (over {:.0}%; see the notes)",
                    DISTURBED * 100.0
                ),
            }
        )
    }

    /// The console report: the header, the tables, the goals.
    pub fn text(&self) -> String {
        let env = &self.environment;
        let mut out = format!(
            "\nquorum-bench {} · {} cores · {} build · Redis {} · {} · took {:.0} s\n{}\n{}\n",
            self.started_utc,
            env.cores,
            env.build,
            env.redis_version.as_deref().unwrap_or("?"),
            env.target,
            self.elapsed_s,
            self.disturbance(),
            LEGEND.join("\n"),
        );
        for table in self
            .tables
            .iter()
            .chain([&crate::tables::goals_table(&self.goals)])
        {
            out.push_str(&table.console());
        }
        out
    }

    /// The tables and the goals for docs/benchmarks.md.
    pub fn markdown(&self) -> String {
        let env = &self.environment;
        let mut md = format!(
            "Run {} · {} cores, {} GiB · {} · {} build · Redis {} ({}) · {} · took {:.0} s\n\n{}.\n\n{}\n\n",
            self.started_utc,
            env.cores,
            env.memory_gib.map_or("?".into(), |m| format!("{m}")),
            env.cpu.as_deref().unwrap_or("?"),
            env.build,
            env.redis_version.as_deref().unwrap_or("?"),
            env.redis_image.as_deref().unwrap_or("own endpoints"),
            env.target,
            self.elapsed_s,
            self.disturbance(),
            LEGEND.join(" "),
        );
        for table in self
            .tables
            .iter()
            .chain([&crate::tables::goals_table(&self.goals)])
        {
            md.push_str(&table.markdown());
        }
        md
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
        let env = &self.environment;
        let title = format!(
            "quorum-bench {} · {} cores · {} · Redis {}",
            self.started_utc,
            env.cores,
            env.build,
            env.redis_version.as_deref().unwrap_or("?")
        );
        std::fs::write(
            dir.join("latency.svg"),
            crate::plot::svg(&self.measured, &title),
        )?;
        Ok(dir)
    }
}

/// The line printed above the progress bar when a run ends.
pub fn progress_line(r: &RunResult) -> String {
    let acquire =
        |get: fn(&Summary) -> f64| r.acquire.as_ref().map_or("-".into(), |s| fmt_ms(get(s)));
    let mut line = format!(
        "{:.0} locks/s, acquire p50 {} ms, p99 {} ms",
        r.throughput,
        acquire(|s| s.p50_us),
        acquire(|s| s.p99_us)
    );
    if let Some(cpu) = r.cpu_us_per_lock {
        line += &format!(", CPU {} µs/lock", sig3(cpu));
    }
    if let Some(ops) = r.ops_per_script_call {
        line += &format!(", {ops:.2} ops/call");
    }
    if let (Some(keys), Some(bytes)) = (r.keys_left_per_lock, r.bytes_left_per_lock) {
        line += &format!(", left per lock and node: {keys:.2} keys, {bytes:.0} bytes");
    }
    if !r.failures.is_empty() {
        line += &format!(", failures {}", failures_line(&r.failures));
    }
    if let Some(x) = r.foreign_cpu_share.filter(|x| *x > DISTURBED) {
        line += &format!(" (DISTURBED: {:.0}% of the CPU went elsewhere)", x * 100.0);
    }
    line
}
