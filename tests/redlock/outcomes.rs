//! The documented outcomes that only some rounds produce: `TooLate` at acquisition
//! and at extend, an extend whose quorum comes after the validity ended, a fencing
//! write-back that fails, a release after the validity ran out while the keys remain,
//! `lock()` retrying `TooLate`, and `Error::is_retryable` on errors from real rounds.
//!
//! Slow rounds come from latency added by the loopback proxies (a round trip takes at
//! least twice the one-way latency), so the arithmetic of each outcome holds whatever
//! the machine's load; the node timeouts are large against that latency.

use std::time::{Duration, Instant};

use fredlock::{Error, Lock, LostReason, Vote};

use crate::support::{Nodes, ROOMY, TestResult, fence_key, resource};

const ALL: [usize; 3] = [0, 1, 2];

/// Polls node `i` (directly, without the proxy's latency) until `key` exists, for at
/// most `limit`; returns its value.
async fn wait_present(nodes: &Nodes, i: usize, key: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        if let Some(value) = nodes.get(i, key).await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "`{key}` never appeared on node {i} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn set_latency(nodes: &Nodes, one_way: Duration) {
    for i in ALL {
        nodes.cluster.set_latency(i, one_way);
    }
}

/// An acquisition whose round leaves no more validity than `min_validity` is
/// `TooLate`, carrying that validity and the minimum, and its keys, which the nodes
/// did set, are removed from every node long before their 30 s TTL. The same client
/// gets the lock when the round is fast: the slow round is what makes it too late.
#[tokio::test(flavor = "multi_thread")]
async fn a_round_that_leaves_too_little_validity_is_too_late_and_removes_its_keys() -> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    let ttl = Duration::from_secs(30);
    let latency = Duration::from_millis(500);
    let drift = nodes.redlock(Duration::from_secs(3)).await.drift(ttl);
    // A round of 600 ms or more leaves too little; with the latency below a round
    // takes at least 1 s, and without it a few milliseconds (600 ms is generous for
    // a loopback round trip on a loaded machine).
    let min_validity = ttl - drift - Duration::from_millis(600);
    let redlock = nodes
        .builder()
        // Large against the 1 s round trip: every node answers in time.
        .node_timeout(Duration::from_secs(3))
        .min_validity(min_validity)
        .build()
        .await?;
    let res = resource("too-late");

    let fast = redlock.try_lock(&res, ttl).await?;
    assert!(fast.remaining() > min_validity, "{fast:?}");
    fast.release().await?;
    nodes.assert_released(&ALL, &res).await;

    set_latency(&nodes, latency);
    let attempt = tokio::spawn({
        let (redlock, res) = (redlock.clone(), res.clone());
        async move { redlock.try_lock(&res, ttl).await }
    });
    // Each node sets the key 500 ms into the round and is told to remove it no sooner
    // than 1.5 s into it: the key is seen on every node in between.
    let mut tokens = Vec::new();
    for i in ALL {
        // Bounded, not hung: each SET arrives 500 ms into the round (the added latency).
        tokens.push(wait_present(&nodes, i, &res, Duration::from_secs(5)).await);
    }
    assert!(tokens.windows(2).all(|w| w[0] == w[1]), "{tokens:?}");

    let err = attempt.await?.expect_err("the round is too slow");
    let Error::TooLate {
        validity,
        min_validity: minimum,
        votes,
        ..
    } = &err
    else {
        panic!("expected TooLate, got {err}");
    };
    assert_eq!(*minimum, min_validity);
    assert!(validity <= minimum, "{validity:?} > {minimum:?}");
    // The validity counts the round's two one-way latencies and the drift.
    assert!(
        *validity <= ttl - 2 * latency - drift,
        "the round's time is not counted: {validity:?}"
    );
    assert!(votes.yes() >= 2, "a quorum set the key: {votes}");
    assert!(err.is_retryable(), "{err}");

    // The keys would live 30 s; only the attempt's removal takes them away within 3 s
    // (one 1 s round trip through the proxies, bounded, not the TTL).
    let left = nodes.wait_absent(&ALL, &res, Duration::from_secs(3)).await;
    assert!(
        left.is_empty(),
        "the too-late keys are still on nodes {left:?}"
    );
    Ok(())
}

