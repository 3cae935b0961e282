//! The metrics (feature `metrics`) of one scenario on 3 real nodes, read back from a
//! recorder set on the test's thread: names, kinds, units, labels and counts.

mod recorder;

use std::time::{Duration, Instant};

use ::metrics::Unit;
use fred::prelude::Value;
use fredlock::Error;
use futures::FutureExt;

use crate::support::{Nodes, TestResult, resource};
use recorder::Captured;

const DURATION: &str = "fredlock_acquire_duration_seconds";
const ATTEMPTS: &str = "fredlock_acquire_attempts";
const OUTCOMES: &str = "fredlock_outcomes_total";
const VOTES: &str = "fredlock_node_votes_total";
const RENEWALS: &str = "fredlock_keep_alive_renewals_total";
const LEFT: &str = "fredlock_keep_alive_validity_left_seconds";
const LOST: &str = "fredlock_locks_lost_total";

/// `host:port` of node `i`, as the `node` label names it.
fn address(nodes: &Nodes, i: usize) -> String {
    nodes
        .cluster
        .url(i)
        .trim_start_matches("redis://")
        .to_string()
}

/// One run through every acquisition outcome and the fencing round: acquired (and
/// fenced), taken (once, and
/// after 3 attempts), cancelled, too late, no quorum (a node dead, another taken), a
/// kept-alive lock renewed, a lock whose key every node lost (extend says expired),
/// and one released after its validity ran out. On a current-thread runtime every
/// task runs on this thread, under the recorder set here, the keep-alive's too.
#[tokio::test(flavor = "current_thread")]
async fn metrics_count_every_acquisition_vote_renewal_and_loss() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let captured = Captured::default();
    let local = ::metrics::set_default_local_recorder(&captured);
    let node_timeout = Duration::from_millis(200);
    let redlock = nodes
        .builder()
        .node_timeout(node_timeout)
        .retry_count(2)
        .retry_delay(Duration::from_millis(50))
        .retry_jitter(Duration::from_millis(10))
        .build()
        .await?;
    // No lock leaves a minute of validity: every attempt is too late.
    let strict = nodes
        .builder()
        .node_timeout(node_timeout)
        .min_validity(Duration::from_secs(60))
        .build()
        .await?;
    let ttl = Duration::from_secs(30);

    let held = redlock.try_lock(&resource("m-held"), ttl).await?;
    let token = held.fencing_token().await?;
    assert_eq!(held.fencing_token().await?, token);

    let taken = resource("m-taken");
    for i in 0..3 {
        nodes.set(i, &taken, "someone-else", 60_000).await;
    }
    let once = redlock.try_lock(&taken, ttl).await.expect_err("taken");
    assert!(matches!(once, Error::Taken { .. }), "{once}");
    let waited = Instant::now();
    let thrice = redlock.lock(&taken, ttl).await.expect_err("taken");
    let waited = waited.elapsed();
    assert!(matches!(thrice, Error::Taken { .. }), "{thrice}");
    let dropped = redlock.lock(&taken, ttl).now_or_never();
    assert!(dropped.is_none(), "decided at its first poll");

    let late = strict.try_lock(&resource("m-strict"), ttl).await;
    assert!(matches!(late, Err(Error::TooLate { .. })), "{late:?}");

    // Renewed at about half its validity (0.5 s), then released in time.
    let mut kept = redlock
        .lock(&resource("m-kept"), Duration::from_secs(1))
        .await?;
    kept.keep_alive();
    let start = Instant::now();
    while captured.counter(RENEWALS, &[("outcome", "ok")]) < 1 {
        assert!(start.elapsed() < Duration::from_secs(5), "never renewed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kept.release().await?;

    let gone = resource("m-gone");
    let mut lock = redlock.lock(&gone, ttl).await?;
    nodes.assert_held(&[0, 1, 2], &gone, lock.token()).await;
    for i in 0..3 {
        nodes
            .cmd(i, "DEL", vec![Value::from(gone.as_str())])
            .await?;
    }
    let expired = lock.extend(ttl).await.expect_err("the key is gone");
    assert!(matches!(expired, Error::Expired { .. }), "{expired}");
    assert!(lock.release().await.is_err(), "lost: not released in time");

    let short = redlock
        .lock(&resource("m-short"), Duration::from_millis(100))
        .await?;
    tokio::time::sleep(short.remaining() + Duration::from_millis(1)).await;
    assert!(short.remaining().is_zero());
    assert!(short.release().await.is_err(), "released after it ran out");

    nodes.cluster.kill(2).await?;
    let survivor = redlock.try_lock(&resource("m-two-nodes"), ttl).await?;
    survivor.release().await?;
    let split = resource("m-split");
    nodes.set(0, &split, "someone-else", 60_000).await;
    let no_quorum = redlock.try_lock(&split, ttl).await.expect_err("1 yes");
    assert!(matches!(no_quorum, Error::NoQuorum { .. }), "{no_quorum}");
    held.release().await?;
    drop(local);

    // Every metric fredlock emitted is one of the documented seven, described with
    // its kind and unit when the clients were built.
    let documented = [
        (DURATION, "histogram", Unit::Seconds),
        (ATTEMPTS, "histogram", Unit::Count),
        (OUTCOMES, "counter", Unit::Count),
        (VOTES, "counter", Unit::Count),
        (RENEWALS, "counter", Unit::Count),
        (LEFT, "histogram", Unit::Seconds),
        (LOST, "counter", Unit::Count),
    ];
    for (name, kind, unit) in documented {
        assert_eq!(captured.described(name), Some((kind, Some(unit))), "{name}");
    }
    let mut names: Vec<&str> = documented.iter().map(|(name, ..)| *name).collect();
    names.sort_unstable();
    assert_eq!(captured.names(), names);

    // One outcome per acquisition, and one `lost` per lost lock; nothing else.
    let outcomes = [
        ("acquired", 5),
        ("taken", 2),
        ("cancelled", 1),
        ("too_late", 1),
        ("no_quorum", 1),
        ("lost", 2),
    ];
    for (outcome, n) in outcomes {
        assert_eq!(
            captured.counter(OUTCOMES, &[("outcome", outcome)]),
            n,
            "{outcome}"
        );
    }
    assert_eq!(captured.sum(OUTCOMES, &[]), 12);

    // Attempts and latency: one value per acquisition, with its outcome.
    let attempts = |outcome| captured.histogram(ATTEMPTS, &[("outcome", outcome)]);
    assert_eq!(attempts("acquired"), [1.0; 5]);
    assert_eq!(attempts("taken"), [1.0, 3.0]);
    for outcome in ["cancelled", "too_late", "no_quorum"] {
        assert_eq!(attempts(outcome), [1.0], "{outcome}");
    }
    for (outcome, n) in &outcomes[..5] {
        let took = captured.histogram(DURATION, &[("outcome", outcome)]);
        assert_eq!(took.len() as u64, *n, "{outcome}: {took:?}");
        assert!(took.iter().all(|s| (0.0..10.0).contains(s)), "{took:?}");
    }
    // Seconds, not milliseconds: three attempts with two pauses of 50-60 ms between.
    let thrice_took = captured.histogram(DURATION, &[("outcome", "taken")])[1];
    assert!(thrice_took >= 0.1, "{thrice_took} s");
    assert!(
        thrice_took <= waited.as_secs_f64(),
        "{thrice_took} s, {waited:?}"
    );

    // Every node's vote in every decided round: 11 acquisition rounds (the dropped
    // one was not decided), 5 releases, one fencing round (a second request reuses
    // its tokens), the manual extend and the renewals.
    let renewed = captured.counter(RENEWALS, &[("outcome", "ok")]);
    assert_eq!(captured.counter(RENEWALS, &[("outcome", "failed")]), 0);
    assert_eq!(captured.sum(VOTES, &[("op", "acquire")]), 3 * 11);
    assert_eq!(captured.sum(VOTES, &[("op", "release")]), 3 * 5);
    assert_eq!(captured.sum(VOTES, &[("op", "extend")]), 3 * (renewed + 1));
    assert_eq!(captured.sum(VOTES, &[("op", "fence")]), 3);
    let addresses: Vec<String> = (0..3).map(|i| address(&nodes, i)).collect();
    let ops = ["acquire", "extend", "fence", "release"];
    let kinds = ["yes", "taken", "error", "timeout", "pending"];
    for (labels, _) in captured.counters(VOTES) {
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["node", "op", "vote"], "{labels:?}");
        assert!(addresses.contains(&labels[0].1), "{labels:?}");
        assert!(ops.contains(&labels[1].1.as_str()), "{labels:?}");
        assert!(kinds.contains(&labels[2].1.as_str()), "{labels:?}");
    }
    // The four rounds on the taken resource: at least two nodes said taken in each
    // (the round ends there); the split one cannot end before node 0 said taken and
    // the dead node 2 failed, with an error or a timeout.
    let vote = |node: usize, op, vote| {
        let node = &addresses[node];
        captured.counter(VOTES, &[("node", node), ("op", op), ("vote", vote)])
    };
    let taken_votes = captured.sum(VOTES, &[("op", "acquire"), ("vote", "taken")]);
    let at_least = 4 * 2 + 1;
    assert!(taken_votes >= at_least, "{taken_votes}");
    assert!(vote(2, "acquire", "error") + vote(2, "acquire", "timeout") >= 1);
    assert!(vote(0, "acquire", "taken") >= 1);
    // The extend of the lock whose key the nodes lost: at least a quorum of taken.
    assert!(captured.sum(VOTES, &[("op", "extend"), ("vote", "taken")]) >= 2);

    // Renewals: each with the validity it began with, in seconds.
    let left = captured.histogram(LEFT, &[("outcome", "ok")]);
    assert_eq!(left.len() as u64, renewed);
    assert!(left.iter().all(|s| *s > 0.0 && *s < 1.0), "{left:?}");

    // Lost: the lock whose key went, once (its release after the loss does not count
    // again), and the one released after it ran out; no lock released in time.
    assert_eq!(captured.counter(LOST, &[("reason", "extend_failed")]), 1);
    assert_eq!(captured.counter(LOST, &[("reason", "expired")]), 1);
    assert_eq!(captured.sum(LOST, &[]), 2);
    Ok(())
}

