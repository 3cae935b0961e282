//! The goals, checked on fredlock's figures. Every threshold is a number defined once in
//! [`THRESHOLDS`]: the check compares with it and the goal's wording is made from it, so
//! the two cannot disagree.

use serde::Serialize;

use crate::clients::ClientKind;
use crate::run::RunResult;
use crate::scenario::{Scenario, ScenarioKind};
use crate::stats::Summary;
use crate::table::thousands;

/// The goals' numbers.
pub struct Thresholds {
    /// Healthy: fredlock's locks/s at least this times the floor's.
    pub healthy_to_floor: f64,
    /// Healthy, stretch goal: at least this times the floor's.
    pub healthy_stretch_to_floor: f64,
    /// Healthy: fredlock's locks/s at least this times rslock's.
    pub healthy_to_rslock: f64,
    /// The single-task scaling runs on these numbers of nodes...
    pub one_task_nodes: &'static [usize],
    /// ...where fredlock's acquire p50 is at most this times the floor's...
    pub one_task_p50_to_floor: f64,
    /// ...and at most this times rslock's.
    pub one_task_p50_to_rslock: f64,
    /// Healthy: client plus Redis CPU per lock and release at most this times the floor's.
    pub cpu_to_floor: f64,
    /// Fault scenarios: fredlock's acquire p99 at most this times its healthy p99...
    pub fault_p99_to_healthy: f64,
    /// ...and its locks/s at least this times its healthy locks/s.
    pub fault_throughput_to_healthy: f64,
}

pub const THRESHOLDS: Thresholds = Thresholds {
    healthy_to_floor: 1.0,
    healthy_stretch_to_floor: 1.5,
    healthy_to_rslock: 1.2,
    one_task_nodes: &[1, 5, 9],
    one_task_p50_to_floor: 1.15,
    one_task_p50_to_rslock: 1.0,
    cpu_to_floor: 1.2,
    fault_p99_to_healthy: 1.5,
    fault_throughput_to_healthy: 0.8,
};

/// How a measured quotient must compare with the threshold.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    AtLeast,
    AtMost,
}

impl Bound {
    fn holds(self, measured: f64, threshold: f64) -> bool {
        match self {
            Bound::AtLeast => measured >= threshold,
            Bound::AtMost => measured <= threshold,
        }
    }

    fn words(self) -> &'static str {
        match self {
            Bound::AtLeast => "at least",
            Bound::AtMost => "at most",
        }
    }
}

/// One goal on this run: `measured` (a quotient of two figures) against `threshold`.
#[derive(Clone, Debug, Serialize)]
pub struct Goal {
    /// The goal in words, made from the bound, the threshold and the scenario's actual
    /// settings.
    pub name: String,
    pub stretch: bool,
    pub bound: Bound,
    pub threshold: f64,
    pub measured: Option<f64>,
    /// `None` unless the verdict is met or missed.
    pub passed: Option<bool>,
    pub verdict: Verdict,
    /// The figures the quotient comes from, or what is missing.
    pub figures: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Met,
    Missed,
    /// The options left out the scenario or a client the goal needs.
    NotRun,
    /// Both ran, but a figure could not be measured (a node's INFO refused, say).
    NotMeasured,
}

/// A figure of one run.
enum Figure {
    /// The value and how to show it, e.g. `41_000.0, "41,000 locks/s"`.
    Value(f64, String),
    /// No lock succeeded, so there is no latency: a miss for fredlock.
    NoLock,
    /// Not measurable on this target.
    Unmeasured,
}

impl Goal {
    /// "`subject` `bound` `threshold`x `reference`", checked on `figures`: fredlock's
    /// figure and the reference's, or what was not run.
    fn new(
        subject: String,
        bound: Bound,
        threshold: f64,
        reference: &str,
        figures: Result<(Figure, Figure), String>,
    ) -> Goal {
        use Figure::*;
        let (measured, verdict, figures) = match figures {
            Err(missing) => (None, Verdict::NotRun, format!("not run: needs {missing}")),
            Ok((Value(a, a_text), Value(b, b_text))) if b > 0.0 => {
                let m = a / b;
                let verdict = if bound.holds(m, threshold) {
                    Verdict::Met
                } else {
                    Verdict::Missed
                };
                (Some(m), verdict, format!("{a_text} against {b_text}"))
            }
            Ok((NoLock, _)) => (None, Verdict::Missed, "fredlock locked nothing".into()),
            Ok(_) => (
                None,
                Verdict::NotMeasured,
                "a figure could not be measured".into(),
            ),
        };
        Goal {
            name: format!("{subject} {} {threshold:.2}x {reference}", bound.words()),
            stretch: false,
            bound,
            threshold,
            measured,
            passed: match verdict {
                Verdict::Met => Some(true),
                Verdict::Missed => Some(false),
                _ => None,
            },
            verdict,
            figures,
        }
    }

