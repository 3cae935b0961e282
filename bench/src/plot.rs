//! `latency.svg`: one panel per scenario with each client's acquire-latency percentile
//! curve (log scale), the contended hand-off curves, and acquire p50 / p99 against N for
//! the scaling runs.

use std::fmt::Write as _;

use crate::clients::ClientKind;
use crate::measured::Measured;
use crate::scenario::ScenarioKind;

const COLORS: [(ClientKind, &str); 5] = [
    (ClientKind::Floor, "#7f7f7f"),
    (ClientKind::Fredlock, "#d62728"),
    (ClientKind::Rslock, "#1f77b4"),
    (ClientKind::Redlock, "#2ca02c"),
    (ClientKind::DistLock, "#9467bd"),
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
pub fn svg(report: &Measured, title: &str) -> String {
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
        r#"<text x="10" y="20" font-size="14">{} · latency (log scale) by percentile</text>"#,
        escape(title)
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
    fn axes() {
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(axis_label(1000.0), "1ms");
    }
}
