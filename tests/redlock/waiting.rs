//! Waiting for a held lock: woken by the release instead of polling, the wait cut to
//! the acquire deadline, subscriptions kept through reconnections, and no waiter
//! starves under steady contention.
//!
//! Most waiters here poll only every 30 s, so a waiter that gets the lock within a few
//! seconds of a release was woken by it: the bounds below only separate "woken" from
//! "waited for the poll". What a test needs to have happened first (an attempt that
//! failed, a subscription on every node, a connection dropped) is shown by the nodes
//! (`PUBSUB NUMSUB`, `CLIENT LIST`, `INFO commandstats`), not waited for.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fred::prelude::Value;
use tokio::sync::Barrier;

use crate::support::{Nodes, TestResult, resource, service_clients};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bound on a hand-off by wake-up: bounded, not hung, and far below the waiters'
/// polling delays (30 s), so only a wake-up meets it. On loopback it takes some 10 ms.
const HAND_OFF: Duration = Duration::from_secs(5);

/// The bound on a waiter's subscriptions becoming active: five new connections on a
/// loaded machine, each SUBSCRIBE retried every connect timeout (2 s) until it goes
/// through.
const SUBSCRIBED: Duration = Duration::from_secs(15);

/// The release channel a waiter for `res` subscribes to (no key prefix).
fn channel(res: &str) -> String {
    format!("fredlock:released:{res}")
}

/// How many subscribers `channel` has on node `i`.
async fn numsub(nodes: &Nodes, i: usize, channel: &str) -> Result<i64, BoxError> {
    let reply = nodes
        .cmd(i, "PUBSUB", vec!["NUMSUB".into(), channel.into()])
        .await?;
    Ok(match reply {
        Value::Array(items) => items.get(1).and_then(Value::as_i64).unwrap_or(0),
        _ => 0,
    })
}

/// On how many of the 5 nodes `channel` has a subscriber.
async fn subscribed_nodes(nodes: &Nodes, channel: &str) -> Result<usize, BoxError> {
    let mut subscribed = 0;
    for i in 0..5 {
        subscribed += usize::from(numsub(nodes, i, channel).await? > 0);
    }
    Ok(subscribed)
}

