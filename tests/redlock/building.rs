//! Building a `Redlock`: `build()` with nodes down or frozen, `from_clients` with the
//! service's own clients in every state, and what `quit()` and drop close.
//!
//! Connections are counted on the nodes themselves (`CLIENT LIST` on the admin
//! connection, leaving that connection out), so "closed" means the node no longer
//! has it.

use std::future::Future;
use std::time::{Duration, Instant};

use fred::prelude::{Builder as FredBuilder, Client, ClientLike, Config, Value};
use fredlock::{Error, Quarantine, Redlock, Vote};

use crate::support::{Nodes, TestResult, resource, service_clients};

const TTL: Duration = Duration::from_secs(30);

/// Polls until every node in `which` has `want` connections besides the admin one,
/// for at most 5 s: a close is one `QUIT` round trip, and the node drops the
/// connection right after. Panics with the counts otherwise.
async fn assert_connections(nodes: &Nodes, which: &[usize], want: usize, what: &str) {
    let start = Instant::now();
    loop {
        let mut counts = Vec::new();
        for &i in which {
            counts.push(nodes.other_connections(i).await);
        }
        if counts.iter().all(|&c| c == want) {
            return;
        }
        // Bounded, not hung: connections open or close within a connect timeout.
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: nodes {which:?} have {counts:?} connections besides the admin's, \
             expected {want} each"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether node `i` has fredlock's function library and its batch script in its
/// script cache.
async fn has_script(nodes: &Nodes, i: usize) -> bool {
    if !nodes.has_library(i).await {
        return false;
    }
    // The script's text: the library's code and the call of its function.
    let lua = concat!(
        include_str!("../../src/scripts/ops.lua"),
        "\nreturn batch(KEYS, ARGV)\n"
    );
    let sha = fred::types::scripts::Script::from_lua(lua).sha1().clone();
    let exists = nodes
        .cmd(i, "SCRIPT", vec!["EXISTS".into(), sha.into()])
        .await
        .expect("SCRIPT EXISTS");
    match exists {
        fred::prelude::Value::Array(flags) => flags.first().and_then(|f| f.as_u64()) == Some(1),
        other => panic!("SCRIPT EXISTS answered {other:?}"),
    }
}

/// Runs `f`, returning its output and how long it took; a run longer than 30 s
/// (what a wait that is not bounded by the connect timeout would show) fails.
async fn timed<T>(what: &str, f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} still running after 30 s: not bounded"));
    (out, start.elapsed())
}

/// Tries `lock` until node `i` holds the key too (the node came back and its client
/// reconnected), for at most 10 s.
async fn wait_used_again(nodes: &Nodes, redlock: &Redlock, res: &str, i: usize) -> TestResult {
    let start = Instant::now();
    loop {
        let lock = redlock.try_lock(res, TTL).await?;
        let on_node = nodes.get(i, res).await.as_deref() == Some(lock.token());
        lock.release().await?;
        if on_node {
            return Ok(());
        }
        // Bounded, not hung: fred reconnects every reconnect delay (100 ms).
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "node {i} was never used again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unconnected fred client for `url`, with a reconnect policy.
fn unconnected(url: &str) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    Ok(FredBuilder::from_config(Config::from_url(url)?)
        .set_policy(fred::prelude::ReconnectPolicy::new_constant(0, 100))
        .build()?)
}

/// `build()` with 2 of 5 nodes killed succeeds (a quorum connected), the lock is taken
/// on the three that are up, and the two nodes, restarted, are used again: they kept
/// reconnecting in the background.
#[tokio::test(flavor = "multi_thread")]
async fn build_with_a_killed_minority_locks_on_the_rest_and_reconnects_them() -> TestResult {
    let nodes = Nodes::start(5).await?;
    for i in [3, 4] {
        nodes.cluster.kill(i).await?;
    }
    let redlock = nodes
        .builder()
        .node_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(1))
        .reconnect_delay(Duration::from_millis(50))
        .build()
        .await?;
    let res = resource("build-killed-minority");
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2], &res).await;

    for i in [3, 4] {
        nodes.cluster.restart(i).await?;
        // Bounded, not hung: a restarted container answers within a second or two.
        nodes.wait_admin(i, Duration::from_secs(5)).await;
    }
    wait_used_again(&nodes, &redlock, &res, 3).await?;
    wait_used_again(&nodes, &redlock, &res, 4).await?;
    Ok(())
}

