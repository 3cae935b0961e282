//! Lock lifecycle: keep-alive, the lost-lock signal, scoped work, release on drop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fredlock::{Error, Lease, LostReason, Redlock};
use tokio::sync::oneshot;

use crate::support::{Nodes, ROOMY, TestResult, resource};

/// Sets its flag when dropped: shows that a future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// With keep-alive, a 1 s lock outlives several TTLs while the work runs, and its keys
/// stay on a quorum of nodes with our token (without renewal they would be gone).
#[tokio::test(flavor = "multi_thread")]
async fn kept_alive_lock_outlives_several_ttls() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("kept-alive");
    let ttl = Duration::from_secs(1);
    let nodes = &nodes;
    let res_ref = &res;
    let checks = redlock
        .with_lock(&res, ttl, |lease| async move {
            let start = Instant::now();
            let mut checks = 0;
            // 3 TTLs of work, checked every 200 ms.
            while start.elapsed() < ttl * 3 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert!(lease.is_valid(), "lost after {:?}", start.elapsed());
                // A quorum of nodes still holds our key (without renewal, none would).
                let mut holding = 0;
                for i in 0..5 {
                    if nodes.get(i, res_ref).await.as_deref() == Some(lease.token()) {
                        holding += 1;
                    }
                }
                assert!(holding >= 3, "only {holding} nodes hold the key");
                checks += 1;
            }
            checks
        })
        .await?;
    assert!(checks >= 8, "only {checks} checks in 3 TTLs");
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// Killing 3 of 5 nodes while scoped work runs: the work is dropped and `Lost` is
/// returned before the lock's validity would have ended.
#[tokio::test(flavor = "multi_thread")]
async fn losing_the_quorum_cancels_scoped_work_before_the_validity_ends() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // The keep-alive gives up once no retry can end within the validity: two node
    // timeouts (plus a pause) before it ends, which is how early the work is
    // cancelled. With 50 ms, that lead was about 120 ms, as little as a scheduling
    // delay when both cores are busy; 300 ms gives a lead of over 600 ms.
    let redlock = nodes.redlock(Duration::from_millis(300)).await;
    let res = resource("scoped-lost");
    let (dropped, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (lease_tx, lease_rx) = oneshot::channel::<Lease>();
    let locked = async {
        let result = redlock
            .with_lock(&res, Duration::from_secs(2), |lease| {
                let (dropped, finished) = (dropped.clone(), finished.clone());
                async move {
                    let _flag = DropFlag(dropped);
                    let _ = lease_tx.send(lease);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    finished.store(true, Ordering::SeqCst);
                }
            })
            .await;
        (result, Instant::now())
    };
    // The nodes are killed outside the work, which is cancelled as soon as the loss is
    // seen: that can be before `docker stop` returns for the third node.
    let cluster = &nodes.cluster;
    let faults = async {
        let lease = lease_rx.await.expect("the work started");
        let kills = async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for i in 0..3 {
                cluster.kill(i).await.expect("kill");
            }
        };
        // The validity's end moves only when an extension succeeds, so once a majority
        // is gone it stays where the last one put it: the latest the lock can be
        // trusted. Sampled until it passes, it is right however long the kills take.
        let validity_end = async {
            let mut end = Instant::now() + lease.remaining();
            loop {
                let left = lease.remaining();
                if left.is_zero() {
                    return end;
                }
                end = end.max(Instant::now() + left);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::join!(kills, validity_end).1
    };
    let ((result, returned), deadline) = tokio::join!(locked, faults);
    match result {
        Err(Error::Lost {
            reason: LostReason::ExtendFailed(error),
            ..
        }) => assert!(matches!(*error, Error::NoQuorum { .. }), "{error}"),
        other => panic!("expected Lost(ExtendFailed), got {other:?}"),
    }
    assert!(dropped.load(Ordering::SeqCst), "the work was not dropped");
    assert!(!finished.load(Ordering::SeqCst));
    assert!(
        returned < deadline,
        "told {:?} after the validity ended",
        returned - deadline
    );
    eprintln!(
        "lost: work cancelled {:?} before the validity ended",
        deadline - returned
    );
    Ok(())
}

/// A `Lock` dropped without `release` is released in the background: its keys go long
/// before their 60 s TTL.
#[tokio::test(flavor = "multi_thread")]
async fn dropped_lock_is_released_in_the_background() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("dropped");
    let lock = redlock.lock(&res, Duration::from_secs(60)).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    let lease = lock.lease();
    drop(lock);
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    assert!(matches!(lease.lost().await, LostReason::Released));
    Ok(())
}