/// An extend whose round leaves no more validity than `min_validity` is `TooLate`: the
/// lock keeps its former deadline and TTL and stays valid, while the nodes that
/// answered yes keep the renewed expiry. The lock can still be released.
#[tokio::test(flavor = "multi_thread")]
async fn an_extend_that_leaves_too_little_validity_is_too_late_and_keeps_the_former_validity()
-> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    let min_validity = Duration::from_secs(29);
    let redlock = nodes
        .builder()
        // Large against the 2 s round trip below: every node answers in time.
        .node_timeout(Duration::from_secs(5))
        .min_validity(min_validity)
        .build()
        .await?;
    let res = resource("too-late-extend");
    // Validity 30 s - 302 ms drift - the round: above 29 s for a round under 698 ms.
    let ttl = Duration::from_secs(30);
    let mut lock = redlock.try_lock(&res, ttl).await?;
    let deadline = Instant::now() + lock.remaining();

    // A round trip now takes at least 2 s: an extension to 31 s leaves at most
    // 31 s - 2 s - 312 ms drift = 28.688 s, not above 29 s. Had it been granted, the
    // deadline would move to at least 1 s later than the acquisition's.
    set_latency(&nodes, Duration::from_secs(1));
    let longer = Duration::from_secs(31);
    let err = lock.extend(longer).await.expect_err("too slow");
    let Error::TooLate {
        validity,
        min_validity: minimum,
        votes,
        ..
    } = &err
    else {
        panic!("expected TooLate, got {err}");
    };
    assert_eq!(*minimum, min_validity);
    assert!(validity <= minimum, "{validity:?} > {minimum:?}");
    assert!(votes.yes() >= 2, "a quorum renewed the key: {votes}");
    assert!(err.is_retryable(), "{err}");

    let now_deadline = Instant::now() + lock.remaining();
    let moved = if now_deadline > deadline {
        now_deadline - deadline
    } else {
        deadline - now_deadline
    };
    // Both deadlines are the same instant read twice; 200 ms covers the reads on a
    // loaded machine, and a deadline taken from the round would move by over 1 s.
    assert!(
        moved < Duration::from_millis(200),
        "the deadline moved by {moved:?}"
    );
    assert_eq!(lock.ttl(), ttl, "the TTL changed on a failed extend");
    assert!(lock.is_valid(), "a TooLate extend does not lose the lock");

    // The nodes renewed the key to 31 s one second into the round: about 30 s left
    // now, where the acquisition's expiry would leave at most 28 s.
    let mut renewed = 0;
    for i in ALL {
        if nodes.pttl(i, &res).await > 29_000 {
            renewed += 1;
        }
    }
    assert!(renewed >= 2, "only {renewed} nodes kept the renewed expiry");

    set_latency(&nodes, Duration::ZERO);
    lock.release().await?;
    nodes.assert_released(&ALL, &res).await;
    Ok(())
}

/// An extend that starts while the lock is valid but whose quorum answers after the
/// validity ended is `Expired`, although the nodes renewed the key, and the lock is
/// lost with `ExtendFailed(Expired)`. The keys the nodes renewed are still removed by
/// the release, which says `Expired`.
#[tokio::test(flavor = "multi_thread")]
async fn an_extend_whose_quorum_comes_after_the_validity_is_expired_and_loses_the_lock()
-> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    // Large against the 2.8 s round trip below: every node answers in time.
    let redlock = nodes.redlock(Duration::from_secs(5)).await;
    let res = resource("late-extend");
    let mut lock = redlock.try_lock(&res, Duration::from_secs(2)).await?;
    let lease = lock.lease();
    // `try_lock` returned at its quorum; the third node's answer may still be on its
    // way, and a node's next operation waits for its call in flight (group commit):
    // delayed by the latency below, it would hold the extension back past the keys'
    // TTL. A call that waits for every node (it answers on the same connections,
    // after the acquisitions) ensures every acquisition has come back first.
    let barrier = redlock.lift_restart_quarantine().await;
    assert_eq!(barrier.yes(), 3, "{barrier}");

    // The extension reaches the nodes 1.4 s after it is sent, within the keys' 2 s
    // TTL (it is sent less than 300 ms after they were set), and their answers come
    // back 2.8 s after it is sent, after the lock's validity (under 2 s) ended.
    set_latency(&nodes, Duration::from_millis(1400));
    assert!(
        lock.remaining() > Duration::from_millis(1700),
        "the extend must start early enough to find the keys: {lock:?}"
    );
    let err = lock
        .extend(Duration::from_secs(30))
        .await
        .expect_err("the quorum comes too late");
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    // The nodes renewed our key: the quorum's lateness is what failed.
    assert!(votes.yes() >= 2, "{votes}");
    assert!(!err.is_retryable(), "{err}");
    assert!(!lock.is_valid() && !lease.is_valid());
    let reason = tokio::time::timeout(Duration::from_secs(1), lease.lost()).await?;
    match reason {
        LostReason::ExtendFailed(error) => {
            assert!(matches!(*error, Error::Expired { .. }), "{error}");
        }
        other => panic!("expected ExtendFailed(Expired), got {other}"),
    }

    set_latency(&nodes, Duration::ZERO);
    nodes.assert_pttl_above(&ALL, &res, 25_000).await;
    let err = lock.release().await.expect_err("the lock was lost");
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    assert!(votes.yes() >= 2, "the nodes deleted our key: {votes}");
    // 3 s against the renewed 30 s TTL: only the release removes them this soon.
    nodes.assert_released(&ALL, &res).await;
    Ok(())
}

