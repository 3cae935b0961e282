//! The metrics hooks against in-memory nodes (feature `metrics`). Each test sets a recorder of its own on its
//! thread; the runtime of `#[tokio::test]` runs every task on that thread (the
//! keep-alive's and the background rounds' too), so the tests running in parallel
//! never see each other's values.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use futures::FutureExt;

use crate::core::Core;
use crate::error::Error;
use crate::lock::Lock;
use crate::metrics::{
    ACQUIRE_ATTEMPTS, ACQUIRE_DURATION, LOCKS_LOST, NODE_VOTES, OUTCOMES, RENEWAL_VALIDITY_LEFT,
    RENEWALS,
};
use crate::node::memory::{self, Memory, Mode};
use crate::request::Request;
use crate::retry;
use crate::scripts::Op;
use crate::settings::{Quarantine, Settings};

/// Every value recorded, by `name{label=value,...}` with the labels sorted.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Seen>>);

#[derive(Default)]
struct Seen {
    counters: BTreeMap<String, u64>,
    histograms: BTreeMap<String, Vec<f64>>,
}

struct Handle {
    seen: Arc<Mutex<Seen>>,
    key: String,
}

fn lock(seen: &Mutex<Seen>) -> MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

impl CounterFn for Handle {
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

impl HistogramFn for Handle {
    fn record(&self, value: f64) {
        let mut seen = lock(&self.seen);
        seen.histograms
            .entry(self.key.clone())
            .or_default()
            .push(value);
    }
}

fn render(name: &str, labels: &[(&str, &str)]) -> String {
    let mut labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    format!("{name}{{{}}}", labels.join(","))
}

impl Captured {
    fn handle(&self, key: &Key) -> Arc<Handle> {
        let labels: Vec<(&str, &str)> = key.labels().map(|l| (l.key(), l.value())).collect();
        Arc::new(Handle {
            seen: Arc::clone(&self.0),
            key: render(key.name(), &labels),
        })
    }

    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let key = render(name, labels);
        lock(&self.0).counters.get(&key).copied().unwrap_or(0)
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        let key = render(name, labels);
        lock(&self.0)
            .histograms
            .get(&key)
            .cloned()
            .unwrap_or_default()
    }

    /// The sum of the counters named `name` whose labels include `labels`.
    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let prefix = format!("{name}{{");
        lock(&self.0)
            .counters
            .iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .filter(|(key, _)| {
                let inner = key[prefix.len()..].trim_end_matches('}');
                wanted.iter().all(|w| inner.split(',').any(|l| l == w))
            })
            .map(|(_, n)| n)
            .sum()
    }
}

impl Recorder for Captured {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.handle(key))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.handle(key))
    }
}

const TIMEOUT: Duration = Duration::from_millis(50);

/// Three in-memory nodes, one retry 1 ms after a failed attempt.
fn cluster() -> (Arc<Core>, Vec<Arc<Memory>>) {
    let (nodes, memories) = memory::nodes(3, TIMEOUT);
    let settings = Settings {
        quarantine: Quarantine::Off,
        node_timeout: TIMEOUT,
        retry_count: 1,
        retry_delay: Duration::from_millis(1),
        retry_jitter: Duration::ZERO,
        ..Settings::default()
    };
    (Arc::new(Core::new(nodes, settings, false)), memories)
}

fn request(core: &Core, resource: &str, ttl: Duration) -> Request {
    Request::one(resource, ttl, &core.settings).expect("valid")
}

/// Each acquisition is one value of the latency and attempts histograms and one
/// outcome, its retries included; a dropped one is `cancelled`; every node's vote in
/// every round is counted, a down node's as an error.
#[tokio::test]
async fn an_acquisition_is_measured_once_with_its_attempts_and_votes() {
    let captured = Captured::default();
    let _local = ::metrics::set_default_local_recorder(&captured);
    let (core, memories) = cluster();
    memories[2].set_mode(Mode::Down);
    let ttl = Duration::from_secs(10);

    let held = retry::lock(&core, request(&core, "a", ttl))
        .await
        .expect("granted");
    let taken = retry::lock(&core, request(&core, "a", ttl))
        .await
        .expect_err("held");
    assert!(matches!(taken, Error::Taken { .. }), "{taken}");
    for m in &memories[..2] {
        m.set_mode(Mode::Slow(Duration::from_millis(20)));
    }
    let dropped = retry::lock(&core, request(&core, "b", ttl)).now_or_never();
    assert!(dropped.is_none(), "decided at its first poll");

    for (outcome, attempts) in [("acquired", 1.0), ("taken", 2.0), ("cancelled", 1.0)] {
        let labels = [("outcome", outcome)];
        assert_eq!(captured.counter(OUTCOMES, &labels), 1, "{outcome}");
        assert_eq!(captured.histogram(ACQUIRE_ATTEMPTS, &labels), [attempts]);
        let took = captured.histogram(ACQUIRE_DURATION, &labels);
        assert!(
            matches!(took[..], [s] if (0.0..1.0).contains(&s)),
            "{outcome}: {took:?}"
        );
    }
    // Three acquisition rounds were decided (the dropped one was not): 3 votes each.
    // In-memory nodes that are up or down answer at the round's first poll, so none
    // of these votes is pending.
    assert_eq!(captured.sum(NODE_VOTES, &[("op", "acquire")]), 9);
    let acquire = |node, vote| {
        captured.counter(
            NODE_VOTES,
            &[("node", node), ("op", "acquire"), ("vote", vote)],
        )
    };
    assert_eq!((acquire("mem0", "yes"), acquire("mem0", "taken")), (1, 2));
    assert_eq!((acquire("mem1", "yes"), acquire("mem1", "taken")), (1, 2));
    assert_eq!(acquire("mem2", "error"), 3);
    drop(held);
}

