//! Group commit on real nodes: operations for one node that meet a call in flight go
//! out together as one script call, each with its own result, in the order they were
//! made.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fredlock::{Error, Vote};

use crate::contention::{Held, overlapping};
use crate::support::{Nodes, TestResult, fence_key, resource};

const TTL: Duration = Duration::from_secs(10);

/// Through proxies that add 20 ms each way, 21 fencing rounds made at once reach each
/// node in two calls: the first alone, the others together behind it. One of them
/// meets a fencing counter that holds a list: it fails alone, with `WRONGTYPE` from
/// every node, and the twenty others in the same calls hand out their tokens.
#[tokio::test(flavor = "multi_thread")]
async fn one_operations_wrong_type_fails_only_that_operation() -> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(1000))
        .build()
        .await?;
    let bad = resource("batch-wrongtype");
    for i in 0..3 {
        nodes.make_list(i, &fence_key("", &bad)).await?;
    }
    let mut names: Vec<String> = (0..20).map(|i| resource(&format!("batch-{i}"))).collect();
    names.insert(7, bad.clone());
    let locks =
        futures::future::try_join_all(names.iter().map(|r| redlock.try_lock(r, TTL))).await?;
    for i in 0..3 {
        nodes.cluster.set_latency(i, Duration::from_millis(20));
    }
    let before = nodes.calls_on(&[0, 1, 2], "fcall").await;
    let tokens = futures::future::join_all(locks.iter().map(|l| l.fencing_token())).await;
    let after = nodes.calls_on(&[0, 1, 2], "fcall").await;
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        // Two calls, or three should the first have come back before all were made.
        assert!(
            a - b <= 3,
            "node {i}: {} calls for 21 fencing rounds",
            a - b
        );
    }
    let mut fenced = 0;
    for (name, token) in names.iter().zip(tokens) {
        if *name == bad {
            let Err(Error::NoQuorum { votes, .. }) = &token else {
                panic!("expected NoQuorum with WRONGTYPE, got {token:?}");
            };
            let wrong = votes
                .iter()
                .filter(|v| matches!(&v.vote, Vote::Error(e) if e.starts_with("WRONGTYPE")))
                .count();
            assert!(wrong >= 2, "{votes}");
        } else {
            token?;
            fenced += 1;
        }
    }
    assert_eq!(fenced, 20);
    for i in 0..3 {
        let kind = nodes
            .cmd(i, "TYPE", vec![fence_key("", &bad).into()])
            .await?;
        assert_eq!(kind.as_string().as_deref(), Some("list"), "node {i}");
    }
    futures::future::try_join_all(locks.into_iter().map(|l| l.release())).await?;
    Ok(())
}

/// An acquisition, then at once its release, while one node of three is frozen and
/// busy with an earlier call: the lock is granted by the other two, and on the frozen
/// node the acquisition waits in the queue with its release behind it. Thawed, that
/// node runs them in that order and is left without either key.
#[tokio::test(flavor = "multi_thread")]
async fn an_acquisition_released_at_once_on_a_frozen_node_leaves_nothing() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(300)).await;
    let (earlier, res) = (resource("frozen-earlier"), resource("frozen-release"));
    let before = nodes.calls(2, "fcall").await;
    nodes.cluster.pause(2).await?;
    // In flight on node 2 until its timeout: what comes next for node 2 queues.
    let first = redlock.try_lock(&earlier, TTL).await?;
    // A third of the way into that call: the next acquisition queued behind it is
    // still within its own deadline when the call ends, so it is sent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lock = redlock.try_lock(&res, TTL).await?;
    lock.release().await?;
    first.release().await?;
    // Everything has gone out to the frozen node by two of its timeouts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    nodes.cluster.unpause(2).await?;
    // Node 2 runs two calls: the first acquisition, then the other three operations
    // together. Bounded, not hung: a thawed node answers at once.
    nodes
        .wait_calls_above(&[2], "fcall", &[before + 1], Duration::from_secs(3))
        .await;
    for key in [&earlier, &res] {
        assert_eq!(
            nodes.get(2, key).await,
            None,
            "`{key}` outlived its release"
        );
        nodes.assert_released(&[0, 1, 2], key).await;
    }
    Ok(())
}

/// 32 tasks sharing one client contend for 4 resources (8 each), 10 cycles per task
/// with 2 ms holds recorded on one monotonic clock. Their operations reach each node
/// in batches (fewer script calls than operations) and no two holdings of a resource
/// intersect.
#[tokio::test(flavor = "multi_thread")]
async fn many_tasks_through_one_client_batch_and_never_overlap() -> TestResult {
    const TASKS: usize = 32;
    const CYCLES: usize = 10;
    let nodes = Nodes::start(5).await?;
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(500))
        .retry_delay(Duration::from_millis(1))
        .retry_jitter(Duration::from_millis(5))
        .acquire_timeout(Duration::from_secs(20))
        .build()
        .await?;
    let names: Vec<String> = (0..4).map(|i| resource(&format!("shared-{i}"))).collect();
    let held: Arc<Mutex<Vec<(usize, Held)>>> = Arc::default();
    let all = [0, 1, 2, 3, 4];
    let mut before = Vec::new();
    for i in all {
        before.push(nodes.calls(i, "fcall").await + nodes.calls(i, "eval").await);
    }
    let workers = (0..TASKS).map(|task| {
        let (redlock, res, held) = (redlock.clone(), names[task % 4].clone(), Arc::clone(&held));
        tokio::spawn(async move {
            for _ in 0..CYCLES {
                let lock = redlock.lock(&res, Duration::from_secs(5)).await?;
                let from = Instant::now();
                tokio::time::sleep(Duration::from_millis(2)).await;
                let until = Instant::now();
                let holding = Held {
                    holder: (0, task),
                    from,
                    until,
                };
                held.lock().expect("poisoned").push((task % 4, holding));
                lock.release().await?;
            }
            Ok::<_, Error>(())
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    let held = std::mem::take(&mut *held.lock().expect("poisoned"));
    assert_eq!(held.len(), TASKS * CYCLES);
    for r in 0..4 {
        let on: Vec<Held> = held
            .iter()
            .filter(|(k, _)| *k == r)
            .map(|(_, h)| *h)
            .collect();
        let overlaps = overlapping(on);
        assert!(
            overlaps.is_empty(),
            "resource {r}: two holders at once: {overlaps:?}"
        );
    }
    // Every cycle is at least an acquisition and a release on each node that voted in
    // it: 2 * 320 operations on a node that took part in every cycle, fewer calls.
    for (i, b) in all.iter().zip(&before) {
        let calls = nodes.calls(*i, "fcall").await + nodes.calls(*i, "eval").await - b;
        let cycles = (TASKS * CYCLES) as u64;
        eprintln!(
            "node {i}: {calls} script calls for at least {} operations",
            2 * cycles
        );
        assert!(calls < 2 * cycles, "node {i}: {calls} calls, no batching");
    }
    Ok(())
}
