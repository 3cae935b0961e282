//! Semaphores on real nodes: at most N permits, each a slot held on a quorum; a
//! released or dropped permit frees its slot; a waiter is woken by a release; a
//! client with another number of permits is refused; stray slots are removed.

use std::time::{Duration, Instant};

use fredlock::{Error, MAX_PERMITS, Redlock};

use crate::support::{Nodes, ROOMY, TestResult, resource};

const TTL: Duration = Duration::from_secs(10);

/// The key of slot `i` of semaphore `name` (empty key prefix).
fn slot(i: u32, name: &str) -> String {
    format!("fredlock:permit:{i}:{name}")
}

#[tokio::test]
async fn at_most_n_permits_and_a_released_one_is_granted_again() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let name = resource("two-permits");
    let semaphore = redlock.semaphore(&name, 2)?;
    let first = semaphore.try_acquire(TTL).await?;
    let second = semaphore.try_acquire(TTL).await?;
    assert_ne!(first.key(), second.key(), "two permits on one slot");
    // Permits held at once get tokens in the order they ask.
    let first_token = first.fencing_token().await?;
    let second_token = second.fencing_token().await?;
    assert!(second_token > first_token);
    // A permit's token carries its slot's number (docs/fencing.md), so permits held
    // at once never share one.
    for permit in [&first, &second] {
        let slot = (0..2).find(|&i| permit.key() == slot(i, &name));
        assert_eq!(
            Some(permit.fencing_token().await? % u64::from(MAX_PERMITS)),
            slot.map(u64::from),
            "{}",
            permit.key()
        );
    }
    let full = semaphore
        .try_acquire(TTL)
        .await
        .expect_err("both permits held");
    assert!(
        matches!(&full, Error::Taken { resource, votes } if *resource == name && votes.taken() >= 2),
        "{full:?}"
    );
    // Each permit's slot holds its token on every node.
    nodes
        .assert_held(&[0, 1, 2], first.key(), first.token())
        .await;
    nodes
        .assert_held(&[0, 1, 2], second.key(), second.token())
        .await;

    let freed = first.key().to_string();
    first.release().await?;
    nodes.assert_released(&[0, 1, 2], &freed).await;
    let third = semaphore.try_acquire(TTL).await?;
    assert_eq!(third.key(), freed, "the only free slot");
    assert!(third.fencing_token().await? > second_token);
    third.release().await?;
    second.release().await?;
    Ok(())
}

#[tokio::test]
async fn a_dropped_permit_is_released_in_the_background() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let semaphore = redlock.semaphore(&resource("dropped"), 1)?;
    let permit = semaphore.try_acquire(TTL).await?;
    let key = permit.key().to_string();
    drop(permit);
    nodes.assert_released(&[0, 1, 2], &key).await;
    // Freed long before its 10 s TTL.
    semaphore.try_acquire(TTL).await?.release().await?;
    Ok(())
}

/// A waiter that polls only every 30 s gets the permit soon after a holder releases
/// it: a permit's release is announced on the semaphore's channel, whatever its slot.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_is_woken_by_a_released_permit() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let holder = nodes.redlock(ROOMY).await;
    let waiter = nodes
        .slow_poller(Duration::from_millis(200))
        .build()
        .await?;
    let name = resource("wake-permit");
    let held = holder.semaphore(&name, 1)?.try_acquire(TTL).await?;
    let semaphore = waiter.semaphore(&name, 1)?;
    let waiting = tokio::spawn(async move { semaphore.acquire(TTL).await });
    // The waiter subscribes after its first attempt found the permit taken.
    let channel = format!("fredlock:released:fredlock:semaphore:{name}");
    nodes.wait_subscribers(&channel, 3).await;
    held.release().await?;
    let limit = Duration::from_secs(5);
    let Ok(permit) = tokio::time::timeout(limit, waiting).await else {
        panic!("not woken: the waiter still waits {limit:?} after the release");
    };
    permit??.release().await?;
    Ok(())
}

