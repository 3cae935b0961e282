//! The contention checker: independent clients contend for one resource while a
//! nemesis injects faults on a minority of nodes; every holder's window is recorded on
//! one monotonic clock and checked for overlaps afterwards, every holder writes to a
//! fenced store with its token, and release and extend outcomes are counted.
//!
//! Three runs: without the restart quarantine (killed nodes stay down longer than a
//! TTL), with the default configuration (killed nodes come back at once), and one whose
//! holders overrun their validity on purpose, which fencing must then catch.
//!
//! Short runs by default; `FREDLOCK_SAFETY_SECS=600` for a long run, and
//! `FREDLOCK_SAFETY_SEED=<n>` to replay a fault schedule.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fredlock::{DEFAULT_QUARANTINE_PERIOD, Error, Lock, Redlock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::nemesis::{self, Restarts};
use crate::support::{Nodes, TestResult, count_keys, lift_quarantine, resource};

/// Clients, each its own `Redlock` with its own connections.
const CLIENTS: usize = 8;
/// Eight node timeouts (of the `NoQuarantine` clients): a round that takes its whole
/// node timeout still leaves most of the TTL as validity.
const TTL: Duration = Duration::from_secs(2);
/// The TTL of holders that work to the end of their validity or past it: short, so
/// that many of them fit in a run, and still above a round that takes its whole node
/// timeout.
const SHORT_TTL: Duration = Duration::from_millis(600);
/// Resources held by another client on nodes 0-2 for the whole run: a probe on one of
/// them is refused after nodes 3 and 4 set our key.
const BLOCKED: usize = 4;
/// The other client's value on the blocked resources.
const FOREIGN: &str = "another-client";
/// The TTL of the cleanup probes: far longer than the run's end takes to check.
const PROBE_TTL: Duration = Duration::from_secs(30);
/// The node timeout of the `NoQuarantine` clients (the `Defaults` clients keep
/// fredlock's 50 ms). A loopback round trip through the proxies takes a millisecond or
/// two on an idle machine, and tens of milliseconds, at times more, when both cores are
/// busy and two checker runs share them: with 50 ms, under that load, most rounds
/// timed out on some node and a run made 2 to 5 acquisitions in 12 s, too few to show
/// anything. 250 ms holds.
const NODE_TIMEOUT: Duration = Duration::from_millis(250);
/// A release or extend that starts with more validity left than this finds our key on
/// every node that granted it: a node's answer comes within the node timeout, and the
/// keys outlive the validity by the drift. An answer later than that is a timeout, not
/// "not ours".
const OPEN: Duration = Duration::from_millis(270);
/// Acquisitions per second the cluster must sustain while a majority is healthy: a
/// liveness floor (the run is not stuck), far below what the run reaches on an idle
/// machine (8-12/s), since two checker runs share two cores with each other.
const MIN_RATE: f64 = 1.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// `Quarantine::Off` (`Nodes::builder`), killed nodes down longer than a TTL.
    NoQuarantine,
    /// `Redlock::builder(urls).build()`, killed nodes back at once.
    Defaults,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holders {
    /// Some holders work until `remaining()` is nearly zero, none past it.
    Honest,
    /// Some holders work past their validity on purpose.
    Overrun,
}

/// One holder's window `[from, until)` on the shared clock, in microseconds since the
/// run began, and its writes to the fenced store.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    pub(crate) client: usize,
    pub(crate) from: u128,
    pub(crate) until: u128,
    pub(crate) token: u64,
    /// Worked past its validity on purpose.
    pub(crate) overran: bool,
    /// Worked until its validity was nearly over.
    pub(crate) to_the_end: bool,
    /// Sequence numbers of its first and last write to the fenced store, and whether
    /// the store took them. A holder makes its first write, and an honest holder its
    /// last, only while the lock is still valid (a holder descheduled for longer than
    /// its validity right after `lock()` returned skips it).
    pub(crate) first: Option<(u64, bool)>,
    pub(crate) last: Option<(u64, bool)>,
}

/// A store that takes a write only with a fencing token at least as large as every one
/// it took before (docs/fencing.md).
#[derive(Default)]
struct Fenced {
    highest: u64,
    writes: u64,
}