    pub fn verdict_word(&self) -> &'static str {
        match self.verdict {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::NotRun => "not run",
            Verdict::NotMeasured => "n/a",
        }
    }
}

/// The goals of the issue on these results.
pub fn evaluate(scenarios: &[Scenario], results: &[RunResult]) -> Vec<Goal> {
    let t = &THRESHOLDS;
    let scenario = |kind: ScenarioKind, nodes: Option<usize>| {
        scenarios
            .iter()
            .find(|s| s.kind == kind && nodes.is_none_or(|n| s.nodes == n))
    };
    // The run of `client` in the scenario, or what is missing, for "not run".
    let run = |s: Option<&Scenario>, what: &str, client: ClientKind| {
        let s = s.ok_or_else(|| format!("the {what} scenario"))?;
        results
            .iter()
            .find(|r| r.scenario == s.id && r.client == client)
            .ok_or_else(|| format!("{} in {}", client.name(), s.id))
    };
    // "s1-healthy (5 healthy nodes, 64 tasks)", from what actually ran.
    let describe = |s: Option<&Scenario>, kind: &str| {
        s.map_or(kind.to_string(), |s| {
            match s.kind {
                // Its title already says "one task".
                ScenarioKind::Scaling => format!("{} ({})", s.id, s.title),
                _ => format!("{} ({}, {} tasks)", s.id, s.title, s.tasks),
            }
        })
    };
    let mut goals = Vec::new();

    let healthy = scenario(ScenarioKind::Healthy, None);
    let fl = run(healthy, "healthy", ClientKind::Fredlock);
    for (kind, name) in [
        (ScenarioKind::Healthy, "healthy"),
        (ScenarioKind::PerJob, "per-job"),
    ] {
        let s = scenario(kind, None);
        let at = describe(s, name);
        let fl = run(s, name, ClientKind::Fredlock);
        let floor = run(s, name, ClientKind::Floor);
        let locks_vs = |other: &Found| pair(&fl, other).map(|(a, b)| (locks(a), locks(b)));
        goals.push(Goal::new(
            format!("{at}: fredlock locks/s"),
            Bound::AtLeast,
            t.healthy_to_floor,
            "the floor's",
            locks_vs(&floor),
        ));
        let mut stretch = Goal::new(
            format!("stretch: {at}: fredlock locks/s"),
            Bound::AtLeast,
            t.healthy_stretch_to_floor,
            "the floor's",
            locks_vs(&floor),
        );
        stretch.stretch = true;
        goals.push(stretch);
        goals.push(Goal::new(
            format!("{at}: fredlock locks/s"),
            Bound::AtLeast,
            t.healthy_to_rslock,
            "rslock's",
            locks_vs(&run(s, name, ClientKind::Rslock)),
        ));
        goals.push(Goal::new(
            format!("{at}: client plus Redis CPU per lock and release"),
            Bound::AtMost,
            t.cpu_to_floor,
            "the floor's",
            pair(&fl, &floor).map(|(a, b)| (cpu(a), cpu(b))),
        ));
    }

    for &n in t.one_task_nodes {
        let one = scenario(ScenarioKind::Scaling, Some(n));
        let what = format!("scaling at N={n}");
        let fl = run(one, &what, ClientKind::Fredlock);
        for (bound, reference, client) in [
            (t.one_task_p50_to_floor, "the floor's", ClientKind::Floor),
            (t.one_task_p50_to_rslock, "rslock's", ClientKind::Rslock),
        ] {
            goals.push(Goal::new(
                format!("{}: fredlock acquire p50", describe(one, &what)),
                Bound::AtMost,
                bound,
                reference,
                pair(&fl, &run(one, &what, client))
                    .map(|(a, b)| (latency(a, |s| s.p50_us), latency(b, |s| s.p50_us))),
            ));
        }
    }

    for kind in [
        ScenarioKind::Latency,
        ScenarioKind::Killed,
        ScenarioKind::Frozen,
    ] {
        let s = scenario(kind, None);
        let name = format!("{kind:?}").to_lowercase();
        let at = describe(s, &name);
        let faulty = pair(&run(s, &name, ClientKind::Fredlock), &fl);
        goals.push(Goal::new(
            format!("{at}: fredlock acquire p99"),
            Bound::AtMost,
            t.fault_p99_to_healthy,
            "its healthy p99",
            faulty
                .clone()
                .map(|(a, h)| (latency(a, |s| s.p99_us), latency(h, |s| s.p99_us))),
        ));
        goals.push(Goal::new(
            format!("{at}: fredlock locks/s"),
            Bound::AtLeast,
            t.fault_throughput_to_healthy,
            "its healthy locks/s",
            faulty.map(|(a, h)| (locks(a), locks(h))),
        ));
    }
    goals
}

