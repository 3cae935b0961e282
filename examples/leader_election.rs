//! Leader election with fredlock, on a throwaway 5-node Redis cluster in Docker.
//!
//! Three candidates, each with its own `Redlock` (as three processes would have),
//! campaign with `lock("leader", ttl)`. The winner leads: it keeps the lock alive in
//! the background (`keep_alive`) and acts every 250 ms, each action stamped with its
//! fencing token and appended to a journal that refuses a token below the highest it
//! has seen. It watches `lease.lost()` and stops leading the moment the lease is lost.
//!
//! The demo then pauses 3 of the 5 nodes (a majority): the leader's renewals fail, its
//! lease is lost and it steps down at once, then sits out a while. The nodes come back,
//! another candidate wins with a higher token, and leads. The demo ends by itself, in
//! about 10 s, and fails if any step takes longer than its bound.
//!
//! ```sh
//! FREDLOCK_REDIS_IMAGE=$(scripts/redis-image.sh | tail -n 1) cargo run --example leader_election
//! ```

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fredlock::{LostReason, Redlock};
use fredlock_testcluster::Cluster;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

const RESOURCE: &str = "leader";
const CANDIDATES: usize = 3;
const TTL: Duration = Duration::from_secs(2);
const ACTION_EVERY: Duration = Duration::from_millis(250);
/// How long the majority stays paused; longer than the TTL, so the old leader's keys
/// have expired everywhere when the nodes come back.
const OUTAGE: Duration = Duration::from_secs(3);
/// How long a candidate that lost the lead waits before campaigning again.
const SIT_OUT: Duration = Duration::from_secs(8);
/// Bounds each step of the demo, and every candidate's life.
const STEP: Duration = Duration::from_secs(15);
const LIFETIME: Duration = Duration::from_secs(60);

/// What the leaders act on: it remembers the highest token it has accepted and
/// refuses an action stamped with a lower one.
#[derive(Default)]
struct Journal {
    entries: Mutex<(u64, Vec<(u64, String)>)>,
}

impl Journal {
    fn append(&self, token: u64, entry: String) -> Result<(), String> {
        let mut guard = self.entries.lock().map_err(|e| e.to_string())?;
        let (highest, entries) = &mut *guard;
        if token < *highest {
            return Err(format!("refused: token {token} is below {highest}"));
        }
        *highest = token;
        entries.push((token, entry));
        Ok(())
    }
}

enum Event {
    Leads { who: usize, token: u64 },
    Acted { who: usize, token: u64, n: u32 },
    SteppedDown { who: usize, token: u64, why: String },
}

/// One candidate: campaign, lead until the lease is lost or the demo stops, sit out,
/// campaign again.
async fn candidate(
    who: usize,
    redlock: Redlock,
    journal: Arc<Journal>,
    events: mpsc::UnboundedSender<(Instant, Event)>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), fredlock::Error> {
    let end = Instant::now() + LIFETIME;
    while Instant::now() < end && !*stop.borrow() {
        let campaign = tokio::select! {
            _ = stop.changed() => break,
            campaign = redlock.lock(RESOURCE, TTL) => campaign,
        };
        let mut lock = match campaign {
            Ok(lock) => lock,
            // Someone else leads, or too few nodes answer: campaign again.
            Err(e) if e.is_retryable() => continue,
            Err(e) => return Err(e),
        };
        // No token, no leadership: a leader that cannot fence its actions steps down
        // (the lock lost, or too few nodes answer) and campaigns again.
        let token = match lock.fencing_token().await {
            Ok(token) => token,
            Err(e) if e.is_retryable() || matches!(e, fredlock::Error::Expired { .. }) => {
                let _ = lock.release().await;
                continue;
            }
            Err(e) => return Err(e),
        };
        lock.keep_alive();
        let lease = lock.lease();
        let _ = events.send((Instant::now(), Event::Leads { who, token }));

        let mut tick = tokio::time::interval(ACTION_EVERY);
        let mut n = 0;
        let why = loop {
            tokio::select! {
                biased;
                reason = lease.lost() => break Some(reason.to_string()),
                _ = stop.changed() => break None,
                _ = tick.tick() => {
                    // The lease can run out between two checks of `lost()`.
                    if !lease.is_valid() {
                        break Some(LostReason::Expired.to_string());
                    }
                    n += 1;
                    let entry = format!("action {n} of candidate {who}");
                    if let Err(refused) = journal.append(token, entry) {
                        break Some(format!("the journal says {refused}"));
                    }
                    let _ = events.send((Instant::now(), Event::Acted { who, token, n }));
                }
            }
        };
        match why {
            None => {
                // The demo is over: hand the lead back.
                let _ = lock.release().await;
                break;
            }
            Some(why) => {
                drop(lock); // released in the background, where the nodes still answer
                let _ = events.send((Instant::now(), Event::SteppedDown { who, token, why }));
                tokio::select! {
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(SIT_OUT) => {}
                }
            }
        }
    }
    redlock.quit().await;
    Ok(())
}

