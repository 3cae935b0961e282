//! Node faults: killed, frozen, restarted and misbehaving nodes are failed votes,
//! bounded by the node timeout, and leave nothing of ours behind.

use std::time::{Duration, Instant};

use fredlock::{Error, Vote};

use crate::support::{Nodes, TestResult, resource};

const TTL: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread")]
async fn kill_2_of_5_still_acquires() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    nodes.cluster.kill(0).await?;
    nodes.cluster.kill(1).await?;
    let res = resource("kill-2");
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[2, 3, 4], &res, lock.token()).await;
    assert!(lock.remaining() > TTL - Duration::from_secs(1));
    lock.release().await?;
    nodes.assert_released(&[2, 3, 4], &res).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_3_of_5_is_no_quorum_and_leaves_no_key() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let timeout = Duration::from_millis(100);
    let redlock = nodes.redlock(timeout).await;
    for i in 0..3 {
        nodes.cluster.kill(i).await?;
    }
    let res = resource("kill-3");
    let (acquired, removed) = (
        nodes.calls_on(&[3, 4], "fcall").await,
        nodes.calls_on(&[3, 4], "eval").await,
    );
    let start = Instant::now();
    let err = redlock.try_lock(&res, TTL).await.expect_err("3 of 5 dead");
    let took = start.elapsed();
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    assert_eq!(votes.failed(), 3, "{votes}");
    for nv in votes.iter().take(3) {
        assert!(matches!(nv.vote, Vote::Error(_) | Vote::Timeout), "{votes}");
    }
    // Bounded, not hung: a dead node refuses at once or costs at most one 100 ms
    // timeout, all nodes in parallel; three timeouts leave room for a loaded machine.
    assert!(took < timeout * 3, "took {took:?}");
    // The survivors ran the acquisition and then the removal of its token (the
    // counters show both ran: the emptiness below is not a SET that never happened).
    // The TTL is 30 s, so only our removal can make the keys go away within the wait.
    // Bounded, not hung: each node's requests follow within a round trip of the decision
    // (or of the unpause).
    let limit = Duration::from_secs(3);
    nodes
        .wait_calls_above(&[3, 4], "fcall", &acquired, limit)
        .await;
    nodes
        .wait_calls_above(&[3, 4], "eval", &removed, limit)
        .await;
    nodes.assert_released(&[3, 4], &res).await;

    // lock() with retries also ends, with the same typed error.
    let err = redlock.lock(&res, TTL).await.expect_err("still dead");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    nodes.assert_released(&[3, 4], &res).await;
    Ok(())
}

/// One frozen node does not slow acquisition or release: with a 1 s node timeout, both
/// return on the other four nodes' answers, long before the frozen node's timeout.
#[tokio::test(flavor = "multi_thread")]
async fn pause_1_of_5_does_not_wait_for_the_frozen_node() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let timeout = Duration::from_secs(1);
    let redlock = nodes.redlock(timeout).await;
    nodes.cluster.pause(2).await?;
    let res = resource("pause-1");
    for _ in 0..5 {
        let start = Instant::now();
        let lock = redlock.try_lock(&res, TTL).await?;
        let took = start.elapsed();
        // Bounded, not hung: four loopback round trips take milliseconds; half the
        // node timeout is what a round waiting for the frozen node could not beat.
        assert!(
            took < timeout / 2,
            "acquire waited for the frozen node: {took:?}"
        );
        let start = Instant::now();
        lock.release().await?;
        let took = start.elapsed();
        assert!(
            took < timeout / 2,
            "release waited for the frozen node: {took:?}"
        );
    }
    nodes.cluster.unpause(2).await?;
    Ok(())
}

