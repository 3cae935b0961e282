//! Semaphores and read-write locks under faults: independent clients contend on 5
//! nodes while one node is killed (and comes back empty after longer than a TTL) and
//! another is paused again and again. Every holder's window is recorded on one
//! monotonic clock, from the moment its acquisition returned to the moment its
//! release began or its validity ended, whichever came first; the windows are checked
//! afterwards: never more than 3 permit holders at once, never a writer together with
//! anyone else. Both checks also ask for the other side (3 permit holders at once, 2
//! readers at once): a run in which the holders never met would prove nothing.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fredlock::{Error, Redlock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::seed;
use crate::support::{Nodes, TestResult, resource};

const TTL: Duration = Duration::from_millis(500);
const NODE_TIMEOUT: Duration = Duration::from_millis(50);
/// The faults: node 0 killed from 1 s to 7 s (longer than a TTL: the delayed restart
/// that clients without the restart quarantine need), node 1 paused for 0.6 s out of
/// every 1.5 s from 2 s on; the run lasts 10 s.
const RUN: Duration = Duration::from_secs(10);

/// A holder's window on the shared clock, in microseconds since the run began.
#[derive(Clone, Copy, Debug)]
struct Window {
    from: u128,
    until: u128,
    /// A writer (read-write run) or a permit holder (semaphore run).
    exclusive: bool,
}

/// After each window opens or closes, in time order: (when, how many windows are
/// open, how many of them are exclusive).
fn sweep(windows: &[Window]) -> Vec<(u128, usize, usize)> {
    // (time, +1 open / -1 close, exclusive); closes sort before opens at one instant.
    let mut events: Vec<(u128, i8, bool)> = Vec::new();
    for w in windows.iter().filter(|w| w.until > w.from) {
        events.push((w.from, 1, w.exclusive));
        events.push((w.until, -1, w.exclusive));
    }
    events.sort_unstable();
    let (mut open, mut writers) = (0usize, 0usize);
    let mut states = Vec::with_capacity(events.len());
    for (at, step, exclusive) in events {
        if step > 0 {
            open += 1;
            writers += usize::from(exclusive);
        } else {
            open = open.saturating_sub(1);
            writers = writers.saturating_sub(usize::from(exclusive));
        }
        states.push((at, open, writers));
    }
    states
}

#[test]
fn sweep_counts_what_is_open_together() {
    let w = |from, until, exclusive| Window {
        from,
        until,
        exclusive,
    };
    let max_open = |ws: &[Window]| sweep(ws).iter().map(|s| s.1).max().unwrap_or(0);
    assert_eq!(max_open(&[w(0, 10, true), w(10, 20, true)]), 1);
    assert_eq!(
        max_open(&[w(0, 10, true), w(5, 20, true), w(6, 7, true)]),
        3
    );
    let states = sweep(&[w(0, 10, false), w(5, 20, true)]);
    assert!(
        states
            .iter()
            .any(|&(_, open, writers)| open == 2 && writers == 1)
    );
}