/// `build()` with 1 of 3 nodes frozen waits for it no longer than the connect timeout
/// (1 s): the frozen node takes all of it, then the build succeeds with the other two,
/// which take the lock at once. Unfrozen, the node is used again.
#[tokio::test(flavor = "multi_thread")]
async fn build_with_a_frozen_minority_is_bounded_by_the_connect_timeout() -> TestResult {
    let nodes = Nodes::start(3).await?;
    nodes.cluster.pause(2).await?;
    let connect_timeout = Duration::from_secs(1);
    let (built, took) = timed(
        "build() with a frozen node",
        nodes
            .builder()
            .node_timeout(Duration::from_millis(200))
            .connect_timeout(connect_timeout)
            .reconnect_delay(Duration::from_millis(50))
            .build(),
    )
    .await;
    let built = built.map_err(|e| format!("build failed after {took:?}: {e}"));
    let res = resource("build-frozen-minority");
    let locked = match &built {
        Ok(redlock) => Some(timed("try_lock", redlock.try_lock(&res, TTL)).await),
        Err(_) => None,
    };
    nodes.cluster.unpause(2).await?;
    let redlock = built?;
    // The frozen node never answers, so the wait for it ends at the connect timeout.
    assert!(
        took >= connect_timeout,
        "did not wait for the node: {took:?}"
    );
    // Bounded, not hung: the connect timeout, then scripts loaded into two healthy
    // nodes (milliseconds). 2 s of margin for a loaded machine; without the bound the
    // wait is fred's own or endless (caught by `timed` at 30 s).
    assert!(
        took < connect_timeout + Duration::from_secs(2),
        "build() took {took:?} with a connect timeout of {connect_timeout:?}"
    );
    let (lock, lock_took) = locked.expect("built");
    let lock = lock?;
    // Bounded, not hung: the two healthy nodes answer in milliseconds.
    assert!(lock_took < Duration::from_secs(1), "{lock_took:?}");
    nodes.assert_held(&[0, 1], &res, lock.token()).await;
    lock.release().await?;
    wait_used_again(&nodes, &redlock, &res, 2).await?;
    Ok(())
}