/// Polls until `channel` has a subscriber on all 5 nodes, for at most [`SUBSCRIBED`].
async fn wait_subscribed(nodes: &Nodes, channel: &str, what: &str) -> TestResult {
    let start = Instant::now();
    loop {
        let subscribed = subscribed_nodes(nodes, channel).await?;
        if subscribed == 5 {
            return Ok(());
        }
        assert!(
            start.elapsed() < SUBSCRIBED,
            "{what}: subscribed on {subscribed} of 5 nodes after {SUBSCRIBED:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The ids of node `i`'s pub/sub connections (`CLIENT LIST TYPE pubsub`).
async fn pubsub_clients(nodes: &Nodes, i: usize) -> Result<Vec<u64>, BoxError> {
    let list = nodes
        .cmd(
            i,
            "CLIENT",
            vec!["LIST".into(), "TYPE".into(), "pubsub".into()],
        )
        .await?
        .as_string()
        .unwrap_or_default();
    Ok(list
        .lines()
        .filter_map(|line| line.strip_prefix("id="))
        .filter_map(|rest| rest.split(' ').next())
        .filter_map(|id| id.parse().ok())
        .collect())
}

/// The node timeout of the holders and waiters. A woken attempt that timed out on a
/// quorum would leave the waiter to its 30 s poll, and a release that did would fail
/// the hand-off, for want of a round trip: a loopback round trip takes a millisecond
/// or two, and 500 ms holds when both cores are busy (100 ms once did not).
const NODE_TIMEOUT: Duration = Duration::from_millis(500);

/// A client for the waiting side: polling every `poll_every` without jitter, each
/// request bounded by [`NODE_TIMEOUT`], giving up after `acquire_timeout`.
async fn waiter(
    nodes: &Nodes,
    poll_every: Duration,
    acquire_timeout: Duration,
) -> Result<fredlock::Redlock, fredlock::Error> {
    nodes
        .builder()
        .node_timeout(NODE_TIMEOUT)
        .retry_delay(poll_every)
        .retry_jitter(Duration::ZERO)
        .acquire_timeout(acquire_timeout)
        .build()
        .await
}

/// Spawns `waiter.lock(res)`; the task returns the outcome and when it came.
fn spawn_lock(
    waiter: &fredlock::Redlock,
    res: &str,
) -> tokio::task::JoinHandle<(Result<fredlock::Lock, fredlock::Error>, Instant)> {
    let (waiter, res) = (waiter.clone(), res.to_string());
    tokio::spawn(async move {
        let lock = waiter.lock(&res, Duration::from_secs(60)).await;
        (lock, Instant::now())
    })
}

/// Releases `held` and returns how long the waiting task took from the release to
/// its lock, failing if that takes [`HAND_OFF`] (the waiter waits for its poll).
async fn hand_off(
    held: fredlock::Lock,
    waiting: tokio::task::JoinHandle<(Result<fredlock::Lock, fredlock::Error>, Instant)>,
) -> Result<Duration, BoxError> {
    let released_at = Instant::now();
    held.release().await?;
    let Ok(outcome) = tokio::time::timeout(HAND_OFF, waiting).await else {
        panic!("not woken: the waiter still waits {HAND_OFF:?} after the release");
    };
    let (lock, acquired_at) = outcome?;
    lock?.release().await?;
    Ok(acquired_at - released_at)
}

/// A waiter polling only every 30 s gets the lock within a few seconds of the
/// holder's release: the release announcement wakes it. The waiter has failed its
/// first attempt and is subscribed on every node before the release.
#[tokio::test(flavor = "multi_thread")]
async fn a_release_wakes_the_waiter_long_before_its_next_poll() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    let waiter = waiter(&nodes, Duration::from_secs(30), Duration::from_secs(60)).await?;
    let res = resource("wake-up");
    let held = holder.lock(&res, Duration::from_secs(60)).await?;
    let waiting = spawn_lock(&waiter, &res);
    // It subscribes only once an attempt found the resource taken.
    wait_subscribed(&nodes, &channel(&res), "the waiter").await?;
    assert!(!waiting.is_finished());
    let hand_off = hand_off(held, waiting).await?;
    eprintln!("wake-up: hand-off {hand_off:?} (polling every 30 s)");
    Ok(())
}

/// A waiter whose poll (30 s) is far longer than its acquire timeout (3 s) waits on a
/// resource that stays held until about its deadline, neither longer (the poll) nor
/// much shorter, and returns `Taken`: its wait for a release is cut to the deadline.
#[tokio::test(flavor = "multi_thread")]
async fn the_wait_ends_at_the_acquire_deadline_not_at_the_next_poll() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    // Several node timeouts long, so that "waited until one node timeout before the
    // deadline" (below) is far from "gave up after the first attempt".
    let acquire_timeout = Duration::from_secs(3);
    let waiter = waiter(&nodes, Duration::from_secs(30), acquire_timeout).await?;
    let res = resource("deadline");
    let held = holder.lock(&res, Duration::from_secs(60)).await?;
    let start = Instant::now();
    // Bounded, not hung: the deadline plus 4 s for a loaded machine, far below the
    // 30 s poll.
    let limit = acquire_timeout + Duration::from_secs(4);
    let Ok(outcome) = tokio::time::timeout(limit, waiter.lock(&res, Duration::from_secs(60))).await
    else {
        panic!("still waiting {limit:?} after an acquire timeout of {acquire_timeout:?}");
    };
    let waited = start.elapsed();
    eprintln!("deadline: gave up after {waited:?}: {outcome:?}");
    assert!(
        matches!(outcome, Err(fredlock::Error::Taken { .. })),
        "{outcome:?}"
    );
    // No attempt starts that cannot end before the deadline, so the waiter waits (and
    // can be woken) until one node timeout before it.
    assert!(
        waited >= acquire_timeout - NODE_TIMEOUT,
        "gave up early, after {waited:?}"
    );
    held.release().await?;
    Ok(())
}

/// The attempt a cut pause was cut for still runs: another client's key on every node
/// expires (nothing announces an expiry) 2 s into a waiter's 5 s acquire timeout,
/// with a 30 s poll. The waiter's pause is cut to end one node timeout before the
/// deadline, and the attempt then takes the free resource.
#[tokio::test(flavor = "multi_thread")]
async fn the_attempt_a_pause_was_cut_for_still_runs() -> TestResult {
    let nodes = Nodes::start(5).await?;
    // The key outlives the first attempt, made at once (2 s holds when both cores are
    // busy), and expires long before the cut pause ends, one node timeout (500 ms)
    // before the deadline.
    let acquire_timeout = Duration::from_secs(5);
    let waiter = waiter(&nodes, Duration::from_secs(30), acquire_timeout).await?;
    let res = resource("cut-pause");
    for i in 0..5 {
        nodes.set(i, &res, "another-client", 2000).await;
    }
    let before = nodes.calls(0, "fcall").await;
    let start = Instant::now();
    // Bounded, not hung: the deadline plus 4 s for a loaded machine, far below the
    // 30 s poll.
    let limit = acquire_timeout + Duration::from_secs(4);
    let outcome = tokio::time::timeout(limit, waiter.lock(&res, Duration::from_secs(30)))
        .await
        .map_err(|_| format!("still waiting {limit:?} into a {acquire_timeout:?} timeout"))?;
    let waited = start.elapsed();
    let attempts = nodes.calls(0, "fcall").await - before;
    eprintln!("cut pause: {outcome:?} after {waited:?}, {attempts} attempts on node 0");
    let lock = outcome.map_err(|e| format!("no attempt after the cut pause: {e}"))?;
    assert_eq!(
        attempts, 2,
        "the first attempt and the one after the cut pause"
    );
    lock.release().await?;
    Ok(())
}

/// A waiter whose subscription connections are closed by every node (`CLIENT KILL
/// TYPE pubsub`) subscribes again on new connections, and the release then wakes it
/// long before its next poll (30 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_subscribes_again_after_its_connections_drop() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    let waiter = waiter(&nodes, Duration::from_secs(30), Duration::from_secs(90)).await?;
    let res = resource("reconnect");
    let channel = channel(&res);
    let held = holder.lock(&res, Duration::from_secs(90)).await?;
    let waiting = spawn_lock(&waiter, &res);
    wait_subscribed(&nodes, &channel, "the waiter").await?;
    let mut killed = Vec::new();
    for i in 0..5 {
        // The waiter's subscriber is the only pub/sub connection on each node.
        let ids = pubsub_clients(&nodes, i).await?;
        assert_eq!(ids.len(), 1, "node {i}: pub/sub connections {ids:?}");
        let reply = nodes
            .cmd(
                i,
                "CLIENT",
                vec!["KILL".into(), "TYPE".into(), "pubsub".into()],
            )
            .await?;
        assert_eq!(
            reply.as_i64(),
            Some(1),
            "node {i}: CLIENT KILL answered {reply:?}"
        );
        killed.push(ids[0]);
    }
    // Subscribed again, on a new connection on every node.
    let start = Instant::now();
    for (i, old) in killed.into_iter().enumerate() {
        loop {
            let ids = pubsub_clients(&nodes, i).await?;
            if !ids.is_empty() && !ids.contains(&old) && numsub(&nodes, i, &channel).await? == 1 {
                break;
            }
            assert!(
                start.elapsed() < SUBSCRIBED,
                "node {i}: not subscribed again within {SUBSCRIBED:?} (pub/sub connections \
                 {ids:?}, the killed one {old})"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("reconnect: subscribed again after {:?}", start.elapsed());
    assert!(!waiting.is_finished());
    let hand_off = hand_off(held, waiting).await?;
    eprintln!("reconnect: hand-off {hand_off:?} (polling every 30 s)");
    Ok(())
}

/// A waiter subscribed on every node whose nodes all restart (losing the holder's
/// keys, with no release to announce) subscribes again once they are back, and the
/// next holder's release then wakes it long before its next poll (30 s).
#[tokio::test(flavor = "multi_thread")]
async fn a_waiter_subscribes_again_after_its_nodes_restart() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    let waiter = waiter(&nodes, Duration::from_secs(30), Duration::from_secs(90)).await?;
    let res = resource("restart");
    let channel = channel(&res);
    let held = holder.lock(&res, Duration::from_secs(90)).await?;
    let waiting = spawn_lock(&waiter, &res);
    wait_subscribed(&nodes, &channel, "the waiter").await?;
    futures::future::try_join_all((0..5).map(|i| nodes.cluster.restart(i))).await?;
    for i in 0..5 {
        // Bounded, not hung: a restarted container answers within a second or two.
        nodes.wait_admin(i, Duration::from_secs(10)).await;
    }
    // Its keys are gone with the nodes' data: nothing is left to release.
    drop(held);
    // Fresh nodes: every subscription on them is a new one.
    let start = Instant::now();
    wait_subscribed(&nodes, &channel, "after the restart").await?;
    eprintln!("restart: subscribed again after {:?}", start.elapsed());
    assert!(!waiting.is_finished());
    let held = holder.lock(&res, Duration::from_secs(90)).await?;
    let hand_off = hand_off(held, waiting).await?;
    eprintln!("restart: hand-off {hand_off:?} (polling every 30 s)");
    Ok(())
}

/// Six clients take turns on one resource (hold 1 ms, then release and ask again at
/// once), polling only every 30 s, so within the run a client gets the lock from
/// another only when a release wakes it. The run lasts until every one of the six has
/// taken the lock over from another client at least 4 times, and at most 25 s, less
/// than the poll: a client that is not woken does so at most once (its first attempt)
/// and keeps the run going to its end, where the check fails. Every client keeps
/// asking until the run ends (each `lock()` is dropped then).
///
/// A seventh client with the default polling (every 100-200 ms) contends too: a round
/// in which every contender fails (split votes) frees the resource without a release to
/// announce, and it picks the resource up again instead of everyone waiting 30 s.
#[tokio::test(flavor = "multi_thread")]
async fn no_waiter_starves_under_steady_contention() -> TestResult {
    const WOKEN: usize = 6;
    let nodes = Nodes::start(5).await?;
    let res = resource("fairness");
    let mut clients = Vec::new();
    for id in 0..=WOKEN {
        let poll_every = if id < WOKEN {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(100)
        };
        // A generous node timeout: seven clients' rounds on a loaded 2-core machine can
        // take longer than 100 ms, and a timed-out request is not what this measures.
        clients.push(
            nodes
                .builder()
                .node_timeout(Duration::from_millis(500))
                .retry_delay(poll_every)
                .acquire_timeout(Duration::from_secs(60))
                .build()
                .await?,
        );
    }
    // The run's end: when every woken client has shown its take-overs, not after a
    // fixed time (on an idle machine that takes about a second; with both cores busy,
    // 8 s once held only 2 take-overs for some), and at most 25 s, below the 30 s poll.
    let limit = Duration::from_secs(25);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let start = Arc::new(Barrier::new(clients.len() + 1));
    // The holders in order: each client logs itself while it holds the lock.
    let holders = Arc::new(Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for (id, redlock) in clients.into_iter().enumerate() {
        let (res, start, holders) = (res.clone(), Arc::clone(&start), Arc::clone(&holders));
        let mut stop = stop_rx.clone();
        workers.push(tokio::spawn(async move {
            start.wait().await;
            // Every client asks until the run ends: no one has stopped contending
            // while any acquisition logged here is made.
            loop {
                let lock = tokio::select! {
                    lock = redlock.lock(&res, Duration::from_secs(5)) => lock?,
                    _ = stop.wait_for(|stopped| *stopped) => break,
                };
                if *stop.borrow() {
                    lock.release().await?;
                    break;
                }
                holders.lock().expect("log").push(id);
                tokio::time::sleep(Duration::from_millis(1)).await;
                lock.release().await?;
            }
            Ok::<_, fredlock::Error>(())
        }));
    }
    start.wait().await;
    let began = Instant::now();
    let counts = |holders: &[usize]| {
        let mut acquired = [0usize; WOKEN + 1];
        let mut taken_over = [0usize; WOKEN + 1];
        for (i, &id) in holders.iter().enumerate() {
            acquired[id] += 1;
            if i > 0 && holders[i - 1] != id {
                taken_over[id] += 1;
            }
        }
        (acquired, taken_over)
    };
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_, taken_over) = counts(&holders.lock().expect("log"));
        if taken_over[..WOKEN].iter().all(|&n| n >= 4) || began.elapsed() >= limit {
            break;
        }
    }
    stop_tx.send(true)?;
    let run = began.elapsed();
    for worker in workers {
        worker.await??;
    }
    let holders = holders.lock().expect("log");
    let (acquired, taken_over) = counts(&holders);
    eprintln!(
        "fairness: in {run:?}, acquisitions per client {acquired:?} (the last one polls), of \
         which taken over from another client {taken_over:?}"
    );
    // A client that just released and asks again at once may get the lock back, from
    // itself: only a take-over needs the wake-up.
    assert!(
        taken_over[..WOKEN].iter().all(|&n| n >= 4),
        "a client starved: taken over from another {taken_over:?} (acquired {acquired:?})"
    );
    Ok(())
}

/// `quit()` closes the wake-up connections too: with the service's own clients (which
/// `quit()` leaves open), a waiter that is still waiting stays subscribed until then,
/// and its subscriptions are gone from every node afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn quit_closes_the_wake_up_subscriptions() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    let waiter = fredlock::Redlock::from_clients(service_clients(nodes.urls()).await?)
        .restart_quarantine(fredlock::Quarantine::Off)
        .node_timeout(NODE_TIMEOUT)
        .acquire_timeout(Duration::from_secs(30))
        .build()
        .await?;
    let res = resource("quit-wake-up");
    let held = holder.lock(&res, Duration::from_secs(30)).await?;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move { waiter.lock(&res, Duration::from_secs(30)).await.map(drop) }
    });
    let channel = channel(&res);
    wait_subscribed(&nodes, &channel, "the waiter").await?;
    waiter.quit().await;
    let start = Instant::now();
    while subscribed_nodes(&nodes, &channel).await? > 0 {
        // Bounded, not hung: quit() closes the connections at once; each node drops their
        // subscriptions when it sees the close.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "subscriptions left after quit()"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !waiting.is_finished(),
        "the waiter stopped waiting: no evidence"
    );
    waiting.abort();
    held.release().await?;
    Ok(())
}