/// A run, or what is missing for it ("fredlock in s1-healthy").
type Found<'a> = Result<&'a RunResult, String>;

/// Both runs, or the first one missing.
fn pair<'a>(a: &Found<'a>, b: &Found<'a>) -> Result<(&'a RunResult, &'a RunResult), String> {
    Ok((a.clone()?, b.clone()?))
}

fn locks(r: &RunResult) -> Figure {
    Figure::Value(r.throughput, format!("{} locks/s", thousands(r.throughput)))
}

fn latency(r: &RunResult, get: fn(&Summary) -> f64) -> Figure {
    match &r.acquire {
        Some(s) => Figure::Value(get(s), format!("{} ms", crate::stats::fmt_ms(get(s)))),
        None => Figure::NoLock,
    }
}

fn cpu(r: &RunResult) -> Figure {
    match r.cpu_us_per_lock {
        Some(us) => Figure::Value(us, format!("{} µs CPU", crate::stats::sig3(us))),
        None if r.acquisitions == 0 => Figure::NoLock,
        None => Figure::Unmeasured,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::run::PerTask;
    use crate::scenario::{Target, plan};

    fn run(scenario: &str, client: ClientKind, throughput: f64, p50_us: f64) -> RunResult {
        let summary = Summary {
            count: 1,
            p50_us,
            p99_us: 2.0 * p50_us,
            ..Summary::default()
        };
        RunResult {
            scenario: scenario.into(),
            client,
            acquisitions: 1,
            throughput,
            measured_s: 1.0,
            acquire: Some(summary),
            release: None,
            failures: Default::default(),
            handoff: None,
            handoff_to_other: None,
            same_task_share: None,
            handoff_overlaps: None,
            per_task: PerTask {
                min: 1,
                max: 1,
                mean: 1.0,
            },
            abandoned_tasks: 0,
            loadavg_after: None,
            foreign_cpu_share: None,
            window: Default::default(),
            cpu_us_per_lock: Some(10.0),
            ops_per_script_call: None,
            keys_left_per_lock: None,
            bytes_left_per_lock: None,
        }
    }

    #[test]
    fn goals_follow_the_numbers_and_the_flags() {
        let urls = "redis://h:1,redis://h:2,redis://h:3,redis://h:4,redis://h:5";
        let args =
            crate::Args::try_parse_from(["quorum-bench", "--tasks", "8", "--endpoints", urls])
                .unwrap();
        let scenarios = plan(
            &args,
            &Target::Endpoints(urls.split(',').map(String::from).collect()),
        );
        let results = vec![
            run("s1-healthy", ClientKind::Floor, 1000.0, 100.0),
            run("s1-healthy", ClientKind::Fredlock, 1200.0, 100.0),
            run("s4-n5", ClientKind::Floor, 10.0, 100.0),
            run("s4-n5", ClientKind::Fredlock, 10.0, 120.0),
        ];
        let goals = evaluate(&scenarios, &results);
        let by = |part: &str| goals.iter().find(|g| g.name.contains(part)).unwrap();
        let floor = by("at least 1.00x the floor's");
        assert!(floor.name.contains("s1-healthy") && floor.name.contains("8 tasks"));
        assert_eq!((floor.passed, floor.measured), (Some(true), Some(1.2)));
        let stretch = by("at least 1.50x the floor's");
        assert!(stretch.stretch && stretch.passed == Some(false));
        // rslock was not among the results: not run, never passed.
        assert_eq!(by("1.20x rslock's").verdict, Verdict::NotRun);
        let one_task = by("s4-n5 (5 healthy nodes, one task): fredlock acquire p50 at most 1.15x");
        assert_eq!(one_task.passed, Some(false), "{}", one_task.figures);
        assert_eq!(
            by("s1-healthy (5 healthy nodes, 8 tasks): client plus").passed,
            Some(true)
        );
        // Nothing of the per-job scenario or of N = 1 and 9 is among the results.
        assert_eq!(by("s1-per-job").verdict, Verdict::NotRun);
        assert_eq!(by("scaling at N=9").verdict, Verdict::NotRun);
        // --endpoints: no fault scenario ran.
        for kind in ["latency", "killed", "frozen"] {
            let g = goals.iter().filter(|g| g.name.starts_with(kind));
            assert!(g.clone().count() == 2 && g.clone().all(|g| g.verdict == Verdict::NotRun));
        }
    }
}
