//! The restart quarantine: a node that lost or changed its incarnation (restarted
//! empty, restarted from an old snapshot, flushed) sits out acquisitions for one
//! period that every client shares, from the moment any client notices.

use std::time::{Duration, Instant};

use fredlock::{Builder, Error, Lock, Quarantine, Redlock, Vote};

use crate::support::{MARKER, Nodes, TestResult, is_denied, lift_quarantine, resource};

/// A client with fredlock's defaults (the restart quarantine on, its default period),
/// as a user would build it; only the node timeout is generous: a loopback round trip
/// takes a millisecond or two, and 500 ms holds when both cores are busy. No assertion
/// here is about time: a node that timed out would only hide its quarantined vote.
fn defaults(nodes: &Nodes) -> Builder {
    Redlock::builder(nodes.urls()).node_timeout(Duration::from_millis(500))
}

fn quarantined_votes(e: &Error) -> usize {
    e.votes().map_or(0, |votes| {
        votes
            .iter()
            .filter(|nv| matches!(&nv.vote, Vote::Error(m) if m.contains("quarantined")))
            .count()
    })
}

/// Two clients with the defaults over fresh nodes, whose quarantine the first lifts.
async fn two_clients(nodes: &Nodes) -> Result<(Redlock, Redlock), Error> {
    let (a, b) = (
        defaults(nodes).build().await?,
        defaults(nodes).build().await?,
    );
    lift_quarantine(&a).await;
    Ok((a, b))
}

/// Tries `contender.try_lock(res, 1 s)` every 100 ms for as long as `held` is valid
/// (at most `limit`): the contender must never win while `held` is valid, and must see
/// quarantined nodes refuse it.
async fn assert_kept_out(contender: &Redlock, res: &str, held: &Lock, limit: Duration) {
    let refused = refusals_while_valid(contender, res, Duration::from_secs(1), held, limit).await;
    assert!(refused > 0, "the nodes were never seen quarantined");
}

