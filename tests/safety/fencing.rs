//! Fencing tokens from the quorum, and the restart quarantine.

use std::time::{Duration, Instant};

use fredlock::{Error, FENCE_SUFFIX, Quarantine, Vote};

use crate::support::{Nodes, TestResult, resource};

const TTL: Duration = Duration::from_secs(30);

/// Holders of one resource, from two clients in turn, get strictly increasing tokens,
/// and the counter keys (next to the lock key, prefix respected) keep the latest.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_strictly_increase_across_holders() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let a = nodes.builder().key_prefix("app:").build().await?;
    let b = nodes.builder().key_prefix("app:").build().await?;
    let res = resource("fenced");
    let mut last = 0;
    for round in 0..20 {
        let client = if round % 2 == 0 { &a } else { &b };
        let lock = client.lock(&res, TTL).await?;
        assert!(
            lock.fencing_token() > last,
            "{} after {last}",
            lock.fencing_token()
        );
        assert_eq!(lock.lease().fencing_token(), lock.fencing_token());
        last = lock.fencing_token();
        lock.release().await?;
    }
    // Every node keeps its counter (no TTL), and a quorum holds at least the latest
    // token: the invariant the next holder's token rests on. (A node can hold more: a
    // failed attempt may have raised it, and it can hold less: it missed an
    // acquisition because a release was still on its way to it.)
    let counter = format!("app:{res}{FENCE_SUFFIX}");
    let mut at_least_latest = 0;
    for i in 0..5 {
        let stored: u64 = nodes.get(i, &counter).await.expect("counter").parse()?;
        at_least_latest += usize::from(stored >= last);
        assert_eq!(nodes.pttl(i, &counter).await, -1, "counters never expire");
    }
    assert!(
        at_least_latest >= 3,
        "only {at_least_latest} nodes hold the latest token"
    );
    Ok(())
}

/// A quorum whose counters disagree (nodes that missed acquisitions, here restarted
/// empty, with the clock floor set back by an earlier token) gets the maximum, and
/// the lagging nodes are raised to it before the token is handed out.
#[tokio::test(flavor = "multi_thread")]
async fn lagging_counters_are_written_back_before_the_token_is_handed_out() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("write-back");
    let counter = format!("{res}{FENCE_SUFFIX}");
    // Above any clock floor (microseconds since 1970), still exact in Lua's doubles:
    // the counters of nodes 0-2 now lead, and nodes 3 and 4 lag.
    let high = 1u64 << 52;
    for i in 0..3 {
        nodes.set(i, &counter, &high.to_string(), 600_000).await;
    }
    nodes.cluster.kill(1).await?;
    nodes.cluster.kill(2).await?;
    // The quorum is now 0, 3, 4: node 0 says high + 1, nodes 3 and 4 the clock floor.
    let lock = redlock.try_lock(&res, TTL).await?;
    assert_eq!(lock.fencing_token(), high + 1);
    for i in [0, 3, 4] {
        let stored: u64 = nodes.get(i, &counter).await.expect("counter").parse()?;
        assert_eq!(stored, high + 1, "node {i} was not raised");
    }
    lock.release().await?;
    Ok(())
}

/// A counter key holding another type is a failed vote with the node's message, and
/// that node sets nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_counter_of_another_type_is_a_failed_vote() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let res = resource("bad-counter");
    nodes.make_list(0, &format!("{res}{FENCE_SUFFIX}")).await?;
    let lock = redlock.try_lock(&res, TTL).await?;
    assert_eq!(nodes.get(0, &res).await, None, "node 0 set the lock key");
    nodes.assert_held(&[1, 2, 3, 4], &res, lock.token()).await;
    lock.release().await?;

    for i in 1..4 {
        nodes.make_list(i, &format!("{res}{FENCE_SUFFIX}")).await?;
    }
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("4 of 5 refuse");
    let votes = err.votes().expect("votes");
    let wrongtype = votes
        .iter()
        .filter(|nv| matches!(&nv.vote, Vote::Error(m) if m.contains("WRONGTYPE")))
        .count();
    // The round is decided by the third refusal; a fourth may still be pending.
    assert!(wrongtype >= 3, "{votes}");
    Ok(())
}

/// The incarnation marker fredlock keeps on each node (no key prefix in these tests).
const MARKER: &str = "fredlock:incarnation";

