//! Two independent Redlock instances contending for one resource never both hold it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{Nodes, TestResult, resource};

/// One holding: who held the resource, from when until when, on the test's clock.
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub holder: (usize, usize),
    pub from: Instant,
    pub until: Instant,
}

/// Every pair of holdings by different holders whose intervals intersect.
pub fn overlapping(mut held: Vec<Held>) -> Vec<(Held, Held)> {
    held.sort_by_key(|h| h.from);
    let mut found = Vec::new();
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            if b.from >= a.until {
                break;
            }
            if b.holder != a.holder {
                found.push((*a, *b));
            }
        }
    }
    found
}

/// The holders' TTL: far longer than the run's end takes to check, so that only the
/// releases' removals can empty the nodes by then.
const TTL: Duration = Duration::from_secs(30);

/// Eight tasks in two instances each take the lock 15 times and hold it for 2 ms of
/// real time, recorded on one monotonic clock from the moment `lock()` returned to the
/// moment `release()` was called. No two holdings intersect.
#[tokio::test(flavor = "multi_thread")]
async fn two_instances_never_hold_the_same_resource_at_once() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let res = resource("contention");
    let held: Arc<Mutex<Vec<Held>>> = Arc::default();
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut workers = Vec::new();
    for instance in 0..2 {
        // Separate instances: separate connections, as two services would have.
        let redlock = nodes
            .builder()
            .node_timeout(Duration::from_millis(500))
            .retry_delay(Duration::from_millis(1))
            .retry_jitter(Duration::from_millis(5))
            .acquire_timeout(Duration::from_secs(10))
            .build()
            .await?;
        for task in 0..4 {
            let (redlock, res, held, tokens) = (
                redlock.clone(),
                res.clone(),
                Arc::clone(&held),
                Arc::clone(&tokens),
            );
            workers.push(tokio::spawn(async move {
                for _ in 0..15 {
                    let lock = redlock.lock(&res, TTL).await?;
                    tokens
                        .lock()
                        .expect("poisoned")
                        .push(lock.token().to_string());
                    let from = Instant::now();
                    // A real hold: a second holder has 2 ms to show, not a microsecond.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    let until = Instant::now();
                    held.lock().expect("poisoned").push(Held {
                        holder: (instance, task),
                        from,
                        until,
                    });
                    lock.release().await?;
                }
                Ok::<_, fredlock::Error>(())
            }));
        }
    }
    for worker in workers {
        worker.await??;
    }
    let held = std::mem::take(&mut *held.lock().expect("poisoned"));
    assert_eq!(held.len(), 2 * 4 * 15);
    let overlaps = overlapping(held);
    assert!(overlaps.is_empty(), "two holders at once: {overlaps:?}");
    // The last release returned at its quorum; the other nodes' removals follow within
    // a round trip. Bounded, not hung: 10 s holds when both cores are busy, and is a
    // third of the keys' TTL, so only a removal can have taken them away by then.
    let left = nodes
        .wait_absent(&[0, 1, 2, 3, 4], &res, Duration::from_secs(10))
        .await;
    if !left.is_empty() {
        let tokens = tokens.lock().expect("poisoned").clone();
        let mut found = Vec::new();
        for i in left {
            let value = nodes.get(i, &res).await;
            let holder = value.as_ref().is_some_and(|v| tokens.contains(v));
            found.push((i, value, nodes.pttl(i, &res).await, holder));
        }
        panic!("`{res}` is still on nodes (node, value, pttl ms, a holder's token): {found:?}");
    }
    Ok(())
}

#[test]
fn overlapping_finds_intersections_between_holders_only() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let h = |holder, from, until| Held {
        holder: (holder, 0),
        from: at(from),
        until: at(until),
    };
    assert!(overlapping(vec![h(0, 0, 10), h(1, 10, 20), h(0, 20, 30)]).is_empty());
    assert_eq!(overlapping(vec![h(0, 0, 10), h(1, 9, 20)]).len(), 1);
    // Nested inside a long holding, after a gap: still found.
    assert_eq!(
        overlapping(vec![h(0, 0, 100), h(1, 10, 20), h(2, 50, 60)]).len(),
        2
    );
}
