//! The protocol against in-memory nodes: what a granted lock's validity is, what a
//! failed attempt leaves behind, extension and release, and fencing tokens.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{acquire, extend, fence, release};
use crate::core::Core;
use crate::error::Error;
use crate::node::memory::{self, Memory, Mode};
use crate::request::Request;
use crate::settings::{Quarantine, Settings};
use crate::shared::Shared;

const TIMEOUT: Duration = Duration::from_millis(50);
const TTL: Duration = Duration::from_secs(10);

fn cluster(n: usize) -> (Core, Vec<Arc<Memory>>) {
    let (nodes, memories) = memory::nodes(n, TIMEOUT);
    let settings = Settings {
        quarantine: Quarantine::Off,
        node_timeout: TIMEOUT,
        ..Settings::default()
    };
    (Core::new(nodes, settings, false), memories)
}

fn request(core: &Core, resource: &str) -> Request {
    Request::one(resource, TTL, &core.settings).expect("valid")
}

/// Waits (bounded) until no node holds a lock key.
async fn assert_cleaned(memories: &[Arc<Memory>], key: &str) {
    let start = Instant::now();
    while memories.iter().any(|m| m.holder(key).is_some()) {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "`{key}` left on a node"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_granted_lock_is_valid_for_the_ttl_less_elapsed_and_drift() {
    let (core, memories) = cluster(5);
    let request = request(&core, "a");
    let start = Instant::now();
    let granted = acquire(&core, &request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    let end = Instant::now();
    // `ttl - drift` from the start of the round, which began between `start` and `end`.
    assert!(granted.valid_until >= request.ttl.valid_until(start, Duration::ZERO));
    assert!(granted.valid_until <= request.ttl.valid_until(end, Duration::ZERO));
    assert!(
        memories
            .iter()
            .all(|m| m.holder("a").as_deref() == Some(&*granted.token))
    );
}

#[tokio::test]
async fn a_taken_attempt_removes_its_token_from_the_nodes_that_said_yes() {
    let (core, memories) = cluster(5);
    let request = request(&core, "a");
    let first = acquire(&core, &request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    // Nodes 0 and 1 forget the first lock: the second attempt wins them, loses.
    for m in &memories[..2] {
        let keys = request.keys.clone();
        let op = crate::scripts::Op::release_keys(&keys, &first.token);
        m.run(&[Arc::new(op)], Instant::now() + TIMEOUT).await;
    }
    let failed = match acquire(&core, &request, 0).await {
        Ok(_) => panic!("granted twice"),
        Err(failed) => failed,
    };
    assert!(
        matches!(failed.error, Error::Taken { .. }),
        "{}",
        failed.error
    );
    assert!(memories[..2].iter().all(|m| m.holder("a").is_none()));
    assert!(
        memories[2..]
            .iter()
            .all(|m| m.holder("a").as_deref() == Some(&*first.token))
    );
}

#[tokio::test]
async fn a_late_acquisition_on_a_slow_node_is_removed_after_it_lands() {
    let (core, memories) = cluster(5);
    for m in &memories[..3] {
        m.set_mode(Mode::Slow(3 * TIMEOUT));
    }
    let request = request(&core, "a");
    let failed = match acquire(&core, &request, 0).await {
        Ok(_) => panic!("granted without a quorum in time"),
        Err(failed) => failed,
    };
    assert!(
        matches!(failed.error, Error::NoQuorum { .. }),
        "{}",
        failed.error
    );
    // The slow nodes set the key after their callers gave up; the removals queued
    // behind them delete it.
    if let Some(cleanup) = failed.cleanup {
        cleanup.await.expect("cleanup task");
    }
    for m in &memories[..3] {
        m.set_mode(Mode::Up);
    }
    tokio::time::sleep(4 * TIMEOUT).await;
    assert_cleaned(&memories, "a").await;
}

#[tokio::test]
async fn extend_moves_the_validity_and_release_removes_every_key() {
    let (core, memories) = cluster(3);
    let request = request(&core, "a");
    let granted = acquire(&core, &request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    let shared = Shared::new(granted.valid_until, TTL);
    let longer = request.retimed(2 * TTL, &core.settings).expect("valid");
    let before = shared.valid_until();
    extend(&core, &longer, &granted.token, &shared)
        .await
        .expect("extended");
    assert!(shared.valid_until() > before + TTL / 2);
    release(&core, &request, &granted.token, true)
        .await
        .expect("released");
    assert_cleaned(&memories, "a").await;
    // Extending a released lock: the nodes say it is not ours, the lock is lost.
    let err = extend(&core, &longer, &granted.token, &shared)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(shared.lost_reason().is_some());
}

/// Acquires `request` and makes its fencing tokens.
async fn fenced(core: &Core, request: &Request) -> (super::Granted, Arc<[u64]>) {
    let granted = acquire(core, request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    let shared = Shared::new(granted.valid_until, TTL);
    let fences = fence(core, request, &granted.token, &shared)
        .await
        .expect("fenced");
    (granted, fences)
}

#[tokio::test]
async fn fencing_tokens_increase_from_holder_to_holder_and_lagging_nodes_catch_up() {
    let (core, memories) = cluster(3);
    let request = request(&core, "a");
    let counter = &*request.fence_keys[0];
    // A lock nobody asks a token of leaves no counter.
    let plain = acquire(&core, &request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    release(&core, &request, &plain.token, true)
        .await
        .expect("released");
    assert!(memories.iter().all(|m| m.counter(counter).is_none()));
    let (first, first_fences) = fenced(&core, &request).await;
    release(&core, &request, &first.token, true)
        .await
        .expect("released");
    let (second, second_fences) = fenced(&core, &request).await;
    assert!(second_fences[0] > first_fences[0]);
    // Node 0's counter is far ahead (it saw a holder the others missed): the next
    // holder's token is its counter plus one, written back to the others before it is
    // handed out.
    release(&core, &request, &second.token, true)
        .await
        .expect("released");
    let ahead = second_fences[0] + 1_000_000;
    let token = Arc::from("elsewhere");
    let ops = [
        crate::scripts::Op::acquire(&request, &token, None, 0),
        crate::scripts::Op::catch_up(&request, &token, &Arc::from([ahead]), TTL),
        crate::scripts::Op::release_keys(&request.keys, &token),
    ];
    memories[0]
        .run(&ops.map(Arc::new), Instant::now() + TIMEOUT)
        .await;
    assert_eq!(memories[0].counter(counter), Some(ahead));
    let (_, third_fences) = fenced(&core, &request).await;
    assert_eq!(third_fences[0], ahead + 1);
    assert!(
        memories
            .iter()
            .all(|m| m.counter(counter) == Some(ahead + 1))
    );
}

#[tokio::test]
async fn a_fencing_round_hands_out_no_token_once_the_keys_are_not_ours() {
    let (core, _memories) = cluster(3);
    let request = request(&core, "a");
    let granted = acquire(&core, &request, 0)
        .await
        .map_err(|f| f.error)
        .expect("granted");
    let shared = Shared::new(granted.valid_until, TTL);
    release(&core, &request, &granted.token, true)
        .await
        .expect("released");
    let err = fence(&core, &request, &granted.token, &shared)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(shared.lost_reason().is_some());
}
