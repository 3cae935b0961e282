//! The contention checker: independent clients contend for one resource while a
//! nemesis injects faults on a minority of nodes; every holder's validity window is
//! recorded on one monotonic clock and checked for overlaps afterwards.
//!
//! Short run by default; `FREDLOCK_SAFETY_SECS=600` for a long run, and
//! `FREDLOCK_SAFETY_SEED=<n>` to replay a fault schedule.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fredlock::Error;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::support::{Nodes, TestResult, resource};

/// Clients, each its own `Redlock` with its own connections.
const CLIENTS: usize = 8;
const TTL: Duration = Duration::from_millis(500);
const NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// A killed node stays down longer than the TTL before it restarts empty: the
/// "delayed restart" remedy (the scenario tests show the hazard without it).
const RESTART_DELAY: Duration = Duration::from_millis(700);
/// At most this many nodes are faulty at once: a minority of 5.
const MAX_FAULTY: usize = 2;
/// Acquisitions per second the cluster must sustain while a majority is healthy.
const MIN_RATE: f64 = 5.0;

/// One holder's window `[from, until)` on the shared clock, in microseconds since the
/// run began.
#[derive(Clone, Copy, Debug)]
struct Window {
    client: usize,
    from: u128,
    until: u128,
    /// The holder's fencing token.
    token: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fault {
    Kill,
    Pause,
    Partition,
    Latency,
}

#[derive(Default, Debug)]
struct FaultCounts {
    kill: usize,
    pause: usize,
    partition: usize,
    latency: usize,
}

impl FaultCounts {
    fn add(&mut self, fault: Fault) {
        match fault {
            Fault::Kill => self.kill += 1,
            Fault::Pause => self.pause += 1,
            Fault::Partition => self.partition += 1,
            Fault::Latency => self.latency += 1,
        }
    }
}

fn run_length() -> Duration {
    std::env::var("FREDLOCK_SAFETY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(15))
}

fn seed() -> u64 {
    std::env::var("FREDLOCK_SAFETY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// Sorts the windows and returns every pair of different holders that overlap.
fn overlaps(windows: &mut [Window]) -> Vec<(Window, Window)> {
    windows.sort_by_key(|w| (w.from, w.until));
    let mut found = Vec::new();
    let mut latest: Option<Window> = None;
    for w in windows.iter() {
        if let Some(prev) = latest {
            // One client's windows follow each other; only two holders can overlap.
            if w.from < prev.until && w.client != prev.client {
                found.push((prev, *w));
            }
        }
        if latest.is_none_or(|prev| w.until > prev.until) {
            latest = Some(*w);
        }
    }
    found
}

#[test]
fn overlap_detection_finds_only_real_overlaps() {
    let w = |client, from, until| Window {
        client,
        from,
        until,
        token: 0,
    };
    assert!(overlaps(&mut [w(0, 0, 10), w(1, 10, 20), w(2, 20, 30)]).is_empty());
    assert_eq!(overlaps(&mut [w(0, 0, 10), w(1, 9, 20)]).len(), 1);
    // A short window nested inside a long one is caught even after a gap in between.
    assert_eq!(
        overlaps(&mut [w(0, 0, 100), w(1, 10, 20), w(2, 50, 60)]).len(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_under_minority_faults_keeps_mutual_exclusion() -> TestResult {
    let length = run_length();
    let seed = seed();
    eprintln!("safety checker: seed {seed}, {length:?} (replay with FREDLOCK_SAFETY_SEED={seed})");
    let nodes = Arc::new(Nodes::start_with_proxies(5).await?);
    let res = resource("safety");
    let clock = Instant::now();
    let now = move || clock.elapsed().as_micros();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(
            nodes
                .builder()
                .node_timeout(NODE_TIMEOUT)
                .retry_delay(Duration::from_millis(5))
                .retry_jitter(Duration::from_millis(20))
                .retry_count(2)
                .build()
                .await?,
        );
    }

    let windows: Arc<Mutex<Vec<Window>>> = Arc::default();
    let extensions = Arc::new(Mutex::new(0usize));
    let stop_at = Instant::now() + length;
    let mut workers = Vec::new();
    for (id, redlock) in clients.into_iter().enumerate() {
        let (res, windows, extensions) =
            (res.clone(), Arc::clone(&windows), Arc::clone(&extensions));
        let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1));
        workers.push(tokio::spawn(async move {
            while Instant::now() < stop_at {
                let mut lock = match redlock.lock(&res, TTL).await {
                    Ok(lock) => lock,
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err(e),
                };
                let from = now();
                let mut until = from + lock.remaining().as_micros();
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
                if rng.random_bool(0.3) {
                    let extended = lock.extend(TTL).await.is_ok();
                    // Whatever the outcome, the lock now ends where it says it does.
                    until = now() + lock.remaining().as_micros();
                    if extended {
                        *extensions.lock().expect("poisoned") += 1;
                        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
                    }
                }
                // The holder stops trusting the lock before it releases it.
                let end = now().min(until);
                windows.lock().expect("poisoned").push(Window {
                    client: id,
                    from,
                    until: end,
                    token: lock.fencing_token(),
                });
                match lock.release().await {
                    Ok(()) | Err(Error::Expired { .. } | Error::NoQuorum { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok::<(), Error>(())
        }));
    }

    // The nemesis: a seeded schedule of faults on at most MAX_FAULTY nodes at a time,
    // each undone after a while, and everything undone at the end.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut counts = FaultCounts::default();
    let mut active: Vec<(usize, Fault, Instant)> = Vec::new();
    while Instant::now() < stop_at {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;

        // Undo the faults whose time is up.
        let due: Vec<(usize, Fault, Instant)> = active
            .iter()
            .copied()
            .filter(|(_, _, until)| *until <= Instant::now())
            .collect();
        active.retain(|(_, _, until)| *until > Instant::now());
        for (node, fault, _) in due {
            undo(&nodes, node, fault).await?;
        }
        if active.len() < MAX_FAULTY && rng.random_bool(0.7) {
            let free: Vec<usize> = (0..5)
                .filter(|n| active.iter().all(|(a, _, _)| a != n))
                .collect();
            let node = free[rng.random_range(0..free.len())];
            let fault = [Fault::Kill, Fault::Pause, Fault::Partition, Fault::Latency]
                [rng.random_range(0..4)];
            let hold = match fault {
                Fault::Kill => RESTART_DELAY + Duration::from_millis(rng.random_range(0..500)),
                _ => Duration::from_millis(rng.random_range(100..1500)),
            };
            apply(&nodes, node, fault, &mut rng).await?;
            counts.add(fault);
            active.push((node, fault, Instant::now() + hold));
        }
    }
    for (node, fault, _) in active.drain(..) {
        undo(&nodes, node, fault).await?;
    }
    for worker in workers {
        worker.await??;
    }

    let mut windows = std::mem::take(&mut *windows.lock().expect("poisoned"));
    let acquisitions = windows.len();
    let extensions = *extensions.lock().expect("poisoned");
    let violations = overlaps(&mut windows);
    // `overlaps` sorted the windows by start: the order the holders acquired in.
    let token_violations: Vec<(Window, Window)> = windows
        .windows(2)
        .filter(|pair| pair[1].token <= pair[0].token)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    // A majority is healthy throughout, so progress is measured over the whole run.
    let rate = acquisitions as f64 / length.as_secs_f64();
    println!(
        "safety: acquisitions={acquisitions} extensions={extensions} faults: kill={} pause={} \
         partition={} latency={} violations={} token_violations={} rate={rate:.1}/s \
         seed={seed}",
        counts.kill,
        counts.pause,
        counts.partition,
        counts.latency,
        violations.len(),
        token_violations.len()
    );
    assert!(
        violations.is_empty(),
        "overlapping holders: {violations:?} (seed {seed})"
    );
    assert!(
        token_violations.is_empty(),
        "fencing tokens not strictly increasing: {token_violations:?} (seed {seed})"
    );
    assert!(
        rate >= MIN_RATE,
        "{rate:.1} acquisitions/s is below the floor of {MIN_RATE}/s (seed {seed})"
    );

    // Once the TTL has passed, nothing of ours is left on any node.
    tokio::time::sleep(TTL).await;
    let left = nodes
        .wait_absent(&[0, 1, 2, 3, 4], &res, Duration::from_secs(3))
        .await;
    assert!(left.is_empty(), "keys left on nodes {left:?} (seed {seed})");
    Ok(())
}

async fn apply(nodes: &Nodes, node: usize, fault: Fault, rng: &mut StdRng) -> TestResult {
    match fault {
        Fault::Kill => nodes.cluster.kill(node).await?,
        Fault::Pause => nodes.cluster.pause(node).await?,
        Fault::Partition => nodes.cluster.partition(node).await?,
        Fault::Latency => nodes
            .cluster
            .set_latency(node, Duration::from_millis(rng.random_range(20..200))),
    }
    Ok(())
}

async fn undo(nodes: &Nodes, node: usize, fault: Fault) -> TestResult {
    match fault {
        Fault::Kill => nodes.cluster.restart(node).await?,
        Fault::Pause => nodes.cluster.unpause(node).await?,
        Fault::Partition => nodes.cluster.heal(node).await?,
        Fault::Latency => nodes.cluster.set_latency(node, Duration::ZERO),
    }
    Ok(())
}