/// Each release is announced by every node; a waiter is woken twice per release, not
/// once per node: at the first announcement, and at the quorum's (the 3rd of 5), when
/// the release has surely reached a quorum. Here the same announcement arrives from
/// node 0, then from nodes 1 and 2, then from the last 2, while the resource stays
/// held: the waiter tries again after the first and the third, and then makes no
/// further attempt until its next poll (30 s), instead of spending its last retry at
/// once on the leftover announcements.
#[tokio::test(flavor = "multi_thread")]
async fn one_release_wakes_a_waiter_at_the_first_and_the_quorum_announcement() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let holder = nodes.redlock(NODE_TIMEOUT).await;
    let waiter = nodes
        .builder()
        .node_timeout(NODE_TIMEOUT)
        .retry_delay(Duration::from_secs(30))
        .retry_jitter(Duration::ZERO)
        .retry_count(3)
        .build()
        .await?;
    let res = resource("wake-once");
    let held = holder.lock(&res, Duration::from_secs(60)).await?;
    // The holder's lock returned at its quorum: wait until node 0 has run its
    // acquisition too, so that it is not counted as one of the waiter's.
    nodes
        .assert_held(&[0, 1, 2, 3, 4], &res, held.token())
        .await;
    // Each attempt of the waiter is one FCALL on node 0; nothing else runs one now.
    let before = nodes.calls(0, "fcall").await;
    let waiting = tokio::spawn({
        let (waiter, res) = (waiter.clone(), res.clone());
        async move { waiter.lock(&res, Duration::from_secs(60)).await.map(drop) }
    });
    let channel = channel(&res);
    wait_subscribed(&nodes, &channel, "the waiter").await?;
    let publish = |i: usize| {
        let channel = channel.clone();
        let nodes = &nodes;
        async move {
            let receivers = nodes
                .cmd(
                    i,
                    "PUBLISH",
                    vec![channel.into(), "a-released-token".into()],
                )
                .await?;
            assert_eq!(
                receivers.as_i64(),
                Some(1),
                "node {i}: PUBLISH reached {receivers:?}"
            );
            Ok::<_, BoxError>(())
        }
    };
    publish(0).await?;
    // The waiter wakes and tries again (its second attempt).
    // Bounded, not hung: the woken waiter tries within one round trip of the announcement.
    let limit = Duration::from_secs(5);
    nodes
        .wait_calls_above(&[0], "fcall", &[before + 1], limit)
        .await;
    publish(1).await?;
    publish(2).await?;
    // The quorum's announcement: the third attempt.
    nodes
        .wait_calls_above(&[0], "fcall", &[before + 2], limit)
        .await;
    publish(3).await?;
    publish(4).await?;
    // Woken again, the waiter would try within a round trip (plus its pause of up to
    // one round trip): 2 s is generous for that on a loaded machine.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = nodes.calls(0, "fcall").await - before;
    assert_eq!(
        attempts, 3,
        "the leftover announcements woke the waiter again"
    );
    assert!(
        !waiting.is_finished(),
        "the leftover announcements used up the waiter's retries: {:?}",
        waiting.await?
    );
    waiting.abort();
    held.release().await?;
    Ok(())
}