/// With 2 of 3 nodes down, `build()` is `Error::Connect` naming every node with its
/// outcome (refused for killed nodes, `Timeout` for frozen ones), within the connect
/// timeout, and the connection it made to the healthy node is closed again.
#[tokio::test(flavor = "multi_thread")]
async fn build_without_a_quorum_is_a_connect_error_naming_the_nodes() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let connect_timeout = Duration::from_secs(1);
    let build = || {
        nodes
            .builder()
            .node_timeout(Duration::from_millis(200))
            .connect_timeout(connect_timeout)
            .build()
    };
    let address = |i: usize| {
        nodes
            .cluster
            .url(i)
            .trim_start_matches("redis://")
            .to_string()
    };

    // Killed: refused at once.
    for i in [1, 2] {
        nodes.cluster.kill(i).await?;
    }
    let (built, took) = timed("build() with 2 of 3 killed", build()).await;
    let Err(Error::Connect { votes }) = &built else {
        panic!("expected Connect, got {built:?}");
    };
    let text = built.as_ref().expect_err("checked").to_string();
    assert_eq!(votes.len(), 3, "{votes}");
    for (i, nv) in votes.iter().enumerate() {
        assert_eq!(&*nv.node, address(i), "{votes}");
        assert!(text.contains(&address(i)), "node {i} is not named: {text}");
    }
    assert!(
        matches!(votes.iter().next().map(|v| &v.vote), Some(Vote::Yes)),
        "{votes}"
    );
    for nv in votes.iter().skip(1) {
        assert!(
            matches!(&nv.vote, Vote::Error(m) if m.contains("refused")),
            "a killed node: {votes}"
        );
    }
    // Bounded, not hung: refused connections answer at once, well within the
    // connect timeout (1 s), plus margin for a loaded machine.
    assert!(
        took < connect_timeout + Duration::from_secs(2),
        "build() took {took:?} with a connect timeout of {connect_timeout:?}"
    );
    assert_connections(&nodes, &[0], 0, "after Connect (killed)").await;

    // Frozen: they take the whole connect timeout, and no more.
    for i in [1, 2] {
        nodes.cluster.restart(i).await?;
        // Bounded, not hung: a restarted container answers within a second or two.
        nodes.wait_admin(i, Duration::from_secs(5)).await;
        nodes.cluster.pause(i).await?;
    }
    let (built, took) = timed("build() with 2 of 3 frozen", build()).await;
    for i in [1, 2] {
        nodes.cluster.unpause(i).await?;
    }
    let Err(Error::Connect { votes }) = &built else {
        panic!("expected Connect, got {built:?}");
    };
    for (i, nv) in votes.iter().enumerate() {
        assert_eq!(&*nv.node, address(i), "{votes}");
    }
    let outcomes: Vec<&Vote> = votes.iter().map(|v| &v.vote).collect();
    assert!(
        matches!(outcomes[..], [Vote::Yes, Vote::Timeout, Vote::Timeout]),
        "{votes}"
    );
    assert!(
        took >= connect_timeout,
        "did not wait for the nodes: {took:?}"
    );
    // Bounded, not hung: the connect timeout plus 2 s of margin.
    assert!(
        took < connect_timeout + Duration::from_secs(2),
        "build() took {took:?} with a connect timeout of {connect_timeout:?}"
    );
    assert_connections(&nodes, &[0, 1, 2], 0, "after Connect (frozen)").await;
    Ok(())
}

/// `from_clients` with the service's own connected clients: the lock is taken on every
/// node, the scripts are loaded into every node by `build()`, and fredlock opens no
/// connection of its own.
#[tokio::test(flavor = "multi_thread")]
async fn from_clients_locks_through_the_services_clients() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let clients = service_clients(nodes.urls()).await?;
    assert_connections(&nodes, &[0, 1, 2], 1, "the service's clients").await;
    let redlock = Redlock::from_clients(clients.clone())
        .restart_quarantine(Quarantine::Off)
        .node_timeout(Duration::from_millis(200))
        .build()
        .await?;
    for i in 0..3 {
        assert!(has_script(&nodes, i).await, "node {i}: scripts not loaded");
    }
    let res = resource("from-clients");
    let mut lock = redlock.lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    lock.extend(2 * TTL).await?;
    nodes.assert_pttl_above(&[0, 1, 2], &res, 50_000).await;
    lock.release().await?;
    nodes.assert_released(&[0, 1, 2], &res).await;
    assert_connections(&nodes, &[0, 1, 2], 1, "only the service's clients").await;
    Ok(())
}

