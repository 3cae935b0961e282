//! Keys that fredlock did not write: another application's value at a resource's name
//! (with the default empty key prefix a resource's key is its name) or at a
//! semaphore's keys. Every entry point that can write a key refuses such a key, and
//! leaves it on every node exactly as it was: its type, its serialised value (`DUMP`)
//! and its expiry.

use std::time::Duration;

use fred::prelude::Value;
use fredlock::{Error, Redlock};

use crate::support::{Nodes, TestResult, resource};

const TTL: Duration = Duration::from_secs(10);
const NODES: usize = 3;

/// The kinds of foreign key: every Redis data type, and sorted sets whose scores look
/// like expired readers (small), live readers (far in the future on a clock in ms),
/// and the extremes.
const KINDS: &[&str] = &[
    "string",
    "list",
    "hash",
    "set",
    "zset-past",
    "zset-future",
    "zset-extremes",
    "stream",
];

/// Writes a foreign key of `kind` at `key` on node `i`, without expiry (so that any
/// expiry fredlock gave it would show).
async fn write_foreign(nodes: &Nodes, i: usize, key: &str, kind: &str) {
    let k = || Value::from(key);
    let (command, args): (&'static str, Vec<Value>) = match kind {
        "string" => ("SET", vec![k(), "their value".into()]),
        "list" => ("RPUSH", vec![k(), "a".into(), "b".into()]),
        "hash" => ("HSET", vec![k(), "field".into(), "value".into()]),
        "set" => ("SADD", vec![k(), "a".into(), "b".into()]),
        "zset-past" => (
            "ZADD",
            vec![k(), 1.into(), "a".into(), 2.into(), "b".into()],
        ),
        "zset-future" => ("ZADD", vec![k(), 4_000_000_000_000_i64.into(), "a".into()]),
        "zset-extremes" => (
            "ZADD",
            vec![
                k(),
                "-inf".into(),
                "low".into(),
                (-5).into(),
                "negative".into(),
                "+inf".into(),
                "high".into(),
            ],
        ),
        "stream" => (
            "XADD",
            vec![k(), "*".into(), "field".into(), "value".into()],
        ),
        other => panic!("unknown kind {other}"),
    };
    nodes.cmd(i, command, args).await.expect(command);
}

/// What a node holds at `key`: its type, its `DUMP` and its `PTTL`.
async fn snapshot(nodes: &Nodes, i: usize, key: &str) -> (Value, Value, Value) {
    let ask = |command: &'static str| nodes.cmd(i, command, vec![key.into()]);
    (
        ask("TYPE").await.expect("TYPE"),
        ask("DUMP").await.expect("DUMP"),
        ask("PTTL").await.expect("PTTL"),
    )
}