/// Without keep-alive, the lost signal fires when the validity runs out: not before,
/// and not much after (a timer at the validity's end, not a poll); after a release it
/// says `Released`.
#[tokio::test(flavor = "multi_thread")]
async fn lost_signal_fires_when_the_validity_runs_out() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("lost-signal");
    let lock = redlock.lock(&res, Duration::from_secs(1)).await?;
    let lease = lock.lease();
    let valid_until = Instant::now() + lease.remaining();
    // Only a guard against a hang; the lateness is bounded below.
    let reason = tokio::time::timeout(Duration::from_secs(5), lease.lost()).await?;
    let signalled = Instant::now();
    assert!(matches!(reason, LostReason::Expired), "{reason}");
    assert!(
        signalled >= valid_until,
        "signalled {:?} before the validity ended",
        valid_until - signalled
    );
    // Bounded, not hung: a timer that fires at the validity's end, woken on a loaded
    // machine. 250 ms is a quarter of this lock's validity; a signal that waited for
    // anything but that timer (a poll, the next keep-alive) would come later.
    let late = signalled - valid_until;
    assert!(
        late < Duration::from_millis(250),
        "signalled {late:?} after the validity ended"
    );
    assert_eq!(lease.remaining(), Duration::ZERO);
    assert!(!lease.is_valid() && !lock.is_valid());
    assert!(matches!(lock.release().await, Err(Error::Expired { .. })));

    let lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    let lease = lock.lease();
    let waiter = tokio::spawn(async move { lease.lost().await });
    lock.release().await?;
    assert!(matches!(waiter.await?, LostReason::Released));
    Ok(())
}

/// `keep_alive_at` outside (0, 1) is a typed configuration error.
#[tokio::test]
async fn keep_alive_share_outside_zero_one_is_rejected() {
    for share in [0.0, 1.0, 1.5, -0.1, f64::NAN] {
        match Redlock::builder(["redis://127.0.0.1:7001"])
            .keep_alive_at(share)
            .build()
            .await
        {
            Err(Error::Config { field, .. }) => assert_eq!(field, "keep_alive_at"),
            other => panic!("share {share}: expected Config, got {other:?}"),
        }
    }
}

/// The smallest PTTL of `key` over nodes `which` (-2 where it is absent).
async fn min_pttl(nodes: &Nodes, which: std::ops::Range<usize>, key: &str) -> i64 {
    let mut least = i64::MAX;
    for i in which {
        least = least.min(nodes.pttl(i, key).await);
    }
    least
}

/// `extend(10 s)` on a kept-alive 1 s lock: the keep-alive goes on with the new TTL.
/// (It once renewed with the TTL it started with, setting the keys back to 1 s.)
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_follows_a_longer_manual_extend() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let res = resource("keep-alive-longer");
    let mut lock = redlock.lock(&res, Duration::from_secs(1)).await?;
    lock.keep_alive();
    lock.extend(Duration::from_secs(10)).await?;
    assert_eq!(lock.ttl(), Duration::from_secs(10));
    // At the 1 s schedule the keep-alive would have renewed several times by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let least = min_pttl(&nodes, 0..5, &res).await;
    assert!(
        least > 5_000,
        "keys renewed at the old TTL: PTTL {least} ms"
    );
    assert!(lock.remaining() > Duration::from_secs(5), "{lock:?}");
    lock.release().await?;
    Ok(())
}

