//! Fault scenarios, each deterministic: the restart hazard, a holder that stalls past
//! its validity, partitions during a held lock, and one slow node.

use std::time::{Duration, Instant};

use fredlock::{Error, Redlock, Vote};

use crate::support::{Nodes, TestResult, resource};

/// Generous for a loaded 2-core machine running containers; the slow-node scenario
/// sets the 50 ms the issue asks for itself.
const NODE_TIMEOUT: Duration = Duration::from_millis(150);

/// For the clients of scenarios that assert no time bound: a node that times out
/// turns an expected `Taken` into `NoQuorum`. A loopback round trip takes a
/// millisecond or two; 1 s holds when both cores are busy.
const GENEROUS_NODE_TIMEOUT: Duration = Duration::from_secs(1);

async fn client(nodes: &Nodes) -> Result<Redlock, Error> {
    nodes.builder().node_timeout(NODE_TIMEOUT).build().await
}

/// The spec's known hazard: a node restarted without its data while a lock is held on
/// it lets a second client win a second majority. A holds nodes 0, 1, 2 (3 and 4 were
/// down when it locked, and come back empty); node 0 then restarts empty; B wins 0, 3,
/// 4 while A's lock is still valid. docs/safety.md gives the remedies (fsync
/// persistence, delayed restarts).
#[tokio::test(flavor = "multi_thread")]
async fn restart_without_data_lets_a_second_client_win_a_second_majority() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let (a, b) = (client(&nodes).await?, client(&nodes).await?);
    let res = resource("restart-hazard");
    let ttl = Duration::from_secs(30);

    nodes.cluster.kill(3).await?;
    nodes.cluster.kill(4).await?;
    let held_by_a = a.lock(&res, ttl).await?;
    nodes.assert_held(&[0, 1, 2], &res, held_by_a.token()).await;
    for i in [3, 4, 0] {
        if i == 0 {
            nodes.cluster.kill(0).await?;
        }
        nodes.cluster.restart(i).await?;
        nodes.wait_admin(i, Duration::from_secs(5)).await;
    }

    // B's client reconnects to the restarted nodes in the background; retry until it
    // wins.
    let start = Instant::now();
    let held_by_b = loop {
        match b.try_lock(&res, ttl).await {
            Ok(lock) => break lock,
            Err(Error::Taken { .. } | Error::NoQuorum { .. }) => {
                // Bounded, not hung: B needs only the reconnection to node 0.
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "B never got a majority"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    // Two holders at once: the hazard, shown.
    assert!(held_by_a.is_valid() && held_by_b.is_valid());
    assert_ne!(held_by_a.token(), held_by_b.token());
    nodes.assert_held(&[0, 3, 4], &res, held_by_b.token()).await;
    nodes.assert_held(&[1, 2], &res, held_by_a.token()).await;
    Ok(())
}

/// A majority cut off by a partition: the attempt fails after about one node timeout.
/// Its acquisitions, stuck in TCP retransmission, reach the nodes after the heal, and
/// so do the removals queued behind them: no key is left. Redis's command counters
/// prove the late acquisitions did run.
#[tokio::test(flavor = "multi_thread")]
async fn late_sets_after_a_partition_heals_are_removed() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = client(&nodes).await?;
    let res = resource("late-sets");
    // One lock first, so that every node has run the library once: the late
    // acquisitions are then one FCALL each, counted below.
    redlock
        .lock(&res, Duration::from_secs(30))
        .await?
        .release()
        .await?;
    let before: Vec<(u64, u64)> = script_counts(&nodes).await;
    for i in 0..3 {
        nodes.cluster.partition(i).await?;
    }
    let start = Instant::now();
    let err = redlock
        .try_lock(&res, Duration::from_secs(30))
        .await
        .expect_err("majority cut off");
    let took = start.elapsed();
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    // Bounded, not hung: the cut-off nodes time out together after one 150 ms node
    // timeout; four leave room for a loaded machine.
    assert!(
        took < NODE_TIMEOUT * 4,
        "bounded by the node timeout: {took:?}"
    );
    for i in 0..3 {
        nodes.cluster.heal(i).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, &(acquired, removed)) in before.iter().enumerate().take(3) {
        while nodes.calls(i, "fcall").await <= acquired || nodes.calls(i, "eval").await <= removed {
            assert!(
                Instant::now() < deadline,
                "node {i} never got the late acquisition and removal"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(
        nodes.holding(0..5, &res).await.is_empty(),
        "a late SET was left"
    );
    Ok(())
}

/// Per node: how many acquisitions (`FCALL`) and removals (`EVAL`) it has run.
async fn script_counts(nodes: &Nodes) -> Vec<(u64, u64)> {
    let mut counts = Vec::new();
    for i in 0..5 {
        counts.push((nodes.calls(i, "fcall").await, nodes.calls(i, "eval").await));
    }
    counts
}

/// A holder that stalls (a simulated process pause) past its validity: afterwards its
/// `remaining()` is zero, extend and release say `Expired`, and another client held the
/// lock in between.
#[tokio::test(flavor = "multi_thread")]
async fn holder_stalled_past_its_validity_finds_its_lock_expired() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let generous = || nodes.builder().node_timeout(GENEROUS_NODE_TIMEOUT).build();
    let (a, b) = (generous().await?, generous().await?);
    let res = resource("stalled");
    let mut stalled = a.lock(&res, Duration::from_millis(400)).await?;

    // While A "pauses", B waits for the lock and gets it once A's keys expire.
    // Bounded, not hung: A's keys expire 400 ms after it locked; 10 s holds when both
    // cores are busy.
    let waiter = nodes
        .builder()
        .node_timeout(GENEROUS_NODE_TIMEOUT)
        .retry_delay(Duration::from_millis(20))
        .retry_jitter(Duration::from_millis(20))
        .acquire_timeout(Duration::from_secs(10))
        .build()
        .await?;
    let taken_over = waiter.lock(&res, Duration::from_secs(30)).await?;
    assert!(
        !stalled.is_valid(),
        "B got the lock while A's validity lasted"
    );
    // The nodes that granted B's lock: a node whose copy of A's key expired a moment
    // after the others' may have refused it.
    let granted: Vec<usize> = (taken_over.votes().iter().enumerate())
        .filter(|(_, nv)| nv.vote == Vote::Yes)
        .map(|(i, _)| i)
        .collect();
    assert!(granted.len() >= 3, "{}", taken_over.votes());
    assert_eq!(stalled.remaining(), Duration::ZERO);

    let err = stalled
        .extend(Duration::from_secs(30))
        .await
        .expect_err("stale");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    let err = stalled.release().await.expect_err("stale");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    // A's stale release did not touch B's lock.
    nodes.assert_held(&granted, &res, taken_over.token()).await;
    let second = b.try_lock(&res, Duration::from_secs(1)).await;
    assert!(matches!(second, Err(Error::Taken { .. })), "{second:?}");
    taken_over.release().await?;
    Ok(())
}

/// A minority partition while a lock is held: extend still succeeds. A majority
/// partition: extend fails with a typed error and the lock keeps (not extends) its
/// validity.
#[tokio::test(flavor = "multi_thread")]
async fn extend_survives_a_minority_partition_but_not_a_majority() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = client(&nodes).await?;
    let res = resource("partitioned-extend");
    let mut lock = redlock.lock(&res, Duration::from_secs(5)).await?;

    nodes.cluster.partition(0).await?;
    nodes.cluster.partition(1).await?;
    lock.extend(Duration::from_secs(30)).await?;
    assert!(lock.remaining() > Duration::from_secs(25));

    nodes.cluster.partition(2).await?;
    let before = lock.remaining();
    let start = Instant::now();
    let err = lock
        .extend(Duration::from_secs(60))
        .await
        .expect_err("majority cut off");
    let took = start.elapsed();
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    assert_eq!(votes.failed(), 3, "the cut-off nodes time out: {votes}");
    // Bounded, not hung: the cut-off nodes time out together after one 150 ms node
    // timeout; four leave room for a loaded machine.
    assert!(
        took < NODE_TIMEOUT * 4,
        "bounded by the node timeout: {took:?}"
    );
    assert!(lock.remaining() <= before);
    for i in 0..3 {
        nodes.cluster.heal(i).await?;
    }
    lock.release().await?;
    Ok(())
}

/// One node 300 ms away each way (added latency) with a 1 s node timeout, so the slow
/// node answers in time (600 ms) and a round that waited for every answer would take
/// that long: acquisitions and releases still return on the other four.
#[tokio::test(flavor = "multi_thread")]
async fn one_slow_node_does_not_slow_acquisition() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    let node_timeout = Duration::from_secs(1);
    let redlock = nodes.builder().node_timeout(node_timeout).build().await?;
    let slow = Duration::from_millis(300);
    nodes.cluster.set_latency(2, slow);
    let res = resource("slow-node");
    let (mut slowest_acquire, mut slowest_release) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..10 {
        let start = Instant::now();
        let lock = redlock.try_lock(&res, Duration::from_secs(10)).await?;
        slowest_acquire = slowest_acquire.max(start.elapsed());
        let start = Instant::now();
        lock.release().await?;
        slowest_release = slowest_release.max(start.elapsed());
    }
    eprintln!("slow node: slowest acquire {slowest_acquire:?}, release {slowest_release:?}");
    // Bounded, not hung: four loopback round trips take milliseconds; the slow node's
    // round trip alone is 600 ms.
    assert!(
        slowest_acquire < slow,
        "acquire waited for the slow node: {slowest_acquire:?}"
    );
    assert!(
        slowest_release < slow,
        "release waited for the slow node: {slowest_release:?}"
    );
    nodes.cluster.set_latency(2, Duration::ZERO);
    Ok(())
}

/// A release made while a node is cut off, after fredlock has closed its silent
/// connection (20 node timeouts: 3 s here) and while it reconnects: the node's
/// removal fails at once. It is sent again until the node answers, so our key is gone
/// soon after the heal, not at the end of its 60 s TTL.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_cannot_reach_a_node_is_sent_again_after_the_heal() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = client(&nodes).await?;
    let res = resource("release-cut-off");
    let lock = redlock.lock(&res, Duration::from_secs(60)).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    nodes.cluster.partition(4).await?;
    // A request left unanswered on the cut-off node's connection; 3 s later the
    // connection is closed as silent, and while fred reconnects a request to the node
    // fails at once.
    let other = redlock
        .try_lock(&resource("release-cut-off-2"), Duration::from_secs(60))
        .await?;
    other.release().await?;
    tokio::time::sleep(NODE_TIMEOUT * 20 + Duration::from_secs(1)).await;
    lock.release().await?;
    nodes.cluster.heal(4).await?;
    let healed = Instant::now();
    while !nodes.holding(4..5, &res).await.is_empty() {
        assert!(
            healed.elapsed() < Duration::from_secs(15),
            "our key is still on the node that was cut off during the release"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