/// With the restart quarantine on, the double grant of the restart hazard
/// (scenarios.rs shows it with the quarantine off) does not happen: the nodes that
/// came back empty sit out until they have been up for the quarantine period.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_stops_the_second_majority_after_a_restart() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let period = Duration::from_secs(4);
    let quarantined = |nodes: &Nodes| {
        nodes
            .builder()
            .restart_quarantine(Quarantine::Period(period))
            .node_timeout(Duration::from_millis(100))
    };
    let (a, b) = (
        quarantined(&nodes).build().await?,
        quarantined(&nodes).build().await?,
    );
    let res = resource("quarantine");
    match a.lock(&res, period * 2).await {
        Err(Error::InvalidArgument {
            argument: "ttl", ..
        }) => {}
        other => panic!("a TTL above the quarantine period: {other:?}"),
    }

    // Fresh nodes are quarantined too until they have been up for the period. Wait
    // until every node is out of it (an acquisition has marked it): the nodes started
    // at different times, and the one-second grain of their uptime can keep one in
    // quarantine for a while after the first lock succeeds.
    let start = Instant::now();
    loop {
        match a.try_lock(&res, period).await {
            Ok(lock) => {
                lock.release().await?;
                if nodes.holding(0..5, MARKER).await.len() == 5 {
                    break;
                }
            }
            Err(e) if e.is_retryable() => {
                assert!(start.elapsed() < period * 3, "never out of quarantine: {e}");
            }
            Err(e) => return Err(e.into()),
        }
        assert!(
            start.elapsed() < period * 3,
            "some node never out of quarantine"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The hazard's setup: A holds 0, 1, 2 while 3 and 4 are down; they come back
    // empty, and so does node 0.
    nodes.cluster.kill(3).await?;
    nodes.cluster.kill(4).await?;
    let held_by_a = a.lock(&res, period).await?;
    for i in [3, 4, 0] {
        if i == 0 {
            nodes.cluster.kill(0).await?;
        }
        nodes.cluster.restart(i).await?;
        nodes.wait_admin(i, Duration::from_secs(5)).await;
    }
    // B's connections come back on their own. Whenever B tries, it must not win a
    // majority while A's lock is valid; and once B reaches the restarted nodes they
    // answer "quarantined" (their data is younger than the quarantine period).
    let mut saw_quarantine = false;
    let start = Instant::now();
    while !saw_quarantine {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the restarted nodes were never seen quarantined"
        );
        match b.try_lock(&res, period).await {
            Ok(lock) => {
                assert!(
                    !held_by_a.is_valid(),
                    "second majority while A holds the lock"
                );
                lock.release().await?;
            }
            Err(e) if e.is_retryable() => {
                saw_quarantine |= e.votes().is_some_and(|votes| {
                    votes
                        .iter()
                        .any(|nv| matches!(&nv.vote, Vote::Error(m) if m.contains("quarantined")))
                });
            }
            Err(e) => return Err(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// A node that lost its incarnation marker but has been up longer than the quarantine
/// period is marked and locked by the acquisition script in one command: the first
/// attempt wins every node, and a release sent right after it returns leaves no key
/// behind (a second acquisition command, as fredlock once sent, could be overtaken by
/// that release).
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_marker_is_rewritten_by_the_acquisition_itself() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // The default quarantine: the largest TTL asked for. The TTL is long enough that a
    // key left behind would outlast the checks below.
    let ttl = Duration::from_secs(8);
    let redlock = nodes
        .builder()
        .restart_quarantine(Quarantine::LargestTtl)
        // Every node must answer in time below.
        .node_timeout(Duration::from_millis(500))
        .build()
        .await?;
    let res = resource("marker");
    // Wait until every node has been up for the TTL (uptime counts whole seconds, so
    // up to 10 s after start): from then on each acquisition marks it.
    let start = Instant::now();
    loop {
        let lock = redlock.try_lock(&res, ttl).await;
        let marked = nodes.holding(0..5, MARKER).await.len();
        if let Ok(lock) = lock {
            lock.release().await?;
            if marked == 5 {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the nodes were never all marked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for round in 0..20 {
        for i in 0..5 {
            nodes.cmd(i, "DEL", vec![MARKER.into()]).await?;
        }
        let lock = redlock.try_lock(&res, ttl).await?;
        nodes
            .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
            .await;
        lock.release().await?;
        nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
        assert_eq!(
            nodes.holding(0..5, MARKER).await.len(),
            5,
            "round {round}: every node is marked again"
        );
    }
    Ok(())
}

#[tokio::test]
async fn quarantine_period_zero_or_shorter_than_the_ttl_is_rejected() -> TestResult {
    let built = fredlock::Redlock::builder(["redis://127.0.0.1:7001"])
        .restart_quarantine(Quarantine::Period(Duration::ZERO))
        .build()
        .await;
    assert!(
        matches!(
            built,
            Err(Error::Config {
                field: "restart_quarantine",
                ..
            })
        ),
        "{built:?}"
    );
    Ok(())
}
