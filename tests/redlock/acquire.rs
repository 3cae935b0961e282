//! Acquisition: quorum size, key naming, early decision, retries and deadline.

use std::time::{Duration, Instant};

use fredlock::{Error, Quarantine, Redlock, Vote, quorum};

use crate::support::{Nodes, ROOMY, TestResult, resource};

const TTL: Duration = Duration::from_secs(30);

/// For every N from 1 to 5: with N - quorum(N) nodes held by another owner the lock is
/// acquired; with one more it is refused as taken.
#[tokio::test(flavor = "multi_thread")]
async fn quorum_is_a_majority_for_every_n() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let urls = nodes.urls();
    for n in 1..=5usize {
        let redlock = Redlock::builder(urls[..n].to_vec())
            .restart_quarantine(Quarantine::Off)
            .node_timeout(Duration::from_millis(500))
            .build()
            .await?;
        assert_eq!(redlock.quorum(), quorum(n));
        let spare = n - quorum(n);

        let res = resource(&format!("quorum-{n}-ok"));
        for i in 0..spare {
            nodes.set(i, &res, "someone-else", 30_000).await;
        }
        let lock = redlock.try_lock(&res, TTL).await?;
        let free: Vec<usize> = (spare..n).collect();
        nodes.assert_held(&free, &res, lock.token()).await;
        let mut yes = 0;
        for i in 0..n {
            if nodes.get(i, &res).await.as_deref() == Some(lock.token()) {
                yes += 1;
            }
        }
        assert_eq!(yes, n - spare, "N={n}: our token on exactly the free nodes");
        lock.release().await?;

        let res = resource(&format!("quorum-{n}-taken"));
        for i in 0..=spare {
            nodes.set(i, &res, "someone-else", 30_000).await;
        }
        match redlock.try_lock(&res, TTL).await {
            Err(Error::Taken { votes, .. }) => {
                assert_eq!(votes.taken(), spare + 1, "N={n}: {votes}");
                assert_eq!(votes.len(), n);
            }
            other => panic!("N={n}: expected Taken, got {other:?}"),
        }
        // The free nodes had our token removed again (the TTL is 30 s).
        let free: Vec<usize> = (spare + 1..n).collect();
        let left = nodes.wait_absent(&free, &res, Duration::from_secs(2)).await;
        assert!(left.is_empty(), "N={n}: our key is left on nodes {left:?}");
    }
    Ok(())
}

/// The key is the resource name itself (plus the prefix when one is set) and holds the
/// token, so other Redlock clients using the same resource name are excluded.
#[tokio::test(flavor = "multi_thread")]
async fn key_is_the_resource_name_and_holds_the_token() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("plain-key");
    let lock = redlock.lock(&res, TTL).await?;
    assert_eq!(lock.key(), res);
    assert!(
        lock.token().len() >= 32,
        "at least 16 random bytes, hex-encoded"
    );
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    for i in 0..3 {
        let pttl = nodes.pttl(i, &res).await;
        assert!(
            pttl > 25_000 && pttl <= 30_000,
            "PX set from the TTL: {pttl}"
        );
    }
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2], &res).await;

    let prefixed = nodes.builder().key_prefix("app:").build().await?;
    let lock = prefixed.lock(&res, TTL).await?;
    assert_eq!(lock.key(), format!("app:{res}"));
    assert_eq!(
        nodes.get(0, &format!("app:{res}")).await.as_deref(),
        Some(lock.token())
    );
    assert_eq!(nodes.get(0, &res).await, None);
    lock.release().await?;

    // Another client's plain SET NX on the same name excludes us, and the reverse.
    nodes.set(0, &res, "go-redsync-token", 30_000).await;
    nodes.set(1, &res, "go-redsync-token", 30_000).await;
    assert!(matches!(
        redlock.try_lock(&res, TTL).await,
        Err(Error::Taken { .. })
    ));
    Ok(())
}

