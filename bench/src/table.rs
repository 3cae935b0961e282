//! One table model for every output: built once from the results, rendered as aligned
//! console text, as Markdown (for docs/benchmarks.md) and as JSON (cells as numbers).

use std::fmt::Write as _;

use serde::{Serialize, Serializer};

use crate::stats::sig3;

/// A titled grid of cells with notes under it.
#[derive(Clone, Debug, Serialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    pub notes: Vec<String>,
}

/// One cell: a text, or a number with how to show it (JSON gets the bare number).
#[derive(Clone, Debug)]
pub enum Cell {
    Text(String),
    /// A count or rate: `12,345`.
    Count(f64),
    /// Three significant digits: milliseconds, microseconds, percentages.
    Num(f64),
    /// A quotient: `0.87x`.
    Ratio(f64),
    /// No figure: `-`, `null` in the JSON.
    Empty,
}

impl Cell {
    pub fn text(s: impl Into<String>) -> Cell {
        Cell::Text(s.into())
    }

    /// `Num`, or `Empty` when absent.
    pub fn num(x: Option<f64>) -> Cell {
        x.map_or(Cell::Empty, Cell::Num)
    }

    /// `a / b` as a `Ratio`, or `Empty` when either is absent or `b` is not positive.
    pub fn ratio(a: Option<f64>, b: Option<f64>) -> Cell {
        match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => Cell::Ratio(a / b),
            _ => Cell::Empty,
        }
    }

    /// The cell's value as a number, for quotients of cells.
    pub fn value(&self) -> Option<f64> {
        match *self {
            Cell::Count(x) | Cell::Num(x) | Cell::Ratio(x) => Some(x),
            Cell::Text(_) | Cell::Empty => None,
        }
    }

    fn show(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            Cell::Count(x) => thousands(*x),
            Cell::Num(x) => sig3(*x),
            Cell::Ratio(x) => ratio(*x),
            Cell::Empty => "-".into(),
        }
    }
}

impl Serialize for Cell {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Cell::Text(t) => s.serialize_str(t),
            Cell::Count(x) | Cell::Num(x) | Cell::Ratio(x) if x.is_finite() => s.serialize_f64(*x),
            _ => s.serialize_none(),
        }
    }
}

impl Table {
    /// Whether a column holds only texts (left-aligned) rather than figures.
    fn is_text(&self, column: usize) -> bool {
        column == 0
            || self
                .rows
                .iter()
                .filter_map(|r| r.get(column))
                .all(|c| matches!(c, Cell::Text(_) | Cell::Empty))
    }

    fn shown(&self) -> Vec<Vec<String>> {
        self.rows
            .iter()
            .map(|r| r.iter().map(Cell::show).collect())
            .collect()
    }

    /// Columns padded to their widest cell, the notes under them.
    pub fn console(&self) -> String {
        let rows = self.shown();
        let width = |i: usize| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .chain(std::iter::once(&self.columns[i]))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns.len()).map(width).collect();
        let line = |cells: &[String]| {
            let mut out = String::from(" ");
            for (i, cell) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if self.is_text(i) {
                    let _ = write!(out, " {cell:<w$}");
                } else {
                    let _ = write!(out, " {cell:>w$}");
                }
            }
            out.trim_end().to_string() + "\n"
        };
        let mut out = format!("\n{}\n", self.title);
        out.push_str(&line(&self.columns));
        for row in &rows {
            out.push_str(&line(row));
        }
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        out
    }

    /// A Markdown table under a `###` heading, figures right-aligned, the notes after.
    pub fn markdown(&self) -> String {
        let escape = |s: &str| s.replace('|', "\\|");
        let mut out = format!("### {}\n\n|", self.title);
        for c in &self.columns {
            let _ = write!(out, " {} |", escape(c));
        }
        out.push_str("\n|");
        for i in 0..self.columns.len() {
            out.push_str(if self.is_text(i) { " --- |" } else { " ---: |" });
        }
        out.push('\n');
        for row in self.shown() {
            out.push('|');
            for cell in row {
                let _ = write!(out, " {} |", escape(&cell));
            }
            out.push('\n');
        }
        out.push('\n');
        for note in &self.notes {
            let _ = writeln!(out, "{}\n", escape(note));
        }
        out
    }
}

/// `0.87x`, `12.3x`, `150x`.
pub fn ratio(x: f64) -> String {
    if x.abs() >= 10.0 {
        format!("{}x", sig3(x))
    } else {
        format!("{x:.2}x")
    }
}

/// `1,234,567`.
pub fn thousands(x: f64) -> String {
    let digits = (x.max(0.0).round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Table {
        Table {
            title: "t".into(),
            columns: vec!["client".into(), "locks/s".into(), "failures".into()],
            rows: vec![
                vec![
                    Cell::text("floor"),
                    Cell::Count(12345.4),
                    Cell::text("none"),
                ],
                vec![Cell::text("a|b"), Cell::Ratio(0.5), Cell::Empty],
            ],
            notes: vec!["n".into()],
        }
    }

    #[test]
    fn renders_three_ways() {
        let t = sample();
        assert_eq!(
            t.console(),
            "\nt\n  client locks/s failures\n  floor   12,345 none\n  a|b      0.50x -\n  n\n"
        );
        let md = t.markdown();
        assert!(md.contains("| client | locks/s | failures |\n| --- | ---: | --- |\n"));
        assert!(md.contains("| a\\|b | 0.50x | - |"));
        let json = serde_json::to_string(&t.rows).unwrap();
        assert_eq!(json, r#"[["floor",12345.4,"none"],["a|b",0.5,null]]"#);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
    }
}
