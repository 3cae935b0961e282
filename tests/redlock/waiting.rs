//! Waiting for a held lock: woken by the release instead of polling, and no waiter
//! starves under steady contention.

use std::time::{Duration, Instant};

use crate::support::{Nodes, TestResult, resource, service_clients};

/// A waiter polling only every 5 s gets the lock right after the holder releases it:
/// the release announcement wakes it. Without the wake-up it would wait for its next
/// poll, seconds later.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_wakes_the_waiter_long_before_its_next_poll() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(Duration::from_millis(100)).await;
    let poll_every = Duration::from_secs(5);
    let waiter = nodes
        .builder()
        .node_timeout(Duration::from_millis(100))
        .retry_delay(poll_every)
        .retry_jitter(Duration::ZERO)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let res = resource("wake-up");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move {
            let lock = waiter.lock(&res, Duration::from_secs(30)).await;
            (lock, Instant::now())
        }
    });
    // Let the waiter fail its first attempt and subscribe.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished());
    let released_at = Instant::now();
    held.release().await?;
    let (lock, acquired_at) = waiting.await?;
    let lock = lock?;
    let hand_off = acquired_at - released_at;
    eprintln!("wake-up: hand-off {hand_off:?} (polling delay {poll_every:?})");
    assert!(hand_off < poll_every, "waited for the poll: {hand_off:?}");
    lock.release().await?;
    Ok(())
}

/// Six clients take turns on one resource for 3 s (hold 1 ms, then release and ask
/// again at once): every one of them acquires it, repeatedly.
#[tokio::test(flavor = "multi_thread")]
async fn no_waiter_starves_under_steady_contention() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let res = resource("fairness");
    let run = Duration::from_secs(3);
    let stop_at = Instant::now() + run;
    let mut workers = Vec::new();
    for _ in 0..6 {
        // A generous node timeout: six clients' rounds on a loaded 2-core machine can
        // take longer than 100 ms, and a timed-out release is not what this measures.
        let redlock = nodes
            .builder()
            .node_timeout(Duration::from_millis(500))
            .acquire_timeout(Duration::from_secs(10))
            .build()
            .await?;
        let res = res.clone();
        workers.push(tokio::spawn(async move {
            let mut acquired = 0usize;
            while Instant::now() < stop_at {
                let lock = redlock.lock(&res, Duration::from_secs(5)).await?;
                acquired += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
                lock.release().await?;
            }
            Ok::<_, fredlock::Error>(acquired)
        }));
    }
    let mut counts = Vec::new();
    for worker in workers {
        counts.push(worker.await??);
    }
    eprintln!("fairness: acquisitions per client in {run:?}: {counts:?}");
    assert!(
        counts.iter().all(|&n| n >= 1),
        "a client starved: {counts:?}"
    );
    Ok(())
}

/// On how many of the 5 nodes `channel` has a subscriber.
async fn subscribed_nodes(
    nodes: &Nodes,
    channel: &str,
) -> Result<usize, Box<dyn std::error::Error + Send + Sync>> {
    let mut subscribed = 0;
    for i in 0..5 {
        let reply = nodes
            .cmd(i, "PUBSUB", vec!["NUMSUB".into(), channel.into()])
            .await?;
        let count = match reply {
            fred::prelude::Value::Array(items) => {
                items.get(1).and_then(|v| v.as_i64()).unwrap_or(0)
            }
            _ => 0,
        };
        subscribed += usize::from(count > 0);
    }
    Ok(subscribed)
}

/// `quit()` closes the wake-up connections too: with the service's own clients (which
/// `quit()` leaves open), a waiter that is still waiting stays subscribed until then,
/// and its subscriptions are gone from every node afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn quit_closes_the_wake_up_subscriptions() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(Duration::from_millis(200)).await;
    let waiter = fredlock::Redlock::from_clients(service_clients(nodes.urls()).await?)
        .restart_quarantine(fredlock::Quarantine::Off)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let res = resource("quit-wake-up");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move { waiter.lock(&res, Duration::from_secs(30)).await.map(drop) }
    });
    let channel = format!("fredlock:released:{res}");
    let start = Instant::now();
    while subscribed_nodes(&nodes, &channel).await? < 5 {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    waiter.quit().await;
    let start = Instant::now();
    while subscribed_nodes(&nodes, &channel).await? > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "subscriptions left after quit()"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !waiting.is_finished(),
        "the waiter stopped waiting: no evidence"
    );
    waiting.abort();
    held.release().await?;
    Ok(())
}

/// Each release is announced by every node; a waiter is woken once per release, not
/// once per node. Here the same announcement arrives from node 0, then (after the
/// waiter's attempt) from the other 4, while the resource stays held: the waiter tries
/// once, then waits for its next poll (10 s), instead of spending its last retry at
/// once on the leftover announcements.
#[tokio::test(flavor = "multi_thread")]
async fn one_release_wakes_a_waiter_once() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(Duration::from_millis(100)).await;
    let waiter = nodes
        .builder()
        .node_timeout(Duration::from_millis(100))
        .retry_delay(Duration::from_secs(10))
        .retry_jitter(Duration::ZERO)
        .retry_count(2)
        .build()
        .await?;
    let res = resource("wake-once");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move { waiter.lock(&res, Duration::from_secs(30)).await.map(drop) }
    });
    // Wait until the waiter has subscribed on every node.
    let channel = format!("fredlock:released:{res}");
    let start = Instant::now();
    loop {
        if subscribed_nodes(&nodes, &channel).await? == 5 {
            eprintln!(
                "wake-once: subscribed on 5 nodes after {:?}",
                start.elapsed()
            );
            break;
        }
        // Generous: five new connections on a loaded machine, each SUBSCRIBE retried
        // every connect timeout (2 s) until it goes through.
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        nodes
            .cmd(
                i,
                "PUBLISH",
                vec![channel.as_str().into(), "a-released-token".into()],
            )
            .await?;
        if i == 0 {
            // The waiter wakes, tries and fails meanwhile.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !waiting.is_finished(),
        "the leftover announcements used up the waiter's retries: {:?}",
        waiting.await?
    );
    waiting.abort();
    held.release().await?;
    Ok(())
}

/// A subscription that timed out (every node slow while the waiter subscribed) is
/// tried again, so the release still wakes the waiter once the nodes are fast.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_subscription_is_tried_again() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    let holder = nodes.redlock(Duration::from_secs(2)).await;
    let poll_every = Duration::from_secs(10);
    let waiter = nodes
        .builder()
        .node_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(300))
        .retry_delay(poll_every)
        .retry_jitter(Duration::ZERO)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let res = resource("resubscribe");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    // Round trips of 800 ms: the waiter's attempt still answers (node timeout 2 s),
    // its SUBSCRIBE (bounded by the 300 ms connect timeout) does not.
    for i in 0..5 {
        nodes.cluster.set_latency(i, Duration::from_millis(400));
    }
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move {
            let lock = waiter.lock(&res, Duration::from_secs(30)).await;
            (lock, Instant::now())
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..5 {
        nodes.cluster.set_latency(i, Duration::ZERO);
    }
    // Time for a retried subscription to go through on fast nodes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiting.is_finished());
    let released_at = Instant::now();
    held.release().await?;
    let (lock, acquired_at) = waiting.await?;
    let hand_off = acquired_at - released_at;
    eprintln!("resubscribe: hand-off {hand_off:?} (polling delay {poll_every:?})");
    assert!(
        hand_off < Duration::from_secs(3),
        "waited for the poll: {hand_off:?}"
    );
    lock?.release().await?;
    Ok(())
}