/// Once the validity ran out on our clock while the keys remain on the nodes (they
/// outlive it by the drift allowance, here half the TTL): extend sends nothing and is
/// `Expired` with no votes, leaving the keys as they were; release is `Expired` and
/// still removes the keys from every node, long before they would expire.
#[tokio::test(flavor = "multi_thread")]
async fn after_the_validity_ran_out_extend_sends_nothing_and_release_still_removes_the_keys()
-> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(500))
        .drift_factor(0.5)
        .build()
        .await?;
    let res = resource("expired-locally");
    // Drift 2.002 s: the validity is under 2 s, the keys live 4 s.
    let ttl = Duration::from_secs(4);
    let mut lock = redlock.try_lock(&res, ttl).await?;
    let lease = lock.lease();
    // Bounded, not hung: the validity (under 2 s) ends well within it.
    let reason = tokio::time::timeout(Duration::from_secs(5), lease.lost()).await?;
    assert!(matches!(reason, LostReason::Expired), "{reason}");
    assert_eq!(lock.remaining(), Duration::ZERO);

    let mut before = Vec::new();
    for i in ALL {
        before.push((nodes.script_calls(i).await, nodes.pttl(i, &res).await));
    }
    let err = lock.extend(ttl).await.expect_err("expired locally");
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    assert!(votes.is_empty(), "a request was sent: {votes}");
    let mut least = i64::MAX;
    for (i, &(scripts, pttl)) in ALL.iter().zip(&before) {
        assert_eq!(
            nodes.script_calls(*i).await,
            scripts,
            "node {i} ran a script"
        );
        assert_eq!(nodes.get(*i, &res).await.as_deref(), Some(lock.token()));
        let now = nodes.pttl(*i, &res).await;
        assert!(now <= pttl, "node {i} renewed the key: {pttl} -> {now} ms");
        least = least.min(now);
    }
    assert!(
        least > 1_000,
        "the keys should outlive the validity by about 2 s: {least} ms left"
    );

    let err = lock.release().await.expect_err("expired locally");
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    assert!(votes.yes() >= 2, "the nodes deleted our key: {votes}");
    assert!(!err.is_retryable(), "{err}");
    // Half of the shortest TTL left: expiry cannot be what removes them.
    let bound = Duration::from_millis(u64::try_from(least / 2)?);
    let left = nodes.wait_absent(&ALL, &res, bound).await;
    assert!(
        left.is_empty(),
        "keys left on nodes {left:?} after {bound:?}"
    );
    Ok(())
}

/// What spoils the write-back on nodes 1 and 2 once their counters were raised.
#[derive(Clone, Copy, PartialEq)]
enum Spoil {
    /// Our lock key is deleted, as if it had expired there.
    DeleteKey,
    /// The counter is overwritten with a value that is not a number: the node fails.
    BreakCounter,
}