/// Read locks and permits are acquisitions like locks: each counted once with its
/// outcome and its attempts, `permits_mismatch` included, and their rounds' votes.
#[tokio::test(flavor = "current_thread")]
async fn read_locks_and_permits_are_counted_as_acquisitions() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let captured = Captured::default();
    let local = ::metrics::set_default_local_recorder(&captured);
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let ttl = Duration::from_secs(30);
    let name = resource("counted");
    let reader = redlock.try_read_lock(&name, ttl).await?;
    let permit = redlock.semaphore(&name, 2)?.try_acquire(ttl).await?;
    let refused = redlock.semaphore(&name, 3)?.try_acquire(ttl).await;
    assert!(
        matches!(refused, Err(Error::PermitsMismatch { .. })),
        "{refused:?}"
    );
    reader.release().await?;
    permit.release().await?;
    drop(local);

    assert_eq!(captured.counter(OUTCOMES, &[("outcome", "acquired")]), 2);
    assert_eq!(
        captured.counter(OUTCOMES, &[("outcome", "permits_mismatch")]),
        1
    );
    assert_eq!(
        captured.histogram(ATTEMPTS, &[("outcome", "permits_mismatch")]),
        [1.0]
    );
    // Every node's vote in the three acquisitions and the two releases.
    assert_eq!(captured.sum(VOTES, &[("op", "acquire")]), 3 * 3);
    assert_eq!(captured.sum(VOTES, &[("op", "release")]), 3 * 2);
    Ok(())
}
