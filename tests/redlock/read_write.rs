//! Read-write locks on real nodes: readers share a resource's key (a sorted set of
//! their tokens), the writer (`lock()`) excludes them, and a waiting writer keeps new
//! readers out.

use std::time::{Duration, Instant};

use fred::prelude::Value;
use fredlock::{Error, Vote};

use crate::support::{Nodes, ROOMY, TestResult, resource};

const TTL: Duration = Duration::from_secs(10);

/// `TYPE key` on node `i`: "none", "string" (a writer) or "zset" (readers).
async fn key_type(nodes: &Nodes, i: usize, key: &str) -> String {
    let reply = nodes.cmd(i, "TYPE", vec![key.into()]).await.expect("TYPE");
    reply.as_string().unwrap_or_default()
}

/// The members of the readers' set on node `i`.
async fn members(nodes: &Nodes, i: usize, key: &str) -> Vec<String> {
    match nodes
        .cmd(i, "ZRANGE", vec![key.into(), 0.into(), (-1).into()])
        .await
        .expect("ZRANGE")
    {
        Value::Array(items) => items.iter().filter_map(Value::as_string).collect(),
        other => panic!("ZRANGE answered {other:?}"),
    }
}

/// Polls until `key` is gone from every node, for at most `limit`.
async fn assert_gone(nodes: &Nodes, key: &str, limit: Duration) {
    let start = Instant::now();
    for i in 0..3 {
        while key_type(nodes, i, key).await != "none" {
            assert!(start.elapsed() < limit, "`{key}` is still on node {i}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn readers_share_the_resource_and_exclude_the_writer() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("shared");
    let first = redlock.try_read_lock(&res, TTL).await?;
    let second = redlock.try_read_lock(&res, TTL).await?;
    assert_ne!(first.token(), second.token());
    // Readers at once get tokens in the order they ask.
    let first_token = first.fencing_token().await?;
    assert!(second.fencing_token().await? > first_token);
    let err = redlock
        .try_lock(&res, TTL)
        .await
        .expect_err("readers hold it");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    // Both readers are in the set on every node (a round returns at its quorum: the
    // third node's answer may come up to a node timeout later, and seconds on a
    // machine whose cores are busy; 5 s is half the readers' TTL).
    let mut want = vec![first.token().to_string(), second.token().to_string()];
    want.sort();
    let start = Instant::now();
    for i in 0..3 {
        loop {
            let mut got = members(&nodes, i, &res).await;
            got.retain(|m| !m.starts_with('#'));
            got.sort();
            if got == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "node {i}: {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let last_reader = second.fencing_token().await?;
    first.release().await?;
    second.release().await?;
    // Released, not expired: within half the readers' TTL.
    assert_gone(&nodes, &res, TTL / 2).await;

    let writer = redlock.try_lock(&res, TTL).await?;
    assert!(writer.fencing_token().await? > last_reader);
    let err = redlock
        .try_read_lock(&res, TTL)
        .await
        .expect_err("a writer holds it");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    for i in 0..3 {
        assert_eq!(key_type(&nodes, i, &res).await, "string", "node {i}");
    }
    writer.release().await?;
    redlock.try_read_lock(&res, TTL).await?.release().await?;
    Ok(())
}

/// A writer that found readers claims the resource: a new reader is refused while it
/// waits, the writer gets the lock once the readers present have left (woken by the
/// last one's release), and readers come back after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_writer_keeps_new_readers_out() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let writers = nodes.slow_poller(ROOMY).build().await?;
    let res = resource("writer-first");
    let reader = redlock.try_read_lock(&res, TTL).await?;
    let waiting = tokio::spawn({
        let (writers, res) = (writers.clone(), res.clone());
        async move { writers.lock(&res, TTL).await }
    });
    // The writer's first attempt failed and left its claim on every node.
    let start = Instant::now();
    for i in 0..3 {
        while !members(&nodes, i, &res)
            .await
            .contains(&"#writer".to_string())
        {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no claim on node {i}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nodes
        .wait_subscribers(&format!("fredlock:released:{res}"), 3)
        .await;
    let err = redlock
        .try_read_lock(&res, TTL)
        .await
        .expect_err("a writer waits");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    assert!(!waiting.is_finished());
    // The reader present may still renew its lock.
    let mut reader = reader;
    reader.extend(TTL).await?;

    reader.release().await?;
    let limit = Duration::from_secs(5);
    let Ok(writer) = tokio::time::timeout(limit, waiting).await else {
        panic!("the writer still waits {limit:?} after the last reader left");
    };
    let writer = writer??;
    writer.release().await?;
    redlock.try_read_lock(&res, TTL).await?.release().await?;
    Ok(())
}

/// A reader's lock lives by its TTL like a writer's: a reader that is neither released
/// nor kept alive stops blocking the writer when its TTL runs out, and one kept alive
/// keeps blocking it past several TTLs.
#[tokio::test]
async fn readers_expire_unless_kept_alive() -> TestResult {
    let nodes = Nodes::start(3).await?;
    // A TTL six node timeouts long: the keep-alive renews well before it ends even
    // when a renewal waits a node timeout on a busy machine.
    let redlock = nodes.redlock(Duration::from_millis(250)).await;
    let ttl = Duration::from_millis(1500);

    let kept = resource("kept-reader");
    let mut reader = redlock.try_read_lock(&kept, ttl).await?;
    reader.keep_alive();
    let lease = reader.lease();
    tokio::select! {
        reason = lease.lost() => panic!("lost: {reason}"),
        () = tokio::time::sleep(4 * ttl) => {}
    }
    let err = redlock
        .try_lock(&kept, ttl)
        .await
        .expect_err("the reader holds it");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    reader.release().await?;

    let forgotten = resource("forgotten-reader");
    let reader = redlock.try_read_lock(&forgotten, ttl).await?;
    let token = reader.token().to_string();
    // Not released: it must expire on the nodes by itself.
    std::mem::forget(reader);
    assert_gone(&nodes, &forgotten, 4 * ttl).await;
    let writer = redlock.try_lock(&forgotten, ttl).await?;
    assert_ne!(writer.token(), token);
    writer.release().await?;
    Ok(())
}

/// Readers overlap, so a reader's fencing round or extension must not cut the fencing
/// counter's life below what an earlier reader still there gave it (its TTL plus the
/// retention).
#[tokio::test]
async fn a_short_reader_keeps_the_counters_longer_life() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let res = resource("counter-life");
    let long = redlock.try_read_lock(&res, Duration::from_secs(50)).await?;
    let short = redlock.try_read_lock(&res, Duration::from_secs(1)).await?;
    long.fencing_token().await?;
    short.fencing_token().await?;
    let counter = crate::support::fence_key("", &res);
    // The long reader's fencing round gave the default retention plus 50 s; the short
    // one's would give the retention plus 1 s.
    let retention = i64::try_from(fredlock::DEFAULT_FENCING_RETENTION.as_millis())?;
    let floor = retention + 45_000;
    nodes.assert_pttl_above(&[0, 1, 2], &counter, floor).await;
    // Nor does its extension.
    let mut short = short;
    short.extend(Duration::from_secs(1)).await?;
    nodes.assert_pttl_above(&[0, 1, 2], &counter, floor).await;
    short.release().await?;
    long.release().await?;
    Ok(())
}

/// `lock_many` checks every key before it writes: blocked by one key, it leaves another
/// key's writer claim in place (it does not free a set it cannot take), so readers
/// stay out while that writer waits.
#[tokio::test]
async fn a_blocked_lock_many_keeps_another_writers_claim() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let redlock = nodes.redlock(ROOMY).await;
    let (claimed, held) = (resource("claimed"), resource("held-elsewhere"));
    for i in 0..3 {
        // A waiting writer's claim, its readers gone; and a key another writer holds.
        let until = now_ms(&nodes, i).await + 60_000;
        nodes
            .cmd(
                i,
                "ZADD",
                vec![claimed.as_str().into(), until.into(), "#writer".into()],
            )
            .await?;
        nodes.set(i, &held, "another-writer", 60_000).await;
    }
    let err = redlock
        .try_lock_many(&[&claimed, &held], TTL)
        .await
        .expect_err("one key is held");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    for i in 0..3 {
        assert_eq!(members(&nodes, i, &claimed).await, ["#writer"], "node {i}");
    }
    let err = redlock
        .try_read_lock(&claimed, TTL)
        .await
        .expect_err("claimed");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    Ok(())
}

/// Node `i`'s clock in milliseconds (`TIME`).
async fn now_ms(nodes: &Nodes, i: usize) -> i64 {
    match nodes.cmd(i, "TIME", vec![]).await.expect("TIME") {
        Value::Array(parts) => {
            let part = |j: usize| parts.get(j).and_then(Value::as_i64).unwrap_or(0);
            part(0) * 1000 + part(1) / 1000
        }
        other => panic!("TIME answered {other:?}"),
    }
}

/// How node 2, which holds the first reader, fails while the writer waits.
#[derive(Clone, Copy, Debug)]
enum Fault {
    /// Cut off from the writer only: the writer's endpoint for it is a socket that
    /// accepts connections and never answers; the readers still count on it.
    CutOff,
    /// Frozen (SIGSTOP): nobody can count on it.
    Frozen,
}

/// A waiting writer keeps new readers out of every node it reached, not only of those
/// where it found readers. Node 0 restarts empty (it forgets the first reader), then
/// node 2, which holds the reader, is cut off from the writer or freezes. The writer's
/// attempts find node 0 free, set their key there, fail (node 1 holds the reader, node
/// 2 does not answer) and remove it again: a writer that then left node 0 free would
/// let each new reader in with nodes 0 and 2 in the cut-off case, and so could wait for
/// ever while readers keep coming (with the claim only where it found readers, the
/// cut-off case granted a new reader, seen before the fix).
async fn a_waiting_writer_outlasts_arriving_readers(fault: Fault) -> TestResult {
    let nodes = Nodes::start(3).await?;
    let readers = nodes.redlock(ROOMY).await;
    // Accepts connections (the kernel does) and never reads: a node that is cut off.
    let hole = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut urls = nodes.urls();
    if let Fault::CutOff = fault {
        urls[2] = format!("redis://127.0.0.1:{}", hole.local_addr()?.port());
    }
    let writers = fredlock::Redlock::builder(urls)
        .restart_quarantine(fredlock::Quarantine::Off)
        .node_timeout(ROOMY)
        .acquire_timeout(Duration::from_secs(60))
        .build()
        .await?;
    let res = resource(&format!("outlast-{fault:?}"));
    // The first reader lasts the whole test: a container restart and a pause fit in
    // 120 s even on a machine whose cores are busy (checked below).
    let first = readers
        .try_read_lock(&res, Duration::from_secs(120))
        .await?;
    let token = first.token().to_string();
    let start = Instant::now();
    for i in 0..3 {
        while !members(&nodes, i, &res).await.contains(&token) {
            assert!(
                start.elapsed() < ROOMY * 5,
                "the reader never reached node {i}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    nodes.cluster.restart(0).await?;
    nodes.wait_admin(0, Duration::from_secs(30)).await;
    // Both clients use node 0 again before the writer starts (a probe on another
    // resource that node 0 grants).
    for client in [&readers, &writers] {
        let probe = resource(&format!("outlast-probe-{fault:?}"));
        let start = Instant::now();
        loop {
            let lock = client.try_lock(&probe, TTL).await;
            let reached = matches!(&lock, Ok(l) if l.votes().iter().next().map(|v| &v.vote) == Some(&Vote::Yes));
            if let Ok(lock) = lock {
                lock.release().await?;
            }
            if reached {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "node 0 never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    if let Fault::Frozen = fault {
        nodes.cluster.pause(2).await?;
    }
    let waiting = tokio::spawn({
        let (writers, res) = (writers.clone(), res.clone());
        async move { writers.lock(&res, TTL).await }
    });
    // The writer's first attempt claimed node 1 and set its key on node 0.
    let start = Instant::now();
    while !members(&nodes, 1, &res)
        .await
        .contains(&"#writer".to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the writer never claimed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New readers keep arriving, one every 50 ms for at least 2 s (several of the
    // writer's attempts and the pauses between them): none gets in.
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match readers.try_read_lock(&res, TTL).await {
            Err(Error::Taken { .. } | Error::NoQuorum { .. }) => {}
            Err(other) => panic!("{fault:?}: a new reader got {other:?}"),
            Ok(reader) => panic!(
                "{fault:?}: a new reader was granted while the writer waits: {}",
                reader.votes()
            ),
        }
        assert!(
            !waiting.is_finished(),
            "{fault:?}: the writer's lock() returned while the first reader holds"
        );
    }
    assert!(
        first.is_valid(),
        "the first reader ran out: the test took too long"
    );
    // The release reaches nodes 1 and 2 (node 0 forgot the reader); with node 2 frozen
    // that is no quorum, but the reader is gone from node 1 all the same.
    match (fault, first.release().await) {
        (Fault::CutOff, result) => result?,
        (Fault::Frozen, Err(Error::NoQuorum { votes, .. })) => {
            assert_eq!(votes.yes(), 1, "{votes}");
        }
        (Fault::Frozen, other) => panic!("the release with node 2 frozen: {other:?}"),
    }
    // Once the first reader left node 1, the writer's next attempt takes nodes 0 and 1;
    // its attempts come every retry delay (0.2-0.3 s) and its release wake-up sooner:
    // 30 s is a hundred attempts, room for a machine whose cores are busy.
    let limit = Duration::from_secs(30);
    let Ok(writer) = tokio::time::timeout(limit, waiting).await else {
        panic!("{fault:?}: the writer still waits {limit:?} after the first reader left");
    };
    let writer = writer??;
    writer.release().await?;
    if let Fault::Frozen = fault {
        nodes.cluster.unpause(2).await?;
    }
    drop(hole);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_writer_outlasts_readers_that_use_a_node_it_cannot_reach() -> TestResult {
    a_waiting_writer_outlasts_arriving_readers(Fault::CutOff).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_writer_outlasts_readers_beside_a_frozen_node() -> TestResult {
    a_waiting_writer_outlasts_arriving_readers(Fault::Frozen).await
}

/// A writer claims only when readers are in the way: a retrying `lock()` that fails
/// against another owner's key (as a go-redsync client would hold it) leaves nothing
/// on the node it set between its attempts, so other Redlock clients of the resource
/// see that node free.
#[tokio::test(flavor = "multi_thread")]
async fn a_writer_refused_by_another_writer_leaves_no_claim() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let writers = nodes
        .builder()
        .node_timeout(ROOMY)
        .retry_count(4)
        .retry_delay(Duration::from_millis(300))
        .retry_jitter(Duration::ZERO)
        .build()
        .await?;
    let res = resource("writer-vs-writer");
    for i in [0, 1] {
        nodes.set(i, &res, "another-owner", 30_000).await;
    }
    let scripts = nodes.script_calls(2).await;
    let waiting = tokio::spawn({
        let (writers, res) = (writers.clone(), res.clone());
        async move { writers.lock(&res, TTL).await }
    });
    // Node 2 holds the writer's key for a moment during each attempt (its removal
    // follows at once) and nothing between them: a claim would stay for the 300 ms
    // pause, which polls every 5 ms see.
    let mut seen = std::collections::BTreeSet::new();
    while !waiting.is_finished() {
        seen.insert(key_type(&nodes, 2, &res).await);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = waiting.await?.expect_err("held on 2 of 3");
    assert!(matches!(err, Error::Taken { .. }), "{err:?}");
    assert!(!seen.contains("zset"), "node 2 held: {seen:?}");
    // Node 2 ran the attempts and their removals (at least two of each, batched or
    // not), so there was a removal that could have left a claim.
    let ran = nodes.script_calls(2).await - scripts;
    assert!(ran >= 4, "node 2 ran {ran} scripts");
    assert_eq!(key_type(&nodes, 2, &res).await, "none");
    Ok(())
}
