//! Locks over several resources: all or nothing on each node.

use std::time::Duration;

use fredlock::Error;

use crate::support::{Nodes, TestResult, resource};

const TTL: Duration = Duration::from_secs(30);
const ALL: [usize; 5] = [0, 1, 2, 3, 4];

#[tokio::test(flavor = "multi_thread")]
async fn every_key_is_set_extended_and_released_together() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let (a, b, c) = (
        resource("multi-a"),
        resource("multi-b"),
        resource("multi-c"),
    );
    let mut lock = redlock.lock_many(&[&a, &b, &c], TTL).await?;
    assert_eq!(lock.resources().collect::<Vec<_>>(), vec![&*a, &*b, &*c]);
    assert_eq!(lock.resource(), format!("{a}, {b}, {c}"));
    for key in [&a, &b, &c] {
        nodes.assert_held(&ALL, key, lock.token()).await;
    }
    lock.extend(2 * TTL).await?;
    for key in [&a, &b, &c] {
        nodes.assert_pttl_above(&ALL, key, 55_000).await;
    }
    lock.release().await?;
    for key in [&a, &b, &c] {
        nodes.assert_released(&ALL, key).await;
    }
    Ok(())
}

/// A node where one of the resources is held elsewhere sets none of them; with the
/// other four the lock is still granted.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_holding_one_resource_elsewhere_sets_nothing() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let (a, b) = (resource("partial-a"), resource("partial-b"));
    nodes.set(0, &b, "someone-else", 30_000).await;
    let lock = redlock.lock_many(&[&a, &b], TTL).await?;
    assert_eq!(
        nodes.get(0, &a).await,
        None,
        "node 0 set `a` although `b` is taken"
    );
    assert_eq!(nodes.get(0, &b).await.as_deref(), Some("someone-else"));
    for key in [&a, &b] {
        nodes.assert_held(&[1, 2, 3, 4], key, lock.token()).await;
    }
    lock.release().await?;
    assert_eq!(nodes.get(0, &b).await.as_deref(), Some("someone-else"));
    Ok(())
}

/// One resource held elsewhere on a majority: the lock fails as taken, and the nodes
/// that had set both keys have them removed; the other owner's keys are untouched.
#[tokio::test(flavor = "multi_thread")]
async fn partial_holds_are_cleaned_up_on_failure() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let (a, b) = (resource("cleanup-a"), resource("cleanup-b"));
    for i in 0..3 {
        nodes.set(i, &b, "someone-else", 30_000).await;
    }
    let err = redlock
        .try_lock_many(&[&a, &b], TTL)
        .await
        .expect_err("b taken on 3 of 5");
    assert!(matches!(err, Error::Taken { .. }), "{err}");
    nodes.assert_released(&ALL, &a).await;
    nodes.assert_released(&[3, 4], &b).await;
    for i in 0..3 {
        assert_eq!(nodes.get(i, &b).await.as_deref(), Some("someone-else"));
    }
    Ok(())
}

/// If one of the keys was taken over, extend changes nothing on that node and fails
/// once that rules out a quorum.
#[tokio::test(flavor = "multi_thread")]
async fn extend_renews_nothing_on_a_node_where_one_key_is_no_longer_ours() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let (a, b) = (resource("ext-a"), resource("ext-b"));
    let mut lock = redlock.lock_many(&[&a, &b], TTL).await?;
    for key in [&a, &b] {
        nodes.assert_held(&ALL, key, lock.token()).await;
    }
    for i in 0..3 {
        nodes.set(i, &b, "new-owner", 30_000).await;
    }
    let err = lock
        .extend(2 * TTL)
        .await
        .expect_err("b taken over on 3 of 5");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    for i in 0..3 {
        assert!(
            nodes.pttl(i, &a).await <= 30_000,
            "node {i}: `a` was extended"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_resource_lists_name_the_argument() -> TestResult {
    let nodes = Nodes::start(1).await?;
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let a = resource("bad-list");
    for list in [vec![], vec![a.as_str(), a.as_str()], vec![a.as_str(), ""]] {
        match redlock.lock_many(&list, TTL).await {
            Err(Error::InvalidArgument { argument, .. }) => assert_eq!(argument, "resources"),
            other => panic!("{list:?}: expected InvalidArgument, got {other:?}"),
        }
    }
    assert_eq!(nodes.get(0, &a).await, None);
    Ok(())
}