/// `extend(1 s)` on a kept-alive 10 s lock: the keep-alive wakes for the new, sooner
/// deadline instead of sleeping to the one it computed before.
#[tokio::test(flavor = "multi_thread")]
async fn keep_alive_follows_a_shorter_manual_extend() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let res = resource("keep-alive-shorter");
    let mut lock = redlock.lock(&res, Duration::from_secs(10)).await?;
    lock.keep_alive();
    lock.extend(Duration::from_secs(1)).await?;
    // The old schedule would renew at about 5 s; the 1 s lock is gone by then.
    let lease = lock.lease();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(lease.is_valid(), "lost: {:?}", lease.lost().await);
        assert!(!nodes.holding(0..5, &res).await.is_empty());
    }
    lock.release().await?;
    Ok(())
}

/// A manual `extend` that finds the key taken over returns `Expired` and the lock is
/// no longer valid: `is_valid()` is false and `Lease::lost` fires.
#[tokio::test(flavor = "multi_thread")]
async fn an_extend_that_finds_the_key_taken_marks_the_lock_lost() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("taken-over");
    let mut lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    for i in 0..5 {
        nodes.set(i, &res, "another-owner", 30_000).await;
    }
    let lease = lock.lease();
    assert!(matches!(
        lock.extend(Duration::from_secs(30)).await,
        Err(Error::Expired { .. })
    ));
    assert!(!lock.is_valid() && !lease.is_valid());
    // Bounded, not hung: the extend that failed already recorded the loss, so `lost()`
    // resolves at once; the lock's own validity (30 s) is far beyond this bound.
    let reason = tokio::time::timeout(Duration::from_secs(1), lease.lost()).await?;
    assert!(matches!(reason, LostReason::ExtendFailed(_)), "{reason}");
    Ok(())
}

/// `keep_alive_at` with a margin below the node timeout: the keep-alive still renews
/// early enough that a failed renewal is signalled before the validity ends, not
/// after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_keep_alive_margin_still_signals_the_loss_before_expiry() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(300))
        .keep_alive_at(0.05)
        .build()
        .await?;
    let res = resource("small-margin");
    let mut lock = redlock.lock(&res, Duration::from_secs(2)).await?;
    lock.keep_alive();
    let lease = lock.lease();
    for i in 0..3 {
        nodes.cluster.pause(i).await?;
    }
    // Bounded, not hung: the lock's 2 s validity ends within this bound either way;
    // the reason below tells a keep-alive failure from expiry.
    let reason = tokio::time::timeout(Duration::from_secs(5), lease.lost()).await?;
    for i in 0..3 {
        nodes.cluster.unpause(i).await?;
    }
    assert!(
        matches!(reason, LostReason::ExtendFailed(_)),
        "the loss was only seen at expiry: {reason}"
    );
    Ok(())
}

/// `release()` ends the lease before its round: a waiter woken by the release must not
/// find the old lease still valid. Three of five nodes are 300 ms away, so the round
/// lasts about 600 ms while the near nodes have already deleted the key.
#[tokio::test(flavor = "multi_thread")]
async fn release_ends_the_lease_before_its_round() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    let redlock = nodes.redlock(Duration::from_secs(2)).await;
    let res = resource("release-first");
    let lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    let lease = lock.lease();
    for i in 2..5 {
        nodes.cluster.set_latency(i, Duration::from_millis(300));
    }
    let releasing = tokio::spawn(lock.release());
    let gone = nodes
        .wait_absent(&[0, 1], &res, Duration::from_secs(2))
        .await;
    assert!(gone.is_empty(), "the near nodes did not delete the key");
    let still_releasing = !releasing.is_finished();
    assert!(
        !lease.is_valid(),
        "the lease is valid while its keys are deleted"
    );
    releasing.await??;
    assert!(
        still_releasing,
        "the round ended before the check: no evidence"
    );
    Ok(())
}