/// With one node frozen and a 1 s node timeout, lock() returns when the other four have
/// answered, not after the frozen node's timeout; a round whose quorum is already out
/// of reach returns early too.
#[tokio::test(flavor = "multi_thread")]
async fn returns_at_the_decision_not_after_the_slowest_node() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let timeout = Duration::from_secs(1);
    let redlock = nodes.redlock(timeout).await;
    nodes.cluster.pause(4).await?;

    let res = resource("early-yes");
    let start = Instant::now();
    let lock = redlock.try_lock(&res, TTL).await?;
    let took = start.elapsed();
    // Bounded, not hung: four loopback round trips take milliseconds; a round that
    // waited for the frozen node would take the whole 1 s timeout.
    assert!(took < timeout / 2, "waited for the frozen node: {took:?}");
    lock.release().await?;

    let res = resource("early-no");
    for i in 0..3 {
        nodes.set(i, &res, "someone-else", 30_000).await;
    }
    let start = Instant::now();
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("taken on 3 of 5");
    let took = start.elapsed();
    assert!(matches!(err, Error::Taken { .. }), "{err}");
    assert!(took < timeout / 2, "waited for the frozen node: {took:?}");
    let votes = err.votes().expect("votes");
    assert_eq!(
        votes.iter().nth(4).map(|v| v.vote.clone()),
        Some(Vote::Pending)
    );
    nodes.cluster.unpause(4).await?;
    Ok(())
}

/// lock() retries: it acquires a resource that is freed while it waits, and with an
/// acquire timeout it gives up once no further attempt fits before the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn lock_retries_until_freed_and_respects_the_deadline() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let holder = nodes.redlock(Duration::from_millis(200)).await;
    let waiter = nodes
        .builder()
        .node_timeout(Duration::from_millis(200))
        .retry_delay(Duration::from_millis(20))
        .retry_jitter(Duration::from_millis(20))
        .acquire_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let res = resource("retry");
    let all = [0, 1, 2];
    let held = holder.lock(&res, TTL).await?;
    nodes.assert_held(&all, &res, held.token()).await;
    let base = nodes.calls_on(&all, "fcall").await;
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        let res = res.clone();
        async move { waiter.lock(&res, TTL).await }
    });
    // The waiter's first attempt ran on every node while the resource was held there
    // (every acquisition is one FCALL), so it failed.
    // Bounded, not hung: an attempt reaches the nodes within its node timeout.
    nodes
        .wait_calls_above(&all, "fcall", &base, Duration::from_secs(3))
        .await;
    assert!(
        !waiting.is_finished(),
        "the waiter cannot have the lock yet"
    );
    held.release().await?;
    let got = waiting.await??;
    // A quorum holds the waiter's token. A node whose release had not run yet when the
    // waiter's SET arrived voted "taken": the release returns at its quorum too.
    let mut holding = 0;
    for i in all {
        holding += usize::from(nodes.get(i, &res).await.as_deref() == Some(got.token()));
    }
    assert!(holding >= 2, "the waiter's token on {holding} of 3 nodes");
    // Attempts after the first, and the holder's release: the lock came from a retry.
    let after_first: Vec<u64> = base.iter().map(|n| n + 2).collect();
    nodes
        .wait_calls_above(&all, "fcall", &after_first, Duration::from_secs(3))
        .await;

    // Now the resource stays held: a 600 ms deadline ends the wait with Taken.
    let short = nodes
        .builder()
        .node_timeout(Duration::from_millis(200))
        .retry_delay(Duration::from_millis(20))
        .retry_jitter(Duration::from_millis(20))
        .acquire_timeout(Duration::from_millis(600))
        .build()
        .await?;
    let start = Instant::now();
    let err = short.lock(&res, TTL).await.expect_err("held by `got`");
    let took = start.elapsed();
    assert!(matches!(err, Error::Taken { .. }), "{err}");
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    // Bounded, not hung: the last attempt starts before the deadline and lasts at most
    // one 200 ms node timeout; 400 ms leaves room for a loaded machine, far below what
    // retrying past the deadline (more 20-40 ms pauses and attempts) would show.
    assert!(
        took < Duration::from_millis(600) + Duration::from_millis(400),
        "overran: {took:?}"
    );
    got.release().await?;
    Ok(())
}
