//! Which figures the tables show: one table per scenario (every client's figures, then
//! fredlock's divided by each other client's) and one for the scaling runs.

use crate::clients::ClientKind;
use crate::goals::Goal;
use crate::measured::Measured;
use crate::run::{DISTURBED, RunResult, failures_line};
use crate::scenario::Scenario;
use crate::stats::{Summary, sig3};
use crate::table::{Cell, Table};

impl Measured {
    /// The client rows, then `fredlock ÷ x` rows dividing fredlock's figures by each
    /// other client's; `cells` gives a client's cells after its name, `None` if not run.
    fn rows(
        &self,
        clients: &[ClientKind],
        cells: impl Fn(ClientKind) -> Option<Vec<Cell>>,
    ) -> Vec<Vec<Cell>> {
        let name = |label: String, cells: Vec<Cell>| {
            std::iter::once(Cell::Text(label)).chain(cells).collect()
        };
        let mut rows: Vec<Vec<Cell>> = Vec::new();
        for &c in clients {
            if let Some(cells) = cells(c) {
                rows.push(name(c.name().into(), cells));
            }
        }
        if let Some(fl) = cells(ClientKind::Fredlock) {
            for other in [
                ClientKind::Floor,
                ClientKind::Rslock,
                ClientKind::Redlock,
                ClientKind::DistLock,
            ] {
                if let Some(o) = clients.contains(&other).then(|| cells(other)).flatten() {
                    let quotients = fl
                        .iter()
                        .zip(&o)
                        .map(|(a, b)| Cell::ratio(a.value(), b.value()));
                    rows.push(name(
                        format!("fredlock ÷ {}", other.name()),
                        quotients.collect(),
                    ));
                }
            }
        }
        rows
    }

