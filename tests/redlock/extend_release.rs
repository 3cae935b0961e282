//! Extend and release: quorum of N, validity recomputed, typed errors once the lock is
//! gone, and release not slowed by a frozen node.

use std::time::{Duration, Instant};

use fred::prelude::{ClientLike, KeysInterface, Options};
use fredlock::{Error, Quarantine, Redlock};

use crate::support::{Nodes, ROOMY, TestResult, resource, service_clients};

#[tokio::test(flavor = "multi_thread")]
async fn extend_renews_the_keys_and_recomputes_validity() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let res = resource("extend");
    let mut lock = redlock.lock(&res, Duration::from_secs(2)).await?;
    assert!(lock.remaining() <= Duration::from_secs(2) - redlock.drift(Duration::from_secs(2)));

    lock.extend(Duration::from_secs(60)).await?;
    let ttl = Duration::from_secs(60);
    assert!(
        lock.remaining() > Duration::from_secs(55),
        "{:?}",
        lock.remaining()
    );
    assert!(
        lock.remaining() <= ttl - redlock.drift(ttl),
        "{:?}",
        lock.remaining()
    );
    assert_eq!(lock.ttl(), ttl);
    nodes
        .assert_pttl_above(&[0, 1, 2, 3, 4], &res, 55_000)
        .await;

    // Extending with a minority down still works; the quorum counts all N nodes.
    nodes.cluster.kill(0).await?;
    nodes.cluster.kill(1).await?;
    lock.extend(Duration::from_secs(30)).await?;
    assert!(lock.remaining() <= Duration::from_secs(30));
    // A majority down: the extend fails with NoQuorum and the lock keeps its validity.
    nodes.cluster.kill(2).await?;
    let before = lock.remaining();
    let err = lock
        .extend(Duration::from_secs(60))
        .await
        .expect_err("3 of 5 dead");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    assert!(
        lock.remaining() <= before,
        "a failed extend must not lengthen the lock"
    );
    assert!(
        lock.is_valid(),
        "a failed extend must not drop the lock either"
    );
    // A failed extend does not unlock the nodes that are still up.
    assert_eq!(nodes.holding(3..5, &res).await, vec![3, 4]);

    // A failed extend with a TTL shorter than what is left: the live nodes now expire
    // the key sooner, and remaining() follows them down instead of overstating.
    let err = lock
        .extend(Duration::from_millis(500))
        .await
        .expect_err("3 of 5 dead");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    assert!(
        lock.remaining() < Duration::from_millis(500),
        "remaining {:?} outlives the renewed keys",
        lock.remaining()
    );
    // The live nodes' requests run on after the decision; each renews to 500 ms.
    // Bounded, not hung: the renewal is one loopback round trip after the decision.
    let start = Instant::now();
    for i in 3..5 {
        while nodes.pttl(i, &res).await > 500 {
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "node {i} not renewed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Once the keys have expired on the nodes, extend and release give `Expired`.
#[tokio::test(flavor = "multi_thread")]
async fn extend_and_release_of_an_expired_lock_give_expired() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("expired");
    let mut lock = redlock.lock(&res, Duration::from_millis(300)).await?;
    nodes.assert_released(&[0, 1, 2], &res).await;
    assert_eq!(lock.remaining(), Duration::ZERO);
    assert!(!lock.is_valid());

    let err = lock
        .extend(Duration::from_secs(10))
        .await
        .expect_err("expired");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    let err = lock.release().await.expect_err("expired");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    Ok(())
}

/// A lock whose keys were taken over by another owner while it was still valid on our
/// clock: extend and release say so with the nodes' `taken` votes, and the other
/// owner's keys are untouched. The new owner's TTL (10 s) differs from the one our
/// extend asks for (30 s), so a PEXPIRE that skipped the token check would show.
#[tokio::test(flavor = "multi_thread")]
async fn extend_and_release_after_a_takeover_give_expired_and_spare_the_new_owner() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("takeover");
    let mut lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    for i in 0..3 {
        nodes.set(i, &res, "new-owner", 10_000).await;
    }
    assert!(lock.is_valid());
    let err = lock
        .extend(Duration::from_secs(30))
        .await
        .expect_err("taken over");
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    assert!(votes.taken() >= 2, "{votes}");
    let err = lock.release().await.expect_err("taken over");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    for i in 0..3 {
        assert_eq!(nodes.get(i, &res).await.as_deref(), Some("new-owner"));
        let pttl = nodes.pttl(i, &res).await;
        assert!(
            pttl > 0 && pttl <= 10_000,
            "node {i}: the new owner's key was renewed by our extend: PTTL {pttl} ms"
        );
    }
    Ok(())
}

/// Release and extend return at the quorum decision: a frozen node with a 1 s timeout
/// does not slow them down, and its removal still happens once it wakes.
#[tokio::test(flavor = "multi_thread")]
async fn release_and_extend_do_not_wait_for_a_frozen_node() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let timeout = Duration::from_secs(1);
    let redlock = nodes.redlock(timeout).await;
    let res = resource("frozen-release");
    let mut lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    nodes.cluster.pause(4).await?;

    let start = Instant::now();
    lock.extend(Duration::from_secs(30)).await?;
    let took = start.elapsed();
    assert!(
        took < timeout / 2,
        "extend waited for the frozen node: {took:?}"
    );

    let start = Instant::now();
    lock.release().await?;
    let took = start.elapsed();
    assert!(
        took < timeout / 2,
        "release waited for the frozen node: {took:?}"
    );
    nodes.assert_released(&[0, 1, 2, 3], &res).await;

    nodes.cluster.unpause(4).await?;
    let left = nodes.wait_absent(&[4], &res, Duration::from_secs(3)).await;
    assert!(left.is_empty(), "the frozen node's release never ran");
    Ok(())
}