/// Clients must agree on the number of permits: one asking with another number while
/// a permit is held is refused with a typed error, at once (not retried).
#[tokio::test]
async fn another_number_of_permits_is_a_typed_error() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let name = resource("mismatch");
    let held = redlock.semaphore(&name, 3)?.try_acquire(TTL).await?;
    let other = nodes
        .builder()
        .retry_delay(Duration::from_secs(30))
        .build()
        .await?
        .semaphore(&name, 5)?;
    let start = Instant::now();
    let err = other
        .acquire(TTL)
        .await
        .expect_err("3 permits held, 5 asked");
    match &err {
        Error::PermitsMismatch {
            semaphore,
            permits: 5,
            held: 3,
            ..
        } if *semaphore == name => {}
        other => panic!("{other:?}"),
    }
    assert!(!err.is_retryable());
    // Not retried: a retry would have paused 30 s first.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    // Nothing of the refused client's was set, and the record still says 3.
    for i in 0..3 {
        for s in 3..5 {
            assert_eq!(nodes.get(i, &slot(s, &name)).await, None);
        }
        assert_eq!(nodes.get(i, &record(&name)).await.as_deref(), Some("3"));
    }
    held.release().await?;
    Ok(())
}

/// The key of the record of semaphore `name` (empty key prefix).
fn record(name: &str) -> String {
    format!("fredlock:semaphore:{name}")
}

/// One node with a stale record of another number is one failed vote, not an error
/// for every acquisition: the permit is granted by the other two, and once it is held
/// a second client's attempt fails as one that is retried, not as `PermitsMismatch`.
#[tokio::test]
async fn a_minority_with_another_number_is_a_failed_vote() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let name = resource("stale-record");
    nodes.set(0, &record(&name), "5", 60_000).await;
    let semaphore = redlock.semaphore(&name, 1)?;
    let permit = semaphore.try_acquire(TTL).await?;
    let votes = permit.votes();
    let first = votes.iter().next().map(|nv| nv.vote.clone());
    // Node 0 refused, or had not answered when the other two decided.
    assert!(
        matches!(&first, Some(fredlock::Vote::Error(m)) if m.contains("5 permits"))
            || first == Some(fredlock::Vote::Pending),
        "{votes}"
    );
    assert_eq!(votes.yes(), 2, "{votes}");
    let err = semaphore
        .try_acquire(TTL)
        .await
        .expect_err("the permit is held");
    // Taken, or NoQuorum when the round was decided on the stale node's refusal and
    // one taken vote (docs/design.md, 1.3): either way retried by `acquire`.
    assert!(
        matches!(err, Error::Taken { .. } | Error::NoQuorum { .. }),
        "{err:?}"
    );
    permit.release().await?;
    Ok(())
}

/// A refused attempt leaves no record: a node without permits that set a slot and the
/// record for a client with another number has both removed when the attempt fails,
/// so that node does not refuse the semaphore's own clients for that client's TTL.
#[tokio::test]
async fn a_refused_attempt_leaves_no_record() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let name = resource("no-leftover-record");
    // The semaphore's permit held on nodes 0 and 1 only: node 2 was down and is back
    // empty.
    nodes.cluster.kill(2).await?;
    let held = redlock.semaphore(&name, 3)?.try_acquire(TTL).await?;
    nodes.cluster.restart(2).await?;
    nodes.wait_admin(2, Duration::from_secs(5)).await;
    let other = nodes.redlock(ROOMY).await.semaphore(&name, 5)?;
    let err = other
        .try_acquire(TTL)
        .await
        .expect_err("nodes 0 and 1 hold 3");
    assert!(
        matches!(err, Error::PermitsMismatch { held: 3, .. }),
        "{err:?}"
    );
    // Node 2 granted the refused client a slot and its record "5"; both are removed.
    let left = nodes
        .wait_absent(&[2], &record(&name), Duration::from_secs(3))
        .await;
    assert!(left.is_empty(), "node 2 kept the refused client's record");
    for s in 0..5 {
        assert_eq!(nodes.get(2, &slot(s, &name)).await, None, "slot {s}");
    }
    held.release().await?;
    Ok(())
}