/// Node 0 killed, node 1 paused repeatedly, until the run ends; everything undone.
async fn faults(nodes: &Nodes, start: Instant) -> TestResult {
    let at = |secs: f64| start + Duration::from_secs_f64(secs);
    tokio::time::sleep_until(at(1.0).into()).await;
    nodes.cluster.kill(0).await?;
    let mut next_pause = 2.0;
    let mut restarted = false;
    while start.elapsed() < RUN {
        if !restarted && Instant::now() >= at(7.0) {
            nodes.cluster.restart(0).await?;
            restarted = true;
        }
        if Instant::now() >= at(next_pause) {
            nodes.cluster.pause(1).await?;
            tokio::time::sleep(Duration::from_millis(600)).await;
            nodes.cluster.unpause(1).await?;
            next_pause += 1.5;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes.cluster.unpause(1).await?;
    if !restarted {
        nodes.cluster.restart(0).await?;
    }
    Ok(())
}

/// What one client does in a round: take a permit, a read lock or a write lock.
#[derive(Clone, Copy)]
enum Take {
    Permit,
    Read,
    Write,
}

/// Runs `clients` clients, each taking what `choose` says and holding it for a random
/// time within its validity, under [`faults`]; returns every window and the number of
/// failed acquisitions by error kind.
async fn run(
    nodes: &Nodes,
    name: &str,
    clients: usize,
    choose: fn(&mut StdRng) -> Take,
) -> Result<(Vec<Window>, Vec<String>), Box<dyn std::error::Error + Send + Sync>> {
    let seed = seed();
    let windows = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let redlock: Redlock = nodes.builder().node_timeout(NODE_TIMEOUT).build().await?;
        let (windows, failures, name) = (windows.clone(), failures.clone(), name.to_string());
        let mut rng = StdRng::seed_from_u64(seed.wrapping_add(client as u64));
        tasks.push(tokio::spawn(async move {
            let semaphore = redlock.semaphore(&name, 3).expect("valid semaphore");
            while start.elapsed() < RUN {
                let take = choose(&mut rng);
                let held = match take {
                    Take::Permit => semaphore.acquire(TTL).await.map(Held::Permit),
                    Take::Read => redlock.read_lock(&name, TTL).await.map(Held::Lock),
                    Take::Write => redlock.lock(&name, TTL).await.map(Held::Lock),
                };
                let held = match held {
                    Ok(held) => held,
                    Err(e) => {
                        failures.lock().expect("poisoned").push(kind(&e));
                        continue;
                    }
                };
                let from = Instant::now();
                let valid_until = from + held.remaining();
                let work = Duration::from_millis(rng.random_range(0..150));
                tokio::time::sleep_until((from + work).min(valid_until).into()).await;
                let until = Instant::now().min(valid_until);
                windows.lock().expect("poisoned").push(Window {
                    from: from.duration_since(start).as_micros(),
                    until: until.duration_since(start).as_micros(),
                    exclusive: !matches!(take, Take::Read),
                });
                held.release().await;
            }
        }));
    }
    let faulted = faults(nodes, start).await;
    for task in tasks {
        task.await?;
    }
    faulted?;
    let windows = windows.lock().expect("poisoned").clone();
    let failures = failures.lock().expect("poisoned").clone();
    eprintln!(
        "{name}: seed {seed}: {} windows, {} failed acquisitions",
        windows.len(),
        failures.len()
    );
    Ok((windows, failures))
}

enum Held {
    Permit(fredlock::Permit),
    Lock(fredlock::Lock),
}

impl Held {
    fn remaining(&self) -> Duration {
        match self {
            Held::Permit(p) => p.remaining(),
            Held::Lock(l) => l.remaining(),
        }
    }

    /// Released; an expired or unconfirmed release is fine here, the windows decide.
    async fn release(self) {
        let _ = match self {
            Held::Permit(p) => p.release().await,
            Held::Lock(l) => l.release().await,
        };
    }
}

fn kind(error: &Error) -> String {
    let text = format!("{error:?}");
    text.split([' ', '{', '(']).next().unwrap_or("").to_string()
}

/// 10 clients, a semaphore of 3 permits: never more than 3 holders at once, and 3 at
/// once at times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_semaphore_never_has_more_holders_than_permits_under_faults() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let (windows, failures) = run(&nodes, &resource("permits"), 10, |_| Take::Permit).await?;
    let states = sweep(&windows);
    let most = states.iter().map(|s| s.1).max().unwrap_or(0);
    let over: Vec<_> = states.iter().filter(|s| s.1 > 3).collect();
    assert!(over.is_empty(), "more than 3 holders at once: {over:?}");
    assert_eq!(most, 3, "the permits were never all held at once");
    assert!(
        windows.len() >= 30,
        "only {} permits in {RUN:?}: {failures:?}",
        windows.len()
    );
    Ok(())
}

/// 8 clients, a third of their rounds as writers: a writer is never open together
/// with a reader or another writer, and readers share.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_and_writers_never_overlap_under_faults() -> TestResult {
    let nodes = Nodes::start(5).await?;
    let choose = |rng: &mut StdRng| {
        if rng.random_ratio(1, 3) {
            Take::Write
        } else {
            Take::Read
        }
    };
    let (windows, failures) = run(&nodes, &resource("read-write"), 8, choose).await?;
    let states = sweep(&windows);
    let clashes: Vec<_> = states
        .iter()
        .filter(|&&(_, open, writers)| writers > 0 && open > 1)
        .collect();
    assert!(clashes.is_empty(), "a writer with others: {clashes:?}");
    let readers_together = states
        .iter()
        .filter(|&&(_, open, writers)| writers == 0 && open >= 2)
        .count();
    assert!(readers_together > 0, "readers never shared the resource");
    let writers = windows.iter().filter(|w| w.exclusive).count();
    assert!(writers >= 5, "only {writers} writers: {failures:?}");
    assert!(
        windows.len() >= 30,
        "only {} holders: {failures:?}",
        windows.len()
    );
    Ok(())
}
