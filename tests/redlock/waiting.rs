//! Waiting for a held lock: woken by the release instead of polling, and no waiter
//! starves under steady contention.

use std::time::{Duration, Instant};

use crate::support::{Nodes, TestResult, resource};

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
        let redlock = nodes
            .builder()
            .node_timeout(Duration::from_millis(100))
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