/// Three frozen nodes: the attempt fails after about one node timeout, and the SETs the
/// frozen nodes run when they wake are undone by the removals queued behind them.
#[tokio::test(flavor = "multi_thread")]
async fn pause_3_of_5_fails_within_one_timeout_and_cleans_up_after_unpause() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // Far above a loopback round trip even when both cores are busy, so that the two
    // live nodes answer in time and the round's end after the timeout is scheduled
    // well within a second timeout.
    let timeout = Duration::from_millis(500);
    let redlock = nodes.redlock(timeout).await;
    // Counted before the pause: a frozen node does not answer INFO either.
    let (acquired, removed) = (
        nodes.calls_on(&[0, 1, 2, 3, 4], "fcall").await,
        nodes.calls_on(&[0, 1, 2, 3, 4], "eval").await,
    );
    for i in 0..3 {
        nodes.cluster.pause(i).await?;
    }
    let res = resource("pause-3");
    let start = Instant::now();
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("3 of 5 frozen");
    let took = start.elapsed();
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    assert_eq!(votes.yes(), 2, "{votes}");
    assert!(
        votes.iter().take(3).all(|nv| nv.vote == Vote::Timeout),
        "{votes}"
    );
    assert!(took >= timeout, "cannot fail before the timeouts: {took:?}");
    // Bounded, not hung: the three frozen nodes time out together, once, not one
    // after another (three timeouts).
    assert!(took < timeout * 2, "took {took:?}");
    // Nodes 3 and 4 said yes (the votes above), and their removal ran.
    // Bounded, not hung: each node's requests follow within a round trip of the decision
    // (or of the unpause).
    let limit = Duration::from_secs(3);
    nodes
        .wait_calls_above(&[3, 4], "eval", &removed[3..], limit)
        .await;
    assert!(nodes.holding(3..5, &res).await.is_empty());

    for i in 0..3 {
        nodes.cluster.unpause(i).await?;
    }
    // The frozen nodes run the queued acquisition when they wake (its SET), then the
    // removal queued behind it. The TTL is 30 s, so only that removal can make the
    // keys go away now.
    nodes
        .wait_calls_above(&[0, 1, 2], "fcall", &acquired[..3], limit)
        .await;
    nodes
        .wait_calls_above(&[0, 1, 2], "eval", &removed[..3], limit)
        .await;
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// A lock() future dropped mid-round (the caller gave up) removes its token too.
#[tokio::test(flavor = "multi_thread")]
async fn cancelled_lock_call_leaves_no_key() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_secs(2)).await;
    // Counted before the pause: a frozen node does not answer INFO either.
    let (acquired, removed) = (
        nodes.calls_on(&[0, 1, 2, 3, 4], "fcall").await,
        nodes.calls_on(&[0, 1, 2, 3, 4], "eval").await,
    );
    for i in 0..3 {
        nodes.cluster.pause(i).await?;
    }
    let res = resource("cancelled");
    let gave_up =
        tokio::time::timeout(Duration::from_millis(100), redlock.try_lock(&res, TTL)).await;
    assert!(
        gave_up.is_err(),
        "the round cannot be decided within 100 ms"
    );
    // The two live nodes ran the acquisition (they hold our token until the removal)
    // and then the removal of the dropped call.
    // Bounded, not hung: each node's requests follow within a round trip of the decision
    // (or of the unpause).
    let limit = Duration::from_secs(3);
    let (live, frozen) = ([3, 4], [0, 1, 2]);
    nodes
        .wait_calls_above(&live, "fcall", &acquired[3..], limit)
        .await;
    nodes
        .wait_calls_above(&live, "eval", &removed[3..], limit)
        .await;
    nodes.assert_released(&live, &res).await;
    for i in frozen {
        nodes.cluster.unpause(i).await?;
    }
    // The frozen nodes run the acquisition queued while they slept, then the removal.
    nodes
        .wait_calls_above(&frozen, "fcall", &acquired[..3], limit)
        .await;
    nodes
        .wait_calls_above(&frozen, "eval", &removed[..3], limit)
        .await;
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// A killed node that comes back (empty) is used again with no action by the caller,
/// and a function library and scripts flushed from the nodes are reloaded: an
/// acquisition, an extension and a release that meet a node without the library fall
/// back to the script's text in the same call.
#[tokio::test(flavor = "multi_thread")]
async fn restarted_node_is_used_again_and_scripts_reload() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // Every node must answer in time below (a fallback is two round trips):
    // a generous timeout keeps a loaded machine from turning one into a failed vote.
    let redlock = nodes.redlock(Duration::from_millis(500)).await;
    let res = resource("restart");

    nodes.cluster.kill(0).await?;
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[1, 2, 3, 4], &res, lock.token()).await;
    lock.release().await?;

    nodes.cluster.restart(0).await?;
    nodes.wait_admin(0, Duration::from_secs(5)).await;
    // The client reconnects in the background; poll until node 0 holds our token.
    let start = Instant::now();
    loop {
        let lock = redlock.try_lock(&res, TTL).await?;
        let on_node_0 = nodes.get(0, &res).await.as_deref() == Some(lock.token());
        lock.release().await?;
        if on_node_0 {
            break;
        }
        // Bounded, not hung: fred reconnects every 100 ms (the reconnect delay).
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "node 0 never used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every node forgets the library and the script. The acquisition meets "Function
    // not found" and is sent again by the script's text in the same call: a node runs
    // nothing else of ours while a call is in flight, so a release made after it still
    // runs after it. Node 0's restart set off background loads (on the new connection,
    // and after its miss above); one that lands after the flush, as it can when both
    // cores are busy, puts the library back: the node's `FUNCTION LOAD` count shows
    // it, and the flush is made again (bounded: those loads are few).
    let all = [0, 1, 2, 3, 4];
    let mut flushes = 0;
    let mut lock = loop {
        flushes += 1;
        let loads = nodes.calls_on(&all, "function|load").await;
        for i in 0..5 {
            nodes.forget_scripts(i).await?;
        }
        let evals = nodes.calls_on(&all, "eval").await;
        let lock = redlock
            .try_lock(&res, TTL)
            .await
            .expect("acquired through the script's text");
        nodes.assert_held(&all, &res, lock.token()).await;
        let (evals_now, loads_now) = (
            nodes.calls_on(&all, "eval").await,
            nodes.calls_on(&all, "function|load").await,
        );
        let mut reloaded = false;
        for i in all {
            if evals_now[i] > evals[i] {
                continue;
            }
            // No EVAL: only a load that landed after the flush may explain it.
            assert!(
                loads_now[i] > loads[i] && flushes < 5,
                "node {i}: no EVAL after the library was flushed ({} -> {}), library loads \
                 {} -> {}",
                evals[i],
                evals_now[i],
                loads[i],
                loads_now[i]
            );
            reloaded = true;
        }
        if !reloaded {
            break lock;
        }
        lock.release().await?;
    };
    // Extend and release fall back to the script's text at once.
    for i in 0..5 {
        nodes.forget_scripts(i).await?;
    }
    lock.extend(2 * TTL).await?;
    nodes
        .assert_pttl_above(&[0, 1, 2, 3, 4], &res, 55_000)
        .await;
    for i in 0..5 {
        nodes.forget_scripts(i).await?;
    }
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// A release that finds neither the library nor the script on nodes that answer after
/// the quorum decided still sends them the script's text: the key goes from every
/// node, not only the fast ones.
#[tokio::test(flavor = "multi_thread")]
async fn release_after_a_script_flush_reaches_the_slow_nodes_too() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    // Every node must answer in time: the slow ones take two 120 ms round trips.
    let redlock = nodes.redlock(Duration::from_millis(600)).await;
    let res = resource("flushed-release");
    let lock = redlock.try_lock(&res, Duration::from_secs(30)).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    for i in 0..5 {
        nodes.forget_scripts(i).await?;
    }
    // Nodes 3 and 4 answer "Function not found" only after the three fast nodes decided the round.
    nodes.cluster.set_latency(3, Duration::from_millis(60));
    nodes.cluster.set_latency(4, Duration::from_millis(60));
    lock.release().await?;
    // The TTL is 30 s: only the slow nodes' fallback can remove the key there.
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}