/// `from_clients` uses the clients as given: two that are not connected are not
/// connected by `build()`, which does not wait for them, loads no script into their
/// node and does not ask for a quorum; their nodes vote "not connected" until the
/// service connects them, and from then on they take part.
#[tokio::test(flavor = "multi_thread")]
async fn from_clients_leaves_unconnected_clients_as_they_are() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let urls = nodes.urls();
    let mut clients = service_clients(urls[..1].to_vec()).await?;
    let idle = [unconnected(&urls[1])?, unconnected(&urls[2])?];
    clients.extend(idle.iter().cloned());
    let (built, took) = timed(
        "from_clients build()",
        Redlock::from_clients(clients)
            .restart_quarantine(Quarantine::Off)
            .node_timeout(Duration::from_millis(200))
            .build(),
    )
    .await;
    let redlock = built?;
    // Bounded, not hung: nothing is asked of the unconnected clients, so `build()`
    // does not wait out the 2 s script load bound on them.
    assert!(took < Duration::from_secs(1), "build() took {took:?}");
    assert!(
        idle.iter().all(|c| !c.is_connected()),
        "build() connected them"
    );
    assert!(has_script(&nodes, 0).await, "node 0: scripts not loaded");
    for i in [1, 2] {
        assert!(!has_script(&nodes, i).await, "node {i}: script loaded");
    }

    let res = resource("from-clients-unconnected");
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("one node of three");
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    for nv in votes.iter().skip(1) {
        assert!(
            matches!(&nv.vote, Vote::Error(m) if m.starts_with("not connected")),
            "{votes}"
        );
    }
    nodes.assert_released(&[0], &res).await;

    for client in &idle {
        client.init().await?;
    }
    // fredlock loads its library and script on a client's connection, in the
    // background. Wait for the load. Bounded, not hung: one round trip for each.
    let start = Instant::now();
    for i in [1, 2] {
        while !has_script(&nodes, i).await {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "node {i}: scripts not loaded on the connection"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    lock.release().await?;
    Ok(())
}

/// `from_clients` with a client whose node is dead: `build()` succeeds and the lock is
/// taken on the others; when the node is back, the service's client reconnects by its
/// own policy, fredlock loads its scripts again on that reconnection, and the node is
/// used again.
#[tokio::test(flavor = "multi_thread")]
async fn from_clients_with_a_dead_node_uses_it_again_once_it_is_back() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let clients = service_clients(nodes.urls()).await?;
    nodes.cluster.kill(2).await?;
    let redlock = Redlock::from_clients(clients.clone())
        .restart_quarantine(Quarantine::Off)
        .node_timeout(Duration::from_millis(200))
        .build()
        .await?;
    let res = resource("from-clients-dead");
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1], &res, lock.token()).await;
    lock.release().await?;

    nodes.cluster.restart(2).await?;
    // Bounded, not hung: a restarted container answers within a second or two.
    nodes.wait_admin(2, Duration::from_secs(5)).await;
    // The restarted node is empty: only a load on the client's reconnection fills
    // its script cache (nothing else is sent to it here).
    let start = Instant::now();
    while !has_script(&nodes, 2).await {
        // Bounded, not hung: the client reconnects every 100 ms and loads the scripts at
        // once.
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the scripts were not loaded on the reconnection (client connected: {})",
            clients[2].is_connected()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lock = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    lock.release().await?;
    Ok(())
}

