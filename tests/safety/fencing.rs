//! Fencing tokens from the quorum, and their counters' bounded life.

use std::time::{Duration, Instant};

use fredlock::{DEFAULT_FENCING_RETENTION, Error, Vote};

use crate::support::{Nodes, ROOMY, TestResult, count_keys, fence_key, resource};

const TTL: Duration = Duration::from_secs(30);

/// Holders of one resource, from two clients in turn, get strictly increasing tokens,
/// and the counter keys (next to the lock key, prefix respected) keep the latest.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_strictly_increase_across_holders() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let a = nodes.builder().key_prefix("app:").build().await?;
    let b = nodes.builder().key_prefix("app:").build().await?;
    let res = resource("fenced");
    let mut last = 0;
    for round in 0..20 {
        let client = if round % 2 == 0 { &a } else { &b };
        let lock = client.lock(&res, TTL).await?;
        let token = lock.fencing_token().await?;
        assert!(token > last, "{token} after {last}");
        // Made once: the lease and a second request get the same token.
        assert_eq!(lock.lease().fencing_token().await?, token);
        assert_eq!(lock.fencing_token().await?, token);
        last = token;
        lock.release().await?;
    }
    // Every node keeps its counter for the retention after the last lock, and a quorum
    // holds at least the latest token: the invariant the next holder's token rests on.
    // (A node can hold less: a holder's key had not reached it yet, because the
    // previous release was still on its way there, so its fencing round passed it by.)
    let counter = fence_key("app:", &res);
    let mut at_least_latest = 0;
    for i in 0..5 {
        let stored: u64 = nodes.get(i, &counter).await.expect("counter").parse()?;
        at_least_latest += usize::from(stored >= last);
        let pttl = nodes.pttl(i, &counter).await;
        let most = i64::try_from((TTL + DEFAULT_FENCING_RETENTION).as_millis())?;
        assert!(pttl > 0 && pttl <= most, "node {i}: counter PTTL {pttl} ms");
    }
    assert!(
        at_least_latest >= 3,
        "only {at_least_latest} nodes hold the latest token"
    );
    Ok(())
}

/// A quorum whose counters disagree (two nodes with no counter, one far ahead of the
/// clock floor, two others killed) gets the maximum, and the lagging nodes are raised
/// to it before the token is handed out.
#[tokio::test(flavor = "multi_thread")]
async fn lagging_counters_are_written_back_before_the_token_is_handed_out() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(100)).await;
    let res = resource("write-back");
    let counter = fence_key("", &res);
    // Above any clock floor (microseconds since 1970), still exact in Lua's doubles:
    // the counters of nodes 0-2 now lead, and nodes 3 and 4 lag.
    let high = 1u64 << 52;
    for i in 0..3 {
        nodes.set(i, &counter, &high.to_string(), 600_000).await;
    }
    nodes.cluster.kill(1).await?;
    nodes.cluster.kill(2).await?;
    // The quorum is now 0, 3, 4: node 0 says high + 1, nodes 3 and 4 the clock floor.
    let lock = redlock.try_lock(&res, TTL).await?;
    assert_eq!(lock.fencing_token().await?, high + 1);
    for i in [0, 3, 4] {
        let stored: u64 = nodes.get(i, &counter).await.expect("counter").parse()?;
        assert_eq!(stored, high + 1, "node {i} was not raised");
    }
    lock.release().await?;
    Ok(())
}

/// A counter key holding another type does not stop the lock, which never reads it,
/// but is a failed vote in the fencing round, with the node's message, and that node's
/// counter is left as it was; with three such nodes of five no token is made and the
/// lock stays held.
#[tokio::test(flavor = "multi_thread")]
async fn a_counter_of_another_type_is_a_failed_fencing_vote() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("bad-counter");
    let counter = fence_key("", &res);
    nodes.make_list(0, &counter).await?;
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, lock.token())
        .await;
    lock.fencing_token().await?;
    let kind = nodes.cmd(0, "TYPE", vec![counter.as_str().into()]).await?;
    assert_eq!(kind.as_string().as_deref(), Some("list"));
    lock.release().await?;

    for i in 1..4 {
        nodes.make_list(i, &counter).await?;
    }
    let lock = redlock.try_lock(&res, TTL).await?;
    let err = lock.fencing_token().await.expect_err("4 of 5 refuse");
    assert!(matches!(err, Error::NoQuorum { .. }), "{err}");
    let votes = err.votes().expect("votes");
    let wrongtype = votes
        .iter()
        .filter(|nv| matches!(&nv.vote, Vote::Error(m) if m.contains("WRONGTYPE")))
        .count();
    // The round is decided by the third refusal; a fourth may still be pending.
    assert!(wrongtype >= 3, "{votes}");
    assert!(
        lock.is_valid(),
        "a failed fencing round does not lose the lock"
    );
    lock.release().await?;
    Ok(())
}