/// Nodes answering NOAUTH, READONLY and OOM are failed votes that carry the node's
/// message; with a healthy quorum the lock is still acquired. WRONGTYPE at release is a
/// failed vote too. Nothing is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn node_errors_are_failed_votes_with_the_nodes_message() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // Node 2: a replica (of nothing reachable) refuses writes with READONLY.
    nodes
        .cmd(2, "REPLICAOF", vec!["127.0.0.1".into(), "1".into()])
        .await?;
    // Node 3: no memory left for new keys.
    nodes
        .config_set(3, "maxmemory-policy", "noeviction")
        .await?;
    nodes.config_set(3, "maxmemory", "1").await?;
    // Node 4: requires a password that fredlock's connection does not send.
    nodes.config_set(4, "requirepass", "sesame").await?;
    // Every node must answer in time: a timed-out vote would hide the node's message
    // or cost the quorum. A loopback round trip takes a millisecond or two; 1 s holds
    // when both cores are busy (200 ms once did not).
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_secs(1))
        .build()
        .await?;

    let res = resource("node-errors");
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("only 2 nodes can vote yes");
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    let message = |i: usize| match &votes.iter().nth(i).expect("vote").vote {
        Vote::Error(m) => m.clone(),
        other => panic!("node {i}: expected an error vote, got {other:?} in {votes}"),
    };
    assert!(message(2).contains("READONLY"), "{votes}");
    assert!(message(3).contains("OOM"), "{votes}");
    assert!(message(4).contains("NOAUTH"), "{votes}");
    nodes.assert_released(&[0, 1], &res).await;

    // Heal node 3 and 4: three healthy nodes now give a quorum despite node 2's error.
    nodes.config_set(3, "maxmemory", "0").await?;
    nodes.config_set(4, "requirepass", "").await?;
    // A new client, so that node 4 is connected again (the old one reconnects on its
    // own schedule).
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_secs(1))
        .build()
        .await?;
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 3, 4], &res, lock.token()).await;

    // WRONGTYPE: node 1's key is replaced by a list; release still reaches a quorum.
    nodes.make_list(1, &res).await?;
    lock.release().await?;
    nodes.assert_released(&[0, 3, 4], &res).await;
    nodes.cmd(1, "DEL", vec![res.as_str().into()]).await?;

    let lock = redlock.try_lock(&res, TTL).await?;
    // The lock returned at its quorum: let every SET land before the key becomes a
    // list, or a late one makes the list's LPUSH fail.
    nodes.assert_held(&[0, 1, 3, 4], &res, lock.token()).await;
    nodes.make_list(0, &res).await?;
    nodes.make_list(3, &res).await?;
    // Nodes 0 and 3 answer WRONGTYPE, node 2 (a replica) never had the key, nodes 1
    // and 4 say yes: no quorum.
    let err = lock.release().await.expect_err("two nodes hold a list");
    // One "not ours" vote cannot rule out a quorum: the lock is not known lost, the
    // nodes could not tell.
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    let wrongtype = votes
        .iter()
        .filter(|nv| matches!(&nv.vote, Vote::Error(m) if m.contains("WRONGTYPE")))
        .count();
    assert_eq!(wrongtype, 2, "{votes}");
    Ok(())
}