/// A held lock asks for its fencing token; the nodes' counters disagree, so the
/// write-back is needed, and `spoil` hits nodes 1 and 2 between the two rounds. Returns
/// the lock and what `fencing_token()` returned.
async fn fence_with_a_spoiled_write_back(
    nodes: &Nodes,
    res: &str,
    spoil: Spoil,
) -> Result<(Lock, Result<u64, Error>), Box<dyn std::error::Error + Send + Sync>> {
    // Large against the 600 ms round trip below: every node answers in time.
    let redlock = nodes.redlock(Duration::from_secs(3)).await;
    // Distinct counters above any clock floor: any two yes votes disagree, so every
    // fencing round needs a write-back.
    let counter = fence_key("", res);
    let high = 1u64 << 52;
    for (i, step) in ALL.iter().zip([0u64, 10, 20]) {
        nodes
            .set(*i, &counter, &(high + step).to_string(), 600_000)
            .await;
    }
    let lock = redlock.try_lock(res, Duration::from_secs(30)).await?;
    // Each node raises its counter 300 ms into the fencing round; the write-back
    // reaches it no sooner than 900 ms into the round (after two answers came back).
    set_latency(nodes, Duration::from_millis(300));
    let fencing = tokio::spawn(async move {
        let token = lock.fencing_token().await;
        (lock, token)
    });
    let start = Instant::now();
    let mut spoiled = Vec::new();
    while spoiled.len() < 2 {
        for (i, step) in [(1, 10u64), (2, 20)] {
            if spoiled.contains(&i) {
                continue;
            }
            let reply = nodes.cmd(i, "GET", vec![counter.as_str().into()]).await?;
            if reply.as_string() != Some((high + step).to_string()) {
                match spoil {
                    Spoil::DeleteKey => nodes.cmd(i, "DEL", vec![res.into()]).await?,
                    Spoil::BreakCounter => {
                        let args = vec![counter.as_str().into(), "not-a-number".into()];
                        nodes.cmd(i, "SET", args).await?
                    }
                };
                spoiled.push(i);
            }
        }
        // Bounded, not hung: the fencing round reaches the nodes after the 300 ms latency.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the fencing round never reached nodes 1 and 2"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let outcome = fencing.await?;
    set_latency(nodes, Duration::ZERO);
    Ok(outcome)
}

/// The write-back finds our key gone from two of three nodes: the lock is gone, as in
/// a fencing round that finds it gone: `Expired` with the write-back's votes, no token,
/// and the lock lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_back_that_finds_the_lock_gone_is_expired_and_hands_out_no_token() -> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    let res = resource("fencing-gone");
    let (lock, token) = fence_with_a_spoiled_write_back(&nodes, &res, Spoil::DeleteKey).await?;
    let err = match token {
        Ok(token) => panic!("a fencing token ({token}) was handed out without the write-back"),
        Err(err) => err,
    };
    let Error::Expired { votes, .. } = &err else {
        panic!("expected Expired, got {err}");
    };
    for i in [1, 2] {
        let vote = &votes.iter().nth(i).expect("a vote per node").vote;
        assert_eq!(*vote, Vote::Taken, "node {i}: {votes}");
    }
    assert!(!lock.is_valid(), "the lock is lost");
    Ok(())
}

/// The write-back fails on two of three nodes (their counters are no longer numbers):
/// `FencingFailed` with the write-back's votes, no token, and the lock still held; a
/// new request makes a new round, which those nodes fail too.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_back_that_nodes_fail_is_fencing_failed_and_keeps_the_lock() -> TestResult {
    let nodes = Nodes::start_with_proxies(3).await?;
    let res = resource("fencing-failed");
    let (lock, token) = fence_with_a_spoiled_write_back(&nodes, &res, Spoil::BreakCounter).await?;
    let err = match token {
        Ok(token) => panic!("a fencing token ({token}) was handed out without the write-back"),
        Err(err) => err,
    };
    let Error::FencingFailed { votes, .. } = &err else {
        panic!("expected FencingFailed, got {err}");
    };
    for i in [1, 2] {
        let vote = &votes.iter().nth(i).expect("a vote per node").vote;
        assert!(
            matches!(vote, Vote::Error(m) if m.contains("not a number")),
            "node {i}: {votes}"
        );
    }
    assert!(err.is_retryable(), "{err}");
    assert!(
        lock.is_valid(),
        "a failed write-back does not lose the lock"
    );
    let again = lock.fencing_token().await.unwrap_err();
    assert!(matches!(again, Error::NoQuorum { .. }), "{again}");
    assert!(lock.is_valid());
    lock.release().await?;
    Ok(())
}