/// A release's request that waits on its connection longer than its node timeout is
/// still run once the connection gets to it. The service's own client for node 0 is
/// writing a value larger than every buffer between it and the node, which is frozen,
/// so the release's request waits behind that write, unwritten, well past its 300 ms;
/// the release returns at the quorum of the two other nodes. Once the node wakes and
/// the write ends, the release runs there too: the key is gone, not left for its TTL.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_waits_behind_a_stalled_write_still_reaches_its_node() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let clients = service_clients(nodes.urls()).await?;
    let timeout = Duration::from_millis(300);
    let redlock = Redlock::from_clients(clients.clone())
        .restart_quarantine(Quarantine::Off)
        .node_timeout(timeout)
        .build()
        .await?;
    let res = resource("release-behind-a-stalled-write");
    let lock = redlock.lock(&res, Duration::from_secs(120)).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;

    nodes.cluster.pause(0).await?;
    // 128 MiB: more than the socket buffers between the client and the frozen node
    // can take (at most 4 MiB to send and 32 MiB to receive on each socket here, and
    // the port mapping's proxy has two), so fred's writer stays on it.
    let patient = clients[0].with_options(&Options {
        timeout: Some(Duration::from_secs(120)),
        ..Options::default()
    });
    let filler = resource("stalled-write-filler");
    let key = filler.clone();
    let mut write = Box::pin(async move {
        patient
            .set::<(), _, _>(key, vec![b'x'; 128 << 20], None, None, false)
            .await
    });
    // Its first poll hands it to the connection, ahead of the release.
    assert!(futures::poll!(&mut write).is_pending());
    let write = tokio::spawn(write);
    lock.release().await?;
    // The release's request to node 0 gives up 300 ms after it was made. This wait is
    // what lets the request time out while unwritten (the case under test), not a
    // bound on anything: were it too short, the request would simply be written.
    tokio::time::sleep(timeout * 4).await;
    nodes.cluster.unpause(0).await?;
    tokio::time::timeout(Duration::from_secs(60), write).await???;
    // The release was handed over before this, so it has run by the time this answers.
    let _: String = clients[0].ping(None).await?;
    let left = nodes.get(0, &res).await;
    nodes.cmd(0, "DEL", vec![filler.into()]).await?;
    assert_eq!(left, None, "the release never ran on node 0");
    Ok(())
}

/// A release that returned at its quorum while its request to a frozen node still
/// waited behind that node's call in flight (the acquisition's `SET`, written before
/// the freeze ended), followed at once by the `Redlock`'s end, by drop or by `quit()`:
/// the connection is closed only after the release went out, so once the node wakes
/// it runs the `SET` and then the release, and the key is gone rather than left for
/// its TTL.
async fn release_then_close(quit: bool) -> TestResult {
    let nodes = Nodes::start(3).await?;
    // Far above what the freeze below lasts: the acquisition stays in flight on node 2
    // from before the release until the node wakes.
    let redlock = nodes.redlock(Duration::from_secs(30)).await;
    let res = resource(if quit {
        "release-then-quit"
    } else {
        "release-then-drop"
    });
    nodes.cluster.pause(2).await?;
    // Granted by nodes 0 and 1; node 2's `SET` waits on the frozen node.
    let lock = redlock.lock(&res, Duration::from_secs(120)).await?;
    // Nodes 0 and 1 remove it; node 2's removal waits behind its `SET`.
    lock.release().await?;
    // `quit()` lets the release go out first, so it returns only once the node woke.
    // Its first poll does what it does before any wait: it is under way before the
    // node wakes.
    let mut quitting = None;
    if quit {
        let redlock = redlock.clone();
        let mut quit = Box::pin(async move { redlock.quit().await });
        assert!(futures::poll!(&mut quit).is_pending());
        quitting = Some(tokio::spawn(quit));
    }
    drop(redlock);
    nodes.cluster.unpause(2).await?;
    if let Some(quitting) = quitting {
        quitting.await?;
    }
    // The key lives 120 s: only the release can take it away within this bound, which
    // holds when both cores are busy (a round trip to a node that just woke).
    let left = nodes
        .wait_absent(&[0, 1, 2], &res, Duration::from_secs(10))
        .await;
    assert!(left.is_empty(), "still on nodes {left:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_still_queued_when_the_redlock_is_dropped_reaches_its_node() -> TestResult {
    release_then_close(false).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_still_queued_when_quit_is_called_reaches_its_node() -> TestResult {
    release_then_close(true).await
}

/// Release with a majority of nodes dead is NoQuorum, not Expired: the caller can tell
/// "the lock was lost" from "could not tell".
#[tokio::test(flavor = "multi_thread")]
async fn release_without_a_quorum_of_nodes_is_no_quorum() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("release-no-quorum");
    let lock = redlock.lock(&res, Duration::from_secs(30)).await?;
    nodes.cluster.kill(0).await?;
    nodes.cluster.kill(1).await?;
    let err = lock.release().await.expect_err("2 of 3 dead");
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    assert_eq!(votes.failed(), 2, "{votes}");
    // The live node's request runs on after the decision and removes our key.
    let left = nodes.wait_absent(&[2], &res, Duration::from_secs(3)).await;
    assert!(left.is_empty(), "the live node was not released");
    Ok(())
}
