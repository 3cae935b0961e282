//! The keep-alive under faults: a renewal that fails for a while is retried and the
//! lock stays valid; a renewal that finds our token gone signals the loss at once.

use std::time::{Duration, Instant};

use fredlock::{Error, LostReason};

use crate::support::{Nodes, TestResult, resource};

/// A majority frozen across the keep-alive's renewal: the renewal fails, is tried
/// again (node 2, still up, sees every attempt), and once the two nodes are back a
/// retry renews the lock before its validity ends: `remaining()` and the keys' PTTL
/// go back up, and the lease was valid throughout.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_that_fails_for_a_while_is_retried_in_time() -> TestResult {
    let nodes = Nodes::start(3).await?;
    // 300 ms: a round trip when both cores are busy (100 ms timed out on two nodes and
    // failed the first lock() under load); the renewal and its retry still fit well
    // inside the 1.2 s lead and the validity left.
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(300))
        .retry_delay(Duration::from_millis(100))
        .retry_jitter(Duration::from_millis(50))
        .build()
        .await?;
    let res = resource("keep-alive-retry");
    let ttl = Duration::from_secs(6);
    let mut lock = redlock.lock(&res, ttl).await?;
    lock.keep_alive();
    let lease = lock.lease();
    // keep_alive_at 0.5: the renewal is due once half the validity is left, about
    // 3 s from now. Freeze the majority 1.2 s before that.
    let first = lock.remaining();
    tokio::time::sleep((first / 2).saturating_sub(Duration::from_millis(1200))).await;
    let before: Vec<i64> = [nodes.pttl(0, &res).await, nodes.pttl(1, &res).await].into();
    let base = nodes.calls(2, "fcall").await;
    let (a, b) = tokio::join!(nodes.cluster.pause(0), nodes.cluster.pause(1));
    a?;
    b?;
    assert!(
        lock.remaining() < first - Duration::from_secs(1),
        "renewed before the majority froze: no evidence ({:?} left)",
        lock.remaining()
    );
    // Two renewal rounds (the first and a retry) reach node 2 while 0 and 1 are
    // frozen: each is a failed round.
    let start = Instant::now();
    let mut attempts = 0;
    while attempts < 2 {
        attempts = nodes.calls(2, "fcall").await - base;
        // Bounded, not hung: the renewal is due within 1.2 s, a retry 450 ms later.
        if start.elapsed() > Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let valid_while_frozen = lease.is_valid();
    let left_while_frozen = lock.remaining();
    let (a, b) = tokio::join!(nodes.cluster.unpause(0), nodes.cluster.unpause(1));
    a?;
    b?;
    assert!(
        valid_while_frozen,
        "lost while frozen: {}",
        lease.lost().await
    );
    assert!(attempts >= 2, "{attempts} renewal attempts while frozen");

    // A retry succeeds: the validity is back near the full TTL.
    let start = Instant::now();
    while lock.remaining() <= left_while_frozen + Duration::from_secs(1) {
        assert!(
            lease.is_valid(),
            "lost after the nodes came back: {}",
            lease.lost().await
        );
        // Bounded, not hung: retries come every 400-450 ms; the validity left when
        // the nodes came back bounds the wait anyway.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "never renewed: {:?} left",
            lock.remaining()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (i, before) in before.into_iter().enumerate() {
        let after = nodes.pttl(i, &res).await;
        assert!(
            after > before + 1000,
            "node {i}: PTTL {before} ms before the freeze, {after} ms after the renewal"
        );
    }
    nodes.assert_held(&[0, 1, 2], &res, lease.token()).await;
    assert!(lease.is_valid());
    lock.release().await?;
    Ok(())
}

/// Our keys overwritten by another owner on a majority while the keep-alive runs: its
/// next renewal finds the token gone and `lost()` fires at once with
/// `ExtendFailed(Expired)`, seconds before the validity would end, instead of being
/// retried until then.
#[tokio::test(flavor = "multi_thread")]
async fn a_renewal_that_finds_the_token_gone_signals_the_loss_at_once() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(100))
        .retry_delay(Duration::from_millis(100))
        .retry_jitter(Duration::from_millis(50))
        // Renewals once 90% of the validity is left: about every 0.6 s for 6 s.
        .keep_alive_at(0.9)
        .build()
        .await?;
    let res = resource("keep-alive-taken");
    let mut lock = redlock.lock(&res, Duration::from_secs(6)).await?;
    lock.keep_alive();
    let lease = lock.lease();
    nodes.assert_held(&[0, 1, 2], &res, lease.token()).await;
    for i in [0, 1] {
        nodes.set(i, &res, "another-owner", 30_000).await;
    }
    let overwritten = Instant::now();
    let left_at_overwrite = lease.remaining();
    // Bounded, not hung: the next renewal is due within 0.6 s; retrying it instead
    // would last until about 0.35 s before the validity ends (over 4 s from now).
    let reason = tokio::time::timeout(Duration::from_secs(10), lease.lost()).await?;
    let took = overwritten.elapsed();
    let left = lease.remaining();
    match &reason {
        LostReason::ExtendFailed(error) => {
            assert!(matches!(**error, Error::Expired { .. }), "{error}");
            let votes = error.votes().expect("votes");
            assert!(votes.taken() >= 2, "{votes}");
        }
        other => panic!("expected ExtendFailed(Expired), got {other}"),
    }
    assert!(
        took < Duration::from_secs(2),
        "signalled {took:?} after the overwrite"
    );
    assert!(
        left > left_at_overwrite.saturating_sub(Duration::from_secs(2)),
        "signalled with only {left:?} of validity left ({left_at_overwrite:?} at the \
         overwrite)"
    );
    assert!(!lease.is_valid() && !lock.is_valid());
    assert_eq!(
        nodes.get(0, &res).await.as_deref(),
        Some("another-owner"),
        "the other owner's key is untouched"
    );
    Ok(())
}