/// Tries `contender.try_lock(res, ttl)` every 100 ms for as long as `held` is valid
/// (at most `limit`). Panics if the contender ever wins while `held` is valid; returns
/// how many attempts were refused by quarantined nodes.
async fn refusals_while_valid(
    contender: &Redlock,
    res: &str,
    ttl: Duration,
    held: &Lock,
    limit: Duration,
) -> usize {
    assert!(
        held.is_valid(),
        "the first lock ran out before the contender tried: its TTL did not cover the \
         restarts"
    );
    let start = Instant::now();
    let mut refused_by_quarantine = 0;
    while held.is_valid() && start.elapsed() < limit {
        match contender.try_lock(res, ttl).await {
            Ok(second) => {
                let overlap = held.is_valid();
                let _ = second.release().await;
                assert!(
                    !overlap,
                    "a second holder while the first lock is valid ({:?} left)",
                    held.remaining()
                );
            }
            Err(e) if e.is_retryable() => {
                if quarantined_votes(&e) > 0 {
                    refused_by_quarantine += 1;
                }
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    refused_by_quarantine
}

/// Kills nodes `which` and starts them again (empty unless a snapshot was saved),
/// waiting until each answers.
async fn restart_nodes(nodes: &Nodes, which: &[usize]) -> TestResult {
    for &i in which {
        nodes.cluster.restart(i).await?;
        // Bounded, not hung: `restart` already waited for the node's PING; the admin
        // connection reconnects every 50 ms. 10 s holds when both cores are busy.
        nodes.wait_admin(i, Duration::from_secs(10)).await;
    }
    Ok(())
}

/// How long a lock that must outlive the restarts of `which` is held for, measured:
/// restarts those nodes once (before any lock exists, so nothing is lost) and takes
/// three times as long as they took, plus 2 s, and at least 4 s. Three container
/// restarts take under a second on an idle machine and several seconds when both cores
/// are busy; a fixed 4 s once ran out before the test looked.
async fn ttl_covering_restarts(
    nodes: &Nodes,
    which: &[usize],
) -> Result<Duration, Box<dyn std::error::Error + Send + Sync>> {
    let start = Instant::now();
    restart_nodes(nodes, which).await?;
    let took = start.elapsed();
    let ttl = (took * 3 + Duration::from_secs(2)).max(Duration::from_secs(4));
    eprintln!("restarts of {which:?} took {took:?}: TTL {ttl:?}");
    Ok(ttl)
}

/// The TTL of A's lock in the tests with the default quarantine period (60 s): three
/// container restarts, even on a machine whose cores are both busy, take far less, so
/// the lock is still valid when B starts trying (checked), and B tries for a few
/// seconds, not for the whole TTL.
const LONG_TTL: Duration = Duration::from_secs(30);

/// Client A holds a 30 s lock; 3 of 5 nodes restart empty. Client B, which has only
/// ever asked for 1 s locks, must not win the resource while A's lock is valid: the
/// quarantine period is the deployment's, not each client's history.
#[tokio::test(flavor = "multi_thread")]
async fn a_short_ttl_client_cannot_readmit_restarted_nodes() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let (a, b) = two_clients(&nodes).await?;
    let res = resource("shared-period");
    let held = a.lock(&res, LONG_TTL).await?;
    restart_nodes(&nodes, &[0, 1, 2]).await?;
    assert_kept_out(&b, &res, &held, Duration::from_secs(5)).await;
    Ok(())
}

/// `lock(1 s)` then `extend(30 s)`: after 3 nodes restart, the same client's next
/// attempt must not take the resource again while the extended lock is valid.
#[tokio::test(flavor = "multi_thread")]
async fn an_extended_lock_is_covered_by_the_quarantine() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let a = defaults(&nodes).build().await?;
    lift_quarantine(&a).await;
    let res = resource("extended-period");
    let mut held = a.lock(&res, Duration::from_secs(1)).await?;
    held.extend(LONG_TTL).await?;
    restart_nodes(&nodes, &[0, 1, 2]).await?;
    assert_kept_out(&a, &res, &held, Duration::from_secs(4)).await;
    Ok(())
}

/// A TTL above the quarantine period is refused, naming the option; by default the
/// period is [`fredlock::DEFAULT_QUARANTINE_PERIOD`], the same for every client.
#[tokio::test(flavor = "multi_thread")]
async fn a_ttl_above_the_period_is_refused_naming_the_option() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let a = defaults(&nodes).build().await?;
    lift_quarantine(&a).await;
    let res = resource("above-period");
    let above = fredlock::DEFAULT_QUARANTINE_PERIOD + Duration::from_secs(1);
    match a.lock(&res, above).await {
        Err(Error::InvalidArgument {
            argument: "ttl",
            reason,
        }) => assert!(reason.contains("restart_quarantine"), "{reason}"),
        other => panic!("a TTL above the quarantine period: {other:?}"),
    }
    let mut held = a.lock(&res, Duration::from_secs(1)).await?;
    match held.extend(above).await {
        Err(Error::InvalidArgument {
            argument: "ttl",
            reason,
        }) => assert!(reason.contains("restart_quarantine"), "{reason}"),
        other => panic!("an extension above the quarantine period: {other:?}"),
    }
    held.release().await?;
    Ok(())
}

/// `FLUSHALL` on 3 long-running nodes while A holds the lock: they lost A's keys, so
/// they must be kept out, however long they have been up.
#[tokio::test(flavor = "multi_thread")]
async fn flushed_nodes_are_quarantined() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let (a, b) = two_clients(&nodes).await?;
    let res = resource("flushed");
    let held = a.lock(&res, LONG_TTL).await?;
    for i in 0..3 {
        nodes.cmd(i, "FLUSHALL", vec![]).await?;
    }
    assert_kept_out(&b, &res, &held, Duration::from_secs(4)).await;
    Ok(())
}

