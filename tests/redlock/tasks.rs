//! No task outlives its `Redlock`: building and dropping clients leaves the runtime
//! with the tasks it had, even when a node is frozen and cannot answer `QUIT`.
//!
//! The clients run on a runtime of their own, so that its task count is theirs alone
//! (the cluster's containers and admin connections stay on the test's runtime).

use std::future::Future;
use std::time::Duration;

use fredlock::{Quarantine, Redlock};
use tokio::sync::oneshot;

use crate::support::{Nodes, TestResult, alive_tasks, resource, service_clients, settle_tasks};

/// How long the dropped clients' tasks get to end: the longest `QUIT` to a frozen node
/// is bounded by the connect timeout (2 s at most here), after which every task is
/// aborted. Five times that holds when both cores are busy; a task that never ends
/// still fails the test.
const SETTLE: Duration = Duration::from_secs(10);

/// Runs `work` on a new one-worker runtime in its own thread.
async fn on_own_runtime<F, Fut>(work: F) -> TestResult
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = TestResult>,
{
    let thread = std::thread::spawn(move || -> TestResult {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(work())
    });
    tokio::task::spawn_blocking(move || thread.join())
        .await?
        .map_err(|_| "the client runtime's thread panicked")?
}

/// Twenty `from_clients` builds over the service's own five clients, each used and
/// dropped: the tasks fredlock started for them end with it.
#[tokio::test(flavor = "multi_thread")]
async fn from_clients_builds_leave_no_tasks_behind() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let urls = nodes.urls();
    on_own_runtime(move || async move {
        let clients = service_clients(urls).await?;
        let baseline = alive_tasks();
        for _ in 0..20 {
            // Each lock and release needs a quorum's answers in time: the default 50 ms
            // once was not enough for four of five nodes on a loaded machine. A
            // loopback round trip takes a millisecond or two; 1 s holds when both cores
            // are busy.
            let redlock = Redlock::from_clients(clients.clone())
                .restart_quarantine(Quarantine::Off)
                .node_timeout(Duration::from_secs(1))
                .build()
                .await?;
            redlock
                .lock(&resource("tasks"), Duration::from_secs(5))
                .await?
                .release()
                .await?;
            drop(redlock);
        }
        let alive = settle_tasks(baseline, SETTLE).await;
        assert!(alive <= baseline, "{alive} tasks alive, {baseline} before");
        Ok(())
    })
    .await
}

/// Runs `work` on a runtime of its own (see [`on_own_runtime`]); when `work` sends on
/// its first argument, node `node` is paused, and `work` is told so on its second.
/// The node is unpaused at the end.
async fn pause_during<F, Fut>(nodes: &Nodes, node: usize, work: F) -> TestResult
where
    F: FnOnce(oneshot::Sender<()>, oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: Future<Output = TestResult>,
{
    let (ready_tx, ready_rx) = oneshot::channel::<()>();
    let (paused_tx, paused_rx) = oneshot::channel::<()>();
    let clients = on_own_runtime(move || work(ready_tx, paused_rx));
    let cluster = &nodes.cluster;
    let freeze = async move {
        // A `work` that failed before asking for the pause dropped its sender: nothing
        // to pause, and its own error (returned below) says what went wrong.
        if ready_rx.await.is_err() {
            return Ok(());
        }
        cluster.pause(node).await?;
        let _ = paused_tx.send(());
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    let (clients, frozen) = tokio::join!(clients, freeze);
    nodes.cluster.unpause(node).await?;
    // The clients' error first: a failed pause shows there as a `RecvError` too.
    clients?;
    frozen
}

/// A `Redlock` dropped while one of its nodes is frozen: the `QUIT` to that node
/// times out, and its tasks must end anyway. A waiter has started the wake-up
/// connections too.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_redlock_with_a_frozen_node_ends_its_tasks() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let urls = nodes.urls();
    pause_during(&nodes, 2, move |built_tx, paused_rx| async move {
        let baseline = alive_tasks();
        // The lock and the release need a quorum's answers: a node timeout far above
        // a loopback round trip on a machine whose cores are busy (the default 50 ms
        // once was not, and the test failed before it froze anything). The frozen
        // node's `QUIT` is bounded by the connect timeout, not by this.
        let redlock = Redlock::builder(urls)
            .restart_quarantine(Quarantine::Off)
            .node_timeout(Duration::from_secs(1))
            .connect_timeout(Duration::from_millis(500))
            .retry_delay(Duration::from_millis(100))
            .build()
            .await?;
        let res = resource("frozen-quit");
        let held = redlock.lock(&res, Duration::from_secs(5)).await?;
        // A waiter that finds it taken subscribes to its release.
        let _ = redlock.lock(&res, Duration::from_secs(5)).await;
        held.release().await?;
        let _ = built_tx.send(());
        paused_rx.await?;
        drop(redlock);
        let alive = settle_tasks(baseline, SETTLE).await;
        assert!(alive <= baseline, "{alive} tasks alive, {baseline} before");
        Ok(())
    })
    .await
}

/// A release that timed out on a frozen node is sent again until its keys expire
/// (60 s here), but not after the `Redlock` is dropped: that task ends with it.
#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_redlock_ends_the_resending_of_a_release() -> TestResult {
    let nodes = Nodes::start(3).await?;
    let urls = nodes.urls();
    pause_during(&nodes, 2, move |held_tx, paused_rx| async move {
        let baseline = alive_tasks();
        // Far above a loopback round trip on a machine whose cores are busy: the
        // lock and the release need the two live nodes' answers in time. The frozen
        // node's release times out after it either way.
        let redlock = Redlock::builder(urls)
            .restart_quarantine(Quarantine::Off)
            .node_timeout(Duration::from_secs(1))
            .build()
            .await?;
        let held = redlock
            .lock(&resource("resent-release"), Duration::from_secs(60))
            .await?;
        let _ = held_tx.send(());
        paused_rx.await?;
        // Nodes 0 and 1 release it; node 2 times out, and is sent it again.
        held.release().await?;
        drop(redlock);
        let alive = settle_tasks(baseline, SETTLE).await;
        assert!(alive <= baseline, "{alive} tasks alive, {baseline} before");
        Ok(())
    })
    .await
}