/// A lock whose token the nodes lost is counted lost once, when an extension finds
/// it gone; one released after its validity ran out is lost too; one released in
/// time is not.
#[tokio::test]
async fn lost_locks_are_counted_once_and_releases_in_time_are_not() {
    let captured = Captured::default();
    let _local = ::metrics::set_default_local_recorder(&captured);
    let (core, memories) = cluster();
    let ttl = Duration::from_secs(10);

    let kept = retry::lock(&core, request(&core, "kept", ttl))
        .await
        .expect("granted");
    kept.release().await.expect("released in time");
    assert_eq!(captured.sum(LOCKS_LOST, &[]), 0);

    let request_gone = request(&core, "gone", ttl);
    let mut gone = retry::lock(&core, request_gone.clone())
        .await
        .expect("granted");
    for m in &memories {
        let op = Arc::new(Op::release_keys(
            &request_gone.keys,
            &Arc::from(gone.token()),
        ));
        m.run(&[op], Instant::now() + TIMEOUT).await;
    }
    let error = gone.extend(ttl).await.expect_err("our token is gone");
    assert!(matches!(error, Error::Expired { .. }), "{error}");
    assert!(gone.release().await.is_err());
    assert_eq!(
        captured.counter(LOCKS_LOST, &[("reason", "extend_failed")]),
        1
    );
    assert!(captured.sum(NODE_VOTES, &[("op", "extend"), ("vote", "taken")]) >= 2);

    let late = retry::lock(&core, request(&core, "late", Duration::from_millis(30))).await;
    let late = late.expect("granted");
    tokio::time::sleep(late.remaining() + Duration::from_millis(1)).await;
    assert!(late.remaining().is_zero());
    assert!(
        late.release().await.is_err(),
        "released after its validity ran out"
    );
    assert_eq!(captured.counter(LOCKS_LOST, &[("reason", "expired")]), 1);
    assert_eq!(captured.sum(LOCKS_LOST, &[]), 2);
    assert_eq!(captured.counter(OUTCOMES, &[("outcome", "lost")]), 2);
    // Three release rounds, each counted with its 3 votes.
    assert_eq!(captured.sum(NODE_VOTES, &[("op", "release")]), 9);
}

/// Every keep-alive renewal is counted with the validity it began with, and its
/// round's votes with it.
#[tokio::test]
async fn keep_alive_renewals_are_counted_with_the_validity_left() {
    let captured = Captured::default();
    let _local = ::metrics::set_default_local_recorder(&captured);
    let (core, _memories) = cluster();
    let ttl = Duration::from_millis(300);
    let mut lock: Lock = retry::lock(&core, request(&core, "kept", ttl))
        .await
        .expect("granted");
    lock.keep_alive();
    let start = Instant::now();
    while captured.counter(RENEWALS, &[("outcome", "ok")]) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "not renewed twice"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    lock.release().await.expect("released");
    let renewals = captured.counter(RENEWALS, &[("outcome", "ok")]);
    assert_eq!(captured.counter(RENEWALS, &[("outcome", "failed")]), 0);
    let left = captured.histogram(RENEWAL_VALIDITY_LEFT, &[("outcome", "ok")]);
    assert_eq!(left.len() as u64, renewals);
    assert!(left.iter().all(|s| *s > 0.0 && *s < 0.3), "{left:?}");
    assert_eq!(captured.sum(NODE_VOTES, &[("op", "extend")]), 3 * renewals);
    assert_eq!(captured.sum(LOCKS_LOST, &[]), 0);
}