/// A node restarted from an RDB snapshot taken before A locked comes back with
/// fredlock's marker but without A's key: it must be kept out too.
#[tokio::test(flavor = "multi_thread")]
async fn nodes_restarted_from_an_old_snapshot_are_quarantined() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let (a, b) = two_clients(&nodes).await?;
    let res = resource("snapshot");
    for i in 0..3 {
        assert!(nodes.get(i, MARKER).await.is_some(), "node {i} not marked");
        nodes.cmd(i, "SAVE", vec![]).await?;
    }
    let held = a.lock(&res, LONG_TTL).await?;
    restart_nodes(&nodes, &[0, 1, 2]).await?;
    for i in 0..3 {
        // The snapshot was loaded: the marker is back, the lock key is not.
        assert!(
            nodes.get(i, MARKER).await.is_some(),
            "node {i}: no snapshot"
        );
        assert!(nodes.get(i, &res).await.is_none(), "node {i} kept the lock");
    }
    assert_kept_out(&b, &res, &held, Duration::from_secs(4)).await;
    Ok(())
}

/// On a fresh deployment every node is quarantined from the first acquisition for the
/// period; `lift_restart_quarantine` is the operator's explicit way through.
#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_deployment_waits_unless_the_quarantine_is_lifted() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let a = defaults(&nodes).build().await?;
    let res = resource("fresh");
    match a.try_lock(&res, Duration::from_secs(1)).await {
        Err(e @ Error::NoQuorum { .. }) => {
            assert!(quarantined_votes(&e) >= 3, "{e}");
        }
        other => panic!("a fresh deployment locked at once: {other:?}"),
    }
    for i in 0..5 {
        assert!(nodes.get(i, &res).await.is_none(), "node {i} kept a key");
    }
    lift_quarantine(&a).await;
    let lock = a.try_lock(&res, Duration::from_secs(1)).await?;
    lock.release().await?;
    Ok(())
}

/// A least-privilege ACL that denies `INFO` (which the quarantine needs to read the
/// node's `run_id`) is a typed error at `build()` naming the command, not a lock that
/// can never be taken.
#[tokio::test(flavor = "multi_thread")]
async fn a_denied_command_is_a_build_error_naming_it() -> TestResult {
    let nodes = Nodes::start(3).await?;
    for i in 0..3 {
        let acl: Vec<fred::prelude::Value> = ["SETUSER", "locker", "on", ">pw", "~*", "&*"]
            .into_iter()
            .chain(["+@all", "-info"])
            .map(Into::into)
            .collect();
        nodes.cmd(i, "ACL", acl).await?;
    }
    let urls: Vec<String> = (0..3)
        .map(|i| format!("redis://locker:pw@127.0.0.1:{}", nodes.cluster.port(i)))
        .collect();
    let built = Redlock::builder(urls.clone()).build().await;
    let err = built.expect_err("INFO is denied");
    assert!(is_denied(&err, "info"), "{err}");
    assert!(!err.to_string().contains("pw@"), "{err}");
    // EVALSHA, which every lock round uses on a server without functions, is checked too.
    for i in 0..3 {
        let acl: Vec<fred::prelude::Value> = ["SETUSER", "noevalsha", "on", ">pw", "~*", "&*"]
            .into_iter()
            .chain(["+@all", "-evalsha"])
            .map(Into::into)
            .collect();
        nodes.cmd(i, "ACL", acl).await?;
    }
    let no_evalsha: Vec<String> = (0..3)
        .map(|i| format!("redis://noevalsha:pw@127.0.0.1:{}", nodes.cluster.port(i)))
        .collect();
    let err = Redlock::builder(no_evalsha)
        .build()
        .await
        .expect_err("EVALSHA is denied");
    assert!(is_denied(&err, "evalsha"), "{err}");
    // Without the quarantine, INFO is not needed.
    let off = Redlock::builder(urls)
        .restart_quarantine(Quarantine::Off)
        .build()
        .await?;
    off.try_lock(&resource("acl"), Duration::from_secs(1))
        .await?
        .release()
        .await?;
    Ok(())
}

