//! The batch as a function library (`FCALL`) and its fallbacks to the script's text.

use std::time::Duration;

use fredlock::{Error, Quarantine, Redlock, Vote};

use crate::support::{Nodes, ROOMY, TestResult, lift_quarantine, resource};

const TTL: Duration = Duration::from_secs(30);

/// With the restart quarantine on, the library reads the node's `run_id` (`INFO
/// server`) once and keeps it for the life of the process, where the script read it on
/// every acquisition; locks and releases go by `FCALL`, with no script call.
/// (That a restart, which starts a new process and a new library state, is still
/// caught is shown by tests/safety/quarantine.rs.)
#[tokio::test(flavor = "multi_thread")]
async fn the_library_reads_run_id_once_and_a_lock_is_one_call_per_node() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = Redlock::builder(nodes.urls())
        .node_timeout(ROOMY)
        .build()
        .await?;
    lift_quarantine(&redlock).await;
    let res = resource("library-run-id");
    // The first acquisition reads run_id. Its release has run on every node once the
    // key is gone from every node, and the acquisition before it.
    let all = [0, 1, 2];
    redlock.try_lock(&res, TTL).await?.release().await?;
    nodes.assert_released(&all, &res).await;

    let calls = nodes.calls_on(&all, "fcall").await;
    let mut scripts = Vec::new();
    for i in all {
        scripts.push(nodes.calls(i, "evalsha").await + nodes.calls(i, "eval").await);
    }
    let infos = nodes.calls_on(&all, "info").await;
    let locks = 10;
    for _ in 0..locks {
        let lock = redlock.try_lock(&res, TTL).await?;
        nodes.assert_held(&all, &res, lock.token()).await;
        lock.release().await?;
    }
    nodes.assert_released(&all, &res).await;
    for i in all {
        // The one INFO since the first count is the count's own (`INFO commandstats`).
        assert_eq!(
            nodes.calls(i, "info").await - infos[i],
            1,
            "node {i} ran INFO during the locks"
        );
        // A round returns at its quorum, so the last release may reach a node after
        // the count. ("Function not found" would count too, as a call: none here, as
        // no EVAL followed.)
        let ran = nodes.calls(i, "fcall").await - calls[i];
        assert!(
            ran >= 2 * locks - 1,
            "node {i}: {ran} FCALLs for {locks} locks and releases"
        );
        let by_script = nodes.calls(i, "evalsha").await + nodes.calls(i, "eval").await;
        assert_eq!(by_script, scripts[i], "node {i} ran the batch as a script");
    }
    Ok(())
}

/// A node out of memory refuses a new lock key but still deletes ours at release: it
/// refuses a call of the library whole, so the batch goes again by the script's text,
/// where only the writes that need memory fail.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_out_of_memory_refuses_a_lock_but_still_takes_a_release() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_secs(1)).await;
    let (res, other) = (resource("oom-held"), resource("oom-new"));
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;

    nodes
        .config_set(2, "maxmemory-policy", "noeviction")
        .await?;
    nodes.config_set(2, "maxmemory", "1").await?;
    // Node 0 holds the other resource for someone else, so the attempt needs node 2's
    // vote, and its error decides it.
    nodes.set(0, &other, "someone-else", 30_000).await;
    let refused = nodes.rejected(2, "fcall").await;
    let err = redlock.try_lock(&other, TTL).await.expect_err("no quorum");
    let votes = err.votes().expect("the round's votes");
    let vote = &votes.iter().nth(2).expect("node 2's vote").vote;
    assert!(
        matches!(vote, Vote::Error(m) if m.contains("OOM")),
        "node 2 voted {vote:?}: {err}"
    );
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2], &res).await;
    // Both went by the library first, which node 2 refused whole.
    assert!(
        nodes.rejected(2, "fcall").await >= refused + 2,
        "node 2 did not refuse the library's calls"
    );
    nodes.config_set(2, "maxmemory", "0").await?;
    nodes.assert_released(&[1, 2], &other).await;
    Ok(())
}

/// A user whose ACL refuses `FCALL` gets its locks by the script: the first call goes
/// again by `EVALSHA` at once, and later ones by `EVALSHA` from the start.
#[tokio::test(flavor = "multi_thread")]
async fn an_acl_that_refuses_fcall_is_served_by_the_script() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let all = [0, 1, 2];
    let urls = nodes.user_urls("nofcall", &["-fcall"]).await?;
    let redlock = Redlock::builder(urls)
        .restart_quarantine(Quarantine::Off)
        .node_timeout(ROOMY)
        .build()
        .await?;
    let res = resource("no-fcall");
    // The library was loaded: the user may load it, only FCALL is refused.
    for i in all {
        assert!(nodes.has_library(i).await, "node {i} has no library");
    }
    let first = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&all, &res, first.token()).await;
    first.release().await?;
    nodes.assert_released(&all, &res).await;
    for i in all {
        assert!(
            nodes.rejected(i, "fcall").await >= 1,
            "node {i}: no FCALL refused"
        );
    }

    let before = nodes.calls_on(&all, "evalsha").await;
    let mut refused = Vec::new();
    for i in all {
        refused.push(nodes.rejected(i, "fcall").await);
    }
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&all, &res, lock.token()).await;
    for i in all {
        assert!(
            nodes.calls(i, "evalsha").await > before[i],
            "node {i}: the lock did not go by EVALSHA"
        );
        assert_eq!(
            nodes.rejected(i, "fcall").await,
            refused[i],
            "node {i}: FCALL was tried again"
        );
    }
    let err = redlock.try_lock(&res, TTL).await.expect_err("held");
    assert!(matches!(err, Error::Taken { .. }), "{err}");
    lock.release().await?;
    nodes.assert_released(&all, &res).await;
    Ok(())
}

/// A release that a node refuses (its library flushed) only after the release's
/// deadline still reaches it: the call goes on in the background after the caller
/// stopped waiting, and the script's text follows the late refusal.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_refused_after_its_deadline_still_reaches_the_node() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let res = resource("late-refusal");
    let lock = redlock.try_lock(&res, TTL).await?;
    let all = [0, 1, 2, 3, 4];
    nodes.assert_held(&all, &res, lock.token()).await;
    nodes.forget_scripts(4).await?;
    // Node 4 answers 300 ms after a request (150 ms each way), past the 200 ms node
    // timeout however idle the machine: its "Function not found" comes too late for
    // the release's own wait.
    nodes.cluster.set_latency(4, Duration::from_millis(150));
    let evals = nodes.calls(4, "eval").await;
    lock.release().await?;
    // The TTL is 30 s: only the call that went on can delete the key there. Bounded,
    // not hung: two 300 ms round trips after the release, with room for a busy machine.
    let left = nodes.wait_absent(&[4], &res, Duration::from_secs(5)).await;
    assert!(left.is_empty(), "the release never reached node 4");
    assert!(
        nodes.calls(4, "eval").await > evals,
        "node 4 did not get the script's text"
    );
    nodes.assert_released(&all, &res).await;
    Ok(())
}