/// `is_retryable()` on errors from real operations: true for `Taken`, `NoQuorum` and
/// `TooLate` (and `FencingFailed`, in the tests above), false for `Expired`, `Lost`,
/// `Config`, `InvalidArgument`, `Connect` and `Denied`, as src/error.rs promises.
#[tokio::test(flavor = "multi_thread")]
async fn is_retryable_holds_for_exactly_the_errors_another_attempt_may_cure() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let ttl = Duration::from_secs(30);
    let redlock = nodes.redlock(ROOMY).await;
    let mut outcomes: Vec<(&str, Error, bool)> = Vec::new();

    // Denied: a user whose ACL refuses EVALSHA.
    let denied = nodes.user_urls("noevalsha", &["-evalsha"]).await?;
    let err = fredlock::Redlock::builder(denied)
        .restart_quarantine(fredlock::Quarantine::Off)
        .build()
        .await
        .expect_err("EVALSHA is denied");
    assert!(matches!(err, Error::Denied { .. }), "{err}");
    outcomes.push(("Denied", err, false));

    let err = nodes
        .builder()
        .drift_factor(1.0)
        .build()
        .await
        .expect_err("drift factor out of range");
    assert!(matches!(err, Error::Config { .. }), "{err}");
    outcomes.push(("Config", err, false));

    let res = resource("retryable");
    let err = redlock
        .try_lock(&res, Duration::ZERO)
        .await
        .expect_err("zero TTL");
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    outcomes.push(("InvalidArgument", err, false));

    let mut held = redlock.try_lock(&res, ttl).await?;
    let err = redlock.try_lock(&res, ttl).await.expect_err("held");
    assert!(matches!(err, Error::Taken { .. }), "{err}");
    outcomes.push(("Taken", err, true));

    // A minimum validity no round can leave.
    let demanding = nodes
        .builder()
        .node_timeout(ROOMY)
        .min_validity(ttl)
        .build()
        .await?;
    let err = demanding
        .try_lock(&resource("retryable-too-late"), ttl)
        .await
        .expect_err("min_validity = TTL");
    assert!(matches!(err, Error::TooLate { .. }), "{err}");
    outcomes.push(("TooLate", err, true));

    for i in ALL {
        nodes.set(i, &res, "another-owner", 30_000).await;
    }
    let err = held.extend(ttl).await.expect_err("taken over");
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    outcomes.push(("Expired", err, false));

    // Lost: the keep-alive finds the keys taken over while the work runs.
    let lost_res = resource("retryable-lost");
    let nodes_ref = &nodes;
    let lost_ref = &lost_res;
    // Bounded, not hung: the keep-alive renews within the 1 s lock's validity and finds the
    // keys taken.
    let result = tokio::time::timeout(
        Duration::from_secs(5),
        redlock.with_lock(&lost_res, Duration::from_secs(1), |_| async move {
            for i in ALL {
                nodes_ref.set(i, lost_ref, "another-owner", 30_000).await;
            }
            std::future::pending::<()>().await;
        }),
    )
    .await?;
    let err = result.expect_err("the keys were taken over");
    assert!(matches!(err, Error::Lost { .. }), "{err}");
    outcomes.push(("Lost", err, false));

    nodes.cluster.kill(1).await?;
    nodes.cluster.kill(2).await?;
    let err = redlock
        .try_lock(&resource("retryable-no-quorum"), ttl)
        .await
        .expect_err("2 of 3 dead");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    outcomes.push(("NoQuorum", err, true));

    let err = nodes
        .builder()
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await
        .expect_err("2 of 3 dead");
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    outcomes.push(("Connect", err, false));

    for (name, err, retryable) in &outcomes {
        assert_eq!(err.is_retryable(), *retryable, "{name}: {err}");
    }
    Ok(())
}

/// `lock()` retries an attempt that came too late, like any failed attempt, and ends
/// with the last attempt's `TooLate`: with two retries every node runs exactly three
/// acquisitions, and no key is left.
#[tokio::test(flavor = "multi_thread")]
async fn lock_retries_too_late_attempts_and_ends_with_too_late() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let ttl = Duration::from_secs(30);
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(200))
        .retry_count(2)
        .retry_delay(Duration::from_millis(10))
        .retry_jitter(Duration::ZERO)
        // No round can leave the whole TTL: every attempt is too late.
        .min_validity(ttl)
        .build()
        .await?;
    let res = resource("too-late-retried");
    let mut before = Vec::new();
    for i in ALL {
        before.push(nodes.calls(i, "fcall").await);
    }
    let err = redlock.lock(&res, ttl).await.expect_err("always too late");
    assert!(matches!(err, Error::TooLate { .. }), "{err}");

    // Acquisitions go by FCALL, removals by EVAL. An acquisition that was still
    // pending when the last attempt was decided may run just after: poll for it.
    for (i, &count) in ALL.iter().zip(&before) {
        let start = Instant::now();
        let mut ran = nodes.calls(*i, "fcall").await - count;
        // Bounded, not hung: a pending acquisition runs within one node timeout.
        while ran < 3 && start.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            ran = nodes.calls(*i, "fcall").await - count;
        }
        assert_eq!(ran, 3, "node {i} ran {ran} acquisitions");
    }
    nodes.assert_released(&ALL, &res).await;
    Ok(())
}