/// With the quarantine on, the double grant of the restart hazard (scenarios.rs shows
/// it with the quarantine off) does not happen: the nodes that came back empty sit out
/// for the period.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_stops_the_second_majority_after_a_restart() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // A's lock, whose TTL is the period, must outlive the restarts of 3, 4 and 0.
    let period = ttl_covering_restarts(&nodes, &[3, 4, 0]).await?;
    let quarantined =
        |nodes: &Nodes| defaults(nodes).restart_quarantine(Quarantine::Period(period));
    let (a, b) = (
        quarantined(&nodes).build().await?,
        quarantined(&nodes).build().await?,
    );
    lift_quarantine(&a).await;
    let res = resource("quarantine");

    // The hazard's setup: A holds 0, 1, 2 while 3 and 4 are down; they come back
    // empty, and so does node 0.
    nodes.cluster.kill(3).await?;
    nodes.cluster.kill(4).await?;
    let held_by_a = a.lock(&res, period).await?;
    restart_nodes(&nodes, &[3, 4, 0]).await?;
    // Bounded, not hung: the loop ends when A's lock runs out, within the period.
    let refused = refusals_while_valid(&b, &res, period, &held_by_a, period * 2).await;
    assert!(
        refused > 0,
        "the restarted nodes were never seen quarantined"
    );
    Ok(())
}

#[tokio::test]
async fn quarantine_period_zero_or_above_the_largest_ttl_is_rejected() -> TestResult {
    for period in [Duration::ZERO, fredlock::MAX_TTL + Duration::from_millis(1)] {
        let built = Redlock::builder(["redis://127.0.0.1:7001"])
            .restart_quarantine(Quarantine::Period(period))
            .build()
            .await;
        assert!(
            matches!(
                built,
                Err(Error::Config {
                    field: "restart_quarantine",
                    ..
                })
            ),
            "{period:?}: {built:?}"
        );
    }
    Ok(())
}

/// The restart hazard for a semaphore's permit and for a reader: A holds the only
/// permit (or a read lock) on nodes 0-2 while 3 and 4 are down; they come back empty,
/// and so does node 0. B asks for a permit (or the write lock) until A's runs out:
/// never granted while A's is valid, and refused by quarantined nodes.
#[tokio::test(flavor = "multi_thread")]
async fn quarantine_stops_a_second_permit_and_a_writer_after_a_restart() -> TestResult {
    for reader in [false, true] {
        let nodes = Nodes::start(5).await?;
        // The first permit or reader, whose TTL is the period, must still be valid
        // after three restarts (with a fixed 4 s, once it was not, and nothing was
        // tried).
        let period = ttl_covering_restarts(&nodes, &[3, 4, 0]).await?;
        let quarantined =
            |nodes: &Nodes| defaults(nodes).restart_quarantine(Quarantine::Period(period));
        let (a, b) = (
            quarantined(&nodes).build().await?,
            quarantined(&nodes).build().await?,
        );
        lift_quarantine(&a).await;
        let name = resource("quarantine-shared");
        nodes.cluster.kill(3).await?;
        nodes.cluster.kill(4).await?;
        // Kept (not dropped, which would release them) until the end of the round.
        let (mut read, mut permit) = (None, None);
        let held = if reader {
            read.insert(a.read_lock(&name, period).await?).lease()
        } else {
            let semaphore = a.semaphore(&name, 1)?;
            permit.insert(semaphore.acquire(period).await?).lease()
        };
        restart_nodes(&nodes, &[3, 4, 0]).await?;
        let start = Instant::now();
        let mut refused = 0;
        assert!(
            held.is_valid(),
            "reader {reader}: the first ran out during the restarts"
        );
        // Bounded, not hung: the loop ends when the first runs out, within the period.
        while held.is_valid() && start.elapsed() < period * 2 {
            let second = if reader {
                b.try_lock(&name, period).await.map(|l| l.lease())
            } else {
                let permit = b.semaphore(&name, 1)?.try_acquire(period).await;
                permit.map(|p| p.lease())
            };
            match second {
                Ok(second) => assert!(
                    !held.is_valid(),
                    "reader {reader}: a second holder ({}) while the first is valid ({:?} left)",
                    second.token(),
                    held.remaining()
                ),
                Err(e) if e.is_retryable() => refused += usize::from(quarantined_votes(&e) > 0),
                Err(e) => panic!("unexpected error: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            refused > 0,
            "reader {reader}: never refused by a quarantined node"
        );
        drop((read, permit));
    }
    Ok(())
}