/// fredlock bounds every request by its own node timeout, even through the service's
/// clients, which have no command timeout of their own: with 2 of 3 nodes frozen a
/// `try_lock` is `NoQuorum` with `Timeout` votes after about one node timeout.
#[tokio::test(flavor = "multi_thread")]
async fn from_clients_requests_are_bounded_by_the_node_timeout() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let clients = service_clients(nodes.urls()).await?;
    let redlock = Redlock::from_clients(clients)
        .restart_quarantine(Quarantine::Off)
        .node_timeout(Duration::from_millis(200))
        .build()
        .await?;
    let res = resource("from-clients-bounded");
    for i in [1, 2] {
        nodes.cluster.pause(i).await?;
    }
    let (result, took) = timed("try_lock with 2 of 3 frozen", redlock.try_lock(&res, TTL)).await;
    for i in [1, 2] {
        nodes.cluster.unpause(i).await?;
    }
    let err = result.expect_err("a majority is frozen");
    let Error::NoQuorum { votes, .. } = &err else {
        panic!("expected NoQuorum, got {err}");
    };
    assert_eq!(votes.failed(), 2, "{votes}");
    assert!(
        votes
            .iter()
            .skip(1)
            .all(|nv| matches!(nv.vote, Vote::Timeout)),
        "{votes}"
    );
    // Bounded, not hung: one 200 ms node timeout and the removal from the healthy
    // node; 2 s of margin. Unbounded, the request waits for the unpause (caught by
    // `timed`, which the pause outlasts).
    assert!(took < Duration::from_secs(2), "try_lock took {took:?}");
    nodes.assert_released(&[0, 1, 2], &res).await;

    // Extend and release of a held lock, and lock() with a retry (which waits for its
    // first attempt's cleanup), with the same 2 of 3 frozen: each bounded the same way.
    let retrying = Redlock::from_clients(service_clients(nodes.urls()).await?)
        .restart_quarantine(Quarantine::Off)
        .node_timeout(Duration::from_millis(200))
        .retry_count(1)
        .retry_delay(Duration::from_millis(10))
        .build()
        .await?;
    let mut held = redlock.try_lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, held.token()).await;
    for i in [1, 2] {
        nodes.cluster.pause(i).await?;
    }
    let (extended, took_extend) = timed("extend with 2 of 3 frozen", held.extend(TTL)).await;
    let (released, took_release) = timed("release with 2 of 3 frozen", held.release()).await;
    for i in [1, 2] {
        nodes.cluster.unpause(i).await?;
    }
    assert!(
        matches!(extended, Err(Error::NoQuorum { .. })),
        "{extended:?}"
    );
    assert!(
        matches!(released, Err(Error::NoQuorum { .. })),
        "{released:?}"
    );
    // Bounded, not hung: one 200 ms node timeout each, with 2 s of margin.
    assert!(
        took_extend < Duration::from_secs(2),
        "extend took {took_extend:?}"
    );
    assert!(
        took_release < Duration::from_secs(2),
        "release took {took_release:?}"
    );
    for i in [1, 2] {
        nodes.cluster.pause(i).await?;
    }
    let other = resource("from-clients-bounded-retry");
    let (result, took) = timed("lock() with 2 of 3 frozen", retrying.lock(&other, TTL)).await;
    for i in [1, 2] {
        nodes.cluster.unpause(i).await?;
    }
    assert!(matches!(result, Err(Error::NoQuorum { .. })), "{result:?}");
    // Bounded, not hung: two attempts of one 200 ms node timeout, the first one's
    // cleanup (bounded by the node timeout too) and a 10 ms pause; 3 s of margin.
    assert!(took < Duration::from_secs(4), "lock() took {took:?}");
    nodes.assert_released(&[0, 1, 2], &other).await;
    Ok(())
}

/// `from_clients` refuses two clients for the same `host:port`, naming it.
#[tokio::test]
async fn from_clients_refuses_two_clients_for_one_node() -> TestResult {
    let clients = [
        unconnected("redis://127.0.0.1:7001")?,
        unconnected("redis://127.0.0.1:7002")?,
        unconnected("redis://127.0.0.1:7001")?,
    ];
    match Redlock::from_clients(clients).build().await {
        Err(Error::Config { field, reason }) => {
            assert_eq!(field, "clients");
            assert!(reason.contains("127.0.0.1:7001"), "{reason}");
        }
        other => panic!("expected Config, got {other:?}"),
    }
    Ok(())
}