/// Prints events until `until` returns true for one of them, and returns that one.
async fn watch_until(
    events: &mut mpsc::UnboundedReceiver<(Instant, Event)>,
    start: Instant,
    what: &str,
    until: impl Fn(&Event) -> bool,
) -> Result<Event, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + STEP;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (when, event) = match timeout(left, events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => return Err(format!("every candidate ended before {what}").into()),
            Err(_) => return Err(format!("no {what} within {STEP:?}").into()),
        };
        let at = when.duration_since(start).as_secs_f64();
        match &event {
            Event::Leads { who, token } => {
                println!("{at:6.2}s  candidate {who} leads, fencing token {token}");
            }
            Event::Acted { who, token, n } => {
                println!("{at:6.2}s    candidate {who} acts ({n}), stamped {token}");
            }
            Event::SteppedDown { who, token, why } => {
                println!("{at:6.2}s  candidate {who} (token {token}) steps down: {why}");
            }
        }
        if until(&event) {
            return Ok(event);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cluster = Cluster::start(5).await?;
    let start = Instant::now();
    let journal = Arc::new(Journal::default());
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (stop_tx, stop) = watch::channel(false);

    let mut candidates = Vec::new();
    for who in 0..CANDIDATES {
        let redlock = Redlock::builder(cluster.urls())
            .acquire_timeout(Duration::from_secs(3))
            .build()
            .await?;
        if who == 0 {
            // A new deployment: no lock can be held yet (docs/safety.md).
            redlock.lift_restart_quarantine().await;
        }
        let task = candidate(
            who,
            redlock,
            Arc::clone(&journal),
            events_tx.clone(),
            stop.clone(),
        );
        candidates.push(tokio::spawn(task));
    }
    drop(events_tx);
    println!("{CANDIDATES} candidates campaign for {RESOURCE:?} on 5 nodes (TTL {TTL:?})");

    let first = watch_until(&mut events, start, "leader", |e| {
        matches!(e, Event::Leads { .. })
    })
    .await?;
    let Event::Leads {
        who: old,
        token: old_token,
    } = first
    else {
        return Err("unreachable: not a Leads event".into());
    };
    watch_until(&mut events, start, "fourth action", |e| {
        matches!(e, Event::Acted { n: 4, .. })
    })
    .await?;

    let at = start.elapsed().as_secs_f64();
    println!("{at:6.2}s  >> pausing nodes 0, 1 and 2 (a majority) for {OUTAGE:?}");
    let paused_at = Instant::now();
    for i in 0..3 {
        cluster.pause(i).await?;
    }
    watch_until(
        &mut events,
        start,
        "step-down",
        |e| matches!(e, Event::SteppedDown { who, .. } if *who == old),
    )
    .await?;
    tokio::time::sleep(OUTAGE.saturating_sub(paused_at.elapsed())).await;
    let at = start.elapsed().as_secs_f64();
    println!("{at:6.2}s  >> unpausing nodes 0, 1 and 2");
    for i in 0..3 {
        cluster.unpause(i).await?;
    }

    let next = watch_until(&mut events, start, "new leader", |e| {
        matches!(e, Event::Leads { .. })
    })
    .await?;
    let Event::Leads {
        who: new,
        token: new_token,
    } = next
    else {
        return Err("unreachable: not a Leads event".into());
    };
    if new == old || new_token <= old_token {
        return Err(format!("candidate {new} took over with token {new_token}").into());
    }
    watch_until(
        &mut events,
        start,
        "fourth action",
        |e| matches!(e, Event::Acted { who, n: 4, .. } if *who == new),
    )
    .await?;

    let at = start.elapsed().as_secs_f64();
    println!("{at:6.2}s  >> the demo ends: every candidate stops");
    stop_tx.send(true)?;
    for task in candidates {
        timeout(STEP, task).await???;
    }

    let guard = journal.entries.lock().map_err(|e| e.to_string())?;
    let (highest, entries) = &*guard;
    let by_old = entries.iter().filter(|(t, _)| *t == old_token).count();
    let by_new = entries.iter().filter(|(t, _)| *t == new_token).count();
    println!(
        "journal: {} actions, {by_old} by candidate {old} (token {old_token}), \
         {by_new} by candidate {new} (token {new_token}); highest token {highest}",
        entries.len()
    );
    if !entries.windows(2).all(|w| w[0].0 <= w[1].0) {
        return Err("the journal's tokens go down".into());
    }
    Ok(())
}
