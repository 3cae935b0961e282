//! Two independent Redlock instances contending for one resource never both hold it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use crate::support::{Nodes, TestResult, resource};

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_never_hold_the_same_resource_at_once() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let res = resource("contention");
    let held = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(AtomicUsize::new(0));
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
            let redlock = redlock.clone();
            let res = res.clone();
            let held = Arc::clone(&held);
            let violations = Arc::clone(&violations);
            workers.push(tokio::spawn(async move {
                let mut acquired = 0usize;
                for _ in 0..15 {
                    let lock = redlock.lock(&res, Duration::from_secs(5)).await?;
                    if held.swap(true, Ordering::SeqCst) {
                        violations.fetch_add(1, Ordering::SeqCst);
                    }
                    acquired += 1;
                    tokio::task::yield_now().await;
                    // Cleared before the release, which is what frees the resource.
                    held.store(false, Ordering::SeqCst);
                    lock.release().await?;
                }
                Ok::<_, fredlock::Error>((instance, task, acquired))
            }));
        }
    }
    let mut total = 0;
    for worker in workers {
        let (instance, task, acquired) = worker.await??;
        assert_eq!(acquired, 15, "instance {instance} task {task}");
        total += acquired;
    }
    assert_eq!(total, 2 * 4 * 15);
    assert_eq!(violations.load(Ordering::SeqCst), 0, "two holders at once");
    // The last release returned at its quorum; the other nodes follow right after.
    nodes.assert_released(&[0, 1, 2, 3, 4], &res).await;
    Ok(())
}
