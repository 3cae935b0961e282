//! A `metrics` recorder for the tests: every counter, histogram value and description
//! it is given, by name and labels.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use ::metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// What was recorded. Set it on the test's thread with
/// `metrics::set_default_local_recorder`.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    /// By `name{label=value,...}`, the labels sorted by name.
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Vec<f64>>,
    /// By metric name: its kind (`counter`, `gauge`, `histogram`) and unit.
    described: BTreeMap<String, (&'static str, Option<Unit>)>,
}

/// One metric series: where its values go.
struct Series {
    seen: Arc<Mutex<Seen>>,
    key: String,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

impl CounterFn for Series {
    fn increment(&self, value: u64) {
        *lock(&self.seen)
            .counters
            .entry(self.key.clone())
            .or_default() += value;
    }
    fn absolute(&self, value: u64) {
        lock(&self.seen).counters.insert(self.key.clone(), value);
    }
}

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        let mut seen = lock(&self.seen);
        seen.histograms
            .entry(self.key.clone())
            .or_default()
            .push(value);
    }
}

/// `name{a=x,b=y}`, the labels sorted by name.
pub fn series(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

/// The labels of a series, from its key as [`series`] writes it.
pub fn labels_of(key: &str) -> Vec<(String, String)> {
    let inner = key
        .split_once('{')
        .map_or("", |(_, rest)| rest.trim_end_matches('}'));
    inner
        .split(',')
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Captured {
    fn series(&self, key: &Key) -> Arc<Series> {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        Arc::new(Series {
            seen: Arc::clone(&self.0),
            key: series(key.name(), &labels),
        })
    }

    fn describe(&self, kind: &'static str, name: KeyName, unit: Option<Unit>) {
        lock(&self.0)
            .described
            .insert(name.as_str().to_string(), (kind, unit));
    }

    /// A counter's value (0 if never incremented).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = series(name, labels);
        lock(&self.0).counters.get(&key).copied().unwrap_or(0)
    }

    /// A histogram's values, in the order recorded.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let key = series(name, labels);
        lock(&self.0)
            .histograms
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// Every counter series named `name`, with its labels and value.
    pub fn counters(&self, name: &str) -> Vec<(Vec<(String, String)>, u64)> {
        let prefix = format!("{name}{{");
        lock(&self.0)
            .counters
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(key, n)| (labels_of(key), *n))
            .collect()
    }

    /// The sum of the counters named `name` whose labels include every one of
    /// `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.counters(name)
            .into_iter()
            .filter(|(have, _)| {
                labels
                    .iter()
                    .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Every metric name recorded, counters and histograms.
    pub fn names(&self) -> Vec<String> {
        let seen = lock(&self.0);
        let mut names: Vec<String> = seen
            .counters
            .keys()
            .chain(seen.histograms.keys())
            .filter_map(|key| key.split_once('{').map(|(name, _)| name.to_string()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// How a metric was described: its kind and unit.
    pub fn described(&self, name: &str) -> Option<(&'static str, Option<Unit>)> {
        lock(&self.0).described.get(name).copied()
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, name: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe("counter", name, unit);
    }
    fn describe_gauge(&self, name: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe("gauge", name, unit);
    }
    fn describe_histogram(&self, name: KeyName, unit: Option<Unit>, _: SharedString) {
        self.describe("histogram", name, unit);
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.series(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.series(key))
    }
}