/// A subscription that timed out (every node slow while the waiter subscribed) is
/// tried again, so the release still wakes the waiter once the nodes are fast. While
/// the nodes are slow the waiter has opened its subscription connections and no node
/// has the subscription; once they are fast every node has it.
#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_subscription_is_tried_again() -> TestResult {
    let nodes = Nodes::start_with_proxies(5).await?;
    let holder = nodes.redlock(Duration::from_secs(2)).await;
    let waiter = nodes
        .builder()
        .node_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(300))
        .retry_delay(Duration::from_secs(30))
        .retry_jitter(Duration::ZERO)
        .acquire_timeout(Duration::from_secs(60))
        .build()
        .await?;
    let res = resource("resubscribe");
    let channel = channel(&res);
    let held = holder.lock(&res, Duration::from_secs(60)).await?;
    let mut before = Vec::new();
    for i in 0..5 {
        before.push(nodes.other_connections(i).await);
    }
    // Round trips of 800 ms: the waiter's attempt still answers (node timeout 2 s),
    // its SUBSCRIBE (bounded by the 300 ms connect timeout) does not.
    for i in 0..5 {
        nodes.cluster.set_latency(i, Duration::from_millis(400));
    }
    let waiting = spawn_lock(&waiter, &res);
    // The waiter opens its subscription connections (the node sees them at once: the
    // proxy delays bytes, not connecting) when its attempt has found the resource
    // taken, and tries to subscribe on them at once.
    let start = Instant::now();
    for (i, before) in before.into_iter().enumerate() {
        while nodes.other_connections(i).await <= before {
            assert!(
                start.elapsed() < SUBSCRIBED,
                "node {i}: no subscription connection within {SUBSCRIBED:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // That SUBSCRIBE gives up after 300 ms and needs 800 ms: it has failed 1 s later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        subscribed_nodes(&nodes, &channel).await?,
        0,
        "a SUBSCRIBE went through on a slow node: nothing here timed out"
    );
    for i in 0..5 {
        nodes.cluster.set_latency(i, Duration::ZERO);
    }
    wait_subscribed(&nodes, &channel, "once the nodes are fast").await?;
    assert!(!waiting.is_finished());
    let hand_off = hand_off(held, waiting).await?;
    eprintln!("resubscribe: hand-off {hand_off:?} (polling every 30 s)");
    Ok(())
}