    pub(crate) fn scenario_table(&self, s: &Scenario) -> Table {
        type Column = (&'static str, fn(&RunResult) -> Cell);
        let mut columns: Vec<Column> = vec![
            ("locks/s", |r| Cell::Count(r.throughput)),
            ("acquire p50", |r| ms(&r.acquire, |x| x.p50_us)),
            ("p90", |r| ms(&r.acquire, |x| x.p90_us)),
            ("p99", |r| ms(&r.acquire, |x| x.p99_us)),
            ("p99.9", |r| ms(&r.acquire, |x| x.p999_us)),
            ("max", |r| ms(&r.acquire, |x| x.max_us)),
            ("release p50", |r| ms(&r.release, |x| x.p50_us)),
            ("p99", |r| ms(&r.release, |x| x.p99_us)),
            ("CPU µs", |r| match r.cpu_us_per_lock {
                None if r.window.nodes_read == 0 => Cell::text("n/a"),
                x => Cell::num(x),
            }),
            ("ops/call", |r| match (r.client, r.ops_per_script_call) {
                (ClientKind::Fredlock, None) => Cell::text("n/a"),
                (_, x) => Cell::num(x),
            }),
        ];
        if s.fresh_resources {
            columns.extend::<[Column; 2]>([
                ("keys left/lock/node", |r| Cell::num(r.keys_left_per_lock)),
                ("bytes left/lock/node", |r| Cell::num(r.bytes_left_per_lock)),
            ]);
        }
        if s.contended {
            columns.extend::<[Column; 6]>([
                ("hand-off p50", |r| ms(&r.handoff, |x| x.p50_us)),
                ("p99", |r| ms(&r.handoff, |x| x.p99_us)),
                ("to another p50", |r| ms(&r.handoff_to_other, |x| x.p50_us)),
                ("same task %", |r| {
                    Cell::num(r.same_task_share.map(|x| x * 100.0))
                }),
                ("locks/task min", |r| Cell::Count(r.per_task.min as f64)),
                ("max", |r| Cell::Count(r.per_task.max as f64)),
            ]);
        }
        columns.push(("failures", |r| Cell::Text(failures_line(&r.failures))));
        let rows = self.rows(&s.clients, |c| {
            let r = self.result(&s.id, c)?;
            Some(columns.iter().map(|(_, get)| get(r)).collect())
        });
        let ran: Vec<&RunResult> = s
            .clients
            .iter()
            .filter_map(|&c| self.result(&s.id, c))
            .collect();
        let measured = ran.first().map_or(0.0, |r| r.measured_s);
        Table {
            title: format!(
                "{} {}: {} · {} · {} tasks · hold {} ms · {measured:.1} s measured",
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
            ),
            columns: std::iter::once("client")
                .chain(columns.iter().map(|(n, _)| *n))
                .map(String::from)
                .collect(),
            rows,
            notes: self.run_notes(s, &ran),
        }
    }

    /// Clients that did not run, disturbed runs, runs where a node's INFO went unread.
    fn run_notes(&self, s: &Scenario, ran: &[&RunResult]) -> Vec<String> {
        let list = |each: &dyn Fn(&RunResult) -> Option<String>| {
            let items: Vec<String> = ran.iter().filter_map(|r| each(r)).collect();
            (!items.is_empty()).then(|| items.join(", "))
        };
        let missing = s
            .clients
            .iter()
            .filter(|&&c| self.result(&s.id, c).is_none());
        let missing: Vec<&str> = missing.map(|c| c.name()).collect();
        let notes = [
            (!missing.is_empty())
                .then(|| missing.join(", ") + ": not run (no connection, or no fault)"),
            list(&|r| {
                let x = r.foreign_cpu_share.filter(|x| *x > DISTURBED)?;
                Some(format!("{} {:.0}%", r.client.name(), x * 100.0))
            })
            .map(|l| format!("DISTURBED, the CPU share other processes took: {l}")),
            list(&|r| {
                let read = r.window.nodes_read;
                (read > 0 && read < s.nodes).then(|| format!("{} {read}", r.client.name()))
            })
            .map(|l| format!("nodes whose INFO was read (of {}): {l}", s.nodes)),
        ];
        notes.into_iter().flatten().collect()
    }

    /// Acquire p50 and p99 of every client against the number of nodes, one task.
    pub(crate) fn scaling_table(&self) -> Option<Table> {
        let sizes = self.scaling_sizes();
        if sizes.is_empty() {
            return None;
        }
        let clients = self.clients_in(sizes.iter().map(|(_, id)| id.as_str()));
        let rows = self.rows(&clients, |c| {
            let cells = sizes.iter().flat_map(|(_, id)| {
                let a = self.result(id, c).and_then(|r| r.acquire.as_ref());
                [a.map(|a| a.p50_us / 1000.0), a.map(|a| a.p99_us / 1000.0)].map(Cell::num)
            });
            Some(cells.collect())
        });
        let mut columns = vec!["client".to_string()];
        for (n, _) in &sizes {
            columns.extend([format!("N={n} p50"), "p99".into()]);
        }
        let per_n = |get: fn(&RunResult) -> Option<f64>| {
            let figures: Vec<String> = sizes
                .iter()
                .map(|(n, id)| {
                    let x = self.result(id, ClientKind::Fredlock).and_then(get);
                    format!("N={n} {}", x.map_or("n/a".into(), sig3))
                })
                .collect();
            figures.join(", ")
        };
        let mut notes = Vec::new();
        if clients.contains(&ClientKind::Fredlock) {
            notes.push(format!(
                "fredlock ops/call: {}",
                per_n(|r| r.ops_per_script_call)
            ));
            notes.push(format!("fredlock CPU µs: {}", per_n(|r| r.cpu_us_per_lock)));
        }
        Some(Table {
            title: "S4 scaling: one task, healthy nodes · acquire latency (ms) against N".into(),
            columns,
            rows,
            notes,
        })
    }
}

/// A latency figure in ms.
fn ms(x: &Option<Summary>, get: fn(&Summary) -> f64) -> Cell {
    Cell::num(x.as_ref().map(|x| get(x) / 1000.0))
}

/// The goals as a table, for the console and the Markdown.
pub fn goals_table(goals: &[Goal]) -> Table {
    let rows = goals
        .iter()
        .map(|g| {
            vec![
                Cell::text(g.verdict_word()),
                Cell::text(&g.name),
                Cell::ratio(g.measured, Some(1.0)),
                Cell::text(&g.figures),
            ]
        })
        .collect();
    Table {
        title: "Goals (fredlock)".into(),
        columns: ["verdict", "goal", "measured", "figures"]
            .map(String::from)
            .to_vec(),
        rows,
        notes: vec![],
    }
}