/// Writes a foreign key of every kind at `keys(kind)` on the nodes in `on`, runs
/// `attempt` for each kind, and checks that every key is byte for byte as it was on
/// every node, also once every request of the attempts (cleanup included) has been
/// answered. Returns the attempts' results.
async fn around<T, F, Fut>(
    nodes: &Nodes,
    on: &[usize],
    keys: impl Fn(&str) -> Vec<String>,
    mut attempt: F,
) -> Vec<(&'static str, Result<T, Error>)>
where
    F: FnMut(&'static str) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut before = Vec::new();
    for kind in KINDS {
        for key in keys(kind) {
            for &i in on {
                write_foreign(nodes, i, &key, kind).await;
            }
            for i in 0..NODES {
                before.push((key.clone(), i, snapshot(nodes, i, &key).await));
            }
        }
    }
    let mut results = Vec::new();
    for kind in KINDS {
        results.push((*kind, attempt(kind).await));
    }
    // A round returns at its quorum, and a failed attempt's cleanup runs after it: a
    // key that a late request or a cleanup changed would differ only once they ran.
    // Each runs within the node timeout; a PING on each node after 1 s (five node
    // timeouts, ten on a machine whose cores are busy) comes after them.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut changed = Vec::new();
    for (key, i, was) in before {
        let now = snapshot(nodes, i, &key).await;
        if now != was {
            changed.push(format!("node {i}: `{key}` was {was:?}, is {now:?}"));
        }
    }
    assert!(
        changed.is_empty(),
        "foreign keys changed:\n{}",
        changed.join("\n")
    );
    results
}

/// Every attempt was refused with `Taken` naming `name(kind)`.
fn assert_taken<T>(results: Vec<(&str, Result<T, Error>)>, name: impl Fn(&str) -> String) {
    for (kind, result) in results {
        match result {
            Err(Error::Taken { resource, .. }) => assert_eq!(resource, name(kind), "{kind}"),
            Err(other) => panic!("{kind}: expected Taken, got {other:?}"),
            Ok(_) => panic!("{kind}: a foreign key on every node was taken over"),
        }
    }
}

async fn setup() -> Result<(Nodes, Redlock), Box<dyn std::error::Error + Send + Sync>> {
    let nodes = Nodes::start(NODES).await?;
    // The default retries: lock() tries 3 times, and a writer that will try again
    // claims keys that look like readers' sets.
    let redlock = nodes.redlock(Duration::from_millis(200)).await;
    Ok((nodes, redlock))
}

fn name(kind: &str) -> String {
    resource(&format!("foreign-{kind}"))
}

const ALL: &[usize] = &[0, 1, 2];

#[tokio::test]
async fn try_lock_and_lock_leave_a_foreign_key_as_it_was() -> TestResult {
    let (nodes, redlock) = setup().await?;
    let r = &redlock;
    let results = around(
        &nodes,
        ALL,
        |k| vec![name(k)],
        |k| {
            let n = name(k);
            async move { r.try_lock(&n, TTL).await }
        },
    )
    .await;
    assert_taken(results, name);
    let results = around(
        &nodes,
        ALL,
        |k| vec![name(k)],
        |k| {
            let n = name(k);
            async move { r.lock(&n, TTL).await }
        },
    )
    .await;
    assert_taken(results, name);
    Ok(())
}

#[tokio::test]
async fn read_locks_leave_a_foreign_key_as_it_was() -> TestResult {
    let (nodes, redlock) = setup().await?;
    let r = &redlock;
    let results = around(
        &nodes,
        ALL,
        |k| vec![name(k)],
        |k| {
            let n = name(k);
            async move { r.try_read_lock(&n, TTL).await }
        },
    )
    .await;
    assert_taken(results, name);
    let results = around(
        &nodes,
        ALL,
        |k| vec![name(k)],
        |k| {
            let n = name(k);
            async move { r.read_lock(&n, TTL).await }
        },
    )
    .await;
    assert_taken(results, name);
    Ok(())
}

#[tokio::test]
async fn lock_many_leaves_a_foreign_key_as_it_was_and_nothing_of_its_own() -> TestResult {
    let (nodes, redlock) = setup().await?;
    let r = &redlock;
    let free = |k: &str| resource(&format!("foreign-free-{k}"));
    let joined = |k: &str| format!("{}, {}", free(k), name(k));
    for many in [false, true] {
        let results = around(
            &nodes,
            ALL,
            |k| vec![name(k)],
            |k| {
                let (a, b) = (free(k), name(k));
                async move {
                    let resources = [a.as_str(), b.as_str()];
                    if many {
                        r.lock_many(&resources, TTL).await
                    } else {
                        r.try_lock_many(&resources, TTL).await
                    }
                }
            },
        )
        .await;
        assert_taken(results, joined);
        for kind in KINDS {
            for i in 0..NODES {
                let left = nodes.cmd(i, "EXISTS", vec![free(kind).into()]).await?;
                assert_eq!(left.as_i64(), Some(0), "node {i}: `{}` left", free(kind));
            }
        }
    }
    Ok(())
}

/// A semaphore's keys live in fredlock's namespace (`fredlock:` after the prefix);
/// another application's key there, at every slot or at the semaphore's record, is
/// refused and left alone all the same.
#[tokio::test]
async fn a_semaphore_leaves_foreign_keys_at_its_slots_and_record_as_they_were() -> TestResult {
    let (nodes, redlock) = setup().await?;
    let r = &redlock;
    let sem = |k: &str| format!("foreign-semaphore-{k}");
    let slots = |k: &str| {
        (0..2)
            .map(|i| format!("fredlock:permit:{i}:{}", sem(k)))
            .collect()
    };
    for wait in [false, true] {
        let results = around(&nodes, ALL, slots, |k| {
            let s = sem(k);
            async move {
                let semaphore = r.semaphore(&s, 2)?;
                if wait {
                    semaphore.acquire(TTL).await
                } else {
                    semaphore.try_acquire(TTL).await
                }
            }
        })
        .await;
        assert_taken(results, sem);
    }
    let other = |k: &str| format!("foreign-record-{k}");
    let record = |k: &str| vec![format!("fredlock:semaphore:{}", other(k))];
    let results = around(&nodes, ALL, record, |k| {
        let s = other(k);
        async move { r.semaphore(&s, 2)?.try_acquire(TTL).await }
    })
    .await;
    for (kind, result) in results {
        assert!(result.is_err(), "{kind}: a permit over a foreign record");
    }
    Ok(())
}

/// With the foreign key on one node of three, a lock and a read lock are granted by
/// the other two (the foreign node votes `Taken`), and neither the grant nor the
/// release changes the foreign key.
#[tokio::test]
async fn a_foreign_key_on_a_minority_is_a_taken_vote_and_stays() -> TestResult {
    let (nodes, redlock) = setup().await?;
    let r = &redlock;
    for read in [false, true] {
        let minority = |k: &str| vec![resource(&format!("foreign-minority-{read}-{k}"))];
        let results = around(&nodes, &[0], minority, |k| {
            let n = minority(k).remove(0);
            async move {
                let lock = if read {
                    r.try_read_lock(&n, TTL).await?
                } else {
                    r.try_lock(&n, TTL).await?
                };
                let votes = lock.votes().clone();
                lock.release().await?;
                Ok(votes)
            }
        })
        .await;
        for (kind, result) in results {
            let votes = result.unwrap_or_else(|e| panic!("{kind} (read {read}): {e}"));
            // The round returns at its quorum, so the foreign node may not have
            // answered yet; when it has, it refused.
            let first = votes.iter().next().expect("votes").vote.clone();
            assert!(
                matches!(first, fredlock::Vote::Taken | fredlock::Vote::Pending),
                "{kind} (read {read}): {votes}"
            );
        }
    }
    Ok(())
}