/// `quit()` on a `Redlock` built from URLs closes its connection to every node: a lock
/// still held keeps its keys (its release can no longer reach the nodes), and later
/// calls send nothing: every node votes "not connected" and no key is set.
#[tokio::test(flavor = "multi_thread")]
async fn quit_closes_the_connections_fredlock_opened() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    assert_connections(&nodes, &[0, 1, 2], 1, "before quit()").await;
    let res = resource("quit");
    let held = redlock.lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, held.token()).await;

    let ((), took) = timed("quit()", redlock.quit()).await;
    // Bounded, not hung: one QUIT round trip per node, within the connect timeout.
    assert!(took < Duration::from_secs(3), "quit() took {took:?}");
    assert_connections(&nodes, &[0, 1, 2], 0, "after quit()").await;

    let mut held = held;
    let extended = held.extend(TTL).await;
    assert!(
        matches!(&extended, Err(Error::NoQuorum { .. })),
        "extend after quit(): {extended:?}"
    );
    let token = held.token().to_string();
    let released = held.release().await;
    assert!(
        matches!(&released, Err(Error::NoQuorum { .. })),
        "release after quit(): {released:?}"
    );
    nodes.assert_held(&[0, 1, 2], &res, &token).await;
    for i in 0..3 {
        assert!(
            nodes.pttl(i, &res).await > 0,
            "node {i}: the key has no TTL"
        );
    }

    let other = resource("after-quit");
    for attempt in [
        redlock.try_lock(&other, TTL).await,
        redlock.lock(&other, TTL).await,
    ] {
        let Err(Error::NoQuorum { votes, .. }) = &attempt else {
            panic!("expected NoQuorum after quit(), got {attempt:?}");
        };
        assert!(
            votes
                .iter()
                .all(|nv| matches!(&nv.vote, Vote::Error(m) if m.starts_with("not connected"))),
            "{votes}"
        );
    }
    assert!(nodes.holding(0..3, &other).await.is_empty());
    assert_connections(&nodes, &[0, 1, 2], 0, "after locking after quit()").await;
    Ok(())
}

/// Dropping the last clone of a `Redlock` built from URLs closes its connections in
/// the background.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_last_clone_closes_the_connections() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    let clone = redlock.clone();
    let res = resource("drop-closes");
    redlock.lock(&res, TTL).await?.release().await?;
    drop(redlock);
    // A clone still holds them.
    clone.lock(&res, TTL).await?.release().await?;
    assert_connections(&nodes, &[0, 1, 2], 1, "with a clone left").await;
    drop(clone);
    assert_connections(&nodes, &[0, 1, 2], 0, "after the last drop").await;
    Ok(())
}

/// Asserts that every client answers `PING` within 5 s (bounded, not hung: a closed
/// client never answers).
async fn assert_answer_ping(clients: &[Client]) {
    for (i, client) in clients.iter().enumerate() {
        let pong = tokio::time::timeout(Duration::from_secs(5), client.ping::<Value>(None)).await;
        match pong {
            Ok(Ok(pong)) => assert_eq!(pong.as_str().as_deref(), Some("PONG")),
            other => panic!("client {i} does not answer PING: {other:?}"),
        }
    }
}

/// `quit()` and drop leave the service's own clients open: after both, every client
/// still answers `PING` and its connection is still on its node; between the two, the
/// `Redlock` still locks through them. A `Redlock` built from URLs and dropped after
/// ours has closed its own connections by the time they are counted.
#[tokio::test(flavor = "multi_thread")]
async fn quit_and_drop_leave_the_services_clients_open() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let clients = service_clients(nodes.urls()).await?;
    let redlock = Redlock::from_clients(clients.clone())
        .restart_quarantine(Quarantine::Off)
        .node_timeout(Duration::from_millis(200))
        .build()
        .await?;
    let res = resource("quit-service-clients");
    redlock.lock(&res, TTL).await?.release().await?;
    redlock.quit().await;
    assert_answer_ping(&clients).await;
    assert_connections(&nodes, &[0, 1, 2], 1, "after quit()").await;
    let lock = redlock.lock(&res, TTL).await?;
    nodes.assert_held(&[0, 1, 2], &res, lock.token()).await;
    lock.release().await?;

    let control = nodes.redlock(Duration::from_millis(200)).await;
    assert_connections(&nodes, &[0, 1, 2], 2, "with the control's").await;
    drop(redlock);
    drop(control);
    // The control's connections are closed in the background by its drop, spawned
    // after any close ours could have spawned: once they are gone, ours would be too.
    assert_connections(&nodes, &[0, 1, 2], 1, "after both drops").await;
    assert_answer_ping(&clients).await;
    Ok(())
}