#[tokio::test]
async fn bad_semaphore_input_is_a_typed_error() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let argument = |r: Result<fredlock::Semaphore, Error>| match r {
        Err(Error::InvalidArgument { argument, .. }) => argument,
        other => panic!("{other:?}"),
    };
    assert_eq!(argument(redlock.semaphore("", 3)), "name");
    assert_eq!(argument(redlock.semaphore("s", 0)), "permits");
    assert_eq!(argument(redlock.semaphore("s", MAX_PERMITS + 1)), "permits");
    assert!(redlock.semaphore("s", MAX_PERMITS).is_ok());
    // A TTL above the restart quarantine's period (60 s by default).
    let guarded = Redlock::builder(nodes.urls()).build().await?;
    let err = guarded
        .semaphore(&resource("long"), 2)?
        .try_acquire(Duration::from_secs(61))
        .await
        .expect_err("TTL above the quarantine period");
    assert!(
        matches!(&err, Error::InvalidArgument { argument: "ttl", reason } if reason.contains("restart_quarantine")),
        "{err:?}"
    );
    let err = guarded
        .read_lock("", Duration::from_secs(1))
        .await
        .expect_err("empty resource");
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                argument: "resource",
                ..
            }
        ),
        "{err:?}"
    );
    let err = guarded
        .try_read_lock(&resource("long-read"), Duration::from_secs(61))
        .await
        .expect_err("TTL above the quarantine period");
    assert!(
        matches!(
            err,
            Error::InvalidArgument {
                argument: "ttl",
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing was written by the refused calls.
    for i in 0..3 {
        assert_eq!(crate::support::count_keys(&nodes, i, "*long*").await, 0);
    }
    Ok(())
}

/// A node that already holds the first slot of the order grants the next one, while
/// the others grant the first: the permit is the quorum's slot, and the stray slot on
/// that node is freed in the background rather than held until its TTL.
#[tokio::test]
async fn a_slot_granted_by_a_minority_is_removed() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let name = resource("stray");
    // Node 0 alone has slot 0 taken (left over from a client that lost it elsewhere).
    nodes.set(0, &slot(0, &name), "someone-else", 60_000).await;
    let semaphore = redlock.semaphore(&name, 2)?;
    let mut strays = 0;
    // Each attempt starts at a random slot; from slot 0, node 0 grants slot 1 while
    // nodes 1 and 2 grant slot 0. 16 attempts miss that case with odds of 2^-16.
    for _ in 0..16 {
        let permit = semaphore.try_acquire(TTL).await?;
        if permit.key() == slot(0, &name) {
            strays += 1;
            // Node 0 set slot 1, not the permit's: it does not vote yes for it.
            let node0 = permit.votes().iter().next().map(|nv| nv.vote.clone());
            assert_ne!(node0, Some(fredlock::Vote::Yes), "{}", permit.votes());
            let other = slot(1, &name);
            let start = Instant::now();
            while nodes.get(0, &other).await.as_deref() == Some(permit.token()) {
                assert!(
                    start.elapsed() < Duration::from_secs(3),
                    "node 0 still holds the stray slot"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        permit.release().await?;
    }
    assert!(strays > 0, "the order never started at slot 0");
    Ok(())
}

/// A kept-alive permit outlives several TTLs, and an extended one keeps its slot.
#[tokio::test]
async fn permits_are_kept_alive_and_extended() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let semaphore = redlock.semaphore(&resource("alive"), 1)?;
    let ttl = Duration::from_millis(400);
    let mut permit = semaphore.try_acquire(ttl).await?;
    permit.keep_alive();
    let lease = permit.lease();
    tokio::select! {
        reason = lease.lost() => panic!("lost: {reason}"),
        () = tokio::time::sleep(4 * ttl) => {}
    }
    assert!(permit.is_valid());
    let err = semaphore
        .try_acquire(ttl)
        .await
        .expect_err("the permit is held");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    permit.extend(Duration::from_secs(5)).await?;
    assert!(permit.remaining() > Duration::from_secs(4));
    assert_eq!(permit.ttl(), Duration::from_secs(5));
    nodes
        .assert_pttl_above(&[0, 1, 2], permit.key(), 4_000)
        .await;
    permit.release().await?;
    Ok(())
}