/// 300 one-off resources (a lock per job id), each asked for its fencing token, leave
/// no key behind: each counter expires within the TTL plus the fencing retention after
/// its lock, and a resource locked again after its counter expired still gets a
/// larger token (the clock floor).
#[tokio::test(flavor = "multi_thread")]
async fn counters_of_one_off_resources_expire() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let retention = Duration::from_secs(1);
    let redlock = nodes
        .builder()
        .key_prefix("jobs:")
        .node_timeout(Duration::from_millis(500))
        .fencing_retention(retention)
        .build()
        .await?;
    let ttl = Duration::from_millis(500);
    let mut first_token = 0;
    for job in 0..300 {
        let lock = redlock.lock(&format!("job-{job}"), ttl).await?;
        let token = lock.fencing_token().await?;
        if job == 0 {
            first_token = token;
        }
        lock.release().await?;
    }
    let mut left = vec![300; 5];
    let start = Instant::now();
    while left.iter().any(|&n| n > 0) {
        // Bounded, not hung: Redis's active expiry samples keys about every 100 ms;
        // 8 s beyond the counters' TTL bounds a loaded machine.
        assert!(
            start.elapsed() < ttl + retention + Duration::from_secs(8),
            "keys of finished locks still on the nodes after {:?}: {left:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, n) in left.iter_mut().enumerate() {
            *n = count_keys(&nodes, i, "*job-*").await;
        }
    }
    let again = redlock.lock("job-0", ttl).await?;
    let token = again.fencing_token().await?;
    assert!(token > first_token, "{token} after {first_token}");
    again.release().await?;
    Ok(())
}

/// With the default settings, a lock per job id that never asks for a fencing token
/// leaves no key once released; one that asks leaves one key per node (its fencing
/// counter), which expires at most its TTL plus 60 s later.
#[tokio::test(flavor = "multi_thread")]
async fn a_one_off_lock_leaves_no_key_or_only_its_counter_for_its_ttl_plus_60_s() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let redlock = nodes.builder().build().await?;
    let ttl = Duration::from_secs(10);
    let plain = resource("job-7f3a");
    let fenced = resource("job-8e4b");
    redlock.lock(&plain, ttl).await?.release().await?;
    let lock = redlock.lock(&fenced, ttl).await?;
    lock.fencing_token().await?;
    lock.release().await?;
    // The release returned at its quorum; the other nodes' removals follow (seconds of
    // room for a busy machine, against a key that lives 10 s).
    for job in [&plain, &fenced] {
        let left = nodes
            .wait_absent(&[0, 1, 2, 3, 4], job, Duration::from_secs(5))
            .await;
        assert!(left.is_empty(), "the lock key is still on nodes {left:?}");
    }
    let most = i64::try_from((ttl + Duration::from_secs(60)).as_millis())?;
    for i in 0..5 {
        assert_eq!(
            count_keys(&nodes, i, &format!("*{plain}*")).await,
            0,
            "node {i}"
        );
        assert_eq!(
            count_keys(&nodes, i, &format!("*{fenced}*")).await,
            1,
            "node {i}"
        );
        let pttl = nodes.pttl(i, &fence_key("", &fenced)).await;
        assert!(
            pttl > 0 && pttl <= most,
            "node {i}: the counter lives {pttl} ms"
        );
    }
    Ok(())
}

/// Lua's numbers are doubles: above 2^53 `counter + 1` no longer changes the value.
/// A counter that reached 2^53 - 1 refuses further tokens instead of repeating one.
#[tokio::test(flavor = "multi_thread")]
async fn a_counter_at_the_limit_of_exact_numbers_refuses_rather_than_repeats() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("exhausted");
    let counter = fence_key("", &res);
    let near = (1u64 << 53) - 2;
    for i in 0..3 {
        nodes.set(i, &counter, &near.to_string(), 600_000).await;
    }
    let mut tokens = Vec::new();
    let mut refusals = Vec::new();
    for _ in 0..3 {
        let lock = redlock.try_lock(&res, TTL).await?;
        match lock.fencing_token().await {
            Ok(token) => tokens.push(token),
            Err(e) => refusals.push(e.to_string()),
        }
        lock.release().await?;
    }
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "tokens repeat: {tokens:?}"
    );
    assert!(tokens.iter().all(|&t| t < 1u64 << 53), "{tokens:?}");
    assert!(
        refusals.iter().any(|e| e.contains("fencing counter")),
        "tokens {tokens:?}, errors {refusals:?}"
    );
    Ok(())
}