impl Fenced {
    fn write(store: &Mutex<Fenced>, token: u64) -> (u64, bool) {
        let mut store = store.lock().expect("poisoned");
        store.writes += 1;
        let taken = token >= store.highest;
        if taken {
            store.highest = token;
        }
        (store.writes, taken)
    }
}

/// What the holders saw, besides their windows.
#[derive(Default, Debug)]
struct Outcomes {
    extended: usize,
    extend_failed: usize,
    released: usize,
    /// Releases of locks whose validity had run out on our clock.
    release_late: usize,
    /// Releases that could not reach a quorum.
    release_no_quorum: usize,
    /// `Expired` with "not ours" from a majority, from a release or extend that began
    /// with more than `OPEN` left: the token vanished from a majority while the window
    /// was open.
    vanished: Vec<String>,
    probes: usize,
    /// Probes on a resource another client holds on 3 nodes, refused: the other 2 set
    /// our key (when they answer), which the attempt's cleanup must remove.
    blocked_refused: usize,
}

fn run_length() -> Duration {
    std::env::var("FREDLOCK_SAFETY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(12))
}

pub(crate) fn seed() -> u64 {
    std::env::var("FREDLOCK_SAFETY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

/// Sorts the windows by start and returns every pair of different holders that
/// overlap.
pub(crate) fn overlaps(windows: &mut [Window]) -> Vec<(Window, Window)> {
    windows.sort_by_key(|w| (w.from, w.until));
    let mut found = Vec::new();
    for (i, a) in windows.iter().enumerate() {
        for b in &windows[i + 1..] {
            if b.from >= a.until {
                break;
            }
            if b.client != a.client {
                found.push((*a, *b));
            }
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
        overran: false,
        to_the_end: false,
        first: None,
        last: None,
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
    check(Config::NoQuarantine, Holders::Honest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contention_under_minority_faults_with_the_default_configuration() -> TestResult {
    check(Config::Defaults, Holders::Honest).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_that_overrun_their_validity_are_fenced_off() -> TestResult {
    check(Config::NoQuarantine, Holders::Overrun).await
}

async fn client(nodes: &Nodes, config: Config) -> Result<Redlock, Error> {
    match config {
        Config::NoQuarantine => {
            nodes
                .builder()
                .node_timeout(NODE_TIMEOUT)
                .retry_delay(Duration::from_millis(5))
                .retry_jitter(Duration::from_millis(20))
                .retry_count(2)
                .build()
                .await
        }
        Config::Defaults => Redlock::builder(nodes.urls()).build().await,
    }
}

async fn check(config: Config, holders: Holders) -> TestResult {
    let length = run_length();
    let seed = seed();
    eprintln!(
        "safety checker ({config:?}, {holders:?}): seed {seed}, {length:?} \
         (replay with FREDLOCK_SAFETY_SEED={seed})"
    );
    let nodes = Arc::new(Nodes::start_with_proxies(5).await?);
    let res = resource("safety");
    let clock = Instant::now();
    let now = move || clock.elapsed().as_micros();

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client(&nodes, config).await?);
    }
    if config == Config::Defaults {
        // Fresh nodes: the operator's step for a first deployment.
        lift_quarantine(&clients[0]).await;
    }

    for k in 0..BLOCKED {
        for i in 0..3 {
            nodes.set(i, &blocked_resource(k), FOREIGN, 120_000).await;
        }
    }

    let windows: Arc<Mutex<Vec<Window>>> = Arc::default();
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let store: Arc<Mutex<Fenced>> = Arc::default();
    let began = Instant::now();
    let stop_at = began + length;
    // The holders stop together, when the nemesis does.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for (id, redlock) in clients.into_iter().enumerate() {
        let (res, windows, outcomes, store, done) = (
            res.clone(),
            Arc::clone(&windows),
            Arc::clone(&outcomes),
            Arc::clone(&store),
            Arc::clone(&done),
        );
        let mut rng = StdRng::seed_from_u64(seed ^ (id as u64 + 1));
        workers.push(tokio::spawn(async move {
            let mut probe = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if rng.random_bool(0.1) {
                    probe += 1;
                    let refused = cleanup_probe(&redlock, id, probe, &mut rng).await?;
                    let mut outcomes = outcomes.lock().expect("poisoned");
                    outcomes.probes += 1;
                    outcomes.blocked_refused += usize::from(refused);
                    continue;
                }
                let overran = holders == Holders::Overrun && rng.random_bool(0.3);
                let to_the_end = !overran && rng.random_bool(0.2);
                let ttl = if overran || to_the_end {
                    SHORT_TTL
                } else {
                    TTL
                };
                let mut lock = match redlock.lock(&res, ttl).await {
                    Ok(lock) => lock,
                    Err(e) if e.is_retryable() => continue,
                    Err(e) => return Err(e),
                };
                let from = now();
                let mut until = from + lock.remaining().as_micros();
                // Every holder asks for its token: the store checks their order.
                let token = match lock.fencing_token().await {
                    Ok(token) => token,
                    Err(e) if e.is_retryable() || matches!(e, Error::Expired { .. }) => {
                        release(lock, &outcomes).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let first = lock.is_valid().then(|| Fenced::write(&store, token));
                if overran {
                    work_past_the_end(&lock, &mut rng, Duration::from_millis(150)).await;
                } else if to_the_end {
                    work_to_the_end(&lock).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
                    if rng.random_bool(0.3) {
                        let extended = extend(&mut lock, &outcomes).await?;
                        // Whatever the outcome, the lock now ends where it says it does.
                        until = now() + lock.remaining().as_micros();
                        if extended {
                            let work = Duration::from_millis(rng.random_range(0..15));
                            tokio::time::sleep(work).await;
                        }
                    }
                }
                let last = (overran || lock.is_valid()).then(|| Fenced::write(&store, token));
                // An honest holder stops trusting the lock when its validity ends.
                let end = if overran { now() } else { now().min(until) };
                windows.lock().expect("poisoned").push(Window {
                    client: id,
                    from,
                    until: end,
                    token,
                    overran,
                    to_the_end,
                    first,
                    last,
                });
                release(lock, &outcomes).await?;
            }
            Ok::<(), Error>(())
        }));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let restarts = match config {
        // Down for longer than a TTL: the delayed restart.
        Config::NoQuarantine => Restarts::Delayed(TTL + Duration::from_millis(200)),
        Config::Defaults => Restarts::Prompt {
            quarantine: DEFAULT_QUARANTINE_PERIOD,
        },
    };
    let restore: Vec<(String, &str)> = (0..BLOCKED)
        .map(|k| (blocked_resource(k), FOREIGN))
        .collect();
    // The run lasts its length and then until it has shown what it must (a holder
    // that worked to the end, a refused probe, and in the overrun run a holder that
    // overran into another's window), at most five lengths: how many holds a run makes
    // depends on the machine's load (19 in 12 s once, with none of them an overlap),
    // and a run that shows nothing proves nothing.
    let give_up_at = began + length * 5;
    let shown = || {
        let mut windows = windows.lock().expect("poisoned").clone();
        let refused = outcomes.lock().expect("poisoned").blocked_refused > 0;
        let to_the_end = windows.iter().any(|w| w.to_the_end);
        let overlapped =
            holders == Holders::Honest || overlaps(&mut windows).iter().any(|(a, _)| a.overran);
        refused && to_the_end && overlapped
    };
    let stop = || {
        let now = Instant::now();
        now >= give_up_at || (now >= stop_at && shown())
    };
    let counts = nemesis::run(&nodes, &mut rng, restarts, &stop, &restore).await?;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let length = began.elapsed();
    for worker in workers {
        worker.await??;
    }

    let mut windows = std::mem::take(&mut *windows.lock().expect("poisoned"));
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("poisoned"));
    let acquisitions = windows.len();
    let to_the_end = windows.iter().filter(|w| w.to_the_end).count();
    let found = overlaps(&mut windows);
    // An overrunning holder's window may overlap the next holder's: fencing's case.
    let (fenced, violations): (Vec<_>, Vec<_>) = found.into_iter().partition(|(a, _)| a.overran);
    // `overlaps` sorted the windows by start: the order the holders acquired in.
    let token_violations: Vec<(Window, Window)> = windows
        .windows(2)
        .filter(|pair| pair[1].token <= pair[0].token)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    // Each overlap: the later holder wrote before the earlier one's last write, which
    // the store must have refused.
    let stale_writes_taken: Vec<&(Window, Window)> = fenced
        .iter()
        .filter(|(a, b)| match (a.last, b.first) {
            (Some((last, taken)), Some((first, _))) => first < last && taken,
            _ => false,
        })
        .collect();
    let refused_honest: Vec<&Window> = windows
        .iter()
        .filter(|w| {
            let refused = [w.first, w.last]
                .iter()
                .any(|write| write.is_some_and(|(_, taken)| !taken));
            !w.overran && refused
        })
        .collect();
    let rate = acquisitions as f64 / length.as_secs_f64();
    println!(
        "safety ({config:?}, {holders:?}): acquisitions={acquisitions} to_the_end={to_the_end} \
         {outcomes:?} faults={counts:?} violations={} fenced_overlaps={} \
         token_violations={} rate={rate:.1}/s seed={seed}",
        violations.len(),
        fenced.len(),
        token_violations.len()
    );
    assert!(
        violations.is_empty(),
        "overlapping holders: {violations:?} (seed {seed})"
    );
    assert!(
        refused_honest.is_empty(),
        "the fenced store refused holders within their validity: {refused_honest:?} \
         (seed {seed})"
    );
    assert!(
        stale_writes_taken.is_empty(),
        "the fenced store took writes from holders past their validity after a newer \
         holder wrote: {stale_writes_taken:?} (seed {seed})"
    );
    assert!(
        token_violations.is_empty(),
        "fencing tokens not strictly increasing: {token_violations:?} (seed {seed})"
    );
    if holders == Holders::Overrun {
        assert!(
            !fenced.is_empty(),
            "no holder overran into another's window: the run shows nothing (seed {seed})"
        );
    }
    // Without the quarantine, a killed node is down longer than any window, so a node
    // that granted the lock keeps the key while the window is open, and at most two
    // nodes (faulty ones) lack it: a majority never says "not ours". With prompt
    // restarts, a restarted node forgets keys of open windows: counted, not asserted.
    if config == Config::NoQuarantine {
        assert!(
            outcomes.vanished.is_empty(),
            "the token vanished from a majority while the window was open: {:?} (seed {seed})",
            outcomes.vanished
        );
    }
    // Nothing of ours is left once the holders are done: the probes' keys live 30 s,
    // so only their removal (after failed attempts, releases, dropped locks) can have
    // emptied the nodes by now. Bounded, not hung: a removal queued on a node that was
    // frozen or cut off at the end is delivered, or sent again (at most 1 s apart),
    // within a few seconds of the heal.
    for i in 0..5 {
        nodes.wait_admin(i, Duration::from_secs(10)).await;
    }
    let start = Instant::now();
    loop {
        let left = keys_left(&nodes).await;
        if left.iter().all(Vec::is_empty) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "probe keys left per node {left:?} after {} probes (seed {seed})",
            outcomes.probes
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        outcomes.blocked_refused > 0,
        "no probe was refused on a blocked resource: the cleanup of a failed attempt went \
         unexercised (seed {seed})"
    );
    assert!(
        to_the_end > 0,
        "no holder worked to the end of its validity (seed {seed})"
    );
    // Holders that overrun on purpose keep the resource past their validity: that run
    // measures fencing, not progress.
    assert!(
        holders == Holders::Overrun || rate >= MIN_RATE,
        "{rate:.1} acquisitions/s is below the floor of {MIN_RATE}/s (seed {seed})"
    );
    Ok(())
}

/// Past the validity on purpose, by 30 ms to `most`: another holder may take over
/// meanwhile.
pub(crate) async fn work_past_the_end(lock: &Lock, rng: &mut StdRng, most: Duration) {
    let most = most.max(Duration::from_millis(31));
    let past = rng.random_range(Duration::from_millis(30)..most);
    tokio::time::sleep(lock.remaining() + past).await;
}

/// To 1 ms before the end of the validity: the window closes as the keys could first
/// expire, so a validity that overstates shows as an overlap.
pub(crate) async fn work_to_the_end(lock: &Lock) {
    let left = lock.remaining().saturating_sub(Duration::from_millis(1));
    tokio::time::sleep(left).await;
}

/// Per node, the probe keys on it: any key of a probe of its own, and our key on a
/// blocked resource (the other client's is expected there).
async fn keys_left(nodes: &Nodes) -> Vec<Vec<String>> {
    let mut left = Vec::new();
    for i in 0..5 {
        let mut here = Vec::new();
        let probes = count_keys(nodes, i, &format!("{}*", resource("probe:"))).await;
        if probes > 0 {
            here.push(format!("{probes} probe keys"));
        }
        for k in 0..BLOCKED {
            let key = blocked_resource(k);
            if let Some(value) = nodes.get(i, &key).await {
                if value != FOREIGN {
                    here.push(key);
                }
            }
        }
        left.push(here);
    }
    left
}

/// One cleanup probe, with a 30 s TTL: a `try_lock` on a resource of its own, released,
/// dropped (released in the background) or refused under faults; or, one in two, on a
/// blocked resource. Returns whether it was refused on a blocked resource (`Taken`, or
/// `NoQuorum` when one of the other client's nodes is faulty).
async fn cleanup_probe(
    redlock: &Redlock,
    client: usize,
    n: usize,
    rng: &mut StdRng,
) -> Result<bool, Error> {
    let blocked = rng.random_bool(0.5);
    let probe = if blocked {
        blocked_resource(rng.random_range(0..BLOCKED))
    } else {
        resource(&format!("probe:{client}:{n}"))
    };
    match redlock.try_lock(&probe, PROBE_TTL).await {
        Ok(lock) if rng.random_bool(0.3) => drop(lock),
        Ok(lock) => match lock.release().await {
            Ok(()) | Err(Error::NoQuorum { .. }) => {}
            Err(e) => return Err(e),
        },
        Err(e) if e.is_retryable() => return Ok(blocked),
        Err(e) => return Err(e),
    }
    Ok(false)
}

fn blocked_resource(k: usize) -> String {
    resource(&format!("blocked:{k}"))
}

/// Extends by one TTL; counts the outcome. Returns whether it succeeded.
async fn extend(lock: &mut Lock, outcomes: &Mutex<Outcomes>) -> Result<bool, Error> {
    let left = lock.remaining();
    let result = lock.extend(TTL).await;
    let mut outcomes = outcomes.lock().expect("poisoned");
    match result {
        Ok(()) => {
            outcomes.extended += 1;
            Ok(true)
        }
        Err(e @ Error::Expired { .. }) => {
            // An extend whose quorum came after the validity ended is `Expired` too,
            // with yes votes: only "not ours" from a majority means the token vanished.
            if left > OPEN && not_ours_on_a_majority(&e) {
                outcomes
                    .vanished
                    .push(format!("extend with {left:?} left: {e}"));
            }
            outcomes.extend_failed += 1;
            Ok(false)
        }
        Err(Error::NoQuorum { .. } | Error::TooLate { .. }) => {
            outcomes.extend_failed += 1;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Whether a majority of the 5 nodes answered that the key no longer holds our token.
fn not_ours_on_a_majority(error: &Error) -> bool {
    error.votes().is_some_and(|votes| votes.taken() >= 3)
}

/// Releases; counts the outcome.
async fn release(lock: Lock, outcomes: &Mutex<Outcomes>) -> Result<(), Error> {
    let left = lock.remaining();
    let result = lock.release().await;
    let mut outcomes = outcomes.lock().expect("poisoned");
    match result {
        Ok(()) => outcomes.released += 1,
        Err(Error::Expired { .. }) if left.is_zero() => outcomes.release_late += 1,
        Err(e @ Error::Expired { .. }) => {
            if left > OPEN && not_ours_on_a_majority(&e) {
                outcomes
                    .vanished
                    .push(format!("release with {left:?} left: {e}"));
            }
            outcomes.release_late += 1;
        }
        Err(Error::NoQuorum { .. }) => outcomes.release_no_quorum += 1,
        Err(e) => return Err(e),
    }
    Ok(())
}
